"""Calibration: ranges measured on real data, cached by model + data + method, and clear errors on bad data."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from workbench.data import tokenize_batches  # noqa: E402
from workbench.errors import DataError  # noqa: E402
from workbench.models import load_model  # noqa: E402
from workbench.stages.precision.calibrate import CalibrationConfig, FeedReader, calibrate  # noqa: E402

TEXTS = ["the cat sat", "revenue grew 12% to $4.5 million in the third quarter", "why?", "SELECT 1;"]


@pytest.fixture(scope="module")
def fused(tiny_model_dir, tiny_bert_onnx, tmp_path_factory):
    """The tiny BERT fused, as the pipeline calibrates it (its attention mask lives inside Attention)."""
    from workbench.stages.fusion import FusionConfig, fuse_transformer

    source = load_model(tiny_model_dir("bert"))
    return fuse_transformer(
        tiny_bert_onnx, tmp_path_factory.mktemp("fused") / "fused.onnx", FusionConfig.for_source(source)
    ).path


@pytest.fixture(scope="module")
def feeds(tiny_model_dir):
    return tokenize_batches(
        load_model(tiny_model_dir("bert")).load_tokenizer(), TEXTS, batch_size=1, sequence_length=16
    )


@pytest.mark.parametrize("method", ["MinMax", "Entropy", "Percentile", "Distribution"])
def test_each_method_measures_ranges_and_the_second_run_reuses_them(fused, feeds, tmp_path, method):
    config = CalibrationConfig(method=method, chunk_size=2)
    first = calibrate(fused, feeds, config, cache_dir=tmp_path, progress=False)
    assert not first.cache_hit and first.cache_path.is_file() and first.samples == len(feeds)
    ranges = first.ranges()
    assert ranges and all(low <= high for low, high in ranges.values())
    second = calibrate(fused, feeds, config, cache_dir=tmp_path, progress=False)
    assert second.cache_hit and second.cache_path == first.cache_path and second.ranges() == ranges


def test_cache_key_changes_with_data_and_method_not_with_chunking(tiny_bert_onnx, feeds, tmp_path):
    base = calibrate(tiny_bert_onnx, feeds, CalibrationConfig(chunk_size=1), cache_dir=tmp_path, progress=False)
    rechunked = calibrate(tiny_bert_onnx, feeds, CalibrationConfig(chunk_size=3), cache_dir=tmp_path, progress=False)
    fewer = calibrate(tiny_bert_onnx, feeds[:2], CalibrationConfig(), cache_dir=tmp_path, progress=False)
    entropy = calibrate(tiny_bert_onnx, feeds, CalibrationConfig(method="Entropy"), cache_dir=tmp_path, progress=False)
    assert rechunked.cache_hit and rechunked.cache_path == base.cache_path
    assert len({base.cache_path, fewer.cache_path, entropy.cache_path}) == 3


def test_minmax_ranges_cover_the_data(tiny_bert_onnx, feeds, tmp_path):
    """The graph output's calibrated range must contain every value the model produced on the data."""
    from workbench.engines.onnxruntime import OnnxRuntimeRunner

    result = calibrate(tiny_bert_onnx, feeds, CalibrationConfig(), cache_dir=tmp_path, progress=False)
    with OnnxRuntimeRunner(tiny_bert_onnx) as runner:
        values = np.concatenate([runner.infer(f)["last_hidden_state"].ravel() for f in feeds])
    low, high = result.ranges()["last_hidden_state"]
    assert low <= values.min() + 1e-5 and high >= values.max() - 1e-5


def test_bad_calibration_data_is_rejected_and_nothing_is_cached(tiny_bert_onnx, feeds, tmp_path):
    with pytest.raises(DataError, match="empty"):
        calibrate(tiny_bert_onnx, [], cache_dir=tmp_path)
    wrong_name = [{("ids" if k == "input_ids" else k): v for k, v in f.items()} for f in feeds]
    with pytest.raises(DataError, match="exactly the model's inputs"):
        calibrate(tiny_bert_onnx, wrong_name, cache_dir=tmp_path)
    wrong_dtype = [{k: v.astype(np.int32) for k, v in f.items()} for f in feeds]
    with pytest.raises(DataError, match="int32.*int64"):
        calibrate(tiny_bert_onnx, wrong_dtype, cache_dir=tmp_path)
    mixed = feeds[:1] + [{k: v[:, :8] for k, v in feeds[1].items()}]  # 16 and 8 tokens
    with pytest.raises(DataError, match="different input shapes"):
        calibrate(tiny_bert_onnx, mixed, CalibrationConfig(method="Entropy"), cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_feed_reader_is_rewindable(feeds):
    reader = FeedReader(feeds)
    first = [reader.get_next() for _ in range(len(feeds))]
    assert reader.get_next() is None
    reader.rewind()
    assert all(np.array_equal(reader.get_next()["input_ids"], f["input_ids"]) for f in first)


def test_histogram_calibration_of_an_unfused_graph_explains_the_mask_overflow(tiny_bert_onnx, feeds, tmp_path):
    with pytest.raises(DataError, match="calibrate the fused graph"):
        calibrate(tiny_bert_onnx, feeds, CalibrationConfig(method="Percentile"), cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []
