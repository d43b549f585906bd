"""The guided Workbench driven headless, the way a user clicks through it, on the tiny BERT."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import nbformat
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tritonclient")
pytest.importorskip("plotly.graph_objects")

from workbench.errors import ConfigError  # noqa: E402
from workbench.pipeline import Pipeline  # noqa: E402
from workbench.recipe import RECIPE_FILE, Recipe, file_sha256  # noqa: E402
from workbench.stages.accuracy.compare import AccuracyBudget  # noqa: E402
from workbench.ui import Workbench  # noqa: E402
from workbench.ui.workbench import STEP_KEYS  # noqa: E402

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "workbench.ipynb"
SMALL = {
    "sequence_length": 16,
    "max_eval_samples": 8,
    "max_calibration_samples": 8,
    "eval_batch_size": 4,
    "benchmark_batch_sizes": [1],
    "benchmark_iterations": 2,
}
CLICK_THROUGH = ("export", "quantize", "compare", "benchmark", "choose", "deploy", "summary")


def panel_text(panel) -> str:
    return html.unescape(panel.error_output.value)


def status_text(panel) -> str:
    """The status line as the page shows it (tags dropped)."""
    return html.unescape(re.sub(r"<[^>]+>", "", panel.status.value))


@pytest.fixture
def wb(tiny_model_dir, tmp_path) -> Workbench:
    workbench = Workbench.from_parameters(
        model_path=str(tiny_model_dir("bert")), output_dir=str(tmp_path / "run"), **SMALL
    )
    workbench["accuracy"].controls["embedding_cosine_mean"].value = 0.9  # a random-init model: relaxed budget
    workbench["accuracy"].controls["embedding_cosine_min"].value = 0.8
    return workbench


def click(wb: Workbench, *steps: str) -> None:
    for step in steps:
        wb[step].click()
        assert wb.state(step) == "done", (step, panel_text(wb[step]))


def test_a_new_workbench_has_loaded_and_enables_only_what_can_run(wb, tmp_path):
    assert tuple(wb.panels) == STEP_KEYS
    assert wb.state("load") == "done" and isinstance(wb.pipeline, Pipeline) and wb.pipeline.history == []
    assert wb.pipeline.output_dir == tmp_path / "run"
    enabled = {key for key, panel in wb.panels.items() if not panel.run_button.disabled}
    assert enabled == {"load", "export"}
    assert "needs: Export to ONNX" in html.unescape(wb["quantize"].needs.value)
    assert all(state == "not run" for key, state in wb.states.items() if key != "load")
    assert "model" in str(wb["load"].shown[0].value) and str(tmp_path / "run") in wb["load"].shown[0].value
    # clicking a step whose inputs do not exist says what to run first, in its panel
    wb["choose"].click()
    assert wb.state("choose") == "failed"
    assert "needs Accuracy against the FP32 reference, Benchmark first" in panel_text(wb["choose"])


def test_clicking_through_every_step_runs_the_pipeline_and_records_it(wb, tmp_path):
    click(wb, *CLICK_THROUGH)
    pipeline = wb.pipeline
    assert set(pipeline.candidates) == {"reference", "fp32", "int8_dynamic_per_channel"}  # fusion was skipped
    assert wb["export"].result is pipeline.results["export"] and wb["export"].result.path.is_file()
    assert wb["quantize"].result.path == tmp_path / "run" / "model_int8_dynamic_per_channel.onnx"
    report = wb["compare"].result
    assert report is pipeline.results["compare"] and bool(report)  # both candidates meet the relaxed budget
    # the table, latency by candidate (a panel per shape), latency vs batch (log axis), speed-up over PyTorch
    assert wb["benchmark"].result.names and len(wb["benchmark"].shown) == 4
    assert wb["choose"].result.name in {"fp32", "int8_dynamic_per_channel"}
    triton = wb["deploy"].result
    assert Path(triton.repository) == tmp_path / "run" / "triton_repository" and Path(triton.repository).is_dir()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["chosen"] == wb["choose"].result.name and "candidate" in wb["summary"].shown[0]
    assert wb.states == {
        "load": "done",
        "export": "done",
        "fuse": "not run",
        "surgery": "not run",
        "quantize": "done",
        "quantize_smoothquant": "not run",
        "convert": "not run",
        "openvino_fp32": "not run",
        "openvino_int8": "not run",
        "compare": "done",
        "autofix": "not run",
        "benchmark": "done",
        "choose": "done",
        "export_triton": "done",
        "write_summary": "done",
    }
    assert all(status_text(wb[step]).startswith("done in") for step in CLICK_THROUGH)
    # the recipe: every step as clicked, with the configs of each call; kept in output_dir after each step
    recipe = wb.recipe
    assert recipe.step_names == (
        "export",
        "quantize",
        "compare",
        "benchmark",
        "choose",
        "export_triton",
        "write_summary",
    )
    budget = AccuracyBudget(embedding_cosine_mean=0.9, embedding_cosine_min=0.8)
    assert recipe.last("compare").config["budget"] == budget
    assert Recipe.load(tmp_path / "run" / RECIPE_FILE) == recipe
    saved = wb.save_recipe(tmp_path / "elsewhere.json")
    assert Recipe.load(saved) == recipe and "recipe saved" in wb.message.value


def test_a_failing_step_shows_its_error_and_keeps_earlier_results(wb, tmp_path):
    click(wb, "export", "fuse", "quantize")
    exported = wb["export"].result
    before = {name: file_sha256(path) for name, path in wb.pipeline.candidates.items()}
    # a budget the library rejects: the error is in the accuracy panel, nothing else changes
    wb["accuracy"].controls["embedding_cosine_mean"].value = 2.0
    wb["accuracy"].click()
    assert wb.state("compare") == "failed"
    assert status_text(wb["compare"]).startswith("failed: ConfigError")
    # the message names the field by the label the panel shows, not by its dataclass path
    assert "'embedding cosine mean' must be in [-1.0, 1.0], got 2.0" in panel_text(wb["compare"])
    assert "EmbeddingBudget." not in panel_text(wb["compare"]) + status_text(wb["compare"])
    assert wb["compare"].result is None and "compare" not in wb.pipeline.results
    # an export the library itself refuses (no real export matches PyTorch to 1e-12): ExportError, in its panel
    wb["export"].controls["atol"].value = 1e-12
    wb["export"].click()
    assert wb.state("export") == "failed" and status_text(wb["export"]).startswith("failed: ExportError")
    assert "ExportError" in panel_text(wb["export"]) and "Fix:" in panel_text(wb["export"])
    # earlier results stand: the previous export, the fused and quantized models, their states
    assert wb["export"].result is exported and wb.pipeline.results["export"] is exported
    assert {name: file_sha256(path) for name, path in wb.pipeline.candidates.items()} == before
    assert wb.state("fuse") == "done" and wb.state("quantize") == "done"
    assert not wb["quantize"].run_button.disabled
    # a failed step leaves no trace in the recipe; fixing the value and running again works
    assert wb.recipe.step_names == ("export", "fuse", "quantize")
    wb["accuracy"].controls["embedding_cosine_mean"].value = 0.9
    click(wb, "compare")
    assert wb["compare"].error is None and "failed" not in wb["compare"].status.value


def test_re_running_export_marks_the_steps_after_it_stale(wb):
    click(wb, "export", "fuse", "quantize", "compare", "benchmark")
    click(wb, "export")
    assert wb.states == {
        "load": "done",
        "export": "done",
        "fuse": "stale",
        "surgery": "not run",
        "quantize": "stale",
        "quantize_smoothquant": "not run",
        "convert": "not run",
        "openvino_fp32": "not run",
        "openvino_int8": "not run",
        "compare": "stale",
        "autofix": "not run",
        "benchmark": "stale",
        "choose": "not run",
        "export_triton": "not run",
        "write_summary": "not run",
    }
    assert status_text(wb["quantize"]) == "stale: Export ran again since; run again"
    assert f'data-run="{wb["quantize"].runs}"' in wb["quantize"].status.value  # a stale mark keeps the run count
    assert "stale" in wb.overview.value
    click(wb, "quantize")  # running a stale step brings it up to date; what reads it stays stale
    assert wb.state("quantize") == "done" and wb.state("compare") == "stale" and wb.state("fuse") == "stale"
    # benchmark does not read the accuracy comparison: re-running compare leaves it as it is
    click(wb, "benchmark")
    click(wb, "compare")
    assert wb.state("benchmark") == "done"
    assert wb.recipe.step_names == (
        "export",
        "fuse",
        "quantize",
        "compare",
        "benchmark",
        "export",
        "quantize",
        "benchmark",
        "compare",
    )


def test_re_running_load_starts_a_new_pipeline(wb, tmp_path):
    click(wb, "export")
    first = wb.pipeline
    wb["load"].controls["output_dir"].value = str(tmp_path / "second")
    click(wb, "load")
    assert wb.pipeline is not first and wb.pipeline.output_dir == tmp_path / "second"
    # a new pipeline: every result of the previous one is gone from the panels
    assert wb.state("export") == "not run" and wb["export"].result is None and not wb["export"].output.outputs
    assert wb["quantize"].run_button.disabled
    assert wb.recipe_path.value == str(tmp_path / "second" / RECIPE_FILE)
    wb["load"].controls["model_path"].value = str(tmp_path / "no_such_model")
    wb["load"].click()
    assert wb.state("load") == "failed" and "does not exist" in panel_text(wb["load"])
    assert wb.pipeline.output_dir == tmp_path / "second"  # the previous pipeline stays


def test_from_recipe_starts_from_the_recipe_and_run_all_replays_it(wb, tmp_path):
    wb["precision"].controls["per_channel"].value = False
    wb["benchmark"].controls["benchmark_iterations"].value = 3
    click(wb, "export", "quantize", "compare", "benchmark", "choose")
    path = wb.save_recipe()
    again = Workbench.from_recipe(path, output_dir=str(tmp_path / "again"))
    assert again["precision"].controls["per_channel"].value is False
    assert again["accuracy"].controls["embedding_cosine_mean"].value == 0.9
    assert again["benchmark"].controls["benchmark_iterations"].value == 3
    assert again.state("load") == "done" and again.state("export") == "not run"
    assert again.run_all() is True
    assert again.recipe.step_names == wb.recipe.step_names
    assert file_sha256(tmp_path / "again" / "model_int8_dynamic_per_tensor.onnx") == file_sha256(
        tmp_path / "run" / "model_int8_dynamic_per_tensor.onnx"
    )
    assert again.pipeline.results["benchmark"].config.iterations == 3
    # the same through from_parameters(recipe=...), as the notebook's parameters pass it
    third = Workbench.from_parameters(recipe=str(path), output_dir=str(tmp_path / "third"))
    assert third.source_recipe == Recipe.load(path) and third.pipeline.output_dir == tmp_path / "third"


def test_run_all_stops_at_the_first_failure(tiny_model_dir, tmp_path):
    wb = Workbench.from_parameters(model_path=str(tiny_model_dir("bert")), output_dir=str(tmp_path), **SMALL)
    wb["accuracy"].controls["embedding_cosine_mean"].value = 0.9
    wb["accuracy"].controls["embedding_cosine_min"].value = 0.8
    wb["deploy"].controls["triton_model_name"].value = ".hidden"  # Triton model names must not start with a dot
    assert wb.run_all() is False
    optional = {"surgery", "convert", "autofix"}  # run on request: "Run all" leaves them out
    ran = [step for step in STEP_KEYS if step not in optional]
    assert [wb.state(step) for step in ran] == ["done"] * (len(ran) - 2) + ["failed", "not run"]
    assert all(wb.state(step) == "not run" for step in optional)
    assert "stopped at Deploy" in wb.message.value
    assert status_text(wb["deploy"]).startswith("failed: ConfigError") and ".hidden" in panel_text(wb["deploy"])
    assert not (tmp_path / "triton_repository").exists()


def test_unknown_parameters_are_rejected():
    with pytest.raises(ConfigError, match="max_eval_sample"):
        Workbench.from_parameters(max_eval_sample=3)


def test_the_workbench_displays_as_one_widget(wb):
    bundle = wb._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert all(panel.widget in wb.widget.children for panel in wb.panels.values())
    assert "wb-step-export" in wb["export"].widget._dom_classes and "wb-status" in wb["export"].status._dom_classes


def test_the_notebook_has_a_parameters_cell_then_one_cell_and_no_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert len(code) == 2 and "parameters" in code[0].metadata.get("tags", [])
    for name in ("model_path = None", "output_dir = ", "recipe = None"):
        assert name in code[0].source
    assert "Workbench.from_notebook(" in code[1].source and "recipe=recipe" in code[1].source
    assert all(not cell.outputs and cell.execution_count is None for cell in code)
    assert notebook.metadata["kernelspec"]["name"] == "python3"


def test_from_notebook_uses_the_recipe_when_given_and_the_parameters_otherwise(wb, tmp_path):
    path = wb.save_recipe(tmp_path / "recipe.json")
    from_recipe = Workbench.from_notebook(recipe=path, output_dir=str(tmp_path / "replay"), model_path="ignored")
    assert from_recipe.recipe.parameters.model_path == wb.recipe.parameters.model_path
    assert from_recipe.pipeline.parameters.output_dir == str(tmp_path / "replay")
    fresh = Workbench.from_notebook(
        recipe=None, model_path=wb.recipe.parameters.model_path, output_dir=str(tmp_path / "fresh"), max_eval_samples=4
    )
    assert fresh.pipeline.parameters.max_eval_samples == 4
