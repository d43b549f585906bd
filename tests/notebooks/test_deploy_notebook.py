"""The deploy notebook: committed without outputs, and runs headless under papermill to a Triton repository."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from tests.notebooks.checks import committed_code_cells

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "deploy.ipynb"
PARAMETERS = {"model_path": "None", "data_dir": "None", "output_dir": '"../runs/deploy"', "sequence_length": "128",
              "max_eval_samples": "32", "benchmark_batch_sizes": "[1, 8]", "benchmark_iterations": "20",
              "overwrite": "True"}


def test_notebook_is_committed_without_outputs_and_has_a_parameters_cell():
    code_cells = committed_code_cells(NOTEBOOK, tuple(PARAMETERS))
    assigned = dict(line.split("#")[0].split("=", 1) for line in code_cells[0].source.splitlines() if "=" in line)
    assert {name.strip(): value.strip() for name, value in assigned.items()} == PARAMETERS
    source = "\n".join(c.source for c in code_cells)
    for call in ("pipeline.export()", "pipeline.fuse()", "pipeline.quantize()", "pipeline.compare()",
                 "pipeline.benchmark()", "candidates_table(", "pareto_figure(", "pipeline.choose()",
                 "pipeline.export_triton()", "BenchmarkView(", "ChoiceView(", "ExportView(",
                 "pipeline.write_summary()"):
        assert call in source, call


@pytest.mark.slow
def test_deploy_notebook_runs_under_papermill_and_writes_the_summary(tmp_path):
    papermill = pytest.importorskip("papermill")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from workbench.triton.config import parse_model_config

    output_dir = tmp_path / "run"
    executed = tmp_path / "executed.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK), str(executed),
        parameters={"output_dir": str(output_dir), "sequence_length": 32, "max_eval_samples": 8,
                    "benchmark_batch_sizes": [1, 2], "benchmark_iterations": 3},
        cwd=str(NOTEBOOK.parent), progress_bar=False,
    )
    summary = json.loads((output_dir / "summary.json").read_text())
    candidates = {c["name"]: c for c in summary["candidates"]}
    assert set(candidates) == {"fp32", "fp32_fused", "int8_dynamic_per_channel"}
    assert all(c["latency_ms_p50"] > 0 and set(c["latency_ms_p50_by_batch"]) == {"1", "2"}
               for c in candidates.values())
    assert summary["pytorch_latency_ms_p50"] > 0
    # the choice: a candidate that meets the budget, with its reason
    assert summary["chosen"] in candidates and candidates[summary["chosen"]]["meets_budget"]
    assert "meets the accuracy budget at batch 1, seq 32" in summary["chosen_reason"]
    # the Triton repository: a model folder whose config parses strictly with Triton's schema
    repository = Path(summary["triton_repository"])
    assert repository.is_dir() and repository.parent == output_dir
    configs = {p.parent.name: parse_model_config(p.read_text()) for p in repository.glob("*/config.pbtxt")}
    ensemble = configs[summary["triton_model"]]  # text in, embeddings out
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size >= 2
    (model_name,) = [name for name, config in configs.items() if config.backend == "onnxruntime"]
    model = configs[model_name]
    assert model.HasField("dynamic_batching") and (repository / model_name / "1" / "model.onnx").is_file()
    # what the notebook showed: charts, the candidates table, the three views, and no errors
    notebook = nbformat.read(executed, as_version=4)
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    data = [o.get("data", {}) for o in outputs]
    assert sum("application/vnd.plotly.v1+json" in d for d in data) >= 3  # latency, speed-up, Pareto
    assert any("Pareto" in d.get("text/html", "") and "Candidates" in d.get("text/html", "") for d in data)
    assert any("Concurrency" in d.get("text/html", "") for d in data)
    assert sum("application/vnd.jupyter.widget-view+json" in d for d in data) >= 3
