"""SmoothQuant's scale folds into a LayerNorm's gamma and beta where only smoothed nodes read its output, and stays
a Mul where anything else (a residual Add) does; either way the FP32 model computes the same thing."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from onnx import TensorProto, helper, numpy_helper

from workbench.engines.onnxruntime import max_output_difference
from workbench.stages.precision.plan import PrecisionPlan
from workbench.stages.precision.smooth import SmoothingConfig, smooth_activations

HIDDEN = 16


def _feeds(names: tuple[str, ...], count: int = 4) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    feeds = []
    for _ in range(count):
        feed = {}
        for name in names:
            x = rng.normal(size=(2, 5, HIDDEN)).astype(np.float32)
            x[..., 3] *= 40.0  # an outlier channel, what smoothing is for
            feed[name] = x
        feeds.append(feed)
    return feeds


def _layer_norm_model(path, *, skip: bool, residual: bool):
    """x (and skip) -> LayerNorm -> MatMul q, MatMul k [-> + the LayerNorm output: a residual]."""
    rng = np.random.default_rng(1)
    weights = [
        numpy_helper.from_array(rng.normal(size=(HIDDEN, n)).astype(np.float32), f"w_{name}")
        for name, n in (("q", HIDDEN), ("k", HIDDEN))
    ]
    gamma = numpy_helper.from_array((1.0 + 0.1 * rng.normal(size=HIDDEN)).astype(np.float32), "gamma")
    beta = numpy_helper.from_array((0.1 * rng.normal(size=HIDDEN)).astype(np.float32), "beta")
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", HIDDEN])]
    if skip:
        inputs.append(helper.make_tensor_value_info("skip", TensorProto.FLOAT, ["batch", "seq", HIDDEN]))
        norm = helper.make_node(
            "SkipLayerNormalization",
            ["x", "skip", "gamma", "beta"],
            ["y"],
            name="ln",
            domain="com.microsoft",
            epsilon=1e-5,
        )
    else:
        norm = helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["y"], name="ln", axis=-1, epsilon=1e-5)
    nodes = [
        norm,
        helper.make_node("MatMul", ["y", "w_q"], ["q"], name="query"),
        helper.make_node("MatMul", ["y", "w_k"], ["k"], name="key"),
    ]
    outputs = {"q": HIDDEN, "k": HIDDEN}
    if residual:
        nodes.append(helper.make_node("Add", ["y", "q"], ["out"], name="residual"))
        outputs = {"out": HIDDEN, "k": HIDDEN}
    graph = helper.make_graph(
        nodes,
        "ln",
        inputs,
        [helper.make_tensor_value_info(o, TensorProto.FLOAT, ["batch", "seq", n]) for o, n in outputs.items()],
        initializer=[*weights, gamma, beta],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.microsoft", 1)] if skip else [])
    model = helper.make_model(graph, opset_imports=opsets)
    onnx.save(model, str(path))
    return path, _feeds(("x", "skip") if skip else ("x",))


@pytest.mark.parametrize("skip", [False, True], ids=["LayerNormalization", "SkipLayerNormalization"])
def test_scale_folds_into_the_layer_norm_when_only_smoothed_nodes_read_it(tmp_path, skip):
    path, feeds = _layer_norm_model(tmp_path / "model.onnx", skip=skip, residual=False)
    result = smooth_activations(path, tmp_path / "smoothed.onnx", feeds, SmoothingConfig(alpha=0.75))
    original, smoothed = onnx.load(str(path)), onnx.load(str(result.path))
    assert set(result.smoothed) == set(result.folded) == {"query", "key"}
    assert result.muls == {}
    assert not [n for n in smoothed.graph.node if n.op_type == "Mul"], "a folded scale inserts no Mul"
    assert len(smoothed.graph.node) == len(original.graph.node)
    assert result.largest_scale > 1.0
    gamma = next(n for n in smoothed.graph.node if n.name == "ln").input[2 if skip else 1]
    assert gamma != "gamma" and "gamma" not in {t.name for t in smoothed.graph.initializer}
    assert max_output_difference(original, smoothed, feeds) < 1e-4


def test_a_residual_reader_keeps_the_mul(tmp_path):
    path, feeds = _layer_norm_model(tmp_path / "model.onnx", skip=False, residual=True)
    result = smooth_activations(path, tmp_path / "smoothed.onnx", feeds, SmoothingConfig(alpha=0.75))
    original, smoothed = onnx.load(str(path)), onnx.load(str(result.path))
    assert set(result.smoothed) == {"query", "key"} and result.folded == ()
    muls = {n.name for n in smoothed.graph.node if n.op_type == "Mul"}
    assert muls == {"query_smooth", "key_smooth"} == set(result.muls.values())
    ln = next(n for n in smoothed.graph.node if n.name == "ln")
    assert list(ln.input) == ["x", "gamma", "beta"], "the LayerNorm must stay as it was"
    assert max_output_difference(original, smoothed, feeds) < 1e-4


def test_bert_layer_norms_feed_residuals_so_the_muls_stay(fused_tiny, tmp_path):
    path, feeds = fused_tiny
    result = smooth_activations(path, tmp_path / "smoothed.onnx", feeds, SmoothingConfig())
    assert result.smoothed and result.folded == ()  # post-LN: each LayerNorm output also feeds the next residual


def test_a_pinned_folded_node_converts_and_is_not_quantized(tmp_path):
    path, feeds = _layer_norm_model(tmp_path / "model.onnx", skip=False, residual=False)
    plan = replace(PrecisionPlan.preset("cpu_int8_dynamic"), smoothing=SmoothingConfig()).pin(["key"])
    result = plan.convert(path, tmp_path / "int8.onnx", calibration_feeds=feeds)
    model = onnx.load(str(result.path))
    ops = {n.name: n.op_type for n in model.graph.node}
    assert ops["key"] == "MatMul", "the pinned node stays an FP32 MatMul"
    assert "key_smooth" not in result.keep_fp32 and not any(name.endswith("_smooth") for name in ops)
    assert any(op in ("MatMulInteger", "DynamicQuantizeMatMul") for op in ops.values())
