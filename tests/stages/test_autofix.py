"""Diagnosis and automatic fixes on the tiny BERT: the search meets a strict budget within its trial bound."""

from __future__ import annotations

import math

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from workbench.errors import AccuracyError, DataError  # noqa: E402
from workbench.stages.accuracy.autofix import AutofixConfig, autofix, trial_budget  # noqa: E402
from workbench.stages.accuracy.compare import AccuracyBudget, compare_candidates  # noqa: E402
from workbench.stages.accuracy.diagnose import diagnose, quantized_nodes  # noqa: E402
from workbench.stages.precision.plan import PrecisionPlan  # noqa: E402


@pytest.fixture(scope="module")
def candidate(fused_tiny, tmp_path_factory):
    path, feeds = fused_tiny
    return PrecisionPlan.preset("cpu_int8_dynamic").convert(path, tmp_path_factory.mktemp("cand") / "int8.onnx").path


def test_diagnosis_scores_every_matched_node_and_ranks_quantized_ones(fused_tiny, candidate):
    path, feeds = fused_tiny
    result = diagnose(path, candidate, feeds)
    assert result.nodes and not result.unmatched
    assert [n.index for n in result.nodes] == sorted(n.index for n in result.nodes)  # graph order
    quantized = set(quantized_nodes(path, candidate))
    ranked = result.sensitivity()
    assert {name for name, _ in ranked} <= quantized and len(ranked) >= len(quantized) - 1
    assert [score for _, score in ranked] == sorted((score for _, score in ranked), reverse=True)
    assert all(
        n.relative_error >= 0 and n.added_error == pytest.approx(n.relative_error - n.input_error) for n in result.nodes
    )
    assert result.figure().data


def test_identical_models_diagnose_as_exact(fused_tiny):
    path, feeds = fused_tiny
    result = diagnose(path, path, feeds)
    assert all(n.relative_error == 0.0 for n in result.nodes) and result.sensitivity() == []


def test_autofix_meets_a_strict_budget_within_the_trial_bound(fused_tiny, candidate, tmp_path):
    path, feeds = fused_tiny
    start = compare_candidates(path, {"c": candidate}, feeds)["c"]
    # tighter than the unfixed candidate, looser than FP32: some nodes must be pinned
    budget = AccuracyBudget(
        embedding_cosine_mean=1 - (1 - start.embedding_cosine_mean) / 4,
        embedding_cosine_min=1 - (1 - start.embedding_cosine_min) / 4,
    )
    result = autofix(
        path,
        PrecisionPlan.preset("cpu_int8_dynamic"),
        feeds,
        tmp_path / "fix",
        budget=budget,
        config=AutofixConfig(try_smoothing=False, latency_iterations=2),
    )
    assert not result.start.meets_budget and result.best.meets_budget and result.best.pins
    n = len(quantized_nodes(path, candidate))
    assert len(result.trials) <= trial_budget(n, AutofixConfig().max_prune_trials) <= 2 * math.log2(n) + 10
    fixed = compare_candidates(path, {"fixed": result.path}, feeds, budget=budget)["fixed"]
    assert fixed, "the fixed model written to disk must meet the budget"
    assert set(result.plan.keep_fp32) == set(result.best.pins)
    assert PrecisionPlan.load(tmp_path / "fix" / "fixed_plan.json") == result.plan
    assert result.figure().data and result.pareto_front()


def test_autofix_tries_smoothing_first(fused_tiny, tmp_path):
    path, feeds = fused_tiny
    result = autofix(
        path,
        PrecisionPlan.preset("cpu_int8_dynamic"),
        feeds,
        tmp_path / "fix",
        budget=AccuracyBudget(embedding_cosine_mean=0.999999, embedding_cosine_min=0.99999),
        calibration_feeds=feeds,
        config=AutofixConfig(latency_iterations=2, max_prune_trials=1),
    )
    assert result.trials[1].stage == "smooth" and result.trials[1].smoothed
    assert result.best.meets_budget


def test_unreachable_budget_is_an_accuracy_error(fused_tiny, tmp_path):
    from tests.stages.test_accuracy import _noisy_copy

    path, feeds = fused_tiny
    other = _noisy_copy(path, tmp_path / "other.onnx", scale=0.3)
    with pytest.raises(AccuracyError, match="Even with all"):
        # against a different model as reference even full FP32 cannot meet a near-perfect budget
        autofix(
            path,
            PrecisionPlan.preset("cpu_int8_dynamic"),
            feeds,
            tmp_path / "fix",
            reference=other,
            budget=AccuracyBudget(embedding_cosine_mean=0.9999999, embedding_cosine_min=0.9999999),
            config=AutofixConfig(try_smoothing=False, latency_iterations=1),
        )


def test_diagnosis_needs_data(fused_tiny, candidate):
    path, _ = fused_tiny
    with pytest.raises(DataError):
        diagnose(path, candidate, [])


def test_bf16_trials_are_refused_for_an_engine_without_bf16_before_any_trial(fused_tiny, tmp_path):
    from workbench.errors import ConfigError

    path, feeds = fused_tiny
    with pytest.raises(ConfigError, match="ONNX Runtime does not run floating-point ops in 'bf16'"):
        autofix(
            path,
            PrecisionPlan.preset("cpu_int8_dynamic"),
            feeds,
            tmp_path / "fix",
            config=AutofixConfig(float_precision="bf16"),
        )
    assert not (tmp_path / "fix").exists()
    with pytest.raises(ConfigError, match="float_precision"):
        AutofixConfig(float_precision="fp16")
