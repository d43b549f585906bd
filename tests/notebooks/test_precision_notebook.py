"""The precision notebook runs headless under papermill and writes a precision_summary.json CI can trust."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from tests.notebooks.checks import committed_code_cells

papermill = pytest.importorskip("papermill")
ort = pytest.importorskip("onnxruntime")

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "precision.ipynb"
PARAMETERS = ("model_path", "data_dir", "output_dir", "sequence_length", "max_calibration_samples",
              "max_eval_samples", "calibration_method")


def test_notebook_is_committed_without_outputs_and_has_a_parameters_cell():
    committed_code_cells(NOTEBOOK, PARAMETERS)


@pytest.mark.slow
def test_precision_notebook_runs_under_papermill_and_writes_the_summary(tmp_path):
    output_dir = tmp_path / "run"
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(tmp_path / "executed.ipynb"),
        parameters={"output_dir": str(output_dir), "sequence_length": 64, "max_calibration_samples": 16,
                    "max_eval_samples": 16},
        cwd=str(NOTEBOOK.parent),
        progress_bar=False,
    )
    summary = json.loads((output_dir / "precision_summary.json").read_text())
    assert summary["version"] == 1 and Path(summary["reference"]).is_file() and summary["samples"] == 16
    rows = {row["name"]: row for row in summary["candidates"]}
    assert set(rows) == {"int8_dynamic_per_channel", "int8_static", "fp16"}
    for row in rows.values():
        path = Path(row["path"])
        assert path.is_file() and path.parent == output_dir and row["size_mb"] > 0
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        assert row["cosine_min"] <= row["cosine_mean"] <= 1 + 1e-6
        assert row["keep_fp32_count"] >= 0 and isinstance(row["meets_budget"], bool)
    assert rows["fp16"]["method"] == "fp16" and rows["fp16"]["cosine_min"] > 0.999
    assert rows["int8_dynamic_per_channel"]["method"] == "int8 dynamic per-channel"
    assert rows["int8_dynamic_per_channel"]["cosine_min"] > 0.95
    assert rows["int8_static"]["method"] == "int8 static QDQ MinMax"
    assert rows["int8_static"]["cosine_min"] > 0.8
    # the FP32 reference is smaller than the INT8 candidates never: INT8 weights take a quarter of the bytes
    fp32_mb = Path(summary["reference"]).stat().st_size / 1e6
    assert rows["int8_dynamic_per_channel"]["size_mb"] < fp32_mb / 2
    # the notebook showed the activation statistics and the view
    executed = nbformat.read(tmp_path / "executed.ipynb", as_version=4)
    shown = [o for c in executed.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any("application/vnd.plotly.v1+json" in o.get("data", {}) for o in shown)
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in shown)
