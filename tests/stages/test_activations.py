"""Activation statistics on the fused tiny BERT and on hand-built graphs whose answers are known."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("plotly")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from workbench.data import tokenize_batches  # noqa: E402
from workbench.errors import ConfigError, DataError  # noqa: E402
from workbench.models import load_model  # noqa: E402
from workbench.stages.precision.activations import ActivationStats, TensorStats, activation_statistics  # noqa: E402

TEXTS = [
    "the cat sat on the mat",
    "revenue grew 12%",
    "how do I reset my password?",
    "SELECT 1;",
    "a somewhat longer sentence, with punctuation and 42 numbers",
]


@pytest.fixture(scope="module")
def fused_tiny_longer(tiny_model_dir, tiny_bert_onnx, tmp_path_factory):
    from workbench.stages.fusion import FusionConfig, fuse_transformer

    source = load_model(tiny_model_dir("bert"))
    path = fuse_transformer(
        tiny_bert_onnx, tmp_path_factory.mktemp("fused") / "fused.onnx", FusionConfig.for_source(source)
    ).path
    feeds = tokenize_batches(source.load_tokenizer(), TEXTS, batch_size=1, sequence_length=16)
    return path, feeds


@pytest.fixture(scope="module")
def tiny_stats(fused_tiny_longer) -> ActivationStats:
    path, feeds = fused_tiny_longer
    return activation_statistics(path, feeds, bins=32)  # several feed dicts: merging is exercised


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _mul_model(path, x_shape, factor: float):
    """y = x * factor, one Mul node named 'scale'."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "factor"], ["y"], name="scale")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", x_shape[1]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", x_shape[1]])],
        [numpy_helper.from_array(np.array(factor, np.float32), "factor")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_stats_cover_matmul_and_attention_outputs(fused_tiny_longer, tiny_stats):
    path, _ = fused_tiny_longer
    ops = {r.op_type for r in tiny_stats.rows}
    assert {"MatMul", "Attention"} <= ops
    model = onnx.load(str(path))
    producers = {out: (n.name, n.op_type) for n in model.graph.node for out in n.output}
    for row in tiny_stats.rows:
        assert producers[row.name] == (row.node, row.op_type)
    assert [r.position for r in tiny_stats.rows] == list(range(len(tiny_stats)))
    assert tiny_stats.feeds == 5 and tiny_stats.bins == 32
    assert isinstance(tiny_stats["last_hidden_state"], TensorStats)


def test_statistics_are_consistent(tiny_stats):
    for row in tiny_stats.rows:
        assert row.count > 0 and row.nonfinite == 0
        assert row.min <= row.mean <= row.max
        assert row.max_abs == max(abs(row.min), abs(row.max))
        assert 0 <= row.p9999_abs <= row.max_abs
        assert row.std >= 0 and row.outlier_ratio >= 1.0
        assert len(row.histogram) == 32 and len(row.edges) == 33
        assert sum(row.histogram) == row.count  # every value seen lands in a bin
        assert row.edges[0] <= row.min and row.edges[-1] >= row.max


def test_counts_are_the_elements_seen(fused_tiny_longer, tiny_stats):
    _, feeds = fused_tiny_longer
    hidden = tiny_stats["last_hidden_state"]
    tokens = sum(f["input_ids"].size for f in feeds)
    assert hidden.count == tokens * 32  # hidden size 32


def test_multiplying_by_a_constant_gives_exactly_the_expected_range(tmp_path):
    path = _mul_model(tmp_path / "mul.onnx", (2, 50), 3.0)
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.normal(size=(2, 50)).astype(np.float32)} for _ in range(3)]
    stats = activation_statistics(path, feeds, bins=10)
    (row,) = stats.rows
    y = np.concatenate([(f["x"] * np.float32(3.0)).ravel() for f in feeds]).astype(np.float64)
    assert (row.name, row.node, row.op_type) == ("y", "scale", "Mul")
    assert row.max == y.max() and row.min == y.min() and row.max_abs == np.abs(y).max()
    assert row.count == y.size == 300
    assert row.mean == pytest.approx(y.mean(), abs=1e-12) and row.std == pytest.approx(y.std(), rel=1e-12)
    assert list(row.histogram) == np.histogram(y, bins=10, range=(y.min(), y.max()))[0].tolist()


def test_one_huge_value_gives_a_large_outlier_ratio(tmp_path):
    path = _mul_model(tmp_path / "mul.onnx", (1, 40000), 1.0)
    rng = np.random.default_rng(1)
    x = rng.uniform(-1.0, 1.0, size=(1, 40000)).astype(np.float32)
    x[0, 123] = 5000.0
    (row,) = activation_statistics(path, [{"x": x}]).rows
    exact = float(np.percentile(np.abs(x.astype(np.float64)), 99.99))
    assert row.p9999_abs == pytest.approx(exact, rel=1e-12)
    assert row.max_abs == 5000.0 and row.outlier_ratio > 1000
    (calm,) = activation_statistics(path, [{"x": np.clip(x, -1, 1)}]).rows
    assert calm.outlier_ratio < 1.01


def test_top_outliers_puts_the_tensor_with_the_outlier_first(tmp_path):
    x = np.random.default_rng(2).uniform(-1.0, 1.0, size=(1, 40000)).astype(np.float32)
    x[0, 7] = -800.0
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "one"], ["wild"], name="keep"),
            helper.make_node("Clip", ["x", "lo", "hi"], ["calm"], name="clip"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, x.shape[1]])],
        [
            helper.make_tensor_value_info("wild", TensorProto.FLOAT, [1, x.shape[1]]),
            helper.make_tensor_value_info("calm", TensorProto.FLOAT, [1, x.shape[1]]),
        ],
        [
            numpy_helper.from_array(np.array(1.0, np.float32), "one"),
            numpy_helper.from_array(np.array(-1.0, np.float32), "lo"),
            numpy_helper.from_array(np.array(1.0, np.float32), "hi"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "two.onnx"))
    stats = activation_statistics(tmp_path / "two.onnx", [{"x": x}])
    assert [r.name for r in stats.top_outliers()] == ["wild", "calm"]
    assert stats["wild"].outlier_ratio > 100 and stats["calm"].outlier_ratio < 1.01


def test_a_constant_tensor_and_non_finite_values(tmp_path):
    path = _mul_model(tmp_path / "mul.onnx", (1, 4), 0.0)
    (row,) = activation_statistics(path, [{"x": np.ones((1, 4), np.float32)}]).rows
    assert row.min == row.max == row.max_abs == 0.0 and row.outlier_ratio == 1.0 and sum(row.histogram) == 4
    path = _mul_model(tmp_path / "inf.onnx", (1, 4), 1.0)
    x = np.array([[1.0, np.inf, -2.0, np.nan]], np.float32)
    (row,) = activation_statistics(path, [{"x": x}]).rows
    assert row.count == 2 and row.nonfinite == 2 and (row.min, row.max) == (-2.0, 1.0)
    (row,) = activation_statistics(path, [{"x": np.full((1, 4), np.nan, np.float32)}]).rows
    assert row.count == 0 and row.nonfinite == 4 and math.isnan(row.mean) and sum(row.histogram) == 0
    assert json.loads(json.dumps(row.to_dict(), allow_nan=False))["min"] is None


def test_figures_have_traces(tiny_stats):
    figure = tiny_stats.range_figure()
    assert len(figure.data) >= 2 and figure.layout.yaxis.type == "log"
    names = {t.name for t in figure.data if t.showlegend is not False}
    assert {"MatMul", "Attention"} <= names
    histogram = tiny_stats.histogram_figure("last_hidden_state")
    assert len(histogram.data) == 1 and sum(histogram.data[0].y) == tiny_stats["last_hidden_state"].count
    with pytest.raises(DataError, match="no_such_tensor"):
        tiny_stats.histogram_figure("no_such_tensor")


def test_report_html_and_dict(tiny_stats):
    text = tiny_stats._repr_html_()
    assert "outlier ratio" in text and text.count("<tr>") == min(20, len(tiny_stats)) + 1
    data = json.loads(json.dumps(tiny_stats.to_dict()))
    assert len(data["tensors"]) == len(tiny_stats) and data["percentile"] == 99.99
    assert all(t["outlier_ratio"] is None or t["outlier_ratio"] >= 1 for t in data["tensors"])


def test_max_tensors_keeps_the_first_in_graph_order(fused_tiny_longer, tiny_stats):
    path, feeds = fused_tiny_longer
    few = activation_statistics(path, feeds[:1], max_tensors=3)
    assert few.names == tiny_stats.names[:3]


def test_input_model_is_unchanged(fused_tiny_longer, tmp_path):
    path, feeds = fused_tiny_longer
    before = _digest(path)
    activation_statistics(path, feeds[:2])
    assert _digest(path) == before
    assert not any(p.name.endswith(".partial") for p in path.parent.iterdir())


@pytest.mark.parametrize("bad", ["empty", "names", "dtypes"])
def test_bad_feeds_are_a_data_error(fused_tiny_longer, bad):
    path, feeds = fused_tiny_longer
    data = {
        "empty": [],
        "names": [{"ids": f["input_ids"]} for f in feeds],
        "dtypes": [{k: v.astype("int32") for k, v in f.items()} for f in feeds],
    }[bad]
    with pytest.raises(DataError):
        activation_statistics(path, data)


@pytest.mark.parametrize("option", [{"bins": 0}, {"max_tensors": 0}, {"bins": -1}])
def test_bad_options_are_a_config_error(fused_tiny_longer, option):
    path, feeds = fused_tiny_longer
    with pytest.raises(ConfigError):
        activation_statistics(path, feeds, **option)


def test_non_finite_ratio_is_null_in_json():
    row = TensorStats("t", "n", "Relu", 0, 100000, 0, 0.0, 5.0, 5.0, 0.0, 0.1, 0.0, (100000,), (0.0, 5.0))
    assert row.outlier_ratio == math.inf and row.to_dict()["outlier_ratio"] is None
