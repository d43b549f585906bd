"""Weight-only quantization for decoders: INT4 / INT8 weights with FP32 activations.

Generation at batch 1 is bound by reading weights, not by arithmetic, so storing them in 4 or 8 bits is what
speeds a decoder up on a CPU (and shrinks it), while activations stay FP32. Two converters:

- onnxruntime's MatMulNBits quantizer (`onnxruntime.quantization.matmul_nbits_quantizer`): every MatMul with a
  constant weight becomes a `MatMulNBits` node (block-wise, symmetric or not); the result runs in onnxruntime.
- NNCF's weight compression (`nncf.compress_weights`) of the model read by OpenVINO: an OpenVINO IR (.xml/.bin)
  for the OpenVINO engine. Only where `openvino` and `nncf` are installed.

Both take `keep_fp32`, the node names a PrecisionPlan leaves in FP32 (the pins).
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from workbench._lazy import require
from workbench.config import StageConfig
from workbench.errors import ConfigError, QuantizationError
from workbench.stages.precision.quantize import (
    QuantizeResult,
    _check_node_names,
    _published,
)

WEIGHT_ONLY_BITS = {
    "int4_weight_only": 4,
    "int8_weight_only": 8,
    "nncf_int4_weight_only": 4,
    "nncf_int8_weight_only": 8,
}
ACCURACY_LEVELS = (0, 1, 2, 3, 4)


@dataclass(frozen=True)
class WeightOnlyQuantConfig(StageConfig):
    """Weight-only quantization settings (the bit width comes from the plan's method).

    Attributes:
        block_size: Weights per quantization block along the input dimension (a power of two >= 16); smaller
            blocks are more accurate and slightly larger.
        symmetric: Symmetric blocks (no zero point).
        accuracy_level: MatMulNBits' compute type on the CPU: 4 (the default) quantizes the activations of each
            block to INT8 and uses integer dot products; 0 (unset) and 1 compute in FP32. Measured here (onnxruntime
            1.32, one 768 x 50257 MatMul, one token, 2 threads, interleaved): FP32 49.5 ms; INT4 level 0 32.1 ms,
            level 4 2.8 ms; INT8 level 0 1734 ms (a slow fallback: 35x slower than FP32), level 4 23.4 ms. Level 4
            cost almost no accuracy (output cosine vs FP32: INT8 0.999986 -> 0.999972, INT4 0.996330 ->
            0.996312). Ignored by NNCF.
        ratio: NNCF only: the share of weights compressed to 4 bits (the rest to 8 bits).
    """

    block_size: int = 32
    symmetric: bool = True
    accuracy_level: int = 4
    ratio: float = 1.0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "cpu_weight_only": {},
        "cpu_weight_only_fp32_compute": {"accuracy_level": 0},
        "cpu_weight_only_block128": {"block_size": 128},
    }

    def __post_init__(self) -> None:
        size = self.block_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 16 or size & (size - 1):
            raise ConfigError(f"WeightOnlyQuantConfig.block_size must be a power of two >= 16, got {size!r}.")
        if self.accuracy_level not in ACCURACY_LEVELS:
            raise ConfigError(
                f"WeightOnlyQuantConfig.accuracy_level must be one of {list(ACCURACY_LEVELS)}, got "
                f"{self.accuracy_level!r}."
            )
        if not isinstance(self.symmetric, bool):
            raise ConfigError(f"WeightOnlyQuantConfig.symmetric must be True or False, got {self.symmetric!r}.")
        if not 0.0 < float(self.ratio) <= 1.0:
            raise ConfigError(f"WeightOnlyQuantConfig.ratio must be in (0, 1], got {self.ratio!r}.")


def weight_matmuls(model: Any) -> list[str]:
    """Names of the MatMul nodes whose second input is a constant weight (what the quantizer converts)."""
    initializers = {t.name for t in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in initializers]


def quantize_weight_only(
    model_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    config: WeightOnlyQuantConfig = WeightOnlyQuantConfig(),
    *,
    bits: int = 4,
    keep_fp32: tuple[str, ...] = (),
) -> QuantizeResult:
    """Quantize every MatMul weight to `bits` (4 or 8) with onnxruntime's MatMulNBits quantizer.

    The input file is not modified; the output appears only if quantization succeeds. Metadata (the decoder
    spec) is kept.

    Args:
        model_path: The FP32 model (fused or not).
        output_path: Where to write the quantized model.
        config: Block size, symmetry, compute accuracy level.
        bits: 4 or 8.
        keep_fp32: MatMul node names to leave in FP32 (a PrecisionPlan's pins).

    Raises:
        QuantizationError: onnxruntime failed, `keep_fp32` names nodes that are not in the graph, or the model has
            no MatMul weight to quantize.
    """
    if bits not in (4, 8):
        raise ConfigError(f"Weight-only quantization takes bits 4 or 8, got {bits!r}.")
    nbits = require("onnxruntime.quantization.matmul_nbits_quantizer", purpose="Weight-only quantization")
    from workbench.onnx.io import (
        EXTERNAL_DATA_THRESHOLD_BYTES,
        load_onnx,
        model_size_mb,
    )

    started = time.perf_counter()
    model = load_onnx(model_path)
    _check_node_names(model, tuple(keep_fp32), "keep_fp32")
    targets = [n for n in weight_matmuls(model) if n not in set(keep_fp32)]
    if not weight_matmuls(model):
        raise QuantizationError(
            f"{model_path} has no MatMul with a constant weight, so there is nothing to quantize.",
            fix="fuse the decoder first (fuse_decoder rewrites Gemm projections as MatMul)",
        )
    output_path = Path(output_path)
    # the quantizer logs a line per node at INFO (its module configures the root logger at import): quiet its
    # own logger for the call, then put its level back
    quantizer_logger = logging.getLogger(nbits.__name__)
    level = quantizer_logger.level
    quantizer_logger.setLevel(logging.WARNING)
    try:
        with _published(output_path, "MatMulNBits quantizer", model_path) as staged:
            quantizer = nbits.MatMulNBitsQuantizer(
                model,
                bits=bits,
                block_size=config.block_size,
                is_symmetric=config.symmetric,
                accuracy_level=config.accuracy_level or None,
                nodes_to_exclude=list(keep_fp32),
                op_types_to_quantize=("MatMul",),
            )
            quantizer.process()
            # models near protobuf's 2 GB limit keep their weights in an external file (save_onnx does the same)
            large = model_size_mb(model_path) * 1e6 >= EXTERNAL_DATA_THRESHOLD_BYTES
            quantizer.model.save_model_to_file(str(staged), use_external_data_format=large)
    finally:
        quantizer_logger.setLevel(level)
    onnx = require("onnx", purpose="Weight-only quantization")
    quantized = onnx.load(str(output_path), load_external_data=False)
    counts = Counter(node.op_type for node in quantized.graph.node)
    symmetry = "symmetric" if config.symmetric else "asymmetric"
    notes = [
        f"{len(targets)} MatMul weights to {bits} bits (block {config.block_size}, {symmetry}, accuracy "
        + f"level {config.accuracy_level})"
    ]
    if bits == 8 and config.accuracy_level in (0, 1):
        notes.append(
            "8-bit MatMulNBits with FP32 compute (accuracy level 0/1) runs a slow fallback on onnxruntime's "
            "CPU provider (measured 35x slower than FP32 here): use accuracy_level 4"
        )
    gemms = counts["Gemm"]
    if gemms:
        notes.append(
            f"{gemms} Gemm nodes were left in FP32 (the quantizer converts MatMul only): fuse with "
            "fuse_decoder first, which rewrites them as MatMul"
        )
    return QuantizeResult(
        path=output_path,
        config=config,
        method=f"int{bits} weight-only (MatMulNBits)",
        quantized_ops={"MatMulNBits": counts["MatMulNBits"], "MatMul (FP32)": counts["MatMul"]},
        size_mb=model_size_mb(output_path),
        seconds=time.perf_counter() - started,
        keep_fp32=tuple(keep_fp32),
        notes=tuple(notes),
    )


def nncf_available() -> tuple[bool, str]:
    """(Whether NNCF weight compression can run here, why not)."""
    import importlib.util

    missing = [name for name in ("openvino", "nncf") if importlib.util.find_spec(name) is None]
    if missing:
        return False, f"{' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} not installed"
    return True, "openvino and nncf are installed"


def compress_weights_nncf(
    model_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    config: WeightOnlyQuantConfig = WeightOnlyQuantConfig(),
    *,
    bits: int = 4,
    keep_fp32: tuple[str, ...] = (),
) -> QuantizeResult:
    """Compress the weights of an ONNX model read by OpenVINO with NNCF, and save an OpenVINO IR (.xml + .bin).

    INT4 uses NNCF's symmetric or asymmetric group-wise mode with `config.block_size` as group size and
    `config.ratio` of the weights in 4 bits; INT8 is per-channel. `keep_fp32` names go to NNCF's ignored scope
    (node names of the model as OpenVINO reads it; names that are not there are ignored, as NNCF's
    `validate=False` does).

    Raises:
        MissingDependency: openvino or nncf is not installed.
        QuantizationError: NNCF or OpenVINO failed.
    """
    from workbench.engines.openvino import require_nncf, require_openvino

    ov = require_openvino("NNCF weight compression")
    nncf = require_nncf("NNCF weight compression")
    import shutil
    import tempfile

    started = time.perf_counter()
    output_path = Path(output_path)
    if output_path.suffix != ".xml":
        raise ConfigError(
            f"NNCF weight compression writes an OpenVINO IR; {output_path.name} does not end in .xml.",
            fix="pass an output path such as int4_nncf/model.xml",
        )
    if bits == 4:
        mode = nncf.CompressWeightsMode.INT4_SYM if config.symmetric else nncf.CompressWeightsMode.INT4_ASYM
        options: dict[str, Any] = {"group_size": config.block_size, "ratio": config.ratio}
    else:
        mode, options = nncf.CompressWeightsMode.INT8_ASYM, {}
    output_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".nncf.", suffix=".partial", dir=output_path.parent))
    try:
        model = ov.Core().read_model(str(model_path))
        if keep_fp32:
            options["ignored_scope"] = nncf.IgnoredScope(names=list(keep_fp32), validate=False)
        compressed = nncf.compress_weights(model, mode=mode, **options)
        ov.save_model(compressed, str(staging / output_path.name))
        # the weights first, so that a reader never finds an .xml whose .bin is missing
        os.replace(staging / output_path.with_suffix(".bin").name, output_path.with_suffix(".bin"))
        os.replace(staging / output_path.name, output_path)
    except Exception as exc:
        raise QuantizationError(
            f"NNCF weight compression of {model_path} failed: {type(exc).__name__}: {exc}",
            fix="check that OpenVINO reads the model (openvino.Core().read_model)",
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    size = sum(p.stat().st_size for p in (output_path, output_path.with_suffix(".bin")) if p.exists()) / 1e6
    return QuantizeResult(
        path=output_path,
        config=config,
        method=f"int{bits} weight-only (NNCF)",
        quantized_ops={},
        size_mb=size,
        seconds=time.perf_counter() - started,
        keep_fp32=tuple(keep_fp32),
    )
