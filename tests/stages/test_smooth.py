"""SmoothQuant: the smoothed FP32 model computes the same thing, node names stay, and INT8 gets more accurate."""

from __future__ import annotations

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from workbench.engines.onnxruntime import max_output_difference  # noqa: E402
from workbench.errors import ConfigError, DataError  # noqa: E402
from workbench.stages.precision.plan import PrecisionPlan  # noqa: E402
from workbench.stages.precision.smooth import SmoothingConfig, smooth_activations  # noqa: E402


def test_smoothing_preserves_outputs_and_names(fused_tiny, tmp_path):
    path, feeds = fused_tiny
    before = path.read_bytes()
    result = smooth_activations(path, tmp_path / "smoothed.onnx", feeds, SmoothingConfig(alpha=0.75))
    assert path.read_bytes() == before
    original, smoothed = onnx.load(str(path)), onnx.load(str(result.path))
    assert len(result.smoothed) == sum(
        n.op_type in ("MatMul", "Attention") and n.input[1] in {t.name for t in original.graph.initializer}
        for n in original.graph.node
    )
    assert {n.name for n in original.graph.node} <= {n.name for n in smoothed.graph.node}
    assert sum(n.op_type == "Mul" and n.name.endswith("_smooth") for n in smoothed.graph.node) == len(result.smoothed)
    assert max_output_difference(original, smoothed, feeds) < 1e-4
    assert result.largest_scale > 1.0


def test_plan_with_smoothing_round_trips_and_pins_the_mul_too(fused_tiny, tmp_path):
    from dataclasses import replace

    path, feeds = fused_tiny
    pinned = next(n.name for n in onnx.load(str(path)).graph.node if n.op_type == "MatMul")
    plan = replace(PrecisionPlan.preset("cpu_int8_static"), smoothing=SmoothingConfig()).pin([pinned])
    assert PrecisionPlan.from_json(plan.to_json()) == plan
    result = plan.convert(
        path, tmp_path / "int8.onnx", calibration_feeds=feeds, cache_dir=tmp_path / "cache", progress=False
    )
    assert any("smoothed the inputs" in note for note in result.notes)
    assert f"{pinned}_smooth" in result.keep_fp32 and pinned in result.keep_fp32
    model = onnx.load(str(result.path))
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    node = next(n for n in model.graph.node if n.name == pinned)
    assert not any(i in dequantized for i in node.input), "a pinned node must read FP32 tensors"


def test_smoothing_needs_calibration_data(fused_tiny, tmp_path):
    from dataclasses import replace

    path, _ = fused_tiny
    with pytest.raises(DataError, match="calibration"):
        replace(PrecisionPlan.preset("cpu_int8_dynamic"), smoothing=SmoothingConfig()).convert(
            path, tmp_path / "x.onnx"
        )
    with pytest.raises(ConfigError):
        SmoothingConfig(alpha=1.5)
