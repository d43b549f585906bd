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

:func:`engine_model` is the one engine-specific step: for a model file (or a Candidate) and a TritonConfig it
returns the model's ModelConfig and the function that writes its version folder, for ONNX models (Triton's
`onnxruntime` backend: `model.onnx`) and OpenVINO IR (the `openvino` backend: `model.xml` + `model.bin`, with the
backend's INFERENCE_NUM_THREADS / NUM_STREAMS / PERFORMANCE_HINT parameters). The ensemble export calls it.
"""

from __future__ import annotations

import html
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from workbench._lazy import require
from workbench.errors import (
    ConfigError,
    ModelSourceError,
    TritonExportError,
)
from workbench.triton.config import (
    CONFIG_FILENAME,
    ONNX_BACKEND,
    ONNX_MODEL_FILENAME,
    ONNX_PLATFORM,
    ONNX_TO_TRITON_DTYPE,
    OPENVINO_BACKEND,
    OPENVINO_MODEL_FILENAME,
    OPENVINO_TO_TRITON_DTYPE,
    OPENVINO_WEIGHTS_FILENAME,
    TritonConfig,
    _model_config_pb2,
)
from workbench.triton.writer import Entry, checked_text, write_repository

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from tritonclient.grpc import model_config_pb2


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
    _add_scheduling(pb2, cfg, config)
    if config.ort_gpu_tensorrt_fp16:
        accelerator = cfg.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
        accelerator.parameters["precision_mode"] = "FP16"
    if config.warmup:
        _add_warmup(cfg, config, warmup_length or config.warmup_sequence_length)
    return cfg


def _add_scheduling(pb2: Any, cfg: Any, config: TritonConfig) -> None:
    """Dynamic batching and the instance group, as `config` says."""
    if config.dynamic_batching:
        cfg.dynamic_batching.SetInParent()
        cfg.dynamic_batching.preferred_batch_size.extend(config.preferred_batch_sizes)
        cfg.dynamic_batching.max_queue_delay_microseconds = config.max_queue_delay_us
    cfg.instance_group.add(count=config.instance_count, kind=pb2.ModelInstanceGroup.Kind.Value(config.instance_kind))


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

    def folder(target: Path) -> None:
        target.mkdir()
        (target / CONFIG_FILENAME).write_text(config_text, encoding="utf-8")
        populate(target)

    write_repository(
        repository,
        [Entry(model_name, folder)],
        overwrite=overwrite,
        what=f"the Triton model folder {model_dir}",
        fix="check free disk space and permissions on the repository; if another process created "
        f"{model_dir} meanwhile, remove it or pass overwrite=True",
    )
    return written_model(repository, model_name, config_text)


def written_model(repository: Path, name: str, config_text: str) -> TritonExportResult:
    """The TritonExportResult of model folder `name` just written into `repository`: its files, config.pbtxt
    first, then by depth and name."""
    model_dir = repository / name
    relative = sorted(p.relative_to(model_dir) for p in model_dir.rglob("*") if p.is_file())
    ordered = sorted(relative, key=lambda p: (p.name != CONFIG_FILENAME, len(p.parts), str(p)))
    return TritonExportResult(
        repository=repository,
        model_dir=model_dir,
        model_name=name,
        config_text=config_text,
        files=tuple(model_dir / p for p in ordered),
    )


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
                f"{path}'s external data file {location!r} would collide with {target!r} in the Triton version folder.",
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
    text = checked_text(cfg)
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
    text = checked_text(cfg)

    def populate(folder: Path) -> None:
        version = folder / str(config.version)
        version.mkdir()
        shutil.copyfile(engine, version / TENSORRT_FILENAME)

    return _write_model_folder(repository, config.model_name, text, populate, overwrite=overwrite)


# --------------------------------------------------------------------------------------------------------------
# One model of any servable engine: its config and its version folder


def engine_model(
    model: Any,
    config: TritonConfig = TritonConfig(),
    *,
    engine: str | None = None,
    warmup_length: int | None = None,
) -> tuple[Any, Callable[[Path], None]]:
    """The Triton ModelConfig of a model, and the function that writes its version folder into a model folder.

    Args:
        model: A `workbench.engines.base.Candidate`, or a model file (.onnx, OpenVINO .xml with its .bin).
        config: Name, batching, instances, warmup; the OpenVINO fields for IR models.
        engine: The engine's registry name, for a file; default: the engine that loads files of its suffix.
        warmup_length: The size of variable dims in warmup samples (default config.warmup_sequence_length).

    Returns:
        (ModelConfig, populate): `populate(model_folder)` writes `<version>/` with the model's files
        (`model.onnx` [+ `model.onnx.data`], or `model.xml` + `model.bin`).

    Raises:
        ModelSourceError: The model file is missing or unreadable.
        TritonExportError: The model cannot be described in a Triton config, or its engine has no Triton export
            here (TensorRT engines: export_triton_engine).
        ConfigError: An option of `config` that does not apply to this engine's backend is set.
        MissingDependency: The engine's package (onnx, openvino) is not installed.
    """
    from workbench.engines.base import Candidate, check_float_precision, engine_for_path, get_engine

    if isinstance(model, Candidate):
        path, chosen = Path(model.path), get_engine(model.engine)
        if model.float_precision != "fp32":  # a runtime setting of the candidate: served as it was measured
            from dataclasses import replace

            check_float_precision(chosen, model.float_precision)
            config = replace(config, openvino_float_precision=model.float_precision)
    else:
        path = Path(model)
        chosen = get_engine(engine) if engine is not None else engine_for_path(path)
    build = _ENGINE_MODELS.get(chosen.name)
    if build is None:
        raise TritonExportError(
            f"{chosen.title} models ({path.name}) have no Triton model export here.",
            expected=f"a model of an engine among {sorted(_ENGINE_MODELS)}",
            fix="TensorRT engines: export_triton_engine(engine, onnx_path, repository)",
        )
    return build(path, config, warmup_length)


def _onnx_model(path: Path, config: TritonConfig, warmup_length: int | None) -> tuple[Any, Callable[[Path], None]]:
    onnx = require("onnx", purpose="Exporting an ONNX model to Triton")
    if config.openvino_threads is not None or config.openvino_streams is not None:
        raise ConfigError(
            "TritonConfig.openvino_threads / openvino_streams configure Triton's openvino backend; this is an ONNX "
            "model, served by the onnxruntime backend.",
            fix="leave them None for ONNX models, or serve the OpenVINO IR (model.xml) instead",
        )
    path, loaded = _load_checked(path)
    cfg = _config_from_model(loaded, config, path, warmup_length=warmup_length)
    return cfg, _onnx_files_writer(onnx, loaded, path, config.version)


def model_config_from_openvino(
    model_xml: str | os.PathLike[str], config: TritonConfig = TritonConfig(), *, warmup_length: int | None = None
) -> model_config_pb2.ModelConfig:
    """A complete Triton config for an OpenVINO IR served by Triton's `openvino` backend.

    Inputs and outputs take the names the backend matches them by (`get_any_name()` of each port), their data
    types and dims from the IR; the first dimension must be dynamic (the batch). The backend's parameters carry
    `config.openvino_hint`, `openvino_threads` and `openvino_streams`. The backend does not auto-complete configs,
    so this one is complete.

    Raises:
        ModelSourceError: The IR (or its .bin) is missing or unreadable.
        TritonExportError: A static batch dimension, a tensor of unknown rank or an unsupported data type.
        ConfigError: `config` asks for onnxruntime's TensorRT accelerator.
    """
    from workbench.engines.openvino import INFERENCE_PRECISIONS, read_model

    if config.ort_gpu_tensorrt_fp16:
        raise ConfigError(
            "TritonConfig.ort_gpu_tensorrt_fp16 configures onnxruntime's TensorRT accelerator; an OpenVINO IR is "
            "served by the openvino backend.",
            fix="set ort_gpu_tensorrt_fp16=False for OpenVINO models",
        )
    path = Path(model_xml)
    model = read_model(path)
    pb2 = _model_config_pb2("Writing a Triton model config")
    cfg = pb2.ModelConfig(name=config.model_name, backend=OPENVINO_BACKEND, max_batch_size=config.max_batch_size)
    problems: list[str] = []
    static_batch: list[str] = []
    for kind, ports, target in (("input", model.inputs, cfg.input), ("output", model.outputs, cfg.output)):
        for port in ports:
            name = port.get_any_name()
            element = port.get_element_type().get_type_name()
            data_type = OPENVINO_TO_TRITON_DTYPE.get(element)
            shape = port.get_partial_shape()
            if data_type is None:
                problems.append(
                    f"{kind} {name!r} has element type {element}, which Triton's openvino backend does not convert"
                )
            if shape.rank.is_dynamic:
                problems.append(f"{kind} {name!r} has an unknown rank")
                continue
            dims = [d.get_length() if d.is_static else -1 for d in shape]
            if not dims or dims[0] != -1:
                static_batch.append(f"{kind} {name!r} has shape {shape}, whose first dimension is not dynamic")
                continue
            if data_type is None:
                continue
            tensor = target.add(name=name, data_type=pb2.DataType.Value(data_type))
            if dims[1:]:
                tensor.dims.extend(dims[1:])
            else:
                tensor.dims.append(1)
                tensor.reshape.SetInParent()
    if static_batch:
        raise TritonExportError(
            f"{path} has a static batch dimension: {'; '.join(static_batch)}. With max_batch_size > 0 Triton "
            "sends batches of 1..max_batch_size.",
            fix="convert the ONNX model exported with a dynamic batch axis (export_onnx() does by default), and do "
            "not reshape the IR to a fixed batch before saving it",
        )
    if problems:
        raise TritonExportError(
            f"{path} cannot be described in a Triton config: {'; '.join(problems)}.",
            expected=f"tensors of known rank with element types among {sorted(OPENVINO_TO_TRITON_DTYPE)}",
        )
    _add_scheduling(pb2, cfg, config)
    parameters = {
        "PERFORMANCE_HINT": config.openvino_hint,
        "INFERENCE_NUM_THREADS": config.openvino_threads,
        "NUM_STREAMS": config.openvino_streams,
        # always: OpenVINO's own default is bf16 on CPUs with bfloat16 instructions
        "INFERENCE_PRECISION_HINT": INFERENCE_PRECISIONS[config.openvino_float_precision],
    }
    for key, value in parameters.items():
        if value is not None:
            cfg.parameters[key].string_value = str(value)
    if config.warmup:
        _add_warmup(cfg, config, warmup_length or config.warmup_sequence_length)
    return cfg


def _openvino_model(path: Path, config: TritonConfig, warmup_length: int | None) -> tuple[Any, Callable[[Path], None]]:
    cfg = model_config_from_openvino(path, config, warmup_length=warmup_length)
    weights = path.with_suffix(".bin")

    def populate(folder: Path) -> None:
        from workbench.engines.openvino import read_model

        version_dir = folder / str(config.version)
        version_dir.mkdir()
        # OpenVINO finds the weights by the graph's stem: both files take the names the backend looks for
        shutil.copyfile(weights, version_dir / OPENVINO_WEIGHTS_FILENAME)
        shutil.copyfile(path, version_dir / OPENVINO_MODEL_FILENAME)
        read_model(version_dir / OPENVINO_MODEL_FILENAME)  # the copy is a complete, readable model

    return cfg, populate


#: Engine name -> the builder of its (ModelConfig, populate).
_ENGINE_MODELS: dict[str, Callable[[Path, TritonConfig, int | None], tuple[Any, Callable[[Path], None]]]] = {
    "onnxruntime": _onnx_model,
    "openvino": _openvino_model,
}


def export_triton_model(
    model: Any,
    repository: str | os.PathLike[str],
    config: TritonConfig = TritonConfig(),
    *,
    engine: str | None = None,
    overwrite: bool = False,
) -> TritonExportResult:
    """Write one model of any servable engine (ONNX, OpenVINO IR) into a Triton repository, config checked strictly.

    Args:
        model: A Candidate or a model file (see :func:`engine_model`).
        repository: The model repository folder; created if missing.
        config: Name, batching, instances and the engine's backend options.
        engine: The engine's registry name, for a file; default: by its suffix.
        overwrite: Replace an existing `<repository>/<model_name>` (only once the new folder is complete).
    """
    if not isinstance(config, TritonConfig):
        raise ConfigError(f"export_triton_model() takes a TritonConfig, not {type(config).__name__}.")
    repository = Path(repository)
    model_dir = repository / config.model_name
    if (model_dir.exists() or model_dir.is_symlink()) and not overwrite:
        raise TritonExportError(
            f"Triton model folder {model_dir} already exists; nothing was changed.",
            fix="pass overwrite=True to replace it, or choose another TritonConfig.model_name",
        )
    cfg, populate = engine_model(model, config, engine=engine)
    return _write_model_folder(repository, config.model_name, checked_text(cfg), populate, overwrite=overwrite)
