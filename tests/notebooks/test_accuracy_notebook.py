"""The accuracy notebook runs headless under papermill and writes an accuracy_summary.json CI can trust."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import nbformat
import pytest

from tests.notebooks.checks import committed_code_cells

papermill = pytest.importorskip("papermill")
ort = pytest.importorskip("onnxruntime")

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "accuracy.ipynb"
PARAMETERS = ("model_path", "data_dir", "output_dir", "sequence_length", "max_calibration_samples",
              "max_eval_samples", "preset", "budget_mean", "budget_min")


def test_notebook_is_committed_without_outputs_and_has_a_parameters_cell():
    committed_code_cells(NOTEBOOK, PARAMETERS)


def test_summary_is_written_by_one_library_call():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    last = [c for c in notebook.cells if c.cell_type == "code"][-1]
    calls = [n for n in ast.walk(ast.parse(last.source)) if isinstance(n, ast.Call)]
    assert [c.func.id for c in calls if isinstance(c.func, ast.Name)] == ["write_accuracy_summary"]


@pytest.mark.slow
def test_accuracy_notebook_runs_under_papermill_and_writes_the_summary(tmp_path):
    output_dir = tmp_path / "run"
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(tmp_path / "executed.ipynb"),
        parameters={"output_dir": str(output_dir), "sequence_length": 64, "max_calibration_samples": 16,
                    "max_eval_samples": 16},
        cwd=str(NOTEBOOK.parent),
        progress_bar=False,
    )
    summary = json.loads((output_dir / "accuracy_summary.json").read_text())
    assert summary["version"] == 1 and summary["samples"] == 16
    assert summary["budget"]["embedding_cosine_mean"] == 0.995 and summary["budget"]["embedding_cosine_min"] == 0.99
    assert Path(summary["reference"]).is_file() and Path(summary["reference"]).name == "model.onnx"
    # the fixed model meets the budget, measured by the final comparison against the FP32 export
    fixed, start = summary["fixed"], summary["start"]
    assert summary["meets_budget"] and fixed["meets_budget"] and fixed["source"] == "comparison"
    assert fixed["cosine_mean"] >= 0.995 and fixed["cosine_min"] >= 0.99
    assert fixed["cosine_min"] <= fixed["cosine_mean"] <= 1 + 1e-6
    assert start["source"] == "comparison" and start["cosine_min"] <= start["cosine_mean"] <= 1 + 1e-6
    assert fixed["cosine_min"] >= start["cosine_min"] - 1e-6 or start["meets_budget"]
    # the search is logarithmic in the quantized nodes it ranked
    quantized = summary["quantized_nodes"]  # counted on the fused graph the notebook passes as model_path
    assert quantized >= 6 * 4  # MiniLM's 6 layers: Attention and 3 MatMuls each (and the embedding)
    assert 1 <= summary["trials"] <= 2 * math.log2(quantized) + 10
    assert summary["ranked_nodes"] <= quantized
    assert summary["trials"] == len(summary["trial_log"])
    assert summary["pins"] == fixed["pins"] and set(summary["pins"]) <= set(summary["keep_fp32"])
    if not start["meets_budget"] and not summary["smoothed"]:
        assert summary["pins"]  # the search pinned nodes to get there
    # the notebook's layer-by-layer diagnosis of the candidate, on its first 4 evaluation batches (2 of 8 here)
    assert summary["diagnosis"]["source"] == "given" and summary["diagnosis"]["samples"] == 2
    assert 0 < summary["diagnosis_seconds"] == summary["diagnosis"]["seconds"]
    assert summary["diagnosis"]["nodes"] > quantized and len(summary["diagnosis"]["worst"]) == 5
    # the files it names exist and load
    for path in (fixed["path"], start["path"]):
        assert Path(path).is_file() and output_dir in Path(path).parents
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert (output_dir / "autofix" / "fixed_plan.json").is_file()
    # the notebook showed the diagnosis and autofix charts and the three views
    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    shown = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    figures = [o for o in shown if "application/vnd.plotly.v1+json" in o.get("data", {})]
    titles = {o["data"]["application/vnd.plotly.v1+json"]["layout"].get("title", {}).get("text") for o in figures}
    assert {"Error along the graph", "Autofix trials"} <= titles
    assert sum("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in shown) >= 3
