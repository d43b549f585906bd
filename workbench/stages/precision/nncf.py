"""INT8 with NNCF for OpenVINO: post-training static quantization of the FP32 model, calibrated on the same feeds
as the other precision methods, with a PrecisionPlan's FP32 pins as NNCF's `ignored_scope` and its smoothing as
NNCF's SmoothQuant alphas.

Why NNCF and not onnxruntime's QDQ models: OpenVINO 2026.4 fails to compile a QDQ model written by
onnxruntime's `quantize_static` (`MultiplyPartialTransformation` on the attention-scaling Mul fed by a scalar
DequantizeLinear), while NNCF quantizes the FP32 model the way OpenVINO's CPU plugin runs fastest.

Node names: OpenVINO's ONNX frontend names each op after its ONNX node, so a pin given by the ONNX node name of the
FP32 model being quantized (the plain export, which OpenVINO fuses itself) names the same op in NNCF's graph.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from workbench.config import StageConfig, check_choice, check_positive
from workbench.errors import ConfigError, QuantizationError

NNCF_PRESETS = ("mixed", "performance")
MODEL_TYPES = ("transformer", "none")
TARGET_DEVICES = ("ANY", "CPU", "CPU_SPR", "GPU", "NPU")
#: SmoothingConfig op type -> NNCF's SmoothQuant alpha field (AdvancedSmoothQuantParameters). NNCF's other field,
#: `convolution`, stays off (-1): the workbench smooths transformer MatMuls only.
SMOOTHQUANT_FIELDS = {"MatMul": "matmul"}


@dataclass(frozen=True)
class NncfQuantConfig(StageConfig):
    """NNCF post-training INT8 quantization (`nncf.quantize`) of an OpenVINO model.

    SmoothQuant is not set here: a PrecisionPlan's `smoothing` sets it (see :func:`smoothquant_alphas`), as it does
    for the other INT8 methods.

    Attributes:
        scheme: NNCF's QuantizationPreset: "mixed" (symmetric weights, asymmetric activations: NNCF's default
            for transformers) or "performance" (symmetric both).
        model_type: "transformer" (NNCF's transformer patterns: which ops stay FP32, SmoothQuant allowed) or
            "none".
        subset_size: Most calibration samples used (NNCF's default is 300); the feeds given bound it too.
        fast_bias_correction: NNCF's fast bias correction (the default); False runs the slower, more accurate
            BiasCorrection.
        bias_correction: Whether to correct biases at all.
        target_device: NNCF's target device ("ANY", "CPU", ...): which ops its hardware config quantizes.
    """

    scheme: str = "mixed"
    model_type: str = "transformer"
    subset_size: int = 300
    fast_bias_correction: bool = True
    bias_correction: bool = True
    target_device: str = "ANY"

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "cpu_int8_nncf": {},
        "cpu_int8_nncf_performance": {"scheme": "performance"},
    }

    def __post_init__(self) -> None:
        check_choice(self, "scheme", NNCF_PRESETS)
        check_choice(self, "model_type", MODEL_TYPES)
        check_choice(self, "target_device", TARGET_DEVICES)
        check_positive(self, "subset_size")


def smoothquant_alphas(smoothing: Any) -> dict[str, float]:
    """NNCF's SmoothQuant alphas (AdvancedSmoothQuantParameters fields) for a plan's SmoothingConfig.

    None (no smoothing in the plan) switches SmoothQuant off (-1 for every layer type). Otherwise each layer type
    the SmoothingConfig smooths gets its alpha (`alpha_for(op_type)`), and the others -1. The workbench's
    "Attention" op type (onnxruntime's fused attention) has no counterpart in OpenVINO's graph, whose attention is
    plain MatMuls: smoothing "MatMul" covers them.
    """
    alphas = {"convolution": -1.0, **dict.fromkeys(SMOOTHQUANT_FIELDS.values(), -1.0)}
    if smoothing is None:
        return alphas
    for op_type, name in SMOOTHQUANT_FIELDS.items():
        if op_type in smoothing.op_types:
            alphas[name] = float(smoothing.alpha_for(op_type))
    return alphas


def _dataset(nncf: Any, feeds: Sequence[Mapping[str, np.ndarray]], model: Any) -> Any:
    """An nncf.Dataset of feed dicts, each restricted to the model's inputs (checked by name)."""
    from workbench.errors import DataError

    inputs = {name for port in model.inputs for name in port.get_names()}
    items = []
    for index, feed in enumerate(feeds):
        if not isinstance(feed, Mapping) or not feed:
            raise DataError(f"Calibration feed {index} is not a non-empty dict of input name -> array.")
        missing = sorted(inputs - set(feed))
        if missing:
            raise DataError(
                f"Calibration feed {index} lacks the model inputs {missing}.",
                expected=f"feeds with {sorted(inputs)}",
                fix="tokenize with the model's input names: tokenize_batches(..., input_names=...)",
            )
        items.append({name: np.asarray(feed[name]) for name in inputs})
    return nncf.Dataset(items)


@contextlib.contextmanager
def _quiet_nncf() -> Iterator[None]:
    """NNCF logs every step at INFO and draws progress bars; keep only its warnings while it works."""
    logger = logging.getLogger("nncf")
    previous = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(previous)


def check_op_names(model: Any, names: Sequence[str], what: str = "keep_fp32") -> None:
    """Raise QuantizationError unless every name is an op of the OpenVINO model (its ONNX node names)."""
    known = {op.get_friendly_name() for op in model.get_ordered_ops()}
    missing = [n for n in names if n not in known]
    if missing:
        raise QuantizationError(
            f"{what} names ops that are not in the OpenVINO model: {missing[:5]}{' ...' if len(missing) > 5 else ''}.",
            expected="ONNX node names of the FP32 model being quantized (the plain export: fusion renames nodes)",
            fix="pick names from onnx.load(model).graph.node of that model, or from ir_precisions(model)",
        )


def quantize_nncf(
    model_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    calibration_feeds: Sequence[Mapping[str, np.ndarray]],
    config: NncfQuantConfig = NncfQuantConfig(),
    *,
    keep_fp32: Sequence[str] = (),
    smoothing: Any = None,
) -> Any:
    """Quantize an FP32 model to INT8 OpenVINO IR with NNCF; returns a QuantizeResult.

    Args:
        model_path: The FP32 model: an .onnx file (OpenVINO reads it; op names are its node names) or an IR.
        output_path: The INT8 IR's .xml (its .bin beside it). Both appear only if everything succeeded.
        calibration_feeds: Feed dicts of real data (the same feeds the other methods calibrate on).
        config: NNCF's settings.
        keep_fp32: Op names (ONNX node names) NNCF leaves unquantized: its `ignored_scope`.
        smoothing: A SmoothingConfig for NNCF's SmoothQuant (None: no SmoothQuant).

    Raises:
        DataError: No calibration feeds, or feeds without the model's inputs.
        QuantizationError: A pinned name is not an op of the model, or NNCF failed.
        MissingDependency: openvino or nncf is not installed (the `openvino` extra).
    """
    from workbench.engines.openvino import read_model, require_nncf, save_model
    from workbench.errors import DataError, WorkbenchError
    from workbench.stages.precision.quantize import QuantizeResult

    feeds = list(calibration_feeds or [])
    if not feeds:
        raise DataError(
            "NNCF INT8 needs calibration feeds to measure activation ranges.",
            fix="pass calibration_feeds=tokenize_batches(tokenizer, calibration_sentences, ...)",
        )
    if Path(output_path).suffix.lower() != ".xml":
        raise ConfigError(
            f"NNCF INT8 writes an OpenVINO IR (.xml + .bin), not {Path(output_path).name}.",
            fix="pass an output path such as out/model_int8.xml",
        )
    nncf = require_nncf("INT8 quantization with NNCF")
    started = time.perf_counter()
    model = read_model(model_path)
    check_op_names(model, keep_fp32)
    dataset = _dataset(nncf, feeds, model)
    alphas = smoothquant_alphas(smoothing)
    advanced = nncf.AdvancedQuantizationParameters(
        smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(**alphas),
        disable_bias_correction=not config.bias_correction,
    )
    try:
        with _quiet_nncf():
            quantized = nncf.quantize(
                model,
                dataset,
                preset=getattr(nncf.QuantizationPreset, config.scheme.upper()),
                target_device=getattr(nncf.TargetDevice, config.target_device),
                subset_size=min(config.subset_size, len(feeds)),
                fast_bias_correction=config.fast_bias_correction,
                model_type=nncf.ModelType.TRANSFORMER if config.model_type == "transformer" else None,
                ignored_scope=nncf.IgnoredScope(names=list(keep_fp32), validate=True) if keep_fp32 else None,
                advanced_parameters=advanced,
            )
    except WorkbenchError:
        raise
    except Exception as exc:
        raise QuantizationError(
            f"NNCF could not quantize {model_path}: {type(exc).__name__}: {exc}",
            fix="check that OpenVINO runs the FP32 model (OpenVINORunner), and the feeds",
        ) from exc
    path = save_model(quantized, output_path)
    counts = Counter(op.get_type_name() for op in quantized.get_ordered_ops())
    from workbench.engines.openvino import ir_precisions

    int8_ops = sum(1 for p in ir_precisions(quantized).values() if p == "int8")
    notes = [f"SmoothQuant alphas {alphas}" if smoothing is not None else "SmoothQuant off"]
    return QuantizeResult(
        path=path,
        config=config,
        method=f"int8 nncf {config.scheme}",
        quantized_ops={"FakeQuantize": counts["FakeQuantize"], "int8 compute ops": int8_ops},
        size_mb=(path.stat().st_size + path.with_suffix(".bin").stat().st_size) / 1e6,
        seconds=time.perf_counter() - started,
        keep_fp32=tuple(keep_fp32),
        notes=tuple(notes),
    )
