"""Export of causal LMs with their cache (one decoder for prompt and decode steps) and its fusion."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from tests.generation.conftest import KINDS
from workbench.errors import ExportError, ModelSourceError
from workbench.stages.generation.export import (
    DecoderExportConfig,
    export_decoder,
    read_decoder_spec,
)
from workbench.stages.generation.fusion import fusion_report


def _dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


@pytest.mark.parametrize("kind", KINDS)
def test_export_has_cache_inputs_and_outputs_with_dynamic_axes(exported_decoder, kind):
    result = exported_decoder(kind)
    spec = result.spec
    model = onnx.load(str(result.path))
    inputs = {i.name: _dims(i) for i in model.graph.input}
    outputs = {o.name: _dims(o) for o in model.graph.output}
    assert list(inputs) == spec.input_names()
    assert list(outputs) == spec.output_names()
    assert inputs["input_ids"] == ["batch", "sequence"]
    assert inputs["attention_mask"] == ["batch", "total_sequence"]
    assert inputs["past_key_values.0.key"] == ["batch", spec.num_kv_heads, "past_sequence", spec.head_dim]
    assert outputs["present.1.value"] == ["batch", spec.num_kv_heads, "total_sequence", spec.head_dim]
    assert outputs["logits"] == ["batch", "kept", spec.vocab_size]
    assert read_decoder_spec(result.path) == spec


def test_llama_spec_has_grouped_kv_heads_and_its_special_tokens(exported_decoder, tiny_decoder_dir):
    spec = exported_decoder("llama").spec
    config = json.loads((tiny_decoder_dir("llama") / "config.json").read_text())
    assert spec.num_kv_heads == config["num_key_value_heads"] == 2 < config["num_attention_heads"]
    assert spec.head_dim == config["hidden_size"] // config["num_attention_heads"]
    assert spec.eos_token_ids == (config["eos_token_id"],) and spec.bos_token_id == config["bos_token_id"]
    assert spec.max_positions == config["max_position_embeddings"]


@pytest.mark.parametrize("kind", KINDS)
def test_export_was_checked_at_several_batch_cache_and_step_lengths(exported_decoder, kind):
    result = exported_decoder(kind)
    shapes = {(c.batch, c.past, c.sequence) for c in result.checks}
    assert {b for b, _, _ in shapes} == {1, 3}
    assert {p for _, p, _ in shapes} >= {0, 5, 23}  # 0: the prompt step; the others: a step on a real cache
    assert {s for _, _, s in shapes} >= {1, 6, 17}
    assert result.passed and result.max_abs_error < 1e-3 and result.min_cosine > 0.99999
    assert {c.output for c in result.checks} == set(result.spec.output_names())


def test_a_mismatch_raises_and_writes_no_file(tiny_decoder_dir, tmp_path):
    # an exact-match demand: float reordering between torch and onnxruntime already differs by ~1e-6
    strict = DecoderExportConfig(
        atol=1e-12, min_cosine=1.0, check_batch_sizes=(1,), check_prompt_lengths=(4,), check_past_lengths=(0,)
    )
    with pytest.raises(ExportError, match="differs from transformers"):
        export_decoder(tiny_decoder_dir("gpt2"), tmp_path / "decoder.onnx", strict)
    assert list(tmp_path.iterdir()) == []


def test_an_encoder_is_refused(tiny_model_dir, tmp_path):
    with pytest.raises(ModelSourceError, match="not a causal LM"):
        export_decoder(tiny_model_dir("bert"), tmp_path / "decoder.onnx")
    assert not (tmp_path / "decoder.onnx").exists()


def test_bad_config_is_refused():
    with pytest.raises(Exception, match="check_past_lengths"):
        DecoderExportConfig(check_past_lengths=(-1,))
    with pytest.raises(Exception, match="dynamo"):
        DecoderExportConfig(exporter="dynamo", opset=17)


def test_gpt2_fusion_report_and_the_fused_model_matches(fused_decoder, exported_decoder):
    result = fused_decoder("gpt2")
    report = fusion_report(result)
    assert report["fused"]["SkipLayerNormalization"] == 4 and report["fused"]["FastGelu"] == 2
    assert report["fused"]["MatMul from Gemm"] >= 1
    assert "Attention" in report["not_fused"]
    assert report["nodes_after"] < report["nodes_before"]
    assert result.op_counts_after.get("Gemm", 0) == 0
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4
    assert read_decoder_spec(result.path) == exported_decoder("gpt2").spec


def test_llama_fusion_stays_a_valid_onnx_model(fused_decoder):
    result = fused_decoder("llama")
    assert fusion_report(result)["fused"]["SkipSimplifiedLayerNormalization"] == 4
    onnx.checker.check_model(str(result.path))  # no standard-domain SimplifiedLayerNormalization is left
    assert "SimplifiedLayerNormalization" not in result.op_counts_after


@pytest.mark.parametrize("kind", KINDS)
def test_fused_and_exported_decoders_agree_on_a_prompt_and_a_step(fused_decoder, exported_decoder, kind):
    from workbench.engines.onnxruntime import OnnxRuntimeRunner
    from workbench.stages.generation.fusion import decoder_check_feeds

    spec = exported_decoder(kind).spec
    with OnnxRuntimeRunner(exported_decoder(kind).path) as plain, OnnxRuntimeRunner(fused_decoder(kind).path) as fused:
        for feeds in decoder_check_feeds(spec, seed=7):
            a, b = plain.infer(feeds), fused.infer(feeds)
            assert np.allclose(a["logits"], b["logits"], atol=1e-4)
            assert np.allclose(a["present.0.key"], b["present.0.key"], atol=1e-4)
