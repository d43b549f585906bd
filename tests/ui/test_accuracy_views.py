"""AccuracyView, DiagnosisView and FixView driven the way a user drives them, on the fused tiny BERT."""

from __future__ import annotations

import html
import json
import subprocess
import sys

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
go = pytest.importorskip("plotly.graph_objects")

from workbench.errors import AccuracyError, ConfigError, QuantizationError  # noqa: E402
from workbench.stages.accuracy.autofix import AutofixConfig, AutofixResult  # noqa: E402
from workbench.stages.accuracy.compare import AccuracyBudget, ComparisonReport  # noqa: E402
from workbench.stages.accuracy.diagnose import Diagnosis  # noqa: E402
from workbench.stages.accuracy.fixes import PlanEvaluation  # noqa: E402
from workbench.stages.precision.plan import PrecisionPlan  # noqa: E402
from workbench.ui import AccuracyView, DiagnosisView, FixView  # noqa: E402

PRESET = "cpu_int8_dynamic"


@pytest.fixture(scope="module")
def candidate(fused_tiny, tmp_path_factory):
    path, _ = fused_tiny
    return PrecisionPlan.preset(PRESET).convert(path, tmp_path_factory.mktemp("candidate") / "int8.onnx").path


@pytest.fixture(scope="module")
def diagnosis(fused_tiny, candidate):
    view = DiagnosisView(fused_tiny[0], candidate, fused_tiny[1])
    view.click()
    assert view.error is None, panel_text(view)
    return view.result


@pytest.fixture
def fix_view(fused_tiny, tiny_bert_onnx, tmp_path):
    path, feeds = fused_tiny
    return FixView(
        path,
        PrecisionPlan.preset(PRESET),
        feeds,
        tmp_path / "fix",
        reference=tiny_bert_onnx,
        budget=AccuracyBudget.preset("relaxed"),
        config=AutofixConfig.preset("quick"),
    )


def panel_text(view) -> str:
    return html.unescape(view.error_output.value)


def record_buttons_during(monkeypatch, module, name, view, buttons):
    """Wrap `module.name` so that each call records which of `buttons` are disabled while it runs."""
    seen: list[tuple[bool, ...]] = []
    original = getattr(module, name)

    def wrapped(*args, **kwargs):
        seen.append(tuple(b.disabled for b in buttons) + (view.running, view.status.value == "running..."))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return seen


# -- AccuracyView --------------------------------------------------------------------------------------------------


def test_accuracy_view_with_a_strict_budget_shows_a_falsy_report_naming_the_statistic(fused_tiny, candidate):
    path, feeds = fused_tiny
    view = AccuracyView(path, {"int8": candidate}, feeds, budget=AccuracyBudget(embedding_cosine_mean=0.99999))
    assert view.controls["embedding_cosine_mean"].value == 0.99999  # the controls start from the budget
    view.click()
    assert view.error is None, panel_text(view)
    report = view.result
    assert isinstance(report, ComparisonReport) and not report
    assert report.budget.embedding_cosine_mean == 0.99999 and report["int8"].path == candidate
    assert any(line.startswith("embedding cosine mean") for line in report["int8"].failures)
    assert view.shown[0] is report and view.status.value.startswith("done")
    shown_html = "".join(o["data"].get("text/html", "") for o in view.output.outputs)
    assert "misses: embedding cosine mean" in html.unescape(shown_html)

    view.controls["embedding_cosine_mean"].value = 0.9  # relax it in the controls, run again
    view.controls["embedding_cosine_min"].value = 0.9
    view.click()
    assert view.result and view.result is not report and view.result.budget.embedding_cosine_mean == 0.9


def test_accuracy_view_bad_control_shows_the_config_error_and_keeps_the_report(fused_tiny, candidate):
    path, feeds = fused_tiny
    view = AccuracyView(path, {"int8": candidate}, feeds)
    view.click()
    first = view.result
    view.controls["embedding_cosine_min"].value = 1.5
    view.click()
    assert isinstance(view.error, ConfigError) and "embedding_cosine_min" in str(view.error)
    assert "'embedding cosine min' must be in [-1.0, 1.0]" in panel_text(view)  # the control's label
    assert view.result is first and "failed" in view.status.value


def test_accuracy_view_shows_the_report_figures_it_has(fused_tiny, candidate, monkeypatch):
    path, feeds = fused_tiny
    figure = go.Figure()
    monkeypatch.setattr(ComparisonReport, "metric_figure", lambda self: figure, raising=False)
    monkeypatch.setattr(
        ComparisonReport, "error_histogram_figure", lambda self, output: go.Figure(), raising=False
    )  # needs an argument: not shown unasked
    view = AccuracyView(path, {"int8": candidate}, feeds)
    view.click()
    assert view.error is None, panel_text(view)
    assert view.shown == [view.result, figure]
    assert any("application/vnd.plotly.v1+json" in o["data"] for o in view.output.outputs)


def test_accuracy_view_shows_the_figures_the_real_report_offers(fused_tiny, candidate):
    from workbench.ui.accuracy import REPORT_FIGURES, report_figures

    path, feeds = fused_tiny
    view = AccuracyView(path, {"int8": candidate}, feeds)
    view.click()
    assert view.error is None, panel_text(view)
    offered = [name for name in REPORT_FIGURES if callable(getattr(view.result, name, None))]
    assert len(view.shown) == 1 + len(report_figures(view.result)) <= 1 + len(offered)
    assert all(isinstance(figure, go.Figure) for figure in view.shown[1:])


def test_accuracy_view_disables_run_while_running(fused_tiny, candidate, monkeypatch):
    import workbench.stages.accuracy.compare as accuracy

    path, feeds = fused_tiny
    view = AccuracyView(path, {"int8": candidate}, feeds)
    seen = record_buttons_during(monkeypatch, accuracy, "compare_candidates", view, [view.run_button])
    view.click()
    assert seen == [(True, True, True)]
    assert not view.run_button.disabled and not view.running


# -- DiagnosisView -------------------------------------------------------------------------------------------------


def test_diagnosis_view_shows_the_nodes_and_the_figure(diagnosis, candidate, fused_tiny):
    assert isinstance(diagnosis, Diagnosis) and diagnosis.nodes
    assert diagnosis.candidate == candidate and diagnosis.samples == len(fused_tiny[1])
    assert diagnosis.sensitivity()  # the quantized nodes have local errors


def test_diagnosis_view_shows_table_then_chart(fused_tiny, candidate, monkeypatch):
    import workbench.stages.accuracy.diagnose as diagnose_stage

    view = DiagnosisView(fused_tiny[0], candidate, fused_tiny[1][:2])
    seen = record_buttons_during(monkeypatch, diagnose_stage, "diagnose", view, [view.run_button])
    view.click()
    assert view.error is None, panel_text(view)
    assert seen == [(True, True, True)] and not view.run_button.disabled
    assert view.shown[0] is view.result and isinstance(view.shown[1], go.Figure) and len(view.shown[1].data) > 0
    outputs = view.output.outputs
    assert "Diagnosis" in outputs[0]["data"]["text/html"]
    assert view.result.worst(1)[0].name in html.unescape(outputs[0]["data"]["text/html"])
    assert "application/vnd.plotly.v1+json" in outputs[1]["data"]


def test_diagnosis_view_of_an_unrelated_model_shows_the_error(fused_tiny, tmp_path):
    from workbench.errors import WorkbenchError

    path, feeds = fused_tiny
    other = onnx.helper.make_model(
        onnx.helper.make_graph(
            [onnx.helper.make_node("Identity", ["x"], ["y"], name="id")],
            "other",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
        )
    )
    onnx.save(other, str(tmp_path / "other.onnx"))
    view = DiagnosisView(path, tmp_path / "other.onnx", feeds)
    view.click()
    assert isinstance(view.error, WorkbenchError) and "Fix:" in panel_text(view) and view.result is None


# -- FixView: the manual fix -----------------------------------------------------------------------------------------


def test_pin_a_diagnosed_node_then_rerun(fix_view, diagnosis):
    node = diagnosis.sensitivity()[0][0]
    fix_view.nodes.value = f" {node} , "
    fix_view.pin_button.click()
    plan = fix_view.plan
    assert plan.nodes[node].precision == "fp32" and fix_view.plan.keep_fp32 == (node,)
    assert node in html.unescape(fix_view.plan_html.value) and "pinned" in fix_view.plan_status.value
    assert fix_view.result is None  # pinning converts nothing

    fix_view.click()  # Re-run
    assert fix_view.error is None, panel_text(fix_view)
    result = fix_view.result
    assert isinstance(result, PlanEvaluation)
    conversion, accuracy = result
    assert conversion.keep_fp32 == (node,) and conversion.path.is_file() and accuracy
    assert node in {n.name for n in onnx.load(str(conversion.path)).graph.node}
    assert fix_view.shown == [result, fix_view.plan] and fix_view.status.value.startswith("done")


def test_unpin_and_empty_names(fix_view, fused_tiny):
    matmuls = [n.name for n in onnx.load(str(fused_tiny[0])).graph.node if n.op_type == "MatMul"][:2]
    fix_view.nodes.value = ", ".join(matmuls)
    fix_view.pin()
    assert fix_view.plan.keep_fp32 == tuple(sorted(matmuls))
    fix_view.nodes.value = matmuls[0]
    fix_view.unpin_button.click()
    assert fix_view.plan.keep_fp32 == (matmuls[1],) and "unpinned" in fix_view.plan_status.value
    before = fix_view.plan
    fix_view.nodes.value = " , "
    assert fix_view.pin() is None
    assert fix_view.plan is before and "ConfigError" in panel_text(fix_view) and "Fix:" in panel_text(fix_view)


def test_unknown_node_shows_the_quantization_error_and_keeps_the_result(fix_view, diagnosis):
    fix_view.click()
    first = fix_view.result
    assert isinstance(first, PlanEvaluation), panel_text(fix_view)
    fix_view.nodes.value = "no_such_node"
    fix_view.pin_button.click()
    assert "no_such_node" in fix_view.plan.keep_fp32
    fix_view.click()
    assert isinstance(fix_view.error, QuantizationError)
    text = panel_text(fix_view)
    assert "QuantizationError" in text and "no_such_node" in text and "Fix:" in text
    assert "failed" in fix_view.status.value
    assert fix_view.result is first and fix_view.shown[0] is first
    fix_view.unpin_button.click()  # take it back out, and the plan converts again
    fix_view.click()
    assert fix_view.error is None and fix_view.result is not first


def test_rerun_uses_the_budget_controls(fix_view):
    fix_view.controls["embedding_cosine_mean"].value = 0.9999999
    fix_view.click()
    assert fix_view.error is None, panel_text(fix_view)
    assert not fix_view.result.accuracy
    assert any("embedding cosine mean" in line for line in fix_view.result.accuracy.failures)


# -- FixView: the automatic fix ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "budget",
    [
        AccuracyBudget(embedding_cosine_mean=0.99999, embedding_cosine_min=0.99999),  # the tiny BERT needs pins here
        AccuracyBudget(embedding_cosine_mean=0.9999, embedding_cosine_min=0.999),  # its INT8 start already meets this
    ],
    ids=["needs-pins", "start-meets"],
)
def test_autofix_meets_a_strict_budget_with_progress_per_trial(fused_tiny, tiny_bert_onnx, tmp_path, budget):
    path, feeds = fused_tiny
    view = FixView(
        path,
        PrecisionPlan.preset(PRESET),
        feeds,
        tmp_path / "fix",
        reference=tiny_bert_onnx,
        budget=budget,
        config=AutofixConfig.preset("quick"),
    )
    buttons = [view.run_button, view.autofix_button, view.pin_button, view.unpin_button]
    seen: list[tuple[bool, ...]] = []
    view.progress.observe(lambda change: seen.append(tuple(b.disabled for b in buttons)), names="value")
    view.autofix_button.click()
    assert view.error is None, panel_text(view)
    result = view.result
    assert isinstance(result, AutofixResult)
    best = result.best
    assert best.meets_budget and best.cosine_mean >= budget.embedding_cosine_mean
    assert best.cosine_min >= budget.embedding_cosine_min and result.path.is_file()
    assert result.path.parent == tmp_path / "fix" / "autofix"
    assert view.plan == result.plan and set(best.pins) <= set(view.plan.keep_fp32)
    # one progress line per trial, each written while every button was disabled
    assert view.trials == list(result.trials)
    assert view.progress.value.count("<br>trial ") == len(result.trials)
    assert seen and all(all(state) for state in seen)
    assert not any(b.disabled for b in buttons)
    # the result, its latency-vs-accuracy chart and the plan it found
    assert view.shown[0] is result and isinstance(view.shown[1], go.Figure) and view.shown[2] is view.plan
    assert view.shown[1].layout.title.text == "Autofix trials"
    if budget.embedding_cosine_mean == 0.99999:
        assert best.pins and len(result.trials) > 1 and not result.start.meets_budget
    else:
        assert best.pins == () and len(result.trials) == 1


def test_autofix_then_rerun_converts_the_fixed_plan(fused_tiny, tmp_path):
    path, feeds = fused_tiny
    strict = AccuracyBudget(embedding_cosine_mean=0.99999, embedding_cosine_min=0.99999)
    view = FixView(
        path, PrecisionPlan.preset(PRESET), feeds, tmp_path / "fix", budget=strict, config=AutofixConfig.preset("quick")
    )
    view.autofix()
    fixed = view.result
    assert isinstance(fixed, AutofixResult), panel_text(view)
    view.click()  # Re-run the plan Auto-fix found: it meets the budget on its own
    assert isinstance(view.result, PlanEvaluation) and view.result.accuracy, panel_text(view)
    assert set(view.result.conversion.keep_fp32) == set(fixed.plan.keep_fp32)


def test_autofix_failure_shows_the_error_and_keeps_the_result(fix_view, monkeypatch):
    import workbench.stages.accuracy.autofix as autofix_stage

    fix_view.click()
    first = fix_view.result

    def unreachable(*args, **kwargs):
        raise AccuracyError(
            "Even with all 13 quantized nodes in FP32 the candidate misses the budget.",
            fix="check the reference and the evaluation data, or relax the budget",
        )

    monkeypatch.setattr(autofix_stage, "autofix", unreachable)
    plan = fix_view.plan
    fix_view.autofix_button.click()
    assert isinstance(fix_view.error, AccuracyError) and "Fix:" in panel_text(fix_view)
    assert fix_view.result is first and fix_view.plan is plan
    assert not fix_view.autofix_button.disabled and not fix_view.run_button.disabled


def test_rerun_disables_every_button_while_running(fix_view, monkeypatch):
    import workbench.stages.accuracy.fixes as fixes

    buttons = [fix_view.run_button, fix_view.autofix_button, fix_view.pin_button, fix_view.unpin_button]
    seen = record_buttons_during(monkeypatch, fixes, "evaluate_plan", fix_view, buttons)
    fix_view.click()
    assert seen == [(True,) * 6] and not any(b.disabled for b in buttons)


def test_fix_view_needs_a_precision_plan(fused_tiny, tmp_path):
    with pytest.raises(ConfigError, match="PrecisionPlan"):
        FixView(fused_tiny[0], "cpu_int8_dynamic", fused_tiny[1], tmp_path)


# -- light imports and exports -------------------------------------------------------------------------------------


def test_building_the_views_imports_nothing_heavy(tmp_path):
    code = (
        "import sys, json\n"
        "from workbench.stages.precision.plan import PrecisionPlan\n"
        "from workbench.ui import AccuracyView, DiagnosisView, FixView\n"
        f"m = {str(tmp_path / 'm.onnx')!r}\n"
        "AccuracyView(m, {'int8': m}, [])\n"
        "DiagnosisView(m, m, [])\n"
        f"view = FixView(m, PrecisionPlan.preset('cpu_int8_dynamic'), [], {str(tmp_path)!r})\n"
        "view.nodes.value = 'a, b'\n"
        "view.pin(); view.unpin()\n"
        "print(json.dumps([m for m in ('torch', 'onnxruntime', 'tensorrt', 'plotly') if m in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_workbench_ui_exports_the_views():
    import workbench.ui as ui

    assert ui.AccuracyView is AccuracyView and ui.DiagnosisView is DiagnosisView and ui.FixView is FixView
    assert {"AccuracyView", "DiagnosisView", "FixView"} <= set(ui.__all__)
    assert all(issubclass(v, ui.StageView) for v in (AccuracyView, DiagnosisView, FixView))
