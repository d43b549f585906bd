"""Precision stage: dynamic INT8 on tiny models, plain and fused; excluded nodes stay FP32."""

from __future__ import annotations

import hashlib

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from workbench.errors import QuantizationError  # noqa: E402
from workbench.stages.precision.quantize import DynamicQuantConfig, quantize_dynamic  # noqa: E402


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
    result = quantize_dynamic(tiny_bert_onnx, tmp_path / "int8.onnx", DynamicQuantConfig(), keep_fp32=keep)
    remaining = {n.name for n in onnx.load(str(result.path)).graph.node if n.op_type == "MatMul"}
    assert set(keep) <= remaining


def test_unknown_excluded_node_is_an_error_and_writes_nothing(tiny_bert_onnx, tmp_path):
    with pytest.raises(QuantizationError, match="not in the graph"):
        quantize_dynamic(tiny_bert_onnx, tmp_path / "int8.onnx", DynamicQuantConfig(), keep_fp32=("nope",))
    assert list(tmp_path.iterdir()) == []


# --- static INT8, FP16 and the PrecisionPlan -------------------------------------------------------------

import numpy as np  # noqa: E402

from workbench.errors import DataError  # noqa: E402
from workbench.stages.precision.calibrate import CalibrationConfig  # noqa: E402
from workbench.stages.precision.plan import PrecisionPlan  # noqa: E402
from workbench.stages.precision.quantize import Fp16Config, StaticQuantConfig, convert_fp16, quantize_static  # noqa: E402


def _quantized_nodes(path) -> set[str]:
    """Nodes of op types onnxruntime quantizes in QDQ format whose inputs come from DequantizeLinear."""
    from onnxruntime.quantization.registry import QDQRegistry

    model = onnx.load(str(path))
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    return {n.name for n in model.graph.node if n.op_type in QDQRegistry and any(i in dequantized for i in n.input)}


@pytest.mark.parametrize("preset", ["cpu_int8_static", "cpu_int8_static_qoperator", "tensorrt_int8_qdq"])
def test_static_quantization_quantizes_activations(fused_tiny, tmp_path, preset):
    path, feeds = fused_tiny
    result = quantize_static(
        path,
        tmp_path / "int8.onnx",
        feeds,
        StaticQuantConfig.preset(preset),
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    ops = [n.op_type for n in onnx.load(str(result.path)).graph.node]
    if preset == "cpu_int8_static_qoperator":
        assert ops.count("QLinearMatMul") >= 4
    else:  # activations quantized too, not only weights (the silent failure without pre-processing)
        assert ops.count("QuantizeLinear") >= 8 and not result.notes
    assert result.calibration is not None and not result.calibration.cache_hit
    import onnxruntime

    onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"]).run(None, feeds[0])


def test_plan_pins_exactly_those_nodes_to_fp32(fused_tiny, tmp_path):
    path, feeds = fused_tiny
    plan = PrecisionPlan.preset("cpu_int8_static")
    everything = _quantized_nodes(
        plan.convert(
            path, tmp_path / "all.onnx", calibration_feeds=feeds, cache_dir=tmp_path / "cache", progress=False
        ).path
    )
    assert len(everything) == 6  # per layer: attention output, FFN up and down MatMuls (QKV live in Attention)
    pins = sorted(everything)[::2]
    pinned_plan = PrecisionPlan.from_json(plan.pin(pins, note="test").to_json())
    assert pinned_plan.keep_fp32 == tuple(pins)
    result = pinned_plan.convert(
        path, tmp_path / "pinned.onnx", calibration_feeds=feeds, cache_dir=tmp_path / "cache", progress=False
    )
    assert result.calibration.cache_hit  # same model, data and method: ranges reused
    assert _quantized_nodes(result.path) == everything - set(pins)


def test_unknown_pinned_node_is_an_error_and_writes_nothing(fused_tiny, tmp_path):
    path, feeds = fused_tiny
    plan = PrecisionPlan.preset("cpu_int8_static").pin(["no_such_node"])
    with pytest.raises(QuantizationError, match="not in the graph"):
        plan.convert(path, tmp_path / "out" / "int8.onnx", calibration_feeds=feeds, cache_dir=tmp_path / "cache")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


@pytest.mark.parametrize("bad", ["empty", "names", "dtypes"])
def test_bad_calibration_data_leaves_no_model(fused_tiny, tmp_path, bad):
    path, feeds = fused_tiny
    data = {
        "empty": [],
        "names": [{"ids": f["input_ids"]} for f in feeds],
        "dtypes": [{k: v.astype("int32") for k, v in f.items()} for f in feeds],
    }[bad]
    with pytest.raises(DataError):
        quantize_static(path, tmp_path / "int8.onnx", data, cache_dir=tmp_path / "cache", progress=False)
    assert not (tmp_path / "int8.onnx").exists()
    assert not any(p.name.endswith(".partial") for p in tmp_path.iterdir())


def test_fp16_keeps_io_float32_and_blocks_pinned_nodes(fused_tiny, tmp_path):
    path, feeds = fused_tiny
    model = onnx.load(str(path))
    pinned = next(n.name for n in model.graph.node if n.op_type == "Attention")
    result = (
        PrecisionPlan.preset("gpu_fp16").pin([pinned]).convert(path, tmp_path / "fp16.onnx", calibration_feeds=feeds)
    )
    converted = onnx.load(str(result.path))
    assert converted.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64
    assert converted.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert result.quantized_ops["fp16 initializers"] > 0 and pinned in result.keep_fp32
    attention = next(n for n in converted.graph.node if n.name == pinned)
    weights = {t.name: t.data_type for t in converted.graph.initializer}
    assert weights[attention.input[1]] == onnx.TensorProto.FLOAT  # the pinned node's weights stay FP32
    import onnxruntime

    out = onnxruntime.InferenceSession(str(result.path), providers=["CPUExecutionProvider"]).run(None, feeds[0])[0]
    assert out.dtype == np.float32 and np.isfinite(out).all()


def test_overflow_scan_flags_nodes_beyond_fp16(tmp_path):
    """A graph that multiplies by 1e6 overflows FP16; the scan keeps exactly that node in FP32."""
    from onnx import TensorProto, helper, numpy_helper

    from workbench.stages.precision.quantize import fp16_overflow_scan

    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "big"], ["scaled"], name="scale_up"),
            helper.make_node("Mul", ["scaled", "small"], ["y"], name="scale_down"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [
            numpy_helper.from_array(np.array(1e6, np.float32), "big"),
            numpy_helper.from_array(np.array(1e-6, np.float32), "small"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "m.onnx"))
    feeds = [{"x": np.full((2, 4), 3.0, np.float32)}]
    scan = fp16_overflow_scan(tmp_path / "m.onnx", feeds)
    assert set(scan.flagged) == {"scale_up"} and "overflow" in scan.flagged["scale_up"]
    result = convert_fp16(tmp_path / "m.onnx", tmp_path / "fp16.onnx", Fp16Config(), scan_feeds=feeds)
    assert "scale_up" in result.keep_fp32 and result.notes


def test_plan_json_round_trip_and_presets():
    for name in PrecisionPlan.PRESETS:
        plan = PrecisionPlan.preset(name).pin(["a", "b"], reason="sensitivity", note="costs 0.01 cosine")
        again = PrecisionPlan.from_json(plan.to_json())
        assert again == plan and again.keep_fp32 == ("a", "b") and again.nodes["a"].reason == "sensitivity"
    assert PrecisionPlan.preset("tensorrt_int8_qdq").options.calibration == CalibrationConfig(method="Entropy")
    assert PrecisionPlan.preset("cpu_int8_dynamic").unpin(["x"]).nodes == {}


def test_a_plan_shows_its_exceptions_or_says_every_node_follows_the_default():
    plain = PrecisionPlan.preset("cpu_int8_dynamic")._repr_html_()
    assert plain.endswith("every node at int8.") and "except" not in plain and "No exceptions" not in plain
    pinned = PrecisionPlan.preset("cpu_int8_dynamic").pin(["a"], note="user")._repr_html_()
    assert "every node at int8 except these 1:" in pinned and "<code>a</code>" in pinned
