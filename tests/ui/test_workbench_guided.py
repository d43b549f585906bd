"""Issue 17 in the guided Workbench, driven headless on the tiny BERT: the stage views in the panels, progress and
Stop, state that survives a re-run cell, a new model clearing the old results, honest numbers, quiet panels."""

from __future__ import annotations

import html
import re
import time
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tritonclient")
pytest.importorskip("plotly.graph_objects")

from workbench.ui import Workbench  # noqa: E402
from workbench.ui.state import STATE_FILE  # noqa: E402

SMALL = {
    "sequence_length": 16,
    "max_eval_samples": 8,
    "max_calibration_samples": 8,
    "eval_batch_size": 4,
    "benchmark_batch_sizes": [1],
    "benchmark_iterations": 2,
}


def status_text(panel) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", panel.status.value))


def text_of(widget) -> str:
    return html.unescape(re.sub(r"<[^>]+>", "", widget.value))


def partial_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".partial" in p.name]


@pytest.fixture(autouse=True)
def own_calibration_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))


def relaxed(wb: Workbench) -> Workbench:
    wb["accuracy"].controls["embedding_cosine_mean"].value = 0.9  # a random-init model: relaxed budget
    wb["accuracy"].controls["embedding_cosine_min"].value = 0.8
    return wb


@pytest.fixture
def model(tiny_model_dir) -> str:
    return str(tiny_model_dir("bert"))


def make(model: str, folder: Path, **parameters) -> Workbench:
    return Workbench.from_parameters(model_path=model, output_dir=str(folder), **{**SMALL, **parameters})


def click(wb: Workbench, *steps: str) -> None:
    for step in steps:
        wb[step].click()
        assert wb.state(step) == "done", (step, html.unescape(wb[step].error_output.value))


def wait_until(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_click_runs_in_a_worker_thread_with_a_progress_bar_that_shows_the_elapsed_time(model, tmp_path):
    wb = relaxed(make(model, tmp_path / "run", benchmark_iterations=400))
    click(wb, "export")
    panel = wb["benchmark"]
    labels = []
    panel.progress.label.observe(lambda change: labels.append(text_of(panel.progress.label)), names="value")
    panel.run_button.click()  # returns at once: the step runs in a worker thread
    assert wb.worker is not None and wb.worker.is_alive()
    assert all(p.run_button.disabled for p in wb.panels.values())  # at once: no second step meanwhile
    wait_until(lambda: panel.running)
    assert panel.stop_button.layout.display != "none" and not panel.stop_button.disabled
    assert all(p.run_button.disabled for p in wb.panels.values())  # one step at a time
    wait_until(lambda: panel.progress.events > 3 and panel.progress.bar.value > 0)
    running = text_of(panel.progress.label)
    assert "elapsed" in running and "timing rounds" in running and "batch 1, seq 16" in running
    panel.stop()
    wb.wait()
    assert any("elapsed" in line for line in labels)


def test_stop_ends_a_long_step_cleanly_and_marks_it_stopped(model, tmp_path):
    wb = relaxed(make(model, tmp_path / "run", benchmark_iterations=5000))
    click(wb, "export")
    panel = wb["benchmark"]
    panel.stop_button.click()  # not running: nothing happens
    panel.run_button.click()
    wait_until(lambda: panel.progress.events > 2)
    panel.stop_button.click()
    wb.wait()
    assert wb.state("benchmark") == "stopped" and panel.result is None and panel.error is None
    assert status_text(panel).startswith("stopped after") and "nothing it was writing was kept" in status_text(panel)
    assert "stopped after" in text_of(panel.progress.label) and panel.progress.bar.bar_style == "warning"
    assert "benchmark" not in wb.pipeline.results and [r.step for r in wb.pipeline.history] == ["export"]
    assert not partial_files(tmp_path / "run") and "benchmark" not in wb.recipe.step_names
    assert panel.progress.last.done < panel.progress.last.total  # it stopped part-way
    assert "stopped" in wb.overview.value
    # nothing is left running; the step runs again, to its end
    panel.controls["benchmark_iterations"].value = 2
    click(wb, "benchmark")
    assert wb["benchmark"].result is wb.pipeline.results["benchmark"]


def test_re_running_the_cell_after_three_steps_re_attaches_and_shows_them_done(model, tmp_path):
    first = relaxed(make(model, tmp_path / "run"))
    first["precision"].controls["per_channel"].value = False
    click(first, "export", "quantize", "compare")
    assert (tmp_path / "run" / STATE_FILE).is_file()
    # the cell runs again (or the kernel restarted): a new Workbench on the same parameters
    again = make(model, tmp_path / "run")
    assert [again.state(k) for k in ("export", "quantize", "compare")] == ["done"] * 3
    assert again.state("benchmark") == "not run" and "re-attached" in again.message.value
    assert "restored from disk" in status_text(again["compare"])
    assert set(again.pipeline.candidates) == set(first.pipeline.candidates)
    report = again["compare"].result
    assert report is again.pipeline.results["compare"] and report.names == first["compare"].result.names
    assert again["compare"].shown[0] is report and again["compare"].output.outputs  # the result is on the page
    assert again["precision"].controls["per_channel"].value is False  # the settings it ran with
    assert again["accuracy"].controls["embedding_cosine_mean"].value == 0.9
    assert "re-attached" in html.unescape(again["load"].shown[0].value)
    # the re-attached run goes on: the next step runs on the restored pipeline and the recipe holds all four
    click(again, "benchmark")
    assert again.recipe.step_names == ("export", "quantize", "compare", "benchmark")
    # other parameters: the folder holds another run; nothing is restored, and the load panel says why
    other = make(model, tmp_path / "run", max_eval_samples=4)
    assert other.state("export") == "not run" and other.saved is not None and not other.saved
    assert "max_eval_samples" in html.unescape(other["load"].shown[0].value)


def test_loading_another_model_clears_every_result_including_a_failed_steps_error(model, tmp_path):
    wb = make(model, tmp_path / "run")
    click(wb, "export")
    wb["accuracy"].controls["embedding_cosine_mean"].value = 2.0
    wb["accuracy"].click()
    assert wb.state("compare") == "failed" and wb["compare"].error_output.value
    wb["load"].controls["output_dir"].value = str(tmp_path / "other")
    click(wb, "load")
    for key, panel in wb.panels.items():
        if key != "load":
            assert panel.state == "not run" and panel.result is None and not panel.output.outputs, key
            assert not panel.error_output.value and status_text(panel) == "not run", key


def test_the_precision_panel_offers_every_method_and_adds_a_candidate_the_later_steps_see(model, tmp_path, monkeypatch):
    from workbench.stages.precision import plan as plans

    # every preset PrecisionPlan knows, another engine's too (OpenVINO's NNCF)
    wb = relaxed(make(model, tmp_path / "run"))
    view = wb["convert"].view
    assert set(view.preset.options) >= {*plans.PrecisionPlan.PRESETS} and "cpu_int8_nncf" in view.preset.options
    view.preset.value = "cpu_int8_static"
    view.calibration_method.value = "Entropy"
    view.smoothquant.value = True
    assert not view.smoothquant_alpha.disabled
    view.smoothquant_alpha.value = 0.5
    click(wb, "export", "fuse", "convert")
    name = "int8_static_entropy_smoothquant05"
    assert name in wb.pipeline.candidates and wb.pipeline.plans[name].smoothing.alpha == 0.5
    assert "calibration batches" in text_of(wb["convert"].progress.label)
    click(wb, "compare")
    assert name in wb["compare"].result.names  # the accuracy step compares it


def test_a_candidate_that_misses_the_budget_is_offered_its_fix_in_one_click(model, tmp_path):
    wb = make(model, tmp_path / "run")
    wb["accuracy"].controls["embedding_cosine_mean"].value = 0.999999  # INT8 misses this
    wb["accuracy"].controls["embedding_cosine_min"].value = 0.99999
    click(wb, "export", "fuse", "quantize", "compare")
    rows = [child for child in wb["compare"].extra.children if "wb-fix-row" in child._dom_classes]
    assert len(rows) == 1
    words = text_of(rows[0].children[0])
    assert "int8_dynamic_per_channel misses the budget" in words and "Try the auto-fix: SmoothQuant first" in words
    button = rows[0].children[1].children[0]
    assert button.description == "Auto-fix int8_dynamic_per_channel"
    button.click()
    wb.wait()
    assert wb.state("autofix") == "done", html.unescape(wb["autofix"].error_output.value)
    assert "int8_dynamic_per_channel_autofix" in wb.pipeline.candidates
    assert wb.state("compare") == "stale"  # the new candidate is not compared yet
    shown = [type(obj).__name__ for obj in wb["autofix"].shown]
    assert shown[:3] == ["AutofixResult", "Figure", "PrecisionPlan"]  # the trials, the chart with its front
    assert "Pareto front" in [trace.name for trace in wb["autofix"].shown[1].data]
    assert "fix trials" in text_of(wb["autofix"].progress.label)


def test_panels_are_quiet_the_log_folds_under_the_result_and_errors_speak_the_labels(model, tmp_path, capfd):
    wb = make(model, tmp_path / "run")
    click(wb, "export", "quantize")
    assert capfd.readouterr().err == ""
    assert "Please consider to run pre-processing" in wb["quantize"].log_text
    assert "<details" in wb["quantize"].log.value and "log:" in wb["quantize"].log.value
    wb["benchmark"].controls["benchmark_batch_sizes"].value = "0"
    wb["benchmark"].click()
    assert wb.state("benchmark") == "failed"
    assert "'batch sizes' must be positive" in status_text(wb["benchmark"])
    assert "PipelineParameters" not in status_text(wb["benchmark"]) + html.unescape(wb["benchmark"].error_output.value)
    assert "empty: None" not in str([c.placeholder for c in wb["load"].controls.values() if hasattr(c, "placeholder")])


def test_a_busy_benchmark_offers_a_re_run(model, tmp_path):
    from dataclasses import replace

    wb = relaxed(make(model, tmp_path / "run"))
    click(wb, "export", "benchmark")
    result = replace(wb["benchmark"].result, warnings=("The load average was 9.0 (1 minute) on 2 cores",))
    wb["benchmark"].clear()
    wb["benchmark"]._show(result)
    assert "The machine looked busy" in str(wb["benchmark"].shown[0]._repr_html_())
    figure = wb["benchmark"].shown[1]
    assert "the machine looked busy" in figure.layout.title.text and figure.layout.yaxis.title.text
    assert wb["benchmark"].shown[2].layout.yaxis.type == "log"
    rerun = next(c for c in wb["benchmark"].extra.children if "wb-rerun" in getattr(c, "_dom_classes", ()))
    runs = wb["benchmark"].runs
    rerun.click()
    wb.wait()
    assert wb["benchmark"].runs == runs + 1 and wb.state("benchmark") == "done"
