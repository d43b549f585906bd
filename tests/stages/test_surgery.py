"""Transformer fusion: tiny BERT fuses attention and layer norms, and matches the unfused graph."""

from __future__ import annotations

import hashlib

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from workbench.data import tokenize_batches  # noqa: E402
from workbench.models import load_model  # noqa: E402
from workbench.stages.fusion import FusionConfig, fuse_transformer  # noqa: E402


def test_tiny_bert_fuses_and_matches(tiny_model_dir, tiny_bert_onnx, tmp_path):
    source = load_model(tiny_model_dir("bert"))
    feeds = tokenize_batches(
        source.load_tokenizer(),
        ["a short one", "and a somewhat longer sentence here"],
        batch_size=2,
        sequence_length=16,
    )
    before = hashlib.sha256(tiny_bert_onnx.read_bytes()).hexdigest()
    result = fuse_transformer(
        tiny_bert_onnx, tmp_path / "fused.onnx", FusionConfig.for_source(source), check_feeds=feeds
    )
    assert hashlib.sha256(tiny_bert_onnx.read_bytes()).hexdigest() == before
    assert result.fused_ops["Attention"] == 2 and result.fused_ops["SkipLayerNormalization"] == 4
    assert result.fused_ops["EmbedLayerNormalization"] == 1
    assert result.nodes_after < result.nodes_before
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    ops = {n.op_type for n in onnx.load(str(result.path)).graph.node}
    assert "Attention" in ops


def test_fusion_config_reads_the_model_config(tiny_model_dir):
    config = FusionConfig.for_source(load_model(tiny_model_dir("distilbert")))
    assert (config.model_type, config.num_heads, config.hidden_size) == ("bert", 4, 32)


@pytest.mark.slow
def test_minilm_fuses_fully_and_matches_the_unfused_graph(tmp_path):
    from workbench.data import load_sentence_splits
    from workbench.stages.export import export_onnx

    source = load_model()
    texts = load_sentence_splits(max_eval=32).evaluation
    exported = export_onnx(source, tmp_path / "minilm.onnx", check_texts=texts)
    feeds = tokenize_batches(
        source.load_tokenizer(), texts, batch_size=8, sequence_length=128, input_names=exported.input_names
    )
    result = fuse_transformer(
        exported.path, tmp_path / "fused.onnx", FusionConfig.for_source(source), check_feeds=feeds
    )
    assert result.fused_ops["Attention"] >= 6 and result.fused_ops["SkipLayerNormalization"] >= 12
    assert result.fused_ops["EmbedLayerNormalization"] >= 1 and result.fused_ops["BiasGelu"] >= 6
    assert result.max_abs_diff < 1e-4
