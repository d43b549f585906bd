"""The quickstart notebook runs headless under papermill and writes a summary.json CI can trust."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.notebooks.checks import committed_code_cells

papermill = pytest.importorskip("papermill")
pytest.importorskip("onnxruntime")

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"
STABLE_KEYS = {"model", "reference", "candidates", "pytorch_latency_ms_p50", "chosen", "triton_repository"}


def test_notebook_is_committed_without_outputs_and_has_a_parameters_cell():
    committed_code_cells(NOTEBOOK, ("model_path", "data_dir", "output_dir", "sequence_length",
                                    "max_calibration_samples", "max_eval_samples"))


@pytest.mark.slow
def test_quickstart_runs_under_papermill_and_writes_the_summary(tmp_path):
    output_dir = tmp_path / "run"
    papermill.execute_notebook(
        str(NOTEBOOK),
        str(tmp_path / "executed.ipynb"),
        parameters={"output_dir": str(output_dir), "sequence_length": 64, "max_eval_samples": 16,
                    "max_calibration_samples": 16, "benchmark_batch_sizes": [1], "benchmark_iterations": 5},
        cwd=str(NOTEBOOK.parent),
        progress_bar=False,
    )
    summary = json.loads((output_dir / "summary.json").read_text())
    assert STABLE_KEYS <= set(summary)
    candidates = {c["name"]: c for c in summary["candidates"]}
    assert set(candidates) == {"fp32", "fp32_fused", "int8_dynamic_per_channel", "int8_dynamic_smoothquant"}
    for candidate in candidates.values():
        assert Path(candidate["path"]).is_file()
        assert candidate["latency_ms_p50"] > 0
        assert {"name", "path", "latency_ms_p50", "cosine_mean", "cosine_min"} <= set(candidate)
    # accuracy within bounds: FP32 variants are exact, INT8 is close but measurably lossy
    assert candidates["fp32"]["cosine_min"] > 0.99999
    assert candidates["fp32_fused"]["cosine_min"] > 0.9999
    int8 = candidates["int8_dynamic_per_channel"]
    assert 0.97 < int8["cosine_mean"] < 0.99999 and 0.9 < int8["cosine_min"] <= int8["cosine_mean"]
    smoothed = candidates["int8_dynamic_smoothquant"]  # SmoothQuant must not make INT8 worse
    assert smoothed["cosine_mean"] >= int8["cosine_mean"] - 1e-3 and smoothed["cosine_min"] > 0.9
    assert summary["pytorch_latency_ms_p50"] > 0
    assert summary["chosen"] in candidates and candidates[summary["chosen"]]["meets_budget"]
    repository = Path(summary["triton_repository"])
    from workbench.triton.config import parse_model_config

    configs = {p.parent.name: parse_model_config(p.read_text()) for p in repository.glob("*/config.pbtxt")}
    assert summary["triton_model"] in configs and configs[summary["triton_model"]].platform == "ensemble"
    onnx_models = [name for name, config in configs.items() if config.backend == "onnxruntime"]
    assert len(onnx_models) == 1
    model = configs[onnx_models[0]]
    assert model.max_batch_size > 0 and model.HasField("dynamic_batching")
    assert [i.name for i in model.input] == ["input_ids", "attention_mask", "token_type_ids"]
    assert (repository / onnx_models[0] / "1" / "model.onnx").is_file()
    provenance = json.loads((repository / "provenance.json").read_text())
    assert provenance["chosen"] == summary["chosen"]
