"""The chained workflow on a tiny model: every step runs, files land in output_dir, the summary holds."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tritonclient")

from workbench.errors import ConfigError, WorkbenchError  # noqa: E402
from workbench.pipeline import Pipeline, PipelineParameters  # noqa: E402
from workbench.stages.accuracy.compare import AccuracyBudget  # noqa: E402

SMALL = {
    "sequence_length": 16,
    "max_eval_samples": 8,
    "max_calibration_samples": 8,
    "eval_batch_size": 4,
    "benchmark_batch_sizes": (1,),
    "benchmark_iterations": 2,
}


def test_pipeline_runs_end_to_end_on_a_tiny_model(tiny_model_dir, tmp_path):
    parameters = PipelineParameters(model_path=str(tiny_model_dir("bert")), output_dir=str(tmp_path / "run"), **SMALL)
    summary = Pipeline(parameters, budget=AccuracyBudget.preset("relaxed")).run_all()
    on_disk = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    names = [c["name"] for c in summary["candidates"]]
    openvino = [] if summary["skipped_steps"] else ["openvino_fp32", "openvino_int8_nncf"]  # with the openvino extra
    assert names == ["fp32", "fp32_fused", "int8_dynamic_per_channel", "int8_dynamic_smoothquant", *openvino]
    assert summary["candidates"][0]["cosine_min"] == pytest.approx(1.0)
    assert summary["chosen"] in names and summary["chosen_reason"]
    assert summary["pytorch_latency_ms_p50"] > 0
    assert all(str(tmp_path / "run") in c["path"] for c in summary["candidates"])


def test_pipeline_accepts_an_onnx_file_with_its_tokenizer(tiny_model_dir, tiny_bert_onnx, tmp_path):
    folder = tmp_path / "onnx_model"
    folder.mkdir()
    shutil.copy(tiny_bert_onnx, folder / "model.onnx")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_model_dir("bert") / name, folder / name)
    pipeline = Pipeline(
        PipelineParameters(model_path=str(folder / "model.onnx"), output_dir=str(tmp_path / "run"), **SMALL),
        budget=AccuracyBudget.preset("relaxed"),
    )
    summary = pipeline.run_all()
    assert summary["pytorch_latency_ms_p50"] is None  # no PyTorch model to time
    assert summary["reference"] == str(folder / "model.onnx")


def test_steps_out_of_order_say_what_to_run_first(tiny_model_dir, tmp_path):
    pipeline = Pipeline(PipelineParameters(model_path=str(tiny_model_dir("bert")), output_dir=str(tmp_path), **SMALL))
    with pytest.raises(WorkbenchError, match="run export"):
        pipeline.fuse()


def test_unknown_parameter_is_rejected():
    with pytest.raises(ConfigError, match="max_eval_sample"):
        Pipeline.from_parameters(max_eval_sample=3)
