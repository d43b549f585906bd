"""surgery_summary / write_surgery_summary: what a surgery run did, as the JSON a CI job reads."""

from __future__ import annotations

import json

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from workbench.data import tokenize_batches  # noqa: E402
from workbench.models import load_model  # noqa: E402
from workbench.stages.fusion import FUSED_OP_TYPES, FusionConfig  # noqa: E402
from workbench.stages.surgery import edits as E  # noqa: E402
from workbench.stages.surgery.run import run_surgery  # noqa: E402
from workbench.stages.surgery.summary import (  # noqa: E402
    SURGERY_SUMMARY_VERSION,
    surgery_summary,
    write_surgery_summary,
)


@pytest.fixture(scope="module")
def feeds(tiny_model_dir, tiny_bert_onnx):
    inputs = [i.name for i in onnx.load(str(tiny_bert_onnx), load_external_data=False).graph.input]
    return tokenize_batches(
        load_model(tiny_model_dir("bert")).load_tokenizer(),
        ["hello there", "a longer one here"],
        batch_size=2,
        sequence_length=12,
        input_names=inputs,
    )


def test_summary_of_a_checked_plan(tiny_model_dir, tiny_bert_onnx, feeds, tmp_path):
    fusion = FusionConfig.for_source(load_model(tiny_model_dir("bert")))
    plan = E.SurgeryPlan(
        (
            E.FoldConstants(),
            E.FuseTransformer(fusion.model_type, fusion.num_heads, fusion.hidden_size),
            E.CastIO(inputs={"input_ids": "int32"}),
        )
    )
    result = run_surgery(tiny_bert_onnx, tmp_path / "out.onnx", plan, check_feeds=feeds, latency_repeats=2)
    path = tmp_path / "reports" / "surgery_summary.json"
    summary = write_surgery_summary(result, path)
    assert json.loads(path.read_text()) == summary == json.loads(json.dumps(surgery_summary(result)))
    assert sorted(p.name for p in path.parent.iterdir()) == ["surgery_summary.json"]  # no partial file left
    assert summary["version"] == SURGERY_SUMMARY_VERSION and summary["output"] == str(tmp_path / "out.onnx")
    assert (
        [e["kind"] for e in summary["plan"]]
        == [e["kind"] for e in summary["edits"]]
        == ["fold_constants", "fuse_transformer", "cast_io"]
    )
    assert E.SurgeryPlan.from_json(json.dumps(summary["plan"])) == plan
    assert set(summary["fused_ops"]) == set(FUSED_OP_TYPES)
    assert summary["fused_ops"]["Attention"] == 2 and summary["fused_ops"]["SkipLayerNormalization"] == 4
    assert summary["fused_ops"]["EmbedLayerNormalization"] == 1
    edited = onnx.load(str(result.path))
    assert summary["nodes_after"] == len(edited.graph.node) < summary["nodes_before"]
    assert summary["nodes_before"] == len(onnx.load(str(tiny_bert_onnx)).graph.node)
    assert summary["op_counts_after"]["Attention"] == 2 and "Attention" not in summary["op_counts_before"]
    fused = summary["edits"][1]
    assert fused["op_changes"]["Attention"] == 2 and fused["passed"] and fused["enforced"]
    assert 0 <= summary["max_check_diff"] < 1e-4
    assert summary["max_check_diff"] == max(e["max_abs_diff"] for e in summary["edits"])
    assert summary["all_checks_passed"] is True
    assert summary["latency_ms_before"] > 0 and summary["latency_ms_after"] > 0
    assert summary["size_mb_before"] > 0 and summary["seconds"] > 0


def test_summary_of_an_unchecked_and_of_an_empty_plan(tiny_bert_onnx, tmp_path):
    unchecked = surgery_summary(run_surgery(tiny_bert_onnx, tmp_path / "a.onnx", E.SurgeryPlan((E.Cleanup(),))))
    assert unchecked["max_check_diff"] is None and unchecked["all_checks_passed"] is None
    assert unchecked["edits"][0]["passed"] is None and unchecked["latency_ms_before"] is None
    # an empty plan copies the model: the counts come from the file
    empty = surgery_summary(run_surgery(tiny_bert_onnx, tmp_path / "b.onnx", E.SurgeryPlan()))
    nodes = len(onnx.load(str(tiny_bert_onnx)).graph.node)
    assert empty["edits"] == [] and empty["plan"] == [] and empty["nodes_before"] == empty["nodes_after"] == nodes
    assert empty["op_counts_before"] == empty["op_counts_after"] and empty["fused_ops"]["Attention"] == 0
    assert empty["max_check_diff"] is None and empty["seconds"] == 0
    assert empty["size_mb_before"] == empty["size_mb_after"] > 0


def test_a_lossy_edit_shows_as_a_failed_check_it_was_allowed(tiny_bert_onnx, feeds, tmp_path):
    plan = E.SurgeryPlan((E.CastIO(outputs={"last_hidden_state": "float16"}),))
    summary = surgery_summary(run_surgery(tiny_bert_onnx, tmp_path / "out.onnx", plan, check_feeds=feeds, atol=1e-6))
    (edit,) = summary["edits"]
    assert edit["enforced"] is False and edit["passed"] is False and summary["all_checks_passed"] is False
    assert summary["max_check_diff"] > 1e-6
