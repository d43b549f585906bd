"""Precision stage: INT8 (dynamic, static with calibration) and FP16 conversions.

Every converter takes `keep_fp32`, the node names to leave in FP32; a PrecisionPlan
(workbench.stages.precision.plan) is the one
place those names come from.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from workbench._files import check_output_file
from workbench._lazy import require
from workbench.config import StageConfig, check_choice
from workbench.errors import QuantizationError

WEIGHT_TYPES = ("int8", "uint8")
_QUANTIZED_OP_TYPES = (
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "QAttention",
    "QLinearMatMul",
    "ConvInteger",
    "DynamicQuantizeLinear",
    "QuantizeLinear",
    "DequantizeLinear",
    "QGemm",
)


@dataclass(frozen=True)
class DynamicQuantConfig(StageConfig):
    """Dynamic INT8 quantization: weights quantized offline, activation scales computed per run.

    Attributes:
        per_channel: One scale per output channel of each weight (much more accurate on MiniLM: min cosine
            0.97 vs 0.87 per-tensor, and faster on this CPU).
        weight_type: "int8" (signed, recommended with VNNI) or "uint8".
        reduce_range: Quantize weights to 7 bits, for CPUs without VNNI that saturate in int16 accumulation.
        op_types: Op types to quantize; empty means all that onnxruntime supports.
    """

    per_channel: bool = True
    weight_type: str = "int8"
    reduce_range: bool = False
    op_types: tuple[str, ...] = ()

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "cpu_int8_dynamic": {},
        "cpu_int8_dynamic_per_tensor": {"per_channel": False},
    }

    def __post_init__(self) -> None:
        check_choice(self, "weight_type", WEIGHT_TYPES)


@dataclass(frozen=True)
class QuantizeResult:
    """A quantized model and what was quantized."""

    path: Path
    config: StageConfig
    method: str
    quantized_ops: dict[str, int]
    size_mb: float
    seconds: float
    keep_fp32: tuple[str, ...] = ()
    calibration: Any = None  # CalibrationResult for static INT8
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "method": self.method,
            "config": self.config.to_dict(),
            "quantized_ops": self.quantized_ops,
            "size_mb": self.size_mb,
            "seconds": self.seconds,
            "keep_fp32": list(self.keep_fp32),
            "calibration": self.calibration.to_dict() if self.calibration is not None else None,
            "notes": list(self.notes),
        }

    def _repr_html_(self) -> str:
        ops = ", ".join(f"{k} {v}" for k, v in self.quantized_ops.items()) or "none"
        kept = f", {len(self.keep_fp32)} nodes kept in FP32" if self.keep_fp32 else ""
        notes = "".join(f"<br><i>{note}</i>" for note in self.notes)
        return (
            f"<b>{self.method}</b>: <code>{self.path}</code>, {self.size_mb:.1f} MB, quantized ops: {ops}{kept}; "
            f"{self.seconds:.1f} s.{notes}"
        )


@contextlib.contextmanager
def _published(output_path: Path, converter: str, model_path: Any) -> Iterator[Path]:
    """A staged model path in a private folder beside `output_path`; published there only if the block succeeds.

    onnxruntime's own exceptions become QuantizationError (a full disk DiskFullError); the workbench's errors
    (bad data, a pinned node that is not there) pass through. The staging folder (hidden, removed by the next
    run into the folder if this process is killed) is removed either way; everything onnxruntime writes while
    converting goes into it.
    """
    from workbench._files import disk_full_error, is_disk_full, staging_directory
    from workbench.errors import WorkbenchError
    from workbench.onnx.io import save_onnx

    onnx = require("onnx", purpose="Quantization")
    with staging_directory(output_path.parent, "quantize") as staging:
        staged = staging / "model.onnx"
        try:
            yield staged
        except WorkbenchError:
            raise
        except Exception as exc:
            if is_disk_full(exc, staging, needed=Path(model_path).stat().st_size):
                raise disk_full_error(exc, output_path, f"Quantizing {model_path} into") from exc
            raise QuantizationError(
                f"onnxruntime's {converter} failed on {model_path}: {type(exc).__name__}: {exc}",
                fix="check that the model runs in onnxruntime; restrict op_types to ('MatMul',) on unusual graphs",
            ) from exc
        save_onnx(onnx.load(str(staged)), output_path)


def _check_node_names(model: Any, names: tuple[str, ...], what: str) -> None:
    known = {node.name for node in model.graph.node}
    missing = [n for n in names if n not in known]
    if missing:
        raise QuantizationError(
            f"{what} names nodes that are not in the graph: {missing[:5]}{' ...' if len(missing) > 5 else ''}.",
            expected="node names from the model being quantized (they change after fusion)",
            fix="list the graph's node names with onnx.load(path).graph.node, or pick them from the node table",
        )


def quantize_dynamic(
    model_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    config: DynamicQuantConfig = DynamicQuantConfig(),
    *,
    keep_fp32: tuple[str, ...] = (),
) -> QuantizeResult:
    """Quantize weights to INT8 with dynamic activation quantization.

    Works on fused graphs (the DefaultTensorType option lets onnxruntime type the fused ops' outputs).
    The input file is not modified; the output appears only if quantization succeeds.

    Args:
        model_path: The FP32 model (fused or not).
        output_path: Where to write the INT8 model.
        config: Quantization options.
        keep_fp32: Node names to leave in FP32 (from a PrecisionPlan).

    Raises:
        QuantizationError: onnxruntime failed, or `keep_fp32` names nodes that are not in the graph.
    """
    onnx = require("onnx", purpose="INT8 quantization")
    quantization = require("onnxruntime.quantization", purpose="INT8 quantization")
    from workbench.onnx.io import load_onnx, model_size_mb, stage_model

    check_output_file(output_path, what="The quantized model's path")
    started = time.perf_counter()
    model = load_onnx(model_path)
    _check_node_names(model, keep_fp32, "keep_fp32")
    weight_type = quantization.QuantType.QInt8 if config.weight_type == "int8" else quantization.QuantType.QUInt8
    output_path = Path(output_path)
    with _published(output_path, "quantize_dynamic", model_path) as staged:
        # onnxruntime writes <input>-inferred.onnx beside the model it is given: give it a link in the staging
        # folder, so that nothing is written beside the input
        staged_input = stage_model(model_path, staged.parent / "input")
        quantization.quantize_dynamic(
            str(staged_input),
            str(staged),
            op_types_to_quantize=list(config.op_types) or None,
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            weight_type=weight_type,
            nodes_to_exclude=list(keep_fp32),
            # Fused ops (Attention, SkipLayerNormalization...) have no type inference in onnx; without this
            # quantization fails on fused graphs.
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
    quantized = onnx.load(str(output_path), load_external_data=False)
    counts = Counter(node.op_type for node in quantized.graph.node)
    return QuantizeResult(
        path=output_path,
        config=config,
        method="int8 dynamic " + ("per-channel" if config.per_channel else "per-tensor"),
        quantized_ops={op: counts[op] for op in _QUANTIZED_OP_TYPES if counts[op]},
        size_mb=model_size_mb(output_path),
        seconds=time.perf_counter() - started,
        keep_fp32=tuple(keep_fp32),
    )


# ----------------------------------------------------------------------------------------------------------
# Static INT8 with calibration
# ----------------------------------------------------------------------------------------------------------

QUANT_FORMATS = ("QDQ", "QOperator")
ACTIVATION_TYPES = ("uint8", "int8")


@dataclass(frozen=True)
class StaticQuantConfig(StageConfig):
    """Static INT8: weights and activations quantized with ranges calibrated on real data.

    Attributes:
        quant_format: "QDQ" (QuantizeLinear/DequantizeLinear pairs around FP32 ops: what TensorRT and most
            runtimes consume) or "QOperator" (integer ops such as QLinearMatMul).
        activation_type: "uint8" (recommended on x86 CPUs: int8 activations measured 2-3x slower here) or
            "int8" (TensorRT).
        weight_type: "int8" or "uint8".
        per_channel: One weight scale per output channel.
        activation_symmetric: Symmetric activation ranges (TensorRT requires it).
        weight_symmetric: Symmetric weight ranges.
        reduce_range: 7-bit weights for CPUs without VNNI.
        op_types: Op types to quantize; empty: all that onnxruntime supports.
        calibration: How activation ranges are measured.
        preprocess: Run onnxruntime's quant_pre_process (symbolic shape inference) first. Without it,
            quantizing a fused graph silently quantizes only the weights.
    """

    quant_format: str = "QDQ"
    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = True
    activation_symmetric: bool = False
    weight_symmetric: bool = True
    reduce_range: bool = False
    op_types: tuple[str, ...] = ()
    calibration: Any = None  # CalibrationConfig; None means MinMax defaults
    preprocess: bool = True

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "cpu_int8_static": {},
        "cpu_int8_static_qoperator": {"quant_format": "QOperator"},
        "tensorrt_int8_qdq": {
            "activation_type": "int8",
            "activation_symmetric": True,
            "weight_symmetric": True,
            "per_channel": True,
            "calibration": {"method": "Entropy"},
        },
    }

    def __post_init__(self) -> None:
        from workbench.stages.precision.calibrate import CalibrationConfig

        check_choice(self, "quant_format", QUANT_FORMATS)
        check_choice(self, "activation_type", ACTIVATION_TYPES)
        check_choice(self, "weight_type", WEIGHT_TYPES)
        if self.calibration is None:
            object.__setattr__(self, "calibration", CalibrationConfig())
        elif isinstance(self.calibration, dict):  # from JSON
            object.__setattr__(self, "calibration", CalibrationConfig.from_dict(self.calibration))
        elif not isinstance(self.calibration, CalibrationConfig):
            from workbench.errors import ConfigError

            raise ConfigError(f"StaticQuantConfig.calibration must be a CalibrationConfig, got {self.calibration!r}.")

    def to_dict(self) -> dict[str, Any]:
        values = super().to_dict()
        values["calibration"] = self.calibration.to_dict()
        return values


def _quant_type(quantization: Any, name: str) -> Any:
    return quantization.QuantType.QInt8 if name == "int8" else quantization.QuantType.QUInt8


def preprocess_for_quantization(model_path: str | os.PathLike[str], output_path: str | os.PathLike[str]) -> Path:
    """onnxruntime's quant_pre_process with the options that work on transformer graphs.

    auto_merge=True (the default fails with "Incomplete symbolic shape inference" on MiniLM), and no graph
    optimization, so node names stay those of the input model (a PrecisionPlan pins nodes by name).
    """
    from workbench.onnx.io import load_onnx
    from workbench.onnx.shapes import symbolic_shape_inference

    shape_inference = require("onnxruntime.quantization.shape_inference", purpose="Quantization pre-processing")
    target = Path(output_path).resolve()
    try:
        # our own symbolic inference (auto_merge, writes no file), then onnxruntime's ONNX-shape step
        inferred = symbolic_shape_inference(load_onnx(model_path))
        shape_inference.quant_pre_process(inferred, str(target), skip_optimization=True, skip_symbolic_shape=True)
    except Exception as exc:
        raise QuantizationError(
            f"Pre-processing {model_path} for quantization failed: {type(exc).__name__}: {exc}",
            fix="fold constants first (workbench.stages.surgery.edits.FoldConstants), or set preprocess=False",
        ) from exc
    return target


def quantize_static(
    model_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    calibration_feeds: Any,
    config: StaticQuantConfig = StaticQuantConfig(),
    *,
    keep_fp32: tuple[str, ...] = (),
    cache_dir: str | os.PathLike[str] | None = None,
    progress: Any = True,
) -> QuantizeResult:
    """Quantize weights and activations to INT8 with ranges calibrated on `calibration_feeds`.

    Pre-processes the model (unless disabled), calibrates it (or reuses cached ranges for the same model, data
    and method), then quantizes with onnxruntime. The input file is not modified; the output appears only if
    every step succeeds.

    Args:
        model_path: The FP32 model (fused or not).
        output_path: Where to write the INT8 model.
        calibration_feeds: Feed dicts of real data (workbench.data.tokenize_batches).
        config: Format, types and calibration method.
        keep_fp32: Node names to leave unquantized (from a PrecisionPlan).
        cache_dir: Folder of cached calibration ranges.
        progress: While calibrating: True a progress bar, False none, or a ProgressCallback (see calibrate).

    Raises:
        DataError: The calibration data is empty or does not match the model's inputs.
        QuantizationError: A pinned node is not in the graph, or onnxruntime failed.
    """
    onnx = require("onnx", purpose="INT8 quantization")
    quantization = require("onnxruntime.quantization", purpose="INT8 quantization")
    from workbench.onnx.io import load_onnx, model_size_mb, stage_model
    from workbench.stages.precision.calibrate import calibrate, validate_feeds

    check_output_file(output_path, what="The quantized model's path")
    started = time.perf_counter()
    validate_feeds(list(calibration_feeds or []), model_path)
    _check_node_names(load_onnx(model_path), keep_fp32, "keep_fp32")
    output_path = Path(output_path)
    with _published(output_path, "quantize_static", model_path) as staged:
        if config.preprocess:
            prepared = preprocess_for_quantization(model_path, staged.parent / "preprocessed.onnx")
        else:  # onnxruntime writes <input>-inferred.onnx beside its input: a link in the staging folder
            prepared = stage_model(model_path, staged.parent / "input")
        calibration = calibrate(
            prepared,
            list(calibration_feeds),
            config.calibration,
            cache_dir=cache_dir,
            progress=progress,
            work_dir=staged.parent,
        )
        ranges = calibration.copy_ranges(staged.parent / "ranges.json")  # the verified ranges, not the cache file
        quantization.quantize_static(
            str(prepared),
            str(staged),
            calibration_data_reader=None,  # the ranges come from the calibration cache
            quant_format=getattr(quantization.QuantFormat, config.quant_format),
            op_types_to_quantize=list(config.op_types) or None,
            per_channel=config.per_channel,
            reduce_range=config.reduce_range,
            activation_type=_quant_type(quantization, config.activation_type),
            weight_type=_quant_type(quantization, config.weight_type),
            nodes_to_exclude=list(keep_fp32),
            calibrate_method=getattr(quantization.CalibrationMethod, config.calibration.method),
            calibration_cache_path=str(ranges),
            extra_options={
                "ActivationSymmetric": config.activation_symmetric,
                "WeightSymmetric": config.weight_symmetric,
                "DefaultTensorType": onnx.TensorProto.FLOAT,
            },
        )
    quantized = onnx.load(str(output_path), load_external_data=False)
    counts = Counter(node.op_type for node in quantized.graph.node)
    notes = []
    if config.quant_format == "QDQ" and counts["QuantizeLinear"] <= 2 * max(1, counts["MatMul"] // 10):
        notes.append(
            "Only a few QuantizeLinear nodes: activations are mostly not quantized "
            "(was the model pre-processed?). The model will be accurate but not faster."
        )
    return QuantizeResult(
        path=output_path,
        config=config,
        method=f"int8 static {config.quant_format} {config.calibration.method}",
        quantized_ops={op: counts[op] for op in _QUANTIZED_OP_TYPES if counts[op]},
        size_mb=model_size_mb(output_path),
        seconds=time.perf_counter() - started,
        keep_fp32=tuple(keep_fp32),
        calibration=calibration,
        notes=tuple(notes),
    )


# ----------------------------------------------------------------------------------------------------------
# FP16
# ----------------------------------------------------------------------------------------------------------

FP16_MAX = 65504.0
FP16_SMALLEST_SUBNORMAL = 2.0**-24


@dataclass(frozen=True)
class Fp16Config(StageConfig):
    """FP16 conversion with onnxruntime.transformers' float16 converter.

    Attributes:
        keep_io_types: Keep graph inputs and outputs FP32 (callers keep feeding and reading float32).
        op_block_list: Op types to keep in FP32; empty: onnxruntime's default block list.
        overflow_scan: Before converting, run the FP32 model on the scan data and keep in FP32 every node whose
            activations overflow FP16 (|x| > 65504) or underflow it (too many non-zeros below 2^-24).
        underflow_fraction: Share of non-zero values below FP16's smallest subnormal that counts as underflow.
    """

    keep_io_types: bool = True
    op_block_list: tuple[str, ...] = ()
    overflow_scan: bool = True
    underflow_fraction: float = 0.01

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"gpu_fp16": {}, "gpu_fp16_no_scan": {"overflow_scan": False}}


@dataclass(frozen=True)
class OverflowScan:
    """Nodes whose FP32 activations do not fit FP16, with the statistics that show it."""

    flagged: dict[str, str]  # node name -> reason
    max_abs: dict[str, float]  # node name -> largest |activation| seen

    def to_dict(self) -> dict[str, Any]:
        return {"flagged": self.flagged, "max_abs": self.max_abs}


def fp16_overflow_scan(
    model_path: str | os.PathLike[str], feeds: Any, *, underflow_fraction: float = 0.01
) -> OverflowScan:
    """Run the FP32 model on `feeds` with every float tensor exposed; flag nodes FP16 cannot represent."""
    from workbench.engines.onnxruntime import run_model
    from workbench.onnx.io import load_onnx
    from workbench.stages.surgery.edits import AddOutputs, tensor_types

    model = load_onnx(model_path)
    types = tensor_types(model)
    producer = {out: node.name for node in model.graph.node for out in node.output if out}
    names = tuple(name for name in producer if types.get(name, (0,))[0] == 1)  # float32 node outputs
    exposed = AddOutputs(names).apply(model) if names else model
    results, _ = run_model(exposed, list(feeds), list(names))
    flagged: dict[str, str] = {}
    max_abs: dict[str, float] = {}
    for name in names:
        values = np.concatenate([np.abs(r[name]).ravel() for r in results]).astype(np.float64)
        node = producer[name]
        largest = float(values.max(initial=0.0))
        max_abs[node] = max(max_abs.get(node, 0.0), largest)
        nonzero = values[values > 0]
        if largest > FP16_MAX:
            flagged[node] = f"overflow: |x| reaches {largest:.3g} > {FP16_MAX:g}"
        elif nonzero.size and (nonzero < FP16_SMALLEST_SUBNORMAL).mean() > underflow_fraction:
            share = float((nonzero < FP16_SMALLEST_SUBNORMAL).mean())
            flagged[node] = f"underflow: {share:.1%} of non-zero values below {FP16_SMALLEST_SUBNORMAL:.2g}"
    return OverflowScan(flagged, max_abs)


def convert_fp16(
    model_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    config: Fp16Config = Fp16Config(),
    *,
    keep_fp32: tuple[str, ...] = (),
    scan_feeds: Any = None,
) -> QuantizeResult:
    """Convert a model to FP16, keeping the nodes in `keep_fp32` (and, with a scan, the overflowing ones) FP32.

    On the CPU provider FP16 runs mostly in FP32 with casts around it: no speed-up there, and its accuracy says
    little about GPU FP16. The conversion is for GPU deployments.

    Raises:
        QuantizationError: A pinned node is not in the graph, or the converter failed.
        DataError: overflow_scan is on and the scan data is empty or does not match the model.
    """
    onnx = require("onnx", purpose="FP16 conversion")
    onnx_model = require("onnxruntime.transformers.onnx_model", purpose="FP16 conversion")
    from workbench.onnx.io import load_onnx, model_size_mb, save_onnx
    from workbench.onnx.shapes import with_inferred_types
    from workbench.stages.precision.calibrate import validate_feeds

    check_output_file(output_path, what="The FP16 model's path")
    started = time.perf_counter()
    model = load_onnx(model_path)
    _check_node_names(model, keep_fp32, "keep_fp32")
    block = list(keep_fp32)
    notes = []
    scan = None
    if config.overflow_scan:
        feeds = list(scan_feeds or [])
        validate_feeds(feeds, model_path, what="FP16 overflow-scan data")
        scan = fp16_overflow_scan(model_path, feeds, underflow_fraction=config.underflow_fraction)
        block += [name for name in scan.flagged if name not in block]
        notes += [f"kept FP32 by the overflow scan: {name} ({why})" for name, why in scan.flagged.items()]
    try:
        # types from our own symbolic inference: the converter's would write a file into the cwd when incomplete
        wrapper = onnx_model.OnnxModel(with_inferred_types(model))
        wrapper.convert_float_to_float16(
            use_symbolic_shape_infer=False,
            keep_io_types=config.keep_io_types,
            op_block_list=list(config.op_block_list) or None,
            node_block_list=block or None,
        )
    except Exception as exc:
        raise QuantizationError(
            f"FP16 conversion of {model_path} failed: {type(exc).__name__}: {exc}",
            fix="keep the failing op types in FP32 with Fp16Config(op_block_list=...)",
        ) from exc
    converted = wrapper.model
    save_onnx(converted, output_path)
    counts = Counter(node.op_type for node in converted.graph.node)
    fp16_initializers = sum(1 for t in converted.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16)
    return QuantizeResult(
        path=Path(output_path),
        config=config,
        method="fp16",
        quantized_ops={"Cast": counts["Cast"], "fp16 initializers": fp16_initializers},
        size_mb=model_size_mb(output_path),
        seconds=time.perf_counter() - started,
        keep_fp32=tuple(block),
        calibration=scan,
        notes=tuple(notes),
    )
