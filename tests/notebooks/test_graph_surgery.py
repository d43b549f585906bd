"""The graph-surgery notebook runs headless under papermill and writes a surgery_summary.json CI can trust."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from tests.notebooks.checks import committed_code_cells

papermill = pytest.importorskip("papermill")
pytest.importorskip("onnxruntime")

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "graph_surgery.ipynb"
PLAN_KINDS = ["fold_constants", "remove_nodes", "fuse_transformer", "cleanup", "cast_io"]


def test_notebook_is_committed_without_outputs_and_has_a_parameters_cell():
    code_cells = committed_code_cells(NOTEBOOK, ("model_path", "output_dir", "sequence_length", "max_eval_samples"))
    assert 'output_dir = "../runs/graph_surgery"' in code_cells[0].source


@pytest.mark.slow
def test_graph_surgery_runs_under_papermill_and_writes_the_summary(tmp_path):
    output_dir = tmp_path / "run"
    executed = tmp_path / "executed.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(executed),
        parameters={"output_dir": str(output_dir), "sequence_length": 64, "max_eval_samples": 16},
        cwd=str(NOTEBOOK.parent),
        progress_bar=False,
    )
    summary = json.loads((output_dir / "surgery_summary.json").read_text())
    # every edit of the plan ran, in order, and was checked within 1e-4 of its input model
    assert [e["kind"] for e in summary["edits"]] == PLAN_KINDS
    assert all(e["passed"] and e["enforced"] and e["max_abs_diff"] <= 1e-4 for e in summary["edits"])
    assert summary["all_checks_passed"] is True and 0 <= summary["max_check_diff"] <= 1e-4
    # MiniLM (6 layers) fuses fully
    fused = summary["fused_ops"]
    assert fused["Attention"] >= 6 and fused["SkipLayerNormalization"] >= 12
    assert fused["EmbedLayerNormalization"] >= 1 and fused["BiasGelu"] >= 6
    assert summary["nodes_after"] < summary["nodes_before"] / 4
    assert summary["latency_ms_before"] > 0 and summary["latency_ms_after"] > 0
    # the files: the export, the edited model (int32 inputs), the plan as JSON
    onnx = pytest.importorskip("onnx")
    edited = Path(summary["output"])
    assert edited == output_dir / "model_edited.onnx" and edited.is_file() and (output_dir / "model.onnx").is_file()
    model = onnx.load(str(edited))
    assert {i.name: i.type.tensor_type.elem_type for i in model.graph.input} == dict.fromkeys(
        ["input_ids", "attention_mask", "token_type_ids"], onnx.TensorProto.INT32)
    assert sum(n.op_type == "Attention" for n in model.graph.node) == fused["Attention"]
    from workbench.stages.surgery.edits import SurgeryPlan

    plan = SurgeryPlan.from_json((output_dir / "surgery_plan.json").read_text())
    assert [e.kind for e in plan.edits] == PLAN_KINDS and json.loads(plan.to_json()) == summary["plan"]
    # the views were displayed (as widgets) and the view's own run did not happen
    cells = [c for c in nbformat.read(executed, as_version=4).cells if c.cell_type == "code"]
    views = [c for c in cells if c.source.startswith(("InspectView(", "SurgeryView("))]
    assert len(views) == 2
    for cell in views:
        assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {}) for o in cell.outputs)
    assert not (output_dir / "model_edited_in_view.onnx").exists()
    assert not any(o.get("output_type") == "error" for c in cells for o in c.outputs)
