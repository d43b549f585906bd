"""Accuracy stage: Polygraphy comparison, the embedding metric, and a budget that fails when it should."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from workbench.data import tokenize_batches  # noqa: E402
from workbench.errors import DataError  # noqa: E402
from workbench.models import load_model  # noqa: E402
from workbench.stages.accuracy import AccuracyBudget, compare_candidates, mean_pooled_embeddings  # noqa: E402
from workbench.stages.precision import DynamicQuantConfig, quantize_dynamic  # noqa: E402

TEXTS = ["the cat sat on the mat", "quarterly revenue grew 12%", "how do I reset my password?",
         "SELECT * FROM users;", "a much longer sentence that goes on and on about nothing in particular"]


@pytest.fixture(scope="module")
def feeds(tiny_model_dir):
    return tokenize_batches(load_model(tiny_model_dir("bert")).load_tokenizer(), TEXTS, batch_size=2,
                            sequence_length=24)


def _noisy_copy(path, out, scale):
    """A copy of the model with every float initializer perturbed: a candidate with known, tunable error."""
    model = onnx.load(str(path))
    rng = np.random.default_rng(0)
    for tensor in model.graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT:
            values = onnx.numpy_helper.to_array(tensor)
            noisy = values + scale * rng.standard_normal(values.shape).astype(np.float32) * (np.abs(values).mean() + 1e-6)
            tensor.CopyFrom(onnx.numpy_helper.from_array(noisy.astype(np.float32), tensor.name))
    onnx.save(model, str(out))
    return out


def test_identical_candidate_meets_the_budget(tiny_bert_onnx, feeds):
    report = compare_candidates(tiny_bert_onnx, {"same": tiny_bert_onnx}, feeds)
    assert report and report["same"]
    assert report["same"].embedding_cosine_min == pytest.approx(1.0, abs=1e-9)
    assert report["same"].outputs["last_hidden_state"]["max_abs"] == 0.0
    assert len(report["same"].per_sentence_cosine) == len(TEXTS) == report.samples


def test_accuracy_failure_fails(tiny_bert_onnx, feeds, tmp_path):
    noisy = _noisy_copy(tiny_bert_onnx, tmp_path / "noisy.onnx", scale=0.5)
    report = compare_candidates(tiny_bert_onnx, {"noisy": noisy, "same": tiny_bert_onnx}, feeds)
    assert not report, "a candidate that misses the budget must make the report falsy"
    assert not report["noisy"] and report["same"]
    assert any("embedding cosine" in line for line in report["noisy"].failures)
    assert report["noisy"].embedding_cosine_mean < 0.995


def test_budget_names_each_failing_statistic(tiny_bert_onnx, feeds, tmp_path):
    int8 = quantize_dynamic(tiny_bert_onnx, tmp_path / "int8.onnx", DynamicQuantConfig()).path
    measured = compare_candidates(tiny_bert_onnx, {"int8": int8}, feeds)["int8"]
    # a budget just above what was measured must fail on exactly the statistics it tightens
    budget = AccuracyBudget(embedding_cosine_mean=min(1.0, measured.embedding_cosine_mean + 1e-6),
                            embedding_cosine_min=-1.0, output_cosine_min=1.0)
    failing = compare_candidates(tiny_bert_onnx, {"int8": int8}, feeds, budget=budget)["int8"]
    assert len(failing.failures) == 2
    assert failing.failures[0].startswith("embedding cosine mean")
    assert "output 'last_hidden_state' cosine min" in failing.failures[1]


def test_mean_pooling_ignores_padding():
    hidden = np.zeros((1, 3, 2), dtype=np.float32)
    hidden[0, 0] = [1.0, 0.0]
    hidden[0, 2] = [0.0, 100.0]  # a padded position: must not count
    pooled = mean_pooled_embeddings(hidden, np.array([[1, 0, 0]]))
    np.testing.assert_allclose(pooled, [[1.0, 0.0]])


def test_feeds_without_attention_mask_are_rejected(tiny_bert_onnx):
    with pytest.raises(DataError, match="attention_mask"):
        compare_candidates(tiny_bert_onnx, {"x": tiny_bert_onnx}, [{"input_ids": np.ones((1, 4), np.int64)}])
