"""evaluate_plan (convert + measure in one call) and the accuracy summary, on the fused tiny BERT."""

from __future__ import annotations

import json

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from workbench.errors import DataError, QuantizationError  # noqa: E402
from workbench.stages.accuracy.autofix import AutofixConfig, autofix  # noqa: E402
from workbench.stages.accuracy.compare import AccuracyBudget, CandidateAccuracy, compare_candidates  # noqa: E402
from workbench.stages.accuracy.diagnose import quantized_nodes  # noqa: E402
from workbench.stages.accuracy.fixes import (  # noqa: E402
    ACCURACY_SUMMARY_VERSION,
    PlanEvaluation,
    accuracy_summary,
    evaluate_plan,
    write_accuracy_summary,
)
from workbench.stages.precision.plan import PrecisionPlan  # noqa: E402
from workbench.stages.precision.quantize import QuantizeResult  # noqa: E402

TEXTS = ["the cat sat on the mat", "revenue grew 12%", "how do I reset my password?", "SELECT 1;"]
# The tiny BERT loses ~2e-5 of embedding cosine to dynamic INT8: this budget needs pins, the relaxed one none.
STRICT = AccuracyBudget(embedding_cosine_mean=0.99999, embedding_cosine_min=0.99999)


@pytest.fixture(scope="module")
def fixed(fused_tiny, tmp_path_factory):
    """A strict-budget autofix of the dynamic INT8 plan, and a compare of its start and fixed models."""
    path, feeds = fused_tiny
    folder = tmp_path_factory.mktemp("autofix")
    candidate = PrecisionPlan.preset("cpu_int8_dynamic").convert(path, folder / "int8.onnx")
    result = autofix(
        path,
        PrecisionPlan.preset("cpu_int8_dynamic"),
        feeds,
        folder / "search",
        budget=STRICT,
        config=AutofixConfig.preset("quick"),
    )
    report = compare_candidates(path, {"start": candidate.path, "fixed": result.path}, feeds, budget=STRICT)
    return result, report


def _matmul(path) -> str:
    return next(n.name for n in onnx.load(str(path)).graph.node if n.op_type == "MatMul")


def test_evaluate_plan_converts_and_measures_in_one_call(fused_tiny, tmp_path):
    path, feeds = fused_tiny
    node = _matmul(path)
    plan = PrecisionPlan.preset("cpu_int8_dynamic").pin([node])
    evaluation = evaluate_plan(path, plan, feeds, tmp_path / "manual.onnx", budget=AccuracyBudget.preset("relaxed"))
    conversion, accuracy = evaluation  # unpacks as (QuantizeResult, CandidateAccuracy)
    assert isinstance(evaluation, PlanEvaluation)
    assert isinstance(conversion, QuantizeResult) and isinstance(accuracy, CandidateAccuracy)
    assert conversion.path == tmp_path / "manual.onnx" and conversion.path.is_file()
    assert conversion.keep_fp32 == (node,)
    assert node in {n.name for n in onnx.load(str(conversion.path)).graph.node if n.op_type == "MatMul"}
    assert accuracy.name == "manual" and accuracy.path == conversion.path
    assert 0.99 < accuracy.embedding_cosine_min <= accuracy.embedding_cosine_mean <= 1 + 1e-6
    assert accuracy and evaluation.meets_budget and evaluation.path == conversion.path
    assert "Plan evaluation" in evaluation._repr_html_() and "meets the budget" in evaluation._repr_html_()
    assert json.loads(json.dumps(evaluation.to_dict()))["conversion"]["keep_fp32"] == [node]


def test_evaluate_plan_judges_by_the_budget_and_measures_against_the_reference(fused_tiny, tiny_bert_onnx, tmp_path):
    path, feeds = fused_tiny
    strict = AccuracyBudget(embedding_cosine_mean=0.9999999, embedding_cosine_min=0.9999999)
    _, accuracy = evaluate_plan(
        path,
        PrecisionPlan.preset("cpu_int8_dynamic"),
        feeds,
        tmp_path / "int8.onnx",
        reference=tiny_bert_onnx,
        budget=strict,
    )
    assert not accuracy
    assert any(line.startswith("embedding cosine mean") for line in accuracy.failures)
    # the same numbers as compare_candidates against that reference
    direct = compare_candidates(tiny_bert_onnx, {"int8": tmp_path / "int8.onnx"}, feeds, budget=strict)["int8"]
    assert accuracy.embedding_cosine_mean == pytest.approx(direct.embedding_cosine_mean, abs=1e-9)
    html = PlanEvaluation(_, accuracy)._repr_html_()
    assert "misses the budget" in html


def test_evaluate_plan_with_an_unknown_pin_raises_and_writes_nothing(fused_tiny, tmp_path):
    path, feeds = fused_tiny
    plan = PrecisionPlan.preset("cpu_int8_dynamic").pin(["no_such_node"])
    with pytest.raises(QuantizationError, match="no_such_node") as caught:
        evaluate_plan(path, plan, feeds, tmp_path / "out" / "manual.onnx")
    assert caught.value.fix
    assert not (tmp_path / "out" / "manual.onnx").exists()


def test_evaluate_plan_needs_feeds(fused_tiny, tmp_path):
    path, _ = fused_tiny
    with pytest.raises(DataError):
        evaluate_plan(path, PrecisionPlan.preset("cpu_int8_dynamic"), [], tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_accuracy_summary_records_start_fixed_pins_and_trials(fixed, tmp_path):
    result, report = fixed
    summary = write_accuracy_summary(report, result, tmp_path / "sub" / "accuracy_summary.json")
    assert json.loads((tmp_path / "sub" / "accuracy_summary.json").read_text()) == summary
    assert summary["version"] == ACCURACY_SUMMARY_VERSION and summary["samples"] == len(TEXTS)
    assert summary["budget"] == STRICT.to_dict()
    start, fixed_row = summary["start"], summary["fixed"]
    # both rows come from the comparison: the fixed model by its path, the start as the other candidate
    assert start["source"] == fixed_row["source"] == "comparison"
    assert start["path"] == str(report["start"].path) and fixed_row["path"] == str(result.path)
    assert start["cosine_mean"] == report["start"].embedding_cosine_mean and not start["meets_budget"]
    assert fixed_row["cosine_min"] == report["fixed"].embedding_cosine_min
    assert fixed_row["meets_budget"] and summary["meets_budget"]
    assert summary["pins"] == fixed_row["pins"] == list(result.best.pins) and summary["pins"]
    assert summary["keep_fp32"] == list(result.plan.keep_fp32)
    assert summary["trials"] == len(result.trials) == len(summary["trial_log"])
    # the diagnosis's reference is the model the search converted: its quantized nodes are counted
    assert summary["quantized_nodes"] == len(quantized_nodes(result.diagnosis.reference, result.start.path)) > 0
    assert 0 < summary["ranked_nodes"] == len(result.ranking) <= summary["quantized_nodes"]
    assert summary["diagnosis_seconds"] == result.diagnosis.seconds > 0
    assert summary["diagnosis"]["source"] == "autofix" and summary["diagnosis"]["nodes"] == len(result.diagnosis.nodes)
    assert summary["diagnosis"]["most_sensitive"][0] == result.ranking[0][0]
    assert [row["name"] for row in summary["candidates"]] == ["start", "fixed"]
    assert summary["trial_log"][0]["stage"] == "start" and not summary["trial_log"][0]["meets_budget"]


def test_accuracy_summary_falls_back_to_the_trials_without_the_fixed_model_in_the_report(fixed, fused_tiny, tmp_path):
    result, _ = fixed
    path, feeds = fused_tiny
    start_only = compare_candidates(path, {"int8": result.start.path}, feeds, budget=STRICT)
    summary = accuracy_summary(start_only, result)
    assert summary["start"]["source"] == "comparison" and summary["start"]["path"] == str(result.start.path)
    assert summary["fixed"]["source"] == "autofix"
    assert summary["fixed"]["cosine_mean"] == result.best.cosine_mean and summary["fixed"]["meets_budget"]
    assert summary["fixed"]["path"] == str(result.path)
    json.dumps(summary)


def test_accuracy_summary_when_the_start_meets_the_budget(fused_tiny, tmp_path):
    path, feeds = fused_tiny
    relaxed = AccuracyBudget.preset("relaxed")
    result = autofix(
        path,
        PrecisionPlan.preset("cpu_int8_dynamic"),
        feeds,
        tmp_path / "search",
        budget=relaxed,
        config=AutofixConfig.preset("quick"),
    )
    report = compare_candidates(path, {"fixed": result.path}, feeds, budget=relaxed)
    summary = accuracy_summary(report, result)
    assert summary["trials"] == 1 and summary["pins"] == [] and summary["ranked_nodes"] == 0
    assert summary["quantized_nodes"] == 0  # no diagnosis ran and no model_path says what was converted
    counted = accuracy_summary(report, result, model_path=path)
    assert counted["quantized_nodes"] == len(quantized_nodes(path, result.start.path)) >= 12  # 2 layers
    assert summary["diagnosis_seconds"] is None and summary["diagnosis"] is None and summary["meets_budget"]
    assert summary["start"]["source"] == "autofix" and summary["fixed"]["source"] == "comparison"


def test_accuracy_summary_records_a_given_diagnosis(fixed, fused_tiny, tmp_path):
    from workbench.stages.accuracy.diagnose import diagnose

    result, report = fixed
    path, feeds = fused_tiny
    diagnosis = diagnose(path, report["start"].path, feeds[:2])
    summary = write_accuracy_summary(report, result, tmp_path / "summary.json", model_path=path, diagnosis=diagnosis)
    assert summary["diagnosis_seconds"] == diagnosis.seconds
    assert summary["diagnosis"]["source"] == "given" and summary["diagnosis"]["samples"] == 2
    assert summary["diagnosis"]["worst"] == [n.name for n in diagnosis.worst(5)]
    assert summary["quantized_nodes"] == len(quantized_nodes(path, result.start.path))
