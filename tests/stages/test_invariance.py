"""Batch invariance under the served padding policy: a dynamic-INT8 candidate's embeddings depend on its
batch-mates, an FP32 candidate's do not (within float noise)."""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime")

from workbench.data import default_data_dir, read_sentences
from workbench.errors import ConfigError, DataError
from workbench.models import load_model
from workbench.stages.accuracy.invariance import (
    BATCH_INVARIANCE_MIN,
    batch_invariance,
    batch_invariance_all,
    is_batch_invariant,
)
from workbench.triton.padding import PaddingPolicy

POLICY = PaddingPolicy(max_length=32)  # the default served policy: buckets


@pytest.fixture(scope="module")
def candidates(tmp_path_factory):
    """A tiny BERT whose weights are drawn wider than usual (initializer_range 0.2), so that its activations
    differ from token to token as a trained model's do, and its dynamic INT8 quantization."""
    from tests.tiny_models import build_wide_bert
    from workbench.stages.export import export_onnx
    from workbench.stages.precision.quantize import quantize_dynamic

    folder = build_wide_bert(tmp_path_factory.mktemp("wide-bert"))
    fp32 = export_onnx(load_model(folder), folder / "model.onnx").path
    int8 = quantize_dynamic(fp32, folder / "model_int8.onnx").path
    return load_model(folder).load_tokenizer(), {"fp32": fp32, "int8_dynamic": int8}


@pytest.fixture(scope="module")
def texts():
    return read_sentences(default_data_dir() / "evaluation.txt", limit=40)


def test_dynamic_int8_depends_on_batch_mates_and_fp32_does_not(candidates, texts):
    tokenizer, paths = candidates
    results = batch_invariance_all(paths, tokenizer, texts, POLICY, batch_size=8, threads=1)
    fp32, int8 = results["fp32"], results["int8_dynamic"]
    assert fp32.cosine_min > 1 - 1e-6 and fp32.cosine_mean > 1 - 1e-6  # float noise only
    assert int8.cosine_min < 0.9999, int8.cosine_min
    assert int8.cosine_mean < fp32.cosine_mean
    assert len(int8.per_text) == len(texts) and min(int8.per_text) == int8.cosine_min
    assert int8.worst_text == texts[int8.per_text.index(int8.cosine_min)]
    assert int8.policy == POLICY and int8.batch_size == 8
    # the recommended rule: a batching deployment does not choose the INT8 candidate; a non-batching one may
    assert is_batch_invariant(fp32, batching=True) and not is_batch_invariant(int8, batching=True)
    assert is_batch_invariant(int8, batching=False)
    assert not int8.is_invariant() and BATCH_INVARIANCE_MIN == 0.999
    record = int8.to_dict()
    assert record["cosine_min"] == int8.cosine_min and record["policy"]["mode"] == "buckets"


def test_fixed_padding_measures_the_same_property(candidates, texts):
    tokenizer, paths = candidates
    fixed = PaddingPolicy.fixed(32)
    fp32 = batch_invariance(paths["fp32"], tokenizer, texts, fixed, batch_size=8, threads=1)
    int8 = batch_invariance(paths["int8_dynamic"], tokenizer, texts, fixed, batch_size=8, threads=1)
    assert fp32.cosine_min > 1 - 1e-6 and int8.cosine_min < 0.9999


def test_bad_arguments_are_refused(candidates, texts):
    tokenizer, paths = candidates
    with pytest.raises(DataError):
        batch_invariance(paths["fp32"], tokenizer, texts[:1], POLICY)
    with pytest.raises(ConfigError):
        batch_invariance(paths["fp32"], tokenizer, texts, POLICY, batch_size=1)
    with pytest.raises(ConfigError):
        batch_invariance(paths["fp32"], tokenizer, texts, "buckets")
