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


@pytest.mark.slow
def test_quickstart_on_a_classifier_gates_every_candidate_on_its_task_metrics(tmp_path):
    """A tiny BertForSequenceClassification (3 labels): every candidate carries the classifier's metrics, the
    budget gates on them, and a damaged candidate is rejected for the metric it misses."""
    import onnx

    from tests.tiny_models import build_tiny_model
    from workbench.stages.accuracy.compare import compare_candidates
    from workbench.triton.config import parse_model_config

    model_dir = build_tiny_model("bert", tmp_path / "classifier", classifier=True)
    output_dir = tmp_path / "run"
    papermill.execute_notebook(
        str(NOTEBOOK), str(tmp_path / "executed.ipynb"), cwd=str(NOTEBOOK.parent), progress_bar=False,
        parameters={"model_path": str(model_dir), "output_dir": str(output_dir), "sequence_length": 32,
                    "max_eval_samples": 16, "max_calibration_samples": 16, "benchmark_batch_sizes": [1],
                    "benchmark_iterations": 3})
    summary = json.loads((output_dir / "summary.json").read_text())
    assert summary["task"] == "text-classification"
    budget = summary["budget"]
    assert budget["task"] == "text-classification" and budget["argmax_agreement_min"] is not None
    assert budget["logits_cosine_mean"] is not None and budget["logits_cosine_min"] is not None
    for candidate in summary["candidates"]:
        assert candidate["cosine_mean"] is not None and candidate["cosine_min"] is not None, candidate
        assert candidate["metrics"]["argmax_agreement"] is not None
        assert candidate["cosine_mean"] == candidate["metrics"]["logits_cosine_mean"]
        failing = [f for f in candidate["failures"] if f.startswith(("argmax agreement", "logits cosine"))]
        assert candidate["meets_budget"] == (not candidate["failures"]) and (candidate["meets_budget"] or failing)
    fp32 = next(c for c in summary["candidates"] if c["name"] == "fp32")
    assert fp32["meets_budget"] and fp32["metrics"]["argmax_agreement"] == 1.0
    configs = {p.parent.name: parse_model_config(p.read_text())
               for p in Path(summary["triton_repository"]).glob("*/config.pbtxt")}
    ensemble = configs[summary["triton_model"]]
    assert [o.name for o in ensemble.output] == ["LABEL", "PROBABILITIES"]

    # one weight scaled: the classifier's output layer, negated and doubled
    model = onnx.load(str(output_dir / "model.onnx"))
    weight = next(t for t in model.graph.initializer if "classifier" in t.name and len(t.dims) == 2)
    weight.CopyFrom(onnx.numpy_helper.from_array(-2.0 * onnx.numpy_helper.to_array(weight), weight.name))
    damaged = tmp_path / "damaged.onnx"
    onnx.save(model, str(damaged))
    from workbench.models import load_model

    source = load_model(model_dir)
    feeds = source.task.encode(source.load_tokenizer(), ["a fine day", "a terrible movie", "the report is due",
                                                         "we won the match", "nothing happened"],
                               batch_size=5, sequence_length=32)
    report = compare_candidates(output_dir / "model.onnx", {"damaged": damaged}, feeds)
    assert not report["damaged"]
    assert any(line.startswith(("argmax agreement", "logits cosine")) for line in report["damaged"].failures)
    assert report["damaged"].task_metrics["logits_cosine_min"] < 0  # the logits point the other way
