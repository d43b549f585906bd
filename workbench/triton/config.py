"""Triton model configs: TritonConfig (the export's settings), and config.pbtxt rendered and parsed strictly with
Triton's own protobuf schema (``tritonclient.grpc.model_config_pb2``)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from workbench._lazy import require
from workbench.config import StageConfig, check_choice
from workbench.engines.base import FLOAT_PRECISIONS
from workbench.errors import ConfigError, TritonExportError

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from tritonclient.grpc import model_config_pb2


INSTANCE_KINDS = ("KIND_CPU", "KIND_GPU", "KIND_AUTO")
#: Triton's openvino backend: PERFORMANCE_HINT values it accepts (openvino_backend/src/openvino.cc).
OPENVINO_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")

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
OPENVINO_BACKEND = "openvino"
OPENVINO_MODEL_FILENAME = "model.xml"  # the backend's default; the weights are model.bin beside it
OPENVINO_WEIGHTS_FILENAME = "model.bin"
#: OpenVINO element type name -> Triton data type (the types Triton's openvino backend converts).
OPENVINO_TO_TRITON_DTYPE: dict[str, str] = {
    "boolean": "TYPE_BOOL",
    "u8": "TYPE_UINT8",
    "u16": "TYPE_UINT16",
    "u32": "TYPE_UINT32",
    "u64": "TYPE_UINT64",
    "i8": "TYPE_INT8",
    "i16": "TYPE_INT16",
    "i32": "TYPE_INT32",
    "i64": "TYPE_INT64",
    "f16": "TYPE_FP16",
    "f32": "TYPE_FP32",
    "f64": "TYPE_FP64",
}
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
        openvino_threads: OpenVINO models: INFERENCE_NUM_THREADS of each instance (None: OpenVINO's choice, all
            cores). With several instances give each a share of the cores.
        openvino_streams: OpenVINO models: NUM_STREAMS (None: what the hint chooses; 1 for LATENCY).
        openvino_hint: OpenVINO models: PERFORMANCE_HINT, "LATENCY" (one request at a time, the lowest latency)
            or "THROUGHPUT" / "CUMULATIVE_THROUGHPUT" (parallel streams for many concurrent requests).
        openvino_float_precision: OpenVINO models: what floating-point ops run in, always written as
            INFERENCE_PRECISION_HINT: "fp32" ("f32"; without it OpenVINO picks bf16 on CPUs that have it, and the
            served model would not be the one measured) or "bf16" (a Candidate whose float_precision is bf16).
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
    openvino_threads: int | None = None
    openvino_streams: int | None = None
    openvino_hint: str = "LATENCY"
    openvino_float_precision: str = "fp32"

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        # One ONNX Runtime session uses every core with its own intra-op threads; more CPU instances compete for
        # the same cores. A short queue delay keeps single-request latency close to the bare model's.
        "cpu": {"instance_kind": "KIND_CPU", "instance_count": 1, "max_batch_size": 8, "max_queue_delay_us": 100},
        # A GPU gains most from larger batches, which are worth a slightly longer wait to form.
        "gpu": {"instance_kind": "KIND_GPU", "instance_count": 1, "max_batch_size": 32, "max_queue_delay_us": 500},
        # The same through onnxruntime's TensorRT execution provider in FP16, warmed up so the engine is built
        # at load time rather than on the first request.
        "gpu_tensorrt_fp16": {
            "instance_kind": "KIND_GPU",
            "instance_count": 1,
            "max_batch_size": 32,
            "max_queue_delay_us": 500,
            "ort_gpu_tensorrt_fp16": True,
            "warmup": True,
        },
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
        check_choice(self, "openvino_hint", OPENVINO_HINTS)
        check_choice(self, "openvino_float_precision", FLOAT_PRECISIONS)
        for field in ("openvino_threads", "openvino_streams"):
            if getattr(self, field) is not None:
                _check_int(self, field, minimum=1)
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


ENSEMBLE_TEXT_INPUT = "TEXT"
ENSEMBLE_EMBEDDING_OUTPUT = "EMBEDDING"
POOLING_MODES = ("mean",)
TOKENIZER_SUFFIX = "_tokenizer"
POOLING_SUFFIX = "_pooling"
ENSEMBLE_SUFFIX = "_ensemble"
