"""Accuracy stage: Polygraphy comparison, output checks, task metrics, charts, and a budget that fails when
it should."""

from __future__ import annotations

import dataclasses
import html
import json
from typing import ClassVar

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from workbench.data import tokenize_batches  # noqa: E402
from workbench.errors import ConfigError, DataError  # noqa: E402
from workbench.models import load_model  # noqa: E402
from workbench.stages.accuracy.compare import (  # noqa: E402
    ERROR_HISTOGRAM_EDGES,
    AccuracyBudget,
    OutputCheck,
    compare_candidates,
    mean_pooled_embeddings,
)
from workbench.stages.precision.quantize import DynamicQuantConfig, quantize_dynamic  # noqa: E402
from workbench.tasks.base import (  # noqa: E402
    Budget,
    Task,
    TaskMetrics,
    budget_field,
    get_task,
    registered_task,
    tasks,
)
from workbench.tasks.classification import ClassificationBudget  # noqa: E402

TEXTS = [
    "the cat sat on the mat",
    "quarterly revenue grew 12%",
    "how do I reset my password?",
    "SELECT * FROM users;",
    "a much longer sentence that goes on and on about nothing in particular",
]


@pytest.fixture(scope="module")
def feeds(tiny_model_dir):
    return tokenize_batches(
        load_model(tiny_model_dir("bert")).load_tokenizer(), TEXTS, batch_size=2, sequence_length=24
    )


def _noisy_copy(path, out, scale):
    """A copy of the model with every float initializer perturbed: a candidate with known, tunable error."""
    model = onnx.load(str(path))
    rng = np.random.default_rng(0)
    for tensor in model.graph.initializer:
        if tensor.data_type == onnx.TensorProto.FLOAT:
            values = onnx.numpy_helper.to_array(tensor)
            noisy = values + scale * rng.standard_normal(values.shape).astype(np.float32) * (
                np.abs(values).mean() + 1e-6
            )
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
    budget = AccuracyBudget(
        embedding_cosine_mean=min(1.0, measured.embedding_cosine_mean + 1e-6),
        embedding_cosine_min=-1.0,
        output_cosine_min=1.0,
    )
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


# --- per-output checks (Polygraphy compare functions) ---------------------------------------------------------

NO_BUDGET = AccuracyBudget(embedding_cosine_mean=-1.0, embedding_cosine_min=-1.0)  # only the checks decide


@pytest.fixture(scope="module")
def noisy_bert(tiny_bert_onnx, tmp_path_factory):
    return _noisy_copy(tiny_bert_onnx, tmp_path_factory.mktemp("noisy") / "noisy.onnx", scale=0.05)


@pytest.mark.parametrize(
    "check, statistic, recorded",
    [
        (OutputCheck("cosine", threshold=0.9999), "cosine similarity", "cosine_min"),
        (OutputCheck("simple", atol=1e-4, rtol=1e-4), "max abs diff", "max_rel"),
        (OutputCheck("simple", atol=1e-3, stat="mean"), "mean abs diff", "mean_abs"),
        (OutputCheck("simple", atol=1e-3, stat="median"), "median abs diff", "median_abs"),
        (OutputCheck("simple", rtol=1e-3, stat="quantile", quantile=0.9), "0.9-quantile rel diff", "quantile_rel"),
        (OutputCheck("l2", threshold=1e-3), "L2 norm", "l2_max"),
        (OutputCheck("snr", threshold=40.0), "SNR", "snr_min"),
    ],
    ids=["cosine", "simple-max", "simple-mean", "simple-median", "simple-quantile", "l2", "snr"],
)
def test_each_output_check_passes_identical_and_fails_noisy(
    tiny_bert_onnx, noisy_bert, feeds, check, statistic, recorded
):
    report = compare_candidates(
        tiny_bert_onnx,
        {"same": tiny_bert_onnx, "noisy": noisy_bert},
        feeds,
        budget=NO_BUDGET,
        output_checks={"": check},
    )
    assert report.output_checks == {"last_hidden_state": check}
    same, noisy = report["same"], report["noisy"]
    assert same and same.checks[0].passed and same.checks[0].batches == len(feeds)
    assert not report and not noisy
    assert len(noisy.failures) == 1, noisy.failures
    line = noisy.failures[0]
    assert "'last_hidden_state'" in line and statistic in line and f"{len(feeds)}/{len(feeds)} batches fail" in line
    result = noisy.checks[0]
    assert not result and result.batches_failed == len(feeds) and result.message == line
    assert recorded in noisy.outputs["last_hidden_state"]
    limit = (
        check.tolerances[0]
        if check.atol is not None
        else (check.tolerances[1] if check.kind == "simple" else check.limit)
    )
    assert f"{limit:g}" in line  # the line names the threshold
    shown = {f"{v:{spec}}" for v in result.values.values() for spec in (".5g", ".6g", ".6f")}
    assert any(text in line for text in shown), (line, result.values)  # and the value


def test_simple_check_records_polygraphys_statistics(tiny_bert_onnx, noisy_bert, feeds):
    report = compare_candidates(
        tiny_bert_onnx,
        {"noisy": noisy_bert},
        feeds,
        budget=NO_BUDGET,
        output_checks={"last_hidden_state": OutputCheck("simple", atol=10.0, stat="quantile", quantile=0.5)},
    )
    stats = report["noisy"].outputs["last_hidden_state"]
    assert report, report["noisy"].failures  # a loose tolerance passes
    for key in (
        "cosine_mean",
        "cosine_min",
        "max_abs",
        "mean_abs",
        "median_abs",
        "max_rel",
        "mean_rel",
        "median_rel",
        "quantile_abs",
        "quantile_rel",
    ):
        assert np.isfinite(stats[key]), key
    assert stats["quantile"] == 0.5
    assert 0 < stats["median_abs"] <= stats["max_abs"] and 0 < stats["quantile_abs"] <= stats["max_abs"]
    assert "l2_max" not in stats and "snr_min" not in stats  # computed only where a check asks for them
    checked = report["noisy"].checks[0]
    assert checked.passed and set(checked.values) == {"quantile_absdiff", "quantile_reldiff", "quantile"}


def test_named_output_check_overrides_the_default(tiny_bert_onnx, noisy_bert, feeds):
    checks = {"": OutputCheck("cosine", threshold=-1.0), "last_hidden_state": OutputCheck("snr", threshold=40.0)}
    report = compare_candidates(tiny_bert_onnx, {"noisy": noisy_bert}, feeds, budget=NO_BUDGET, output_checks=checks)
    assert [c.check.kind for c in report["noisy"].checks] == ["snr"] and not report


def test_output_checks_are_validated(tiny_bert_onnx, feeds):
    with pytest.raises(ConfigError, match="no_such_output"):
        compare_candidates(
            tiny_bert_onnx, {"x": tiny_bert_onnx}, feeds, output_checks={"no_such_output": OutputCheck()}
        )
    with pytest.raises(ConfigError, match="OutputCheck"):
        compare_candidates(tiny_bert_onnx, {"x": tiny_bert_onnx}, feeds, output_checks={"": 0.99})
    with pytest.raises(ConfigError, match="atol"):
        OutputCheck("simple", threshold=0.1)
    with pytest.raises(ConfigError, match="threshold"):
        OutputCheck("cosine", atol=0.1)
    with pytest.raises(ConfigError):
        OutputCheck("psnr")
    with pytest.raises(ConfigError):
        OutputCheck("simple", atol=1e-3, stat="elemwise")
    with pytest.raises(ConfigError):
        OutputCheck("cosine", threshold=1.5)
    assert OutputCheck("cosine").limit == 0.997 and OutputCheck("snr").limit == 20.0  # Polygraphy's defaults
    assert OutputCheck("simple").tolerances == (1e-5, 1e-5)
    assert OutputCheck("simple", atol=1e-3).tolerances == (1e-3, 0.0)  # an absolute-only check
    assert OutputCheck.from_json(OutputCheck("simple", rtol=0.1, stat="mean").to_json()) == OutputCheck(
        "simple", rtol=0.1, stat="mean"
    )


def test_output_checks_accept_dicts(tiny_bert_onnx, feeds):
    report = compare_candidates(
        tiny_bert_onnx, {"same": tiny_bert_onnx}, feeds, output_checks={"": {"kind": "l2", "threshold": 0.0}}
    )
    assert report and report["same"].checks[0].check == OutputCheck("l2", threshold=0.0)


def test_statistics_and_error_histogram_are_recorded_without_checks(tiny_bert_onnx, noisy_bert, feeds):
    report = compare_candidates(tiny_bert_onnx, {"same": tiny_bert_onnx, "noisy": noisy_bert}, feeds)
    elements = sum(f["input_ids"].size for f in feeds) * 32  # hidden size 32
    same = report["same"].error_histograms["last_hidden_state"]
    noisy = report["noisy"].error_histograms["last_hidden_state"]
    assert len(same) == len(ERROR_HISTOGRAM_EDGES) + 1
    assert sum(same) == sum(noisy) == elements
    assert same[0] == elements  # identical: every difference is below the first edge (exact zeros)
    assert noisy[0] < elements and sum(noisy[1:]) > 0
    assert report["same"].checks == () and set(report["noisy"].outputs["last_hidden_state"]) >= {
        "max_rel",
        "mean_rel",
        "median_abs",
        "median_rel",
    }
    json.dumps(report.to_dict(), allow_nan=False)  # strict JSON


def test_to_dict_is_strict_json_with_infinite_snr(tiny_bert_onnx, feeds):
    report = compare_candidates(tiny_bert_onnx, {"same": tiny_bert_onnx}, feeds, output_checks={"": OutputCheck("snr")})
    assert report["same"].outputs["last_hidden_state"]["snr_min"] == float("inf")
    encoded = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    assert encoded["candidates"][0]["outputs"]["last_hidden_state"]["snr_min"] is None
    assert encoded["task"] == "feature-extraction" and encoded["candidates"][0]["checks"][0]["passed"] is True


# --- task metrics ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A tiny BERT sequence classifier (3 labels) exported to ONNX, its noisy copy, and feeds."""
    from tests.tiny_models import build_tiny_model
    from workbench.stages.export import export_onnx

    folder = tmp_path_factory.mktemp("classifier")
    source = load_model(build_tiny_model("bert", folder / "hf", classifier=True))
    path = export_onnx(source, folder / "classifier.onnx").path
    feeds = tokenize_batches(source.load_tokenizer(), TEXTS, batch_size=2, sequence_length=24)
    return path, _noisy_copy(path, folder / "noisy.onnx", scale=0.5), feeds


def test_classification_task_is_detected_and_measured_against_its_default_budget(classifier):
    path, noisy, feeds = classifier
    report = compare_candidates(path, {"same": path, "noisy": noisy}, feeds)
    assert report.task == "text-classification" and isinstance(report.budget, ClassificationBudget)
    assert report.budget == ClassificationBudget() and report.budget.gates()  # the default budget gates something
    same, other = report["same"].task_metrics, report["noisy"].task_metrics
    assert same["argmax_agreement"] == 1.0 and same["logit_max_abs"] == 0.0 and same["argmax_disagreements"] == 0
    assert same["logits_cosine_min"] == pytest.approx(1.0) and same["top_probability_change_max"] == 0.0
    assert other["argmax_agreement"] < 1.0 or other["logit_max_abs"] > 0.0
    assert report["same"] and (report["same"].cosine_mean, report["same"].cosine_min) == (
        same["logits_cosine_mean"],
        same["logits_cosine_min"],
    )  # every task fills the primary cosine
    assert report["same"].embedding_cosine_mean is None and len(report["same"].per_sample_cosine) == len(TEXTS)
    page = report._repr_html_()
    assert "argmax agreement" in page
    for g in report.budget.gates():  # every figure beside a verdict says whether the budget gates it
        assert f"{g.metric.replace('_', ' ')}<br><small>gated: {html.escape(g.op)} {g.limit:g}</small>" in page
    assert "<small>not gated</small>" in page  # argmax_disagreements, for one, is shown but not gated


def test_classification_budget_fails_a_noisy_classifier(classifier):
    path, noisy, feeds = classifier
    budget = ClassificationBudget(argmax_agreement_min=1.0, logit_max_abs=1e-6)
    report = compare_candidates(path, {"same": path, "noisy": noisy}, feeds, budget=budget, task="text-classification")
    assert report["same"] and not report["noisy"] and not report
    assert any(line.startswith(("argmax agreement", "logit max abs")) for line in report["noisy"].failures)


def test_a_budget_of_another_task_is_refused_before_anything_runs(classifier, tiny_bert_onnx, feeds):
    with pytest.raises(ConfigError, match="ClassificationBudget is a budget for task 'text-classification'"):
        compare_candidates(tiny_bert_onnx, {"same": tiny_bert_onnx}, feeds, budget=ClassificationBudget())
    path, _, classifier_feeds = classifier
    with pytest.raises(ConfigError, match="EmbeddingBudget"):
        compare_candidates(path, {"same": path}, classifier_feeds, budget=AccuracyBudget())
    with pytest.raises(DataError, match="logits"):
        compare_candidates(tiny_bert_onnx, {"same": tiny_bert_onnx}, feeds, task="text-classification")


def test_a_budget_that_gates_nothing_is_refused():
    with pytest.raises(ConfigError, match="gates nothing"):
        ClassificationBudget(argmax_agreement_min=None, logits_cosine_mean=None, logits_cosine_min=None)
    with pytest.raises(ConfigError, match="gates nothing"):
        AccuracyBudget(embedding_cosine_mean=None, embedding_cosine_min=None)


@dataclasses.dataclass(frozen=True)
class _HiddenErrorBudget(Budget):
    task: ClassVar[str] = "toy-hidden-error"
    hidden_max_abs_max: float = budget_field(0.1, "<=", metric="hidden_max_abs", label="hidden max abs")


class _HiddenError(Task):
    """A toy task registered from a test: its own metric (the largest hidden-state difference) and budget."""

    name = "toy-hidden-error"
    title = "Toy hidden error"
    outputs = ("last_hidden_state",)
    budget_type = _HiddenErrorBudget
    primary_cosine = ("hidden_cosine", "hidden_cosine")
    metric_names = ("hidden_max_abs", "hidden_cosine")
    calls: ClassVar[list[tuple[int, ...]]] = []

    detect_from_outputs = False  # never found on its own: only when asked for by name

    def metrics(self, reference, candidate, feeds, meta=None):
        ref = np.concatenate([r["last_hidden_state"] for r in reference])
        cand = np.concatenate([c["last_hidden_state"] for c in candidate])
        type(self).calls.append(ref.shape)
        cosine = float(np.sum(ref * cand) / (np.linalg.norm(ref) * np.linalg.norm(cand)))
        return TaskMetrics({"hidden_max_abs": float(np.abs(ref - cand).max()), "hidden_cosine": cosine})


def test_a_task_registered_in_a_test_judges_candidates_by_its_own_metric(tiny_bert_onnx, noisy_bert, feeds):
    with registered_task(_HiddenError) as toy:
        assert get_task("toy-hidden-error") is toy
        report = compare_candidates(
            tiny_bert_onnx,
            {"same": tiny_bert_onnx, "noisy": noisy_bert},
            feeds,
            task="toy-hidden-error",
            budget=_HiddenErrorBudget(hidden_max_abs_max=1e-6),
        )
        assert report.task == "toy-hidden-error" and report.budget.describe() == "hidden max abs <= 1e-06"
        assert report["same"] and report["same"].task_metrics["hidden_max_abs"] == 0.0
        assert not report["noisy"] and report["noisy"].failures[0].startswith("hidden max abs")
        assert report["noisy"].cosine_mean == report["noisy"].task_metrics["hidden_cosine"] < 1.0
        assert _HiddenError.calls[-2:] == [(len(TEXTS), 24, 32)] * 2  # once per candidate, every batch
    assert "toy-hidden-error" not in tasks()


def test_task_is_validated(tiny_bert_onnx, feeds):
    with pytest.raises(ConfigError, match="There is no task 'regression'"):
        compare_candidates(tiny_bert_onnx, {"x": tiny_bert_onnx}, feeds, task="regression")
    with pytest.raises(ConfigError, match="Task or a task name"):
        compare_candidates(tiny_bert_onnx, {"x": tiny_bert_onnx}, feeds, task=lambda r, c, f: {})


def test_classification_budget_fields_round_trip_and_validate():
    budget = ClassificationBudget(argmax_agreement_min=0.98, logit_max_abs=0.5)
    assert ClassificationBudget.from_json(budget.to_json()) == budget
    assert Budget.from_dict(budget.to_dict()) == budget  # the "task" key picks the type
    with pytest.raises(ConfigError):
        ClassificationBudget(argmax_agreement_min=1.5)
    with pytest.raises(ConfigError):
        ClassificationBudget(logit_max_abs=-1.0)
    with pytest.raises(ConfigError, match="not 'feature-extraction'"):
        AccuracyBudget.from_dict(budget.to_dict())


# --- charts ---------------------------------------------------------------------------------------------------


def test_metric_figure_has_a_box_per_candidate_and_the_budget_lines(tiny_bert_onnx, noisy_bert, feeds):
    report = compare_candidates(tiny_bert_onnx, {"same": tiny_bert_onnx, "noisy": noisy_bert}, feeds)
    figure = report.metric_figure()
    assert [t.type for t in figure.data] == ["box", "box"] and [t.name for t in figure.data] == ["same", "noisy"]
    assert figure.data[0].boxpoints == "all" and len(figure.data[1].y) == len(TEXTS)
    assert sorted(s.y0 for s in figure.layout.shapes) == sorted(
        [report.budget.embedding_cosine_min, report.budget.embedding_cosine_mean]
    )
    assert [t.type for t in report.metric_figure("violin").data] == ["violin", "violin"]
    with pytest.raises(ConfigError):
        report.metric_figure("pie")


def test_error_histogram_figure_has_a_trace_per_candidate(tiny_bert_onnx, noisy_bert, feeds):
    report = compare_candidates(tiny_bert_onnx, {"same": tiny_bert_onnx, "noisy": noisy_bert}, feeds)
    figure = report.error_histogram_figure()
    assert [t.name for t in figure.data] == ["same", "noisy"] and figure.layout.xaxis.type == "log"
    same = np.asarray(figure.data[0].y[:-1])  # the last point repeats the last step
    assert same[0] == pytest.approx(1.0) and np.asarray(figure.data[1].y[:-1]).sum() == pytest.approx(1.0)
    assert len(report.error_histogram_figure("last_hidden_state").data) == 2
    with pytest.raises(DataError, match="no_such_output"):
        report.error_histogram_figure("no_such_output")


def test_metric_figure_plots_the_tasks_primary_cosine(classifier):
    path, _, feeds = classifier
    report = compare_candidates(path, {"same": path}, feeds)
    figure = report.metric_figure()
    assert [t.name for t in figure.data] == ["same"] and "logits cosine" in figure.layout.title.text
    assert sorted(s.y0 for s in figure.layout.shapes) == sorted(
        [report.budget.logits_cosine_min, report.budget.logits_cosine_mean]
    )
    assert [t.name for t in report.error_histogram_figure("logits").data] == ["same"]
