"""Triton stage: write an ONNX model into a Triton Inference Server model repository.

The repository layout Triton expects, for one ONNX model::

    <repository>/
        <model_name>/
            config.pbtxt            # complete: platform, backend, batching, inputs, outputs, instances
            <version>/
                model.onnx
                model.onnx.data     # only when the model keeps its weights in an external data file

The config is derived from the ONNX graph (names, data types, dims), never typed by hand, and it is checked by
parsing it strictly with Triton's own protobuf schema (``tritonclient.grpc.model_config_pb2``) before anything
is moved into place. The model folder is built in a temporary folder beside its destination and renamed into
place at the end, so a failed export leaves the repository as it was.

A strict parse catches misspelled fields and bad enum values; it cannot catch what only a server load does
(wiring between models of an ensemble, a GPU instance group on a CPU-only machine).

The writing half (:func:`_write_model_folder`) does not know about ONNX, so other model kinds (a Python-backend
tokenizer, an ensemble) can reuse it with their own config and files.

:func:`export_triton_ensemble` writes text in, embeddings out: the ONNX model plus a Python-backend tokenizer
(`<name>_tokenizer`, reading the tokenizer.json copied into it), a Python-backend mean-pooling model
(`<name>_pooling`, numpy only) and an ensemble (`<name>_ensemble`) that chains them, with README.md and
provenance.json at the repository root, all written or none. The Python models' sources live in
`workbench/stages/triton_python/`. `workbench.triton_server.TritonServer` loads such a repository in a real
Triton server on this machine.
"""

from __future__ import annotations

import html
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, ClassVar

from workbench._files import atomic_directory
from workbench._lazy import require
from workbench.config import StageConfig, check_choice
from workbench.errors import ConfigError, ModelSourceError, TritonExportError, WorkbenchError

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from tritonclient.grpc import model_config_pb2

INSTANCE_KINDS = ("KIND_CPU", "KIND_GPU", "KIND_AUTO")

# ONNX TensorProto element type name -> Triton model-config data type. These are exactly the types Triton's
# onnxruntime backend converts (onnxruntime_backend/src/onnxruntime_utils.cc); anything else (BFLOAT16, the
# complex and float8/int4 types) is rejected by the backend at load time, so the export rejects it up front.
ONNX_TO_TRITON_DTYPE: dict[str, str] = {
    "BOOL": "TYPE_BOOL",
    "UINT8": "TYPE_UINT8",
    "UINT16": "TYPE_UINT16",
    "UINT32": "TYPE_UINT32",
    "UINT64": "TYPE_UINT64",
    "INT8": "TYPE_INT8",
    "INT16": "TYPE_INT16",
    "INT32": "TYPE_INT32",
    "INT64": "TYPE_INT64",
    "FLOAT16": "TYPE_FP16",
    "FLOAT": "TYPE_FP32",
    "DOUBLE": "TYPE_FP64",
    "STRING": "TYPE_STRING",
}

ONNX_PLATFORM = "onnxruntime_onnx"
ONNX_BACKEND = "onnxruntime"
ONNX_MODEL_FILENAME = "model.onnx"
CONFIG_FILENAME = "config.pbtxt"

_MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9_.-]+")
_MAX_MODEL_NAME_LENGTH = 200  # leaves room for the temporary folder's prefix and suffix within NAME_MAX (255)
_MODEL_CONFIG_MODULE = "tritonclient.grpc.model_config_pb2"
_PROTO_FIX = (
    "compare the field names and enum values with Triton's model_config.proto "
    "(for example max_batch_size, data_type: TYPE_FP32, kind: KIND_CPU); "
    "configs written by export_triton() always parse, so re-export rather than editing by hand"
)


def _model_config_pb2(purpose: str) -> Any:
    return require(_MODEL_CONFIG_MODULE, purpose=purpose, extra="triton")


@dataclass(frozen=True)
class TritonConfig(StageConfig):
    """How the model is served by Triton: its name, batching and instances.

    Attributes:
        model_name: The model's folder in the repository and its name in Triton's API. Letters, digits, "_",
            "." and "-" only; it must not start with a dot.
        max_batch_size: Largest batch Triton forms or accepts. Must be > 0: the exported model's first
            dimension is its batch dimension, which Triton then leaves out of `dims`.
        dynamic_batching: Let Triton merge concurrent requests into one batch.
        preferred_batch_sizes: Batch sizes the dynamic batcher aims for (each 1..max_batch_size). Empty lets
            it form the largest batch it can, which is usually right; set this only from measurements.
        max_queue_delay_us: How long (microseconds) a request may wait for others to join its batch.
        instance_count: Model instances per device (each is a separate ONNX Runtime session).
        instance_kind: "KIND_CPU", "KIND_GPU" or "KIND_AUTO" (Triton's choice: GPU if it has one).
        version: The version folder the model file goes into.
        warmup: Add `model_warmup` samples (zero data, batch 1 and max_batch_size) so that Triton runs the model
            before it reports it ready: the first real request does not pay for lazy allocations (or, on a GPU,
            TensorRT engine builds). Python-backend models of an ensemble get the same samples.
        warmup_sequence_length: The size given to every variable (-1) input dimension in the warmup samples,
            the sequence length for transformer models. export_triton_ensemble() uses its own sequence_length.
        ort_gpu_tensorrt_fp16: Ask Triton's onnxruntime backend to run the model through onnxruntime's TensorRT
            execution provider in FP16 (`optimization { execution_accelerators { gpu_execution_accelerator
            [{name: "tensorrt", parameters precision_mode FP16}] } }`). Only GPU instances use it, so it needs
            instance_kind KIND_GPU or KIND_AUTO; the server builds the TensorRT engine when the model loads.
    """

    model_name: str = "model"
    max_batch_size: int = 8
    dynamic_batching: bool = True
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int = 100
    instance_count: int = 1
    instance_kind: str = "KIND_CPU"
    version: int = 1
    warmup: bool = False
    warmup_sequence_length: int = 128
    ort_gpu_tensorrt_fp16: bool = False

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        # One ONNX Runtime session uses every core with its own intra-op threads; more CPU instances compete for
        # the same cores. A short queue delay keeps single-request latency close to the bare model's.
        "cpu": {"instance_kind": "KIND_CPU", "instance_count": 1, "max_batch_size": 8, "max_queue_delay_us": 100},
        # A GPU gains most from larger batches, which are worth a slightly longer wait to form.
        "gpu": {"instance_kind": "KIND_GPU", "instance_count": 1, "max_batch_size": 32, "max_queue_delay_us": 500},
        # The same through onnxruntime's TensorRT execution provider in FP16, warmed up so the engine is built
        # at load time rather than on the first request.
        "gpu_tensorrt_fp16": {"instance_kind": "KIND_GPU", "instance_count": 1, "max_batch_size": 32,
                              "max_queue_delay_us": 500, "ort_gpu_tensorrt_fp16": True, "warmup": True},
    }

    def __post_init__(self) -> None:
        _check_model_name(self.model_name)
        _check_int(self, "max_batch_size", minimum=1)
        _check_int(self, "max_queue_delay_us", minimum=0)
        _check_int(self, "instance_count", minimum=1)
        _check_int(self, "version", minimum=1)
        _check_int(self, "warmup_sequence_length", minimum=1)
        for flag in ("dynamic_batching", "warmup", "ort_gpu_tensorrt_fp16"):
            if not isinstance(getattr(self, flag), bool):
                raise ConfigError(f"TritonConfig.{flag} must be True or False, got {getattr(self, flag)!r}.")
        check_choice(self, "instance_kind", INSTANCE_KINDS)
        if self.ort_gpu_tensorrt_fp16 and self.instance_kind == "KIND_CPU":
            raise ConfigError(
                "TritonConfig.ort_gpu_tensorrt_fp16 is set but instance_kind is KIND_CPU, whose instances never "
                "use a GPU execution accelerator, so it would be ignored.",
                expected="instance_kind KIND_GPU (or KIND_AUTO) with ort_gpu_tensorrt_fp16",
                fix="set instance_kind='KIND_GPU' (TritonConfig.preset('gpu_tensorrt_fp16')), or leave "
                "ort_gpu_tensorrt_fp16 off for a CPU deployment",
            )
        sizes = self.preferred_batch_sizes
        if isinstance(sizes, list):  # accept a list, store the hashable tuple the field is typed as
            sizes = tuple(sizes)
            object.__setattr__(self, "preferred_batch_sizes", sizes)
        if not isinstance(sizes, tuple):
            raise ConfigError(f"TritonConfig.preferred_batch_sizes must be a tuple of ints, got {sizes!r}.")
        bad = [s for s in sizes if not _is_int(s) or not 1 <= s <= self.max_batch_size]
        if bad:
            raise ConfigError(
                f"TritonConfig.preferred_batch_sizes has {bad}, outside 1..max_batch_size ({self.max_batch_size}).",
                expected=f"each preferred batch size between 1 and {self.max_batch_size}",
                fix="drop those sizes, or raise max_batch_size",
            )
        if len(set(sizes)) != len(sizes):
            raise ConfigError(f"TritonConfig.preferred_batch_sizes lists a size twice: {sizes}.")
        if sizes and not self.dynamic_batching:
            raise ConfigError(
                "TritonConfig.preferred_batch_sizes is set but dynamic_batching is off, so it would be ignored.",
                fix="set dynamic_batching=True, or leave preferred_batch_sizes empty",
            )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(config: object, field: str, *, minimum: int) -> None:
    value = getattr(config, field)
    if not _is_int(value) or value < minimum:
        raise ConfigError(f"{type(config).__name__}.{field} must be an integer >= {minimum}, got {value!r}.")


def _check_model_name(name: object) -> None:
    problem = None
    if not isinstance(name, str) or not name:
        problem = "is empty" if name == "" else f"is not a string ({type(name).__name__})"
    elif not _MODEL_NAME_PATTERN.fullmatch(name):
        problem = "has characters other than letters, digits, '_', '.' and '-' (path separators are not allowed)"
    elif name.startswith("."):
        problem = "starts with a dot ('.', '..' and hidden folders cannot be model folders)"
    elif len(name) > _MAX_MODEL_NAME_LENGTH:
        problem = f"is longer than {_MAX_MODEL_NAME_LENGTH} characters"
    if problem:
        raise ConfigError(
            f"TritonConfig.model_name {name!r} {problem}.",
            expected="a plain folder name such as 'minilm' or 'minilm_int8-v2'",
            fix="use only letters, digits, '_', '.' and '-', not starting with a dot",
        )


# --------------------------------------------------------------------------------------------------------------
# ONNX graph -> ModelConfig


def _load_checked(onnx_path: str | os.PathLike[str]) -> tuple[Path, Any]:
    """Check that `onnx_path` is a complete, valid ONNX file; return its path and graph (weights not loaded)."""
    onnx = require("onnx", purpose="Reading an ONNX model for Triton")
    from workbench.models import check_onnx_file

    path = Path(onnx_path)
    if not path.is_file():
        raise ModelSourceError(
            f"ONNX model {str(path)!r} {'is a folder' if path.is_dir() else 'does not exist'}.",
            expected="the path of an .onnx file",
            fix="pass the .onnx file written by export_onnx() or a later stage",
        )
    check_onnx_file(path)
    return path, onnx.load(str(path), load_external_data=False)


def model_config_from_onnx(
    onnx_path: str | os.PathLike[str], config: TritonConfig = TritonConfig()
) -> model_config_pb2.ModelConfig:
    """Derive a complete Triton model config from an ONNX model's graph.

    Inputs and outputs take their names, data types and dims from the graph. The first dimension of every input
    and output must be a dynamic (symbolic or unknown) batch dimension; it is left out of `dims` because
    `max_batch_size` > 0. Other symbolic or unknown dimensions become -1. A tensor that is only a batch
    dimension gets `dims: [1]` with an empty `reshape`, as Triton requires.

    Args:
        onnx_path: The .onnx file.
        config: Name, batching and instances.

    Returns:
        A `tritonclient.grpc.model_config_pb2.ModelConfig`.

    Raises:
        ModelSourceError: The file does not exist, is truncated, or fails the ONNX checker.
        TritonExportError: The graph has a static batch dimension, a tensor of unknown rank, or a data type
            Triton's onnxruntime backend does not support.
    """
    path, model = _load_checked(onnx_path)
    return _config_from_model(model, config, path)


def _config_from_model(model: Any, config: TritonConfig, path: Path, *, warmup_length: int | None = None) -> Any:
    onnx = require("onnx", purpose="Reading an ONNX model for Triton")
    pb2 = _model_config_pb2("Writing a Triton model config")
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    # Graph inputs that are also initializers (older exports) are overridable weights, not request inputs.
    inputs = [v for v in graph.input if v.name not in initializers]
    outputs = list(graph.output)
    if any(not _has_shape(v) for v in outputs):
        inputs, outputs = _with_inferred_output_shapes(onnx, model, inputs, outputs)

    problems: list[str] = []
    static_batch: list[str] = []
    cfg = pb2.ModelConfig(
        name=config.model_name,
        platform=ONNX_PLATFORM,
        backend=ONNX_BACKEND,
        max_batch_size=config.max_batch_size,
    )
    for kind, values, target in (("input", inputs, cfg.input), ("output", outputs, cfg.output)):
        for value in values:
            described = _describe(onnx, value, kind, problems, static_batch)
            if described is None:
                continue
            data_type, dims = described
            tensor = target.add(name=value.name, data_type=pb2.DataType.Value(data_type))
            if dims:
                tensor.dims.extend(dims)
            else:  # only a batch dimension: Triton wants dims [1] reshaped to a scalar per batch item
                tensor.dims.append(1)
                tensor.reshape.SetInParent()
    if static_batch:
        raise TritonExportError(
            f"{path} has a static batch dimension: {'; '.join(static_batch)}. With max_batch_size > 0 Triton "
            "sends batches of 1..max_batch_size, so the model must accept any size in its first dimension.",
            expected="the first dimension of every input and output to be symbolic (for example 'batch')",
            fix="re-export the model with a dynamic batch axis: torch.onnx.export(..., dynamic_axes={name: "
            "{0: 'batch'} for every input and output}), which export_onnx() does by default",
        )
    if problems:
        raise TritonExportError(
            f"{path} cannot be described in a Triton config: {'; '.join(problems)}.",
            expected=f"tensors of known rank with data types among {sorted(ONNX_TO_TRITON_DTYPE)}",
            fix="cast the unsupported inputs/outputs in the graph (for example BFLOAT16 -> FLOAT16 or FLOAT) "
            "and export again",
        )
    if not cfg.input:
        raise TritonExportError(
            f"{path} has no inputs that are not initializers, so Triton would have nothing to feed it.",
            fix="export the model with at least one real input",
        )
    if config.dynamic_batching:
        cfg.dynamic_batching.SetInParent()
        cfg.dynamic_batching.preferred_batch_size.extend(config.preferred_batch_sizes)
        cfg.dynamic_batching.max_queue_delay_microseconds = config.max_queue_delay_us
    cfg.instance_group.add(
        count=config.instance_count, kind=pb2.ModelInstanceGroup.Kind.Value(config.instance_kind)
    )
    if config.ort_gpu_tensorrt_fp16:
        accelerator = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accelerator.parameters["precision_mode"] = "FP16"
    if config.warmup:
        _add_warmup(cfg, config, warmup_length or config.warmup_sequence_length)
    return cfg


def _add_warmup(cfg: Any, config: TritonConfig, length: int) -> None:
    """Zero-data warmup samples at batch 1 and at max_batch_size; variable dims get `length`."""
    for batch in sorted({1, config.max_batch_size}):
        sample = cfg.model_warmup.add(name=f"zeros_batch_{batch}", batch_size=batch)
        for tensor in cfg.input:
            warm = sample.inputs[tensor.name]
            warm.data_type = tensor.data_type
            warm.dims.extend(length if d == -1 else d for d in tensor.dims)
            warm.zero_data = True


def _has_shape(value: Any) -> bool:
    return value.type.WhichOneof("value") == "tensor_type" and value.type.tensor_type.HasField("shape")


def _with_inferred_output_shapes(onnx: Any, model: Any, inputs: list[Any], outputs: list[Any]) -> tuple[list, list]:
    # Some exporters leave output shapes out; ONNX shape inference usually recovers their rank.
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # custom-domain ops or an inference bug: keep what the graph says
        return inputs, outputs
    by_name = {v.name: v for v in inferred.graph.output}
    return inputs, [by_name.get(v.name, v) if not _has_shape(v) else v for v in outputs]


def _describe(
    onnx: Any, value: Any, kind: str, problems: list[str], static_batch: list[str]
) -> tuple[str, list[int]] | None:
    """(Triton data type, dims without the batch dim) of one graph input/output, or None after noting why not."""
    label = f"{kind} {value.name!r}"
    if value.type.WhichOneof("value") != "tensor_type":
        problems.append(f"{label} is a {value.type.WhichOneof('value') or 'untyped value'}, not a tensor")
        return None
    tensor_type = value.type.tensor_type
    elem_name = onnx.TensorProto.DataType.Name(tensor_type.elem_type) if tensor_type.elem_type else "UNDEFINED"
    data_type = ONNX_TO_TRITON_DTYPE.get(elem_name)
    if data_type is None:
        problems.append(f"{label} has data type {elem_name}, which Triton's onnxruntime backend does not support")
    if not tensor_type.HasField("shape"):
        problems.append(f"{label} has an unknown rank")
        return None
    dims = [d.dim_value if d.WhichOneof("value") == "dim_value" else -1 for d in tensor_type.shape.dim]
    if not dims:
        static_batch.append(f"{label} is a scalar (rank 0), so it has no batch dimension")
        return None
    if dims[0] != -1:
        shape = ", ".join(
            d.dim_param or (str(d.dim_value) if d.HasField("dim_value") else "?") for d in tensor_type.shape.dim
        )
        static_batch.append(f"{label} has shape [{shape}], whose first dimension is fixed at {dims[0]}")
        return None
    if data_type is None:
        return None
    return data_type, dims[1:]


# --------------------------------------------------------------------------------------------------------------
# config.pbtxt text


def render_model_config(cfg: model_config_pb2.ModelConfig) -> str:
    """The config in protobuf text format, as Triton reads it from config.pbtxt."""
    text_format = require("google.protobuf.text_format", purpose="Writing a Triton model config", extra="triton")
    return str(text_format.MessageToString(cfg))


def parse_model_config(text: str) -> model_config_pb2.ModelConfig:
    """Parse config.pbtxt text strictly with Triton's own schema.

    A misspelled field, a bad enum value (`data_type: TYPE_INT65`) or a field given twice is an error, as it is
    for the server. Wiring between models (ensembles) is not checked: only a server load does that.

    Args:
        text: The content of a config.pbtxt file.

    Returns:
        The parsed `tritonclient.grpc.model_config_pb2.ModelConfig`.

    Raises:
        TritonExportError: The text is not a valid ModelConfig; the message has protobuf's line and column.
    """
    pb2 = _model_config_pb2("Parsing a Triton model config")
    text_format = require("google.protobuf.text_format", purpose="Parsing a Triton model config", extra="triton")
    if not isinstance(text, str):
        raise TritonExportError(
            f"parse_model_config() takes the config text, not {type(text).__name__}.",
            fix="pass Path('config.pbtxt').read_text()",
        )
    try:
        return text_format.Parse(text, pb2.ModelConfig())
    except text_format.ParseError as exc:
        line = exc.GetLine() if hasattr(exc, "GetLine") else None
        where = f" (line {line}, column {exc.GetColumn()})" if line is not None else ""
        raise TritonExportError(
            f"The Triton model config is not a valid ModelConfig{where}: {exc}",
            expected="protobuf text format of inference.ModelConfig, as Triton's server parses config.pbtxt",
            fix=_PROTO_FIX,
        ) from exc


# --------------------------------------------------------------------------------------------------------------
# Writing the model folder


@dataclass(frozen=True)
class TritonExportResult:
    """One model written into a Triton model repository.

    Attributes:
        repository: The model repository (pass it to `tritonserver --model-repository`).
        model_dir: `<repository>/<model_name>`.
        model_name: The model's name in Triton.
        config_text: The content of config.pbtxt.
        files: Every file written, under model_dir.
    """

    repository: Path
    model_dir: Path
    model_name: str
    config_text: str
    files: tuple[Path, ...]

    @property
    def config_path(self) -> Path:
        return self.model_dir / CONFIG_FILENAME

    def to_dict(self) -> dict[str, Any]:
        return {
            "repository": str(self.repository),
            "model_dir": str(self.model_dir),
            "model_name": self.model_name,
            "config_text": self.config_text,
            "files": [str(f) for f in self.files],
        }

    def _repr_html_(self) -> str:
        files = ", ".join(f"<code>{html.escape(str(f.relative_to(self.model_dir)))}</code>" for f in self.files)
        return (
            f"<b>Triton model</b> <code>{html.escape(self.model_name)}</code> written to "
            f"<code>{html.escape(str(self.model_dir))}</code> ({len(self.files)} files: {files}). "
            f"Serve it with <code>tritonserver --model-repository={html.escape(str(self.repository))}</code>."
            f"<pre>{html.escape(self.config_text)}</pre>"
        )


def _write_model_folder(
    repository: Path,
    model_name: str,
    config_text: str,
    populate: Callable[[Path], None],
    *,
    overwrite: bool,
) -> TritonExportResult:
    """Build `<repository>/<model_name>` in a temporary folder and move it into place only if all of it worked.

    Args:
        repository: The model repository; created if missing (and removed again if the write fails).
        model_name: The model's folder name (already validated by TritonConfig).
        config_text: config.pbtxt content, already parsed strictly.
        populate: Writes the model's other files (version folders) into the folder it is given.
        overwrite: Replace an existing model folder (only after the new one is complete).
    """
    model_dir = repository / model_name
    if repository.exists() and not repository.is_dir():
        raise TritonExportError(
            f"The model repository {repository} is a file, not a folder.",
            fix="pass a folder (it may already hold other models)",
        )
    if (model_dir.exists() or model_dir.is_symlink()) and not overwrite:
        raise TritonExportError(
            f"Triton model folder {model_dir} already exists; nothing was changed.",
            fix="pass overwrite=True to replace it, or choose another TritonConfig.model_name",
        )
    created_repository = not repository.exists()
    try:
        with atomic_directory(model_dir, overwrite=overwrite) as staging:
            (staging / CONFIG_FILENAME).write_text(config_text, encoding="utf-8")
            populate(staging)
            relative = sorted(p.relative_to(staging) for p in staging.rglob("*") if p.is_file())
    except WorkbenchError:
        _remove_if_empty(repository, created_repository)
        raise
    except OSError as exc:
        _remove_if_empty(repository, created_repository)
        raise TritonExportError(
            f"Writing the Triton model folder {model_dir} failed: {exc}. Nothing was moved into place.",
            fix="check free disk space and permissions on the repository; if another process created "
            f"{model_dir} meanwhile, remove it or pass overwrite=True",
        ) from exc
    except BaseException:
        _remove_if_empty(repository, created_repository)
        raise
    ordered = sorted(relative, key=lambda p: (p.name != CONFIG_FILENAME, len(p.parts), str(p)))
    return TritonExportResult(
        repository=repository,
        model_dir=model_dir,
        model_name=model_name,
        config_text=config_text,
        files=tuple(model_dir / p for p in ordered),
    )


def _remove_if_empty(folder: Path, created: bool) -> None:
    if created:
        try:
            folder.rmdir()
        except OSError:
            pass


def _all_tensors(graph: Any) -> Iterator[Any]:
    """Every TensorProto in a graph and its subgraphs: initializers and tensor attributes of nodes."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            if attribute.HasField("g"):
                yield from _all_tensors(attribute.g)
            for subgraph in attribute.graphs:
                yield from _all_tensors(subgraph)


def _external_data_plan(onnx: Any, model: Any, path: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Which external data files the model reads, and how they are named in the version folder.

    Returns:
        (target name -> source file, original location -> new location for the locations that change). The
        conventional `<file>.data` beside `<file>` becomes `model.onnx.data`; other locations keep their names.
    """
    locations: set[str] = set()
    for tensor in _all_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {e.key: e.value for e in tensor.external_data}
            locations.add(entries.get("location", ""))
    conventional = f"{path.name}.data"
    copies: dict[str, Path] = {}
    renames: dict[str, str] = {}
    for location in sorted(locations):
        relative = PurePosixPath(location.replace("\\", "/"))
        if not location or relative.is_absolute() or ".." in relative.parts:
            raise ModelSourceError(
                f"{path} refers to external data at {location!r}, outside the model's folder.",
                expected="external data files beside the .onnx file (for example model.onnx.data)",
                fix="save the model again with onnx.save_model(..., save_as_external_data=True, "
                "location='model.onnx.data')",
            )
        source = path.parent / Path(*relative.parts)
        if not source.is_file():
            raise ModelSourceError(
                f"{path} keeps its weights in {location!r}, but {source} does not exist.",
                fix="keep the external data file beside the .onnx file, under the name the model records",
            )
        target = f"{ONNX_MODEL_FILENAME}.data" if location == conventional else str(relative)
        if target == ONNX_MODEL_FILENAME or target in copies:
            raise TritonExportError(
                f"{path}'s external data file {location!r} would collide with {target!r} in the Triton version "
                "folder.",
                fix=f"save the model with its weights in one file named '{ONNX_MODEL_FILENAME}.data'",
            )
        copies[target] = source
        if target != location:
            renames[location] = target
    return copies, renames


def _onnx_files_writer(onnx: Any, model: Any, path: Path, version: int) -> Callable[[Path], None]:
    """A `populate` callback that puts the ONNX model (and its external data) into `<version>/`."""
    copies, renames = _external_data_plan(onnx, model, path)

    def populate(folder: Path) -> None:
        from workbench.models import check_onnx_file

        version_dir = folder / str(version)
        version_dir.mkdir()
        target = version_dir / ONNX_MODEL_FILENAME
        if renames:
            for tensor in _all_tensors(model.graph):
                for entry in tensor.external_data:
                    if entry.key == "location" and entry.value in renames:
                        entry.value = renames[entry.value]
            target.write_bytes(model.SerializeToString())  # weights are not loaded: only the graph is written
        else:
            shutil.copyfile(path, target)
        for name, source in copies.items():
            destination = version_dir / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, destination)
        check_onnx_file(target)  # the copy, with its data files, is a complete model

    return populate


def export_triton(
    onnx_path: str | os.PathLike[str],
    repository: str | os.PathLike[str],
    config: TritonConfig = TritonConfig(),
    *,
    overwrite: bool = False,
) -> TritonExportResult:
    """Write an ONNX model into a Triton model repository, with a complete, strictly checked config.pbtxt.

    Writes `<repository>/<model_name>/config.pbtxt` and `<repository>/<model_name>/<version>/model.onnx` (plus
    `model.onnx.data` when the model keeps its weights in `<file>.data` beside it). The config is derived from
    the graph (:func:`model_config_from_onnx`), rendered, and parsed back strictly before anything is written.
    The model folder is built in a temporary folder and renamed into place, so on any failure the repository is
    left as it was. Other models already in the repository are not touched.

    Args:
        onnx_path: The .onnx file to serve.
        repository: The model repository folder; created if missing.
        config: Name, batching and instances.
        overwrite: Replace an existing `<repository>/<model_name>` (only once the new folder is complete).

    Returns:
        Where everything was written and the config text.

    Raises:
        ModelSourceError: The ONNX file is missing, truncated, invalid, or its external data is missing.
        TritonExportError: The graph cannot be served with this config (static batch dimension, unsupported
            data type), the model folder exists and overwrite is False, or writing failed.
        ConfigError: `config` is not a TritonConfig.
    """
    if not isinstance(config, TritonConfig):
        raise ConfigError(
            f"export_triton() takes a TritonConfig, not {type(config).__name__}.",
            fix="pass TritonConfig(...) or TritonConfig.preset('cpu')",
        )
    onnx = require("onnx", purpose="Exporting an ONNX model to Triton")
    path, model = _load_checked(onnx_path)
    repository = Path(repository)
    model_dir = repository / config.model_name
    if (model_dir.exists() or model_dir.is_symlink()) and not overwrite:
        raise TritonExportError(
            f"Triton model folder {model_dir} already exists; nothing was changed.",
            fix="pass overwrite=True to replace it, or choose another TritonConfig.model_name",
        )
    cfg = _config_from_model(model, config, path)
    text = render_model_config(cfg)
    if parse_model_config(text) != cfg:  # never expected: the text must say exactly what was derived
        raise TritonExportError(
            "The rendered Triton config does not parse back to the config it was rendered from.",
            fix="report this as a workbench bug, with the model and the TritonConfig",
        )
    populate = _onnx_files_writer(onnx, model, path, config.version)
    return _write_model_folder(repository, config.model_name, text, populate, overwrite=overwrite)


TENSORRT_PLATFORM = "tensorrt_plan"
TENSORRT_BACKEND = "tensorrt"
TENSORRT_FILENAME = "model.plan"


def export_triton_engine(
    engine_path: str | os.PathLike[str],
    onnx_path: str | os.PathLike[str],
    repository: str | os.PathLike[str],
    config: TritonConfig = TritonConfig.preset("gpu"),
    *,
    overwrite: bool = False,
) -> TritonExportResult:
    """Write a TensorRT engine into a Triton model repository as a `tensorrt_plan` model.

    An engine file cannot be read without TensorRT, so the config's inputs and outputs come from the ONNX model
    the engine was built from (same names, types and dims; the build keeps them). Writes
    `<repository>/<model_name>/config.pbtxt` and `<version>/model.plan`, atomically, after a strict parse.
    An engine runs only on the GPU model and TensorRT version it was built with: the config's instance kind
    should be KIND_GPU (the default preset here).

    Raises:
        TritonExportError: The engine file is missing or empty, the folder exists without overwrite, or the
            ONNX graph cannot be described (see export_triton).
        ConfigError: The config asks for onnxruntime's TensorRT accelerator, which does not apply to an engine.
    """
    if not isinstance(config, TritonConfig):
        raise ConfigError(f"export_triton_engine() takes a TritonConfig, not {type(config).__name__}.")
    if config.ort_gpu_tensorrt_fp16:
        raise ConfigError(
            "ort_gpu_tensorrt_fp16 configures onnxruntime's TensorRT accelerator; a TensorRT engine is already built.",
            fix="set ort_gpu_tensorrt_fp16=False for export_triton_engine",
        )
    engine = Path(engine_path)
    if not engine.is_file() or engine.stat().st_size == 0:
        raise TritonExportError(
            f"TensorRT engine {engine} does not exist or is empty.",
            fix="build it first with workbench.stages.tensorrt.build_engine(..., engine_path=...)",
        )
    path, model = _load_checked(onnx_path)
    repository = Path(repository)
    cfg = _config_from_model(model, config, path)
    cfg.platform, cfg.backend, cfg.default_model_filename = TENSORRT_PLATFORM, TENSORRT_BACKEND, TENSORRT_FILENAME
    text = render_model_config(cfg)
    if parse_model_config(text) != cfg:
        raise TritonExportError("The rendered Triton config does not parse back to the config it was rendered from.",
                                fix="report this as a workbench bug, with the model and the TritonConfig")

    def populate(folder: Path) -> None:
        version = folder / str(config.version)
        version.mkdir()
        shutil.copyfile(engine, version / TENSORRT_FILENAME)

    return _write_model_folder(repository, config.model_name, text, populate, overwrite=overwrite)


# --------------------------------------------------------------------------------------------------------------
# Text in, embeddings out: tokenizer + model + pooling as one Triton ensemble

ENSEMBLE_TEXT_INPUT = "TEXT"
ENSEMBLE_EMBEDDING_OUTPUT = "EMBEDDING"
POOLING_MODES = ("mean",)
TOKENIZER_SUFFIX = "_tokenizer"
POOLING_SUFFIX = "_pooling"
ENSEMBLE_SUFFIX = "_ensemble"
README_FILENAME = "README.md"
PROVENANCE_FILENAME = "provenance.json"
PROVENANCE_FORMAT = "workbench-triton-provenance/1"

#: Tokenizer files copied next to the tokenizer model when the tokenizer folder has them. The model reads only
#: tokenizer.json; the others are kept so the folder is a complete Hugging Face tokenizer for people and tools.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
    "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model",
)
_TOKENIZER_INTEGER_TYPES = ("TYPE_INT64", "TYPE_INT32")
#: The model inputs the tokenizer model can produce (triton_python/tokenizer_model.py's ENCODING_FIELDS).
TOKENIZER_OUTPUTS = ("input_ids", "attention_mask", "token_type_ids")
#: Texts the export tokenizes both ways (the server's model.py and the workbench's tokenizer) to prove they agree.
_TOKENIZER_CHECK_TEXTS = (
    "A man is playing a guitar.",
    "",
    "Ünïcödé, ŝpéçïäl çhäràctérs — and émojis 🙂 are tokenized the same way.",
    "UPPER case, numbers 12345.678 and punctuation!?; (brackets) [more] {still}",
    " ".join(["A long sentence that is truncated at the sequence length."] * 80),
)
#: The keys of provenance.json that the export computes; the caller's `provenance` may not replace them.
_COMPUTED_PROVENANCE_KEYS = (
    "format", "created_utc", "ensemble", "models", "onnx_model", "tokenizer", "sequence_length", "pooling",
    "normalize", "triton_config", "libraries", "hardware",
)
_LIBRARIES = (
    "inference-workbench", "onnx", "onnxruntime", "onnxruntime-gpu", "tokenizers", "transformers", "torch", "numpy",
    "protobuf", "tritonclient", "nvidia-pytriton",
)


@dataclass(frozen=True)
class TritonEnsembleResult:
    """A text-to-embedding (or text-to-outputs) ensemble written into a Triton model repository.

    Attributes:
        repository: The model repository.
        ensemble_name: The model clients call: input `TEXT` (strings), output `EMBEDDING` (or the model's outputs
            when there is no pooling).
        models: Role ("model", "tokenizer", "pooling", "ensemble") -> the folder written for it.
        readme: `<repository>/README.md`.
        provenance: `<repository>/provenance.json`.
        sequence_length: Every text is truncated and padded to this many tokens.
        output_names: The ensemble's outputs.
    """

    repository: Path
    ensemble_name: str
    models: dict[str, TritonExportResult]
    readme: Path
    provenance: Path
    sequence_length: int
    output_names: tuple[str, ...]

    @property
    def model_name(self) -> str:
        """The name clients call (the ensemble's)."""
        return self.ensemble_name

    @property
    def model_names(self) -> tuple[str, ...]:
        """Every model in the ensemble, the ensemble last (load the ensemble: Triton loads its steps with it)."""
        return tuple(result.model_name for result in self.models.values())

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(f for result in self.models.values() for f in result.files) + (self.readme, self.provenance)

    def to_dict(self) -> dict[str, Any]:
        return {
            "repository": str(self.repository),
            "ensemble_name": self.ensemble_name,
            "models": {role: result.to_dict() for role, result in self.models.items()},
            "readme": str(self.readme),
            "provenance": str(self.provenance),
            "sequence_length": self.sequence_length,
            "output_names": list(self.output_names),
        }

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(role)}</td><td><code>{html.escape(result.model_name)}</code></td>"
            f"<td>{len(result.files)}</td></tr>"
            for role, result in self.models.items()
        )
        return (
            f"<b>Triton ensemble</b> <code>{html.escape(self.ensemble_name)}</code> "
            f"(TEXT &rarr; {html.escape(', '.join(self.output_names))}, {self.sequence_length} tokens) in "
            f"<code>{html.escape(str(self.repository))}</code>"
            f"<table><tr><th>role</th><th>model</th><th>files</th></tr>{rows}</table>"
            f"Serve it with <code>tritonserver --model-repository={html.escape(str(self.repository))}</code>."
        )


def ensemble_model_names(model_name: str, *, pooling: str | None = "mean") -> dict[str, str]:
    """Role -> model name for the ensemble of `model_name`: model, tokenizer, pooling (with pooling), ensemble."""
    names = {"model": model_name, "tokenizer": model_name + TOKENIZER_SUFFIX}
    if pooling is not None:
        names["pooling"] = model_name + POOLING_SUFFIX
    names["ensemble"] = model_name + ENSEMBLE_SUFFIX
    for name in names.values():
        _check_model_name(name)
    return names


def check_ensemble(ensemble: model_config_pb2.ModelConfig, models: dict[str, Any]) -> None:
    """Check an ensemble's wiring against its steps' configs, as far as it can be checked without a server.

    Every step's model must be among `models` (name -> ModelConfig); every input_map key must be an input of that
    model and every output_map key one of its outputs; every model input must be mapped, from a tensor that the
    ensemble's inputs or an earlier step provide, with the same data type; every ensemble output must be
    produced by a step. A server load checks more (dims, versions), so this is a first line, not a substitute.

    Raises:
        TritonExportError: Every problem found, in one message.
    """
    pb2 = _model_config_pb2("Checking a Triton ensemble")
    type_name = pb2.DataType.Name
    available = {t.name: t.data_type for t in ensemble.input}
    problems: list[str] = []
    for index, step in enumerate(ensemble.ensemble_scheduling.step):
        label = f"step {index} ({step.model_name!r})"
        model = models.get(step.model_name)
        if model is None:
            problems.append(f"{label} names a model that is not part of the repository being written")
            continue
        inputs = {t.name: t.data_type for t in model.input}
        outputs = {t.name: t.data_type for t in model.output}
        for model_input, tensor in step.input_map.items():
            if model_input not in inputs:
                problems.append(f"{label} maps {model_input!r}, which is not an input of the model {sorted(inputs)}")
            elif tensor not in available:
                problems.append(f"{label} reads ensemble tensor {tensor!r}, which no earlier step or ensemble "
                                "input provides")
            elif available[tensor] != inputs[model_input]:
                problems.append(f"{label} input {model_input!r} is {type_name(inputs[model_input])} but ensemble "
                                f"tensor {tensor!r} is {type_name(available[tensor])}")
        unmapped = sorted(set(inputs) - set(step.input_map))
        if unmapped:
            problems.append(f"{label} leaves model inputs {unmapped} unmapped")
        for model_output, tensor in step.output_map.items():
            if model_output not in outputs:
                problems.append(f"{label} maps output {model_output!r}, which the model does not have "
                                f"{sorted(outputs)}")
                continue
            if tensor in available:
                problems.append(f"{label} writes ensemble tensor {tensor!r}, which already has a producer")
            available[tensor] = outputs[model_output]
    for tensor in ensemble.output:
        if tensor.name not in available:
            problems.append(f"ensemble output {tensor.name!r} is produced by no step")
        elif available[tensor.name] != tensor.data_type:
            problems.append(f"ensemble output {tensor.name!r} is declared {type_name(tensor.data_type)} but its "
                            f"step produces {type_name(available[tensor.name])}")
    if problems:
        raise TritonExportError(
            f"The Triton ensemble {ensemble.name!r} is wired wrongly: {'; '.join(problems)}.",
            fix="report this as a workbench bug if export_triton_ensemble() wrote it; for a hand-made ensemble, map "
            "every model input from an ensemble input or an earlier step's output",
        )


@dataclass(frozen=True)
class _TokenizerPlan:
    """What the served tokenizer needs, settled before anything is written."""

    json_text: str  # tokenizer.json content
    copies: dict[str, Path]  # other tokenizer files to copy
    pad_id: int
    pad_token: str
    pad_type_id: int
    padding_side: str
    truncation_side: str
    source: Path


def _tokenizer_plan(tokenizer_dir: Path, names: list[str], sequence_length: int) -> _TokenizerPlan:
    """Load the tokenizer the workbench uses, and prove that the server's tokenization gives the same ids."""
    from workbench.data import tokenize_batches
    from workbench.models import _load_tokenizer
    from workbench.stages.triton_python import tokenizer_model

    if not tokenizer_dir.is_dir():
        raise ModelSourceError(
            f"Tokenizer folder {tokenizer_dir} {'is a file' if tokenizer_dir.exists() else 'does not exist'}.",
            expected="a folder written by tokenizer.save_pretrained() (tokenizer.json, tokenizer_config.json ...)",
            fix="pass the Hugging Face model folder, which holds the tokenizer files",
        )
    try:
        tokenizer = _load_tokenizer(tokenizer_dir)
    except WorkbenchError:
        raise
    except Exception as exc:
        raise ModelSourceError(
            f"Could not load a tokenizer from {tokenizer_dir}: {type(exc).__name__}: {exc}",
            fix="pass a folder written by tokenizer.save_pretrained()",
        ) from exc
    json_file = tokenizer_dir / "tokenizer.json"
    if json_file.is_file():
        json_text = json_file.read_text(encoding="utf-8")
    elif getattr(tokenizer, "is_fast", False):  # a fast tokenizer built from vocab files: save its tokenizer.json
        json_text = tokenizer.backend_tokenizer.to_str()
    else:
        raise TritonExportError(
            f"The tokenizer in {tokenizer_dir} has no tokenizer.json and is not a fast tokenizer, so the server "
            "cannot load it with the `tokenizers` package.",
            fix="save a fast tokenizer: AutoTokenizer.from_pretrained(DIR, use_fast=True).save_pretrained(DIR)",
        )
    if tokenizer.pad_token_id is None:
        raise TritonExportError(
            f"The tokenizer in {tokenizer_dir} has no padding token, so texts cannot be padded to one length.",
            fix="set one before exporting: tokenizer.pad_token = tokenizer.eos_token; tokenizer.save_pretrained(DIR)",
        )
    plan = _TokenizerPlan(
        json_text=json_text,
        copies={n: tokenizer_dir / n for n in TOKENIZER_FILES
                if n != "tokenizer.json" and (tokenizer_dir / n).is_file()},
        pad_id=int(tokenizer.pad_token_id),
        pad_token=str(tokenizer.pad_token),
        pad_type_id=int(getattr(tokenizer, "pad_token_type_id", 0) or 0),
        padding_side=str(getattr(tokenizer, "padding_side", "right")),
        truncation_side=str(getattr(tokenizer, "truncation_side", "right")),
        source=tokenizer_dir,
    )
    # The server tokenizes with `tokenizers` alone; the workbench measured accuracy with the transformers
    # tokenizer. Export only if both give the same arrays.
    import numpy as np

    with tempfile.TemporaryDirectory(prefix="workbench-tokenizer-") as folder:
        path = Path(folder) / "tokenizer.json"
        path.write_text(json_text, encoding="utf-8")
        served_tokenizer = tokenizer_model.load_tokenizer(
            path, sequence_length=sequence_length, pad_id=plan.pad_id, pad_token=plan.pad_token,
            pad_type_id=plan.pad_type_id, padding_side=plan.padding_side, truncation_side=plan.truncation_side)
    served = tokenizer_model.encode(served_tokenizer, list(_TOKENIZER_CHECK_TEXTS), {n: np.int64 for n in names})
    (expected,) = tokenize_batches(tokenizer, _TOKENIZER_CHECK_TEXTS, batch_size=len(_TOKENIZER_CHECK_TEXTS),
                                   sequence_length=sequence_length, input_names=names)
    differ = [n for n in names if served[n].shape != expected[n].shape or not np.array_equal(served[n], expected[n])]
    if differ:
        raise TritonExportError(
            f"The served tokenizer (tokenizer.json read by the `tokenizers` package) gives different {differ} than "
            f"the workbench's tokenizer for {tokenizer_dir} at sequence_length {sequence_length}, so the server's "
            "embeddings would not be the ones the workbench measured.",
            fix="save the tokenizer again with a current transformers (tokenizer.save_pretrained(DIR)), which "
            "writes a tokenizer.json that matches it",
        )
    return plan


def _string_parameters(cfg: Any, values: dict[str, Any]) -> None:
    for key, value in values.items():
        cfg.parameters[key].string_value = str(value)


def _tokenizer_config(pb2: Any, name: str, config: TritonConfig, outputs: dict[str, int], sequence_length: int,
                      plan: _TokenizerPlan) -> Any:
    cfg = pb2.ModelConfig(name=name, backend="python", max_batch_size=config.max_batch_size)
    cfg.input.add(name=ENSEMBLE_TEXT_INPUT, data_type=pb2.DataType.Value("TYPE_STRING"), dims=[1])
    for output, data_type in outputs.items():
        cfg.output.add(name=output, data_type=data_type, dims=[sequence_length])
    _python_model_scheduling(pb2, cfg, config, sequence_length)
    _string_parameters(cfg, {
        "sequence_length": sequence_length, "pad_id": plan.pad_id, "pad_token": plan.pad_token,
        "pad_type_id": plan.pad_type_id, "padding_side": plan.padding_side,
        "truncation_side": plan.truncation_side, "tokenizer_file": "tokenizer.json",
    })
    return cfg


def _python_model_scheduling(pb2: Any, cfg: Any, config: TritonConfig, warmup_length: int) -> None:
    """Python-backend steps always run on the CPU, one instance, batching whatever is queued (no extra delay)."""
    if config.dynamic_batching:
        cfg.dynamic_batching.SetInParent()
    cfg.instance_group.add(count=1, kind=pb2.ModelInstanceGroup.Kind.Value("KIND_CPU"))
    if config.warmup:
        _add_warmup(cfg, config, warmup_length)


def _pooling_config(pb2: Any, name: str, config: TritonConfig, hidden: Any, mask_type: int, normalize: bool,
                    sequence_length: int) -> Any:
    cfg = pb2.ModelConfig(name=name, backend="python", max_batch_size=config.max_batch_size)
    cfg.input.add(name=hidden.name, data_type=hidden.data_type, dims=list(hidden.dims))
    cfg.input.add(name="attention_mask", data_type=mask_type, dims=[-1])
    cfg.output.add(name=ENSEMBLE_EMBEDDING_OUTPUT, data_type=pb2.DataType.Value("TYPE_FP32"),
                   dims=[hidden.dims[-1]])
    _python_model_scheduling(pb2, cfg, config, sequence_length)
    _string_parameters(cfg, {"normalize": "true" if normalize else "false"})
    return cfg


def _pick_embedding_output(model_cfg: Any, embedding_output: str | None, path: Path) -> Any:
    outputs = {t.name: t for t in model_cfg.output}
    if embedding_output is not None:
        if embedding_output not in outputs:
            raise TritonExportError(
                f"{path} has no output {embedding_output!r} to pool (its outputs: {sorted(outputs)}).",
                fix="pass embedding_output= one of those, or pooling=None to serve the raw outputs",
            )
        chosen = outputs[embedding_output]
    elif "last_hidden_state" in outputs:
        chosen = outputs["last_hidden_state"]
    else:
        token_level = [t for t in model_cfg.output if len(t.dims) == 2]
        if len(token_level) != 1:
            raise TritonExportError(
                f"{path} has no 'last_hidden_state' output and {len(token_level)} outputs of shape [batch, "
                f"sequence, hidden] ({[t.name for t in token_level]}), so it is unclear which one to pool.",
                fix="pass embedding_output= the token-embedding output, or pooling=None for a model that is not "
                "a feature extractor (a classifier, for example)",
            )
        chosen = token_level[0]
    if len(chosen.dims) != 2:
        raise TritonExportError(
            f"Output {chosen.name!r} of {path} has dims {list(chosen.dims)} after the batch dimension; mean "
            "pooling needs [sequence, hidden].",
            fix="pool a token-level output, or pass pooling=None",
        )
    return chosen


def _ensemble_config(pb2: Any, names: dict[str, str], config: TritonConfig, tokenizer_cfg: Any, model_cfg: Any,
                     pooling_cfg: Any | None) -> Any:
    cfg = pb2.ModelConfig(name=names["ensemble"], platform="ensemble", max_batch_size=config.max_batch_size)
    cfg.input.add(name=ENSEMBLE_TEXT_INPUT, data_type=pb2.DataType.Value("TYPE_STRING"), dims=[1])
    final = pooling_cfg if pooling_cfg is not None else model_cfg
    for tensor in final.output:
        cfg.output.add().CopyFrom(tensor)
    steps = cfg.ensemble_scheduling.step
    tokenize = steps.add(model_name=names["tokenizer"], model_version=-1)
    tokenize.input_map[ENSEMBLE_TEXT_INPUT] = ENSEMBLE_TEXT_INPUT
    for tensor in tokenizer_cfg.output:
        tokenize.output_map[tensor.name] = tensor.name
    run = steps.add(model_name=names["model"], model_version=-1)
    for tensor in model_cfg.input:
        run.input_map[tensor.name] = tensor.name
    if pooling_cfg is None:
        for tensor in model_cfg.output:
            run.output_map[tensor.name] = tensor.name
    else:
        hidden = pooling_cfg.input[0].name
        run.output_map[hidden] = hidden
        pool = steps.add(model_name=names["pooling"], model_version=-1)
        for tensor in pooling_cfg.input:
            pool.input_map[tensor.name] = tensor.name
        for tensor in pooling_cfg.output:
            pool.output_map[tensor.name] = tensor.name
    return cfg


def _checked_text(cfg: Any) -> str:
    text = render_model_config(cfg)
    if parse_model_config(text) != cfg:  # never expected: the text must say exactly what was derived
        raise TritonExportError(
            f"The rendered Triton config of {cfg.name!r} does not parse back to the config it was rendered from.",
            fix="report this as a workbench bug, with the model and the TritonConfig",
        )
    return text


def _plain_json(value: Any, where: str) -> Any:
    """`value` as plain JSON data: objects with to_dict() and dataclasses become dicts, paths strings."""
    import dataclasses
    import json

    if isinstance(value, Mapping):
        return {str(k): _plain_json(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return _plain_json(to_dict(), where)
    to_json = getattr(value, "to_json", None)
    if callable(to_json):
        return _plain_json(json.loads(to_json()), where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain_json(dataclasses.asdict(value), where)
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and getattr(value, "shape", None) == ():
        return _plain_json(item(), where)
    raise ConfigError(
        f"provenance{where} is a {type(value).__name__}, which cannot be written to provenance.json.",
        expected="JSON data (dicts, lists, strings, numbers), or objects with to_dict() / to_json()",
        fix="pass plain values, for example plan.to_dict() or a dict of figures",
    )


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _provenance_record(
    *, names: dict[str, str], onnx_path: Path, tokenizer_dir: Path, tokenizer_json: str, sequence_length: int,
    pooling: str | None, normalize: bool, config: TritonConfig, provided: Mapping[str, Any] | None,
) -> dict[str, Any]:
    import datetime
    import hashlib

    from workbench._lazy import installed_distribution
    from workbench.stages.benchmark import machine_info

    tokenizer_sha256 = hashlib.sha256(tokenizer_json.encode("utf-8")).hexdigest()
    record: dict[str, Any] = {
        "format": PROVENANCE_FORMAT,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "ensemble": names["ensemble"],
        "models": dict(names),
        "onnx_model": {"source_path": str(onnx_path), "sha256": _sha256(onnx_path),
                       "bytes": onnx_path.stat().st_size},
        "tokenizer": {"source_path": str(tokenizer_dir), "tokenizer_json_sha256": tokenizer_sha256},
        "sequence_length": sequence_length,
        "pooling": pooling,
        "normalize": normalize if pooling is not None else None,
        "triton_config": config.to_dict(),
        "libraries": {n: v for n in _LIBRARIES if (v := installed_distribution(n))},
        "hardware": machine_info(),
    }
    if provided is not None:
        if not isinstance(provided, Mapping):
            raise ConfigError(
                f"provenance must be a mapping, not {type(provided).__name__}.",
                fix="pass a dict such as {'source_model': ..., 'precision_plan': plan, 'accuracy': ..., 'speed': ...}",
            )
        clashes = sorted(set(map(str, provided)) & set(_COMPUTED_PROVENANCE_KEYS))
        if clashes:
            raise ConfigError(
                f"provenance keys {clashes} are written by the export itself.",
                expected=f"other keys than {list(_COMPUTED_PROVENANCE_KEYS)}, for example source_model, "
                "precision_plan, accuracy, speed",
                fix="rename those keys (for example 'benchmark_hardware' for the machine the speed was measured on)",
            )
        for key, value in provided.items():
            record[str(key)] = _plain_json(value, f"[{key!r}]")
    return record


def _readme_text(result_names: dict[str, str], *, sequence_length: int, pooling: str | None, normalize: bool,
                 output_names: tuple[str, ...], config: TritonConfig, model_cfg: Any, provided: list[str]) -> str:
    ensemble = result_names["ensemble"]
    steps = [f"`{result_names['tokenizer']}` (Python backend: `tokenizers`, texts truncated and padded to "
             f"{sequence_length} tokens)",
             f"`{result_names['model']}` (ONNX Runtime, dynamic batching up to {config.max_batch_size}, "
             f"{config.instance_count} x {config.instance_kind}"
             + (", TensorRT FP16 accelerator" if config.ort_gpu_tensorrt_fp16 else "") + ")"]
    if pooling is not None:
        steps.append(f"`{result_names['pooling']}` (Python backend, numpy: attention-mask-aware {pooling} pooling"
                     + (", L2-normalised" if normalize else "") + ")")
    outputs = ", ".join(f"`{n}`" for n in output_names)
    model_inputs = ", ".join(f"`{t.name}`" for t in model_cfg.input)
    return f"""# Triton model repository: `{ensemble}`

Written by the Inference Workbench (`export_triton_ensemble`). Send texts, get {outputs} back.

`{ensemble}` (platform `ensemble`) runs, per request:

1. {steps[0]}
2. {steps[1]}{chr(10) + "3. " + steps[2] if len(steps) > 2 else ""}

The ONNX model can also be called directly with {model_inputs} (int, [batch, {sequence_length}]).
`provenance.json` records the ONNX model's hash, the Triton settings, library versions and the exporting
machine{", and " + ", ".join(f"`{k}`" for k in provided) if provided else ""}.

## Serve

```
tritonserver --model-repository=$PWD --model-control-mode=explicit --load-model={ensemble}
```

The server's Python environment needs `numpy` and `tokenizers` (the Python-backend steps import them); the ONNX
model needs Triton's onnxruntime backend (in the NGC `tritonserver` container). Loading the ensemble loads its
steps.

## Query

```python
import numpy as np
import tritonclient.http as http

client = http.InferenceServerClient("127.0.0.1:8000")
texts = np.array([[b"A man is playing a guitar."], [b"A woman reads."]], dtype=object)  # [batch, 1]
request = http.InferInput("{ENSEMBLE_TEXT_INPUT}", texts.shape, "BYTES")
request.set_data_from_numpy(texts)
result = client.infer("{ensemble}", [request])
print(result.as_numpy("{output_names[0]}").shape)
```
"""


@dataclass(frozen=True)
class _Entry:
    """One top-level entry of the repository being written: a model folder or a file."""

    name: str
    populate: Callable[[Path], None]  # writes the entry at the path it is given


def _write_repository_entries(repository: Path, entries: list[_Entry], *, overwrite: bool) -> None:
    """Write several top-level entries of `repository` all or nothing.

    Everything is built in one hidden staging folder inside the repository first; only when all of it is
    complete are the entries renamed into place (existing ones, with overwrite, moved aside first). A failure
    while moving puts back what was there before.
    """
    staging = Path(tempfile.mkdtemp(prefix=".workbench-export.", suffix=".partial", dir=repository))
    aside: Path | None = Path(tempfile.mkdtemp(prefix=".workbench-export.", suffix=".old", dir=repository))
    placed: list[tuple[Path, Path | None, bool]] = []  # (target, its old version moved aside, new one placed)
    try:
        for entry in entries:
            entry.populate(staging / entry.name)
        for entry in entries:
            target = repository / entry.name
            old = None
            if target.exists() or target.is_symlink():
                if not overwrite:  # appeared after the check at the start: never merge into it
                    raise FileExistsError(f"{target} appeared while the export was running")
                old = aside / entry.name  # type: ignore[operator]
                os.replace(target, old)
            placed.append((target, old, False))
            os.rename(staging / entry.name, target)
            placed[-1] = (target, old, True)
    except BaseException as exc:
        restored = True
        for target, old, is_new in reversed(placed):
            try:
                if is_new:
                    if target.is_dir() and not target.is_symlink():
                        shutil.rmtree(target)
                    else:
                        target.unlink(missing_ok=True)
                if old is not None:
                    os.replace(old, target)
            except OSError:
                restored = False
        if not restored:  # never delete the only copy of what was there before
            aside = None
            raise TritonExportError(
                f"Writing into {repository} failed ({exc}) and putting the previous entries back failed too.",
                fix=f"the previous entries are in the hidden .workbench-export.*.old folder in {repository}: move "
                "them back by hand",
            ) from exc
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)


def export_triton_ensemble(
    onnx_path: str | os.PathLike[str],
    repository: str | os.PathLike[str],
    tokenizer_dir: str | os.PathLike[str],
    config: TritonConfig = TritonConfig(),
    *,
    sequence_length: int,
    pooling: str | None = "mean",
    normalize: bool = True,
    embedding_output: str | None = None,
    provenance: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> TritonEnsembleResult:
    """Write a model repository that Triton serves as text in, embeddings (or the model's outputs) out.

    With `config.model_name` = NAME it writes, all or nothing:

    - `NAME/`: the ONNX model, as :func:`export_triton` writes it (dynamic batching, instances, warmup and
      accelerators from `config`);
    - `NAME_tokenizer/`: a Python-backend model that reads `tokenizer.json` (copied from `tokenizer_dir` into its
      version folder, with the other tokenizer files; nothing is downloaded) and turns `TEXT` (TYPE_STRING,
      dims [1]) into the model's integer inputs, truncated and padded to `sequence_length` so that requests
      from different clients batch together;
    - `NAME_pooling/` (with `pooling="mean"`): a Python-backend model (numpy only) that mean-pools the token
      embeddings where attention_mask is 1 and, with `normalize`, L2-normalises them: the workbench's own
      `mean_pooled_embeddings`;
    - `NAME_ensemble/`: platform "ensemble", wiring TEXT -> tokenizer -> model -> pooling -> EMBEDDING
      (without pooling, the model's outputs);
    - `README.md` and `provenance.json` at the repository root.

    Before anything is written: every config is rendered and parsed back strictly, the ensemble's wiring is
    checked (:func:`check_ensemble`), and the server's tokenization is checked to give exactly the workbench's
    ids on sample texts. Existing entries are refused without `overwrite`, before anything is written.

    Args:
        onnx_path: The .onnx model (inputs among input_ids, attention_mask, token_type_ids).
        repository: The model repository folder; created if missing.
        tokenizer_dir: The folder with the model's tokenizer files (a Hugging Face model folder).
        config: Name, batching, instances, warmup, accelerators; Python-backend steps always get one CPU
            instance and batch whatever is queued.
        sequence_length: Tokens per text (longer texts are truncated, shorter ones padded).
        pooling: "mean" for sentence embeddings, None to return the model's outputs as they are.
        normalize: L2-normalise the pooled embeddings.
        embedding_output: The output to pool; default `last_hidden_state`, else the only [batch, sequence,
            hidden] output.
        provenance: Extra provenance.json entries, for example `source_model`, `precision_plan` (a PrecisionPlan
            or its dict), `accuracy`, `speed`. Objects with to_dict() are converted. The keys the export writes
            itself (format, models, libraries, hardware, ...) cannot be replaced.
        overwrite: Replace existing model folders, README.md and provenance.json (only once all new ones are
            complete).

    Returns:
        The ensemble's name and every folder and file written.

    Raises:
        ModelSourceError: The ONNX file or the tokenizer folder is missing or invalid.
        TritonExportError: The model cannot be served this way (an input no tokenizer produces, no output to
            pool, a static batch dimension ...), the served tokenizer would differ from the workbench's, an entry
            exists and overwrite is False, or writing failed.
        ConfigError: Invalid arguments (config, sequence_length, pooling, provenance).
    """
    if not isinstance(config, TritonConfig):
        raise ConfigError(
            f"export_triton_ensemble() takes a TritonConfig, not {type(config).__name__}.",
            fix="pass TritonConfig(...) or TritonConfig.preset('cpu')",
        )
    if not _is_int(sequence_length) or sequence_length < 2:
        raise ConfigError(f"sequence_length must be an integer >= 2, got {sequence_length!r}.",
                          fix="pass the sequence length the model was measured at, for example 128")
    if pooling is not None and pooling not in POOLING_MODES:
        raise ConfigError(f"pooling must be one of {list(POOLING_MODES)} or None, got {pooling!r}.")
    if not isinstance(normalize, bool):
        raise ConfigError(f"normalize must be True or False, got {normalize!r}.")
    names = ensemble_model_names(config.model_name, pooling=pooling)
    repository = Path(repository)
    tokenizer_dir = Path(tokenizer_dir)
    if repository.exists() and not repository.is_dir():
        raise TritonExportError(f"The model repository {repository} is a file, not a folder.",
                                fix="pass a folder (it may already hold other models)")
    entry_names = [*names.values(), README_FILENAME, PROVENANCE_FILENAME]
    existing = [n for n in entry_names if (repository / n).exists() or (repository / n).is_symlink()]
    if existing and not overwrite:
        raise TritonExportError(
            f"{', '.join(str(repository / n) for n in existing)} already exist{'s' if len(existing) == 1 else ''} "
            "in the repository; nothing was changed.",
            fix="pass overwrite=True to replace them, or choose another TritonConfig.model_name (or repository)",
        )

    onnx = require("onnx", purpose="Exporting an ONNX model to Triton")
    pb2 = _model_config_pb2("Writing a Triton model config")
    path, model = _load_checked(onnx_path)
    model_cfg = _config_from_model(model, config, path, warmup_length=sequence_length)

    tokenizer_outputs: dict[str, int] = {}
    for tensor in model_cfg.input:
        type_name = pb2.DataType.Name(tensor.data_type)
        if tensor.name not in TOKENIZER_OUTPUTS or type_name not in _TOKENIZER_INTEGER_TYPES:
            raise TritonExportError(
                f"{path} takes input {tensor.name!r} ({type_name}), which a text tokenizer does not produce.",
                expected=f"inputs among {list(TOKENIZER_OUTPUTS)}, of type {' or '.join(_TOKENIZER_INTEGER_TYPES)}",
                fix="serve this model with export_triton() and tokenize on the client instead",
            )
        if list(tensor.dims) not in ([-1], [sequence_length]):
            raise TritonExportError(
                f"{path} input {tensor.name!r} has dims {list(tensor.dims)} after the batch dimension, which does "
                f"not take {sequence_length} tokens.",
                fix="export the model with a dynamic sequence axis, or pass that fixed length as sequence_length",
            )
        tokenizer_outputs[tensor.name] = tensor.data_type
    hidden = None
    if pooling is not None:
        hidden = _pick_embedding_output(model_cfg, embedding_output, path)
        tokenizer_outputs.setdefault("attention_mask", pb2.DataType.Value("TYPE_INT64"))
    plan = _tokenizer_plan(tokenizer_dir, list(tokenizer_outputs), sequence_length)

    tokenizer_cfg = _tokenizer_config(pb2, names["tokenizer"], config, tokenizer_outputs, sequence_length, plan)
    pooling_cfg = _pooling_config(pb2, names["pooling"], config, hidden, tokenizer_outputs["attention_mask"],
                                  normalize, sequence_length) if hidden is not None else None
    ensemble_cfg = _ensemble_config(pb2, names, config, tokenizer_cfg, model_cfg, pooling_cfg)
    configs = {names["tokenizer"]: tokenizer_cfg, names["model"]: model_cfg, names["ensemble"]: ensemble_cfg}
    if pooling_cfg is not None:
        configs[names["pooling"]] = pooling_cfg
    check_ensemble(ensemble_cfg, configs)
    texts = {name: _checked_text(cfg) for name, cfg in configs.items()}
    output_names = tuple(t.name for t in ensemble_cfg.output)

    record = _provenance_record(names=names, onnx_path=path, tokenizer_dir=tokenizer_dir,
                                tokenizer_json=plan.json_text, sequence_length=sequence_length, pooling=pooling,
                                normalize=normalize, config=config, provided=provenance)
    readme = _readme_text(names, sequence_length=sequence_length, pooling=pooling, normalize=normalize,
                          output_names=output_names, config=config, model_cfg=model_cfg,
                          provided=[k for k in record if k not in _COMPUTED_PROVENANCE_KEYS])
    onnx_files = _onnx_files_writer(onnx, model, path, config.version)

    def model_folder(name: str, populate_versions: Callable[[Path], None]) -> Callable[[Path], None]:
        def populate(folder: Path) -> None:
            folder.mkdir()
            (folder / CONFIG_FILENAME).write_text(texts[name], encoding="utf-8")
            populate_versions(folder)
        return populate

    def python_model(source: Path, extra: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
        def populate(folder: Path) -> None:
            version_dir = folder / str(config.version)
            version_dir.mkdir()
            shutil.copyfile(source, version_dir / "model.py")
            if extra is not None:
                extra(version_dir)
        return populate

    def tokenizer_files(version_dir: Path) -> None:
        (version_dir / "tokenizer.json").write_text(plan.json_text, encoding="utf-8")
        for name, source in plan.copies.items():
            shutil.copyfile(source, version_dir / name)

    def empty_version(folder: Path) -> None:
        (folder / str(config.version)).mkdir()  # Triton wants a version folder, even for an ensemble

    def text_file(content: str) -> Callable[[Path], None]:
        return lambda target: target.write_text(content, encoding="utf-8")

    import json

    from workbench.stages.triton_python import POOLING_MODEL, TOKENIZER_MODEL

    roles = {"model": onnx_files, "tokenizer": python_model(TOKENIZER_MODEL, tokenizer_files)}
    if pooling_cfg is not None:
        roles["pooling"] = python_model(POOLING_MODEL)
    roles["ensemble"] = empty_version
    entries = [_Entry(names[role], model_folder(names[role], populate)) for role, populate in roles.items()]
    entries.append(_Entry(README_FILENAME, text_file(readme)))
    entries.append(_Entry(PROVENANCE_FILENAME, text_file(json.dumps(record, indent=2, sort_keys=False) + "\n")))

    created_repository = not repository.exists()
    try:
        repository.mkdir(parents=True, exist_ok=True)
        _write_repository_entries(repository, entries, overwrite=overwrite)
    except WorkbenchError:
        _remove_if_empty(repository, created_repository)
        raise
    except OSError as exc:
        _remove_if_empty(repository, created_repository)
        raise TritonExportError(
            f"Writing the Triton ensemble into {repository} failed: {exc}. Nothing was moved into place.",
            fix="check free disk space and permissions on the repository; if another process created one of "
            f"{entry_names} meanwhile, remove it or pass overwrite=True",
        ) from exc
    except BaseException:
        _remove_if_empty(repository, created_repository)
        raise

    def result_for(name: str) -> TritonExportResult:
        model_dir = repository / name
        relative = sorted(p.relative_to(model_dir) for p in model_dir.rglob("*") if p.is_file())
        ordered = sorted(relative, key=lambda p: (p.name != CONFIG_FILENAME, len(p.parts), str(p)))
        return TritonExportResult(repository=repository, model_dir=model_dir, model_name=name,
                                  config_text=texts[name], files=tuple(model_dir / p for p in ordered))

    return TritonEnsembleResult(
        repository=repository,
        ensemble_name=names["ensemble"],
        models={role: result_for(names[role]) for role in roles},
        readme=repository / README_FILENAME,
        provenance=repository / PROVENANCE_FILENAME,
        sequence_length=sequence_length,
        output_names=output_names,
    )
