"""Precision stage: dynamic INT8 on tiny models, plain and fused; excluded nodes stay FP32."""

from __future__ import annotations

import hashlib

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from workbench.errors import QuantizationError  # noqa: E402
from workbench.stages.precision import DynamicQuantConfig, quantize_dynamic  # noqa: E402


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("preset", ["cpu_int8_dynamic", "cpu_int8_dynamic_per_tensor"])
def test_dynamic_quantization_quantizes_matmuls_and_leaves_input_alone(tiny_bert_onnx, tmp_path, preset):
    before = _digest(tiny_bert_onnx)
    result = quantize_dynamic(tiny_bert_onnx, tmp_path / "int8.onnx", DynamicQuantConfig.preset(preset))
    assert _digest(tiny_bert_onnx) == before
    ops = [n.op_type for n in onnx.load(str(result.path)).graph.node]
    assert ops.count("MatMulInteger") + ops.count("DynamicQuantizeMatMul") >= 12  # 2 layers x 6 MatMuls
    assert result.quantized_ops and result.size_mb > 0
    assert result.method.endswith("per-channel" if preset == "cpu_int8_dynamic" else "per-tensor")


def test_excluded_nodes_stay_fp32(tiny_bert_onnx, tmp_path):
    matmuls = [n.name for n in onnx.load(str(tiny_bert_onnx)).graph.node if n.op_type == "MatMul"]
    keep = tuple(matmuls[:2])
    result = quantize_dynamic(tiny_bert_onnx, tmp_path / "int8.onnx", DynamicQuantConfig(nodes_to_exclude=keep))
    remaining = {n.name for n in onnx.load(str(result.path)).graph.node if n.op_type == "MatMul"}
    assert set(keep) <= remaining


def test_unknown_excluded_node_is_an_error_and_writes_nothing(tiny_bert_onnx, tmp_path):
    with pytest.raises(QuantizationError, match="not in the graph"):
        quantize_dynamic(tiny_bert_onnx, tmp_path / "int8.onnx", DynamicQuantConfig(nodes_to_exclude=("nope",)))
    assert list(tmp_path.iterdir()) == []
