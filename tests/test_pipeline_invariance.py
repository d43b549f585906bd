"""Batch invariance in the pipeline: the accuracy step measures every candidate under the served padding policy,
summary.json carries it per candidate, and the choice applies the rule when the deployment batches."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")

from tests.tiny_models import build_wide_bert  # noqa: E402
from workbench.pipeline import Pipeline, PipelineParameters  # noqa: E402
from workbench.stages.accuracy.compare import AccuracyBudget  # noqa: E402
from workbench.triton.padding import PaddingPolicy  # noqa: E402

SMALL = {
    "sequence_length": 32,
    "max_eval_samples": 24,
    "max_calibration_samples": 8,
    "eval_batch_size": 8,
    "benchmark_batch_sizes": (1,),
    "benchmark_iterations": 2,
    "threads": 1,
}


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    """A pipeline on the wide tiny BERT that exported, quantized (dynamic INT8), compared and wrote summary.json."""
    folder = build_wide_bert(tmp_path_factory.mktemp("wide-bert"))
    run = tmp_path_factory.mktemp("run")
    # a loose budget, so that both candidates meet it and only the batch-invariance rule tells them apart
    budget = AccuracyBudget(embedding_cosine_mean=0.5, embedding_cosine_min=0.5)
    pipeline = Pipeline(PipelineParameters(model_path=str(folder), output_dir=str(run), **SMALL), budget=budget)
    pipeline.export()
    pipeline.quantize()
    pipeline.compare()
    pipeline.write_summary()
    return pipeline, json.loads((run / "summary.json").read_text())


def test_summary_carries_each_candidates_batch_invariance_under_the_served_policy(compared):
    pipeline, summary = compared
    rows = {c["name"]: c for c in summary["candidates"]}
    assert set(rows) == {"fp32", "int8_dynamic_per_channel"}
    assert rows["fp32"]["batch_invariance_min"] == pytest.approx(1.0, abs=1e-6)  # float noise only
    assert rows["int8_dynamic_per_channel"]["batch_invariance_min"] < 0.9999
    assert (
        rows["int8_dynamic_per_channel"]["batch_invariance_mean"]
        >= rows["int8_dynamic_per_channel"]["batch_invariance_min"]
    )
    # measured under the policy the export serves (the default: length buckets), in batches of max_batch_size
    section = summary["batch_invariance"]
    assert section["measured"] and section["padding"] == PaddingPolicy(max_length=32).to_dict()
    assert section["padding"]["mode"] == "buckets" and section["batch_size"] == pipeline.served_max_batch_size == 8
    assert section["rule_min"] == 0.999
    report = pipeline.results["compare"]
    assert report.batch_invariance["int8_dynamic_per_channel"].policy == pipeline.padding
    assert report.to_dict()["batch_invariance"]["fp32"]["cosine_min"] == rows["fp32"]["batch_invariance_min"]
    assert "batch invariance min" in report._repr_html_()


def test_the_choice_rules_out_a_candidate_that_is_not_batch_invariant(compared):
    from workbench.stages.benchmark.latency import BenchmarkConfig, BenchmarkResult, BenchmarkRow

    pipeline, _ = compared
    report = pipeline.results["compare"]
    # timings where the INT8 candidate is faster, so that only the invariance rule can rule it out
    config = BenchmarkConfig(batch_sizes=(1,), sequence_lengths=(32,), iterations=2)
    rows = [
        BenchmarkRow(name=n, batch=1, seq=32, p50_ms=ms, p90_ms=ms, p99_ms=ms, mean_ms=ms, throughput=1000.0 / ms)
        for n, ms in (("fp32", 2.0), ("int8_dynamic_per_channel", 1.0))
    ]
    timings = BenchmarkResult(rows=tuple(rows), config=config, machine={})
    from workbench.stages.choose import choose_candidate

    assert all(report.candidates), [c.failures for c in report.candidates]  # both meet the accuracy budget
    batching = choose_candidate(report, timings, batch=1, batch_invariance_min=0.999)
    assert batching.name == "fp32" and "not batch-invariant" in batching.reason
    assert batching.constraints["batch_invariance_min"] == 0.999
    assert choose_candidate(report, timings, batch=1).name == "int8_dynamic_per_channel"  # no batching: no rule


def test_the_deploy_step_serves_the_length_aware_policy_it_measured_and_records_it(compared):
    from workbench.triton.config import parse_model_config

    pipeline, _ = compared
    pipeline.benchmark()
    choice = pipeline.choose()
    assert choice.name == "fp32"  # the INT8 candidate is not batch-invariant and the export batches
    assert choice.constraints["batch_invariance_min"] == pipeline.batch_invariance_min == 0.999
    result = pipeline.export_triton()
    assert result.padding == pipeline.padding == PaddingPolicy(max_length=32)  # buckets in an ensemble
    tokenizer = parse_model_config(result.models["tokenizer"].config_text)
    parameters = {k: v.string_value for k, v in tokenizer.parameters.items()}
    assert (parameters["padding"], parameters["buckets"], parameters["batching"]) == ("buckets", "16,32", "ensemble")
    assert parse_model_config(result.models["model"].config_text).max_batch_size == pipeline.served_max_batch_size
    provenance = json.loads(result.provenance.read_text())
    assert provenance["padding"]["mode"] == "buckets" and provenance["padding"]["batching"] == "ensemble"
    assert provenance["batch_invariance"]["batch_invariance_min"] == pytest.approx(1.0, abs=1e-6)


def test_a_fixed_padding_deployment_is_measured_and_exported_as_fixed(tmp_path):
    from tests.tiny_models import build_wide_bert

    folder = build_wide_bert(tmp_path / "model")
    fixed = PaddingPolicy.fixed(32)
    budget = AccuracyBudget(embedding_cosine_mean=0.5, embedding_cosine_min=0.5)
    pipeline = Pipeline(
        PipelineParameters(
            model_path=str(folder), output_dir=str(tmp_path / "run"), **{**SMALL, "max_eval_samples": 12}
        ),
        budget=budget,
        padding=fixed,
    )
    pipeline.export()
    pipeline.quantize()
    report = pipeline.compare()
    assert {r.policy for r in report.batch_invariance.values()} == {fixed}
    assert report.batch_invariance["fp32"].cosine_min == pytest.approx(1.0, abs=1e-6)
    assert report.batch_invariance["int8_dynamic_per_channel"].cosine_min < 0.9999
