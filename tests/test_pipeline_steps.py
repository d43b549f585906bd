"""The steps issue 17 added to the registry: convert (any PrecisionPlan), surgery (a SurgeryPlan) and autofix;
progress and stopping through `Pipeline.progress`; the libraries' output in `Pipeline.logs`, not on stderr."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from workbench.errors import ConfigError, WorkbenchError  # noqa: E402
from workbench.pipeline import Pipeline, PipelineParameters  # noqa: E402
from workbench.progress import Stopped  # noqa: E402
from workbench.recipe import Recipe, file_sha256, replay  # noqa: E402
from workbench.stages.accuracy.compare import AccuracyBudget  # noqa: E402
from workbench.stages.precision.choices import as_plan, candidate_name  # noqa: E402
from workbench.stages.precision.plan import PrecisionPlan  # noqa: E402

SMALL = {
    "sequence_length": 16,
    "max_eval_samples": 8,
    "max_calibration_samples": 8,
    "eval_batch_size": 4,
    "benchmark_batch_sizes": (1,),
    "benchmark_iterations": 2,
}
STRICT = AccuracyBudget(embedding_cosine_mean=0.999999, embedding_cosine_min=0.99999)  # INT8 misses it


def pipeline_for(model_dir: Path, output_dir: Path, **kwargs) -> Pipeline:
    return Pipeline(PipelineParameters(model_path=str(model_dir), output_dir=str(output_dir), **SMALL), **kwargs)


def partial_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".partial" in p.name]


@pytest.fixture(autouse=True)
def own_calibration_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))  # calibrate here, not from an earlier run


@pytest.fixture
def exported(tiny_model_dir, tmp_path) -> Pipeline:
    pipeline = pipeline_for(tiny_model_dir("bert"), tmp_path / "run")
    pipeline.export()
    pipeline.fuse()
    return pipeline


def test_convert_takes_a_preset_a_plan_or_its_dict_and_adds_a_named_candidate(exported, capfd):
    events = []
    exported.progress = events.append
    static = exported.convert("cpu_int8_static")
    assert (
        exported.candidates["int8_static_minmax"].path
        == static.path
        == exported.output_dir / "model_int8_static_minmax.onnx"
    )
    assert exported.candidates["int8_static_minmax"].precision == "int8_static"
    # calibration reported its batches through the pipeline's progress callback
    calibration = [e for e in events if e.unit == "calibration batches"]
    assert calibration and calibration[-1].done == calibration[-1].total == len(exported.calibration_feeds())
    plan = PrecisionPlan.preset("cpu_int8_dynamic_per_tensor")
    exported.convert(plan.to_dict())
    exported.convert(plan, name="mine")
    # quiet: onnxruntime's "run pre-processing" advice is in the step's log, not on stderr
    assert capfd.readouterr().err == ""
    assert "Please consider to run pre-processing" in exported.logs["convert"]
    assert exported.history[-1].log == exported.logs["convert"]
    assert {"int8_dynamic_per_tensor", "mine"} <= set(exported.candidates)
    assert exported.plans["mine"] == plan and exported.plans["int8_static_minmax"].method == "int8_static"
    # the recipe records the plan as plain JSON (a plan object included), and a replay rebuilds the same file
    saved = Recipe.from_json(Recipe.from_pipeline(exported).to_json()).last("convert").args
    assert saved["name"] == "mine" and as_plan(saved["plan"]) == plan
    with pytest.raises(ConfigError, match="No precision preset or method 'int9'"):
        exported.convert("int9")
    assert "int9" not in exported.candidates and exported.history[-1].args["name"] == "mine"


def test_candidate_names_say_what_sets_a_plan_apart():
    from dataclasses import replace

    from workbench.stages.precision.smooth import SmoothingConfig

    assert candidate_name(PrecisionPlan.preset("cpu_int8_dynamic")) == "int8_dynamic"
    assert candidate_name(PrecisionPlan.preset("tensorrt_int8_qdq")) == "int8_static_entropy"
    assert candidate_name(PrecisionPlan.preset("cpu_int8_static_qoperator")) == "int8_static_minmax_qoperator"
    smoothed = replace(PrecisionPlan.preset("cpu_int8_dynamic_per_tensor"), smoothing=SmoothingConfig(alpha=0.5))
    assert candidate_name(smoothed.pin(["a", "b"])) == "int8_dynamic_per_tensor_smoothquant05_2_fp32"
    assert candidate_name(PrecisionPlan.preset("gpu_fp16")) == "fp16"


def test_surgery_applies_a_plan_of_edits_and_adds_an_fp32_candidate(exported):
    result = exported.surgery()  # default: fold constants, then clean up
    assert exported.candidates["fp32_edited"].path == result.path and result.path.is_file()
    assert [r.edit.kind for r in result.reports] == ["fold_constants", "cleanup"] or len(result.reports) == 2
    again = exported.surgery(plan='[{"kind": "cleanup"}]')
    assert len(again.reports) == 1
    assert Recipe.from_pipeline(exported).last("surgery").args == {"plan": '[{"kind": "cleanup"}]'}


def test_autofix_fixes_the_first_candidate_that_misses_and_adds_it(tiny_model_dir, tmp_path):
    pipeline = pipeline_for(tiny_model_dir("bert"), tmp_path / "run", budget=STRICT)
    with pytest.raises(WorkbenchError, match="no accuracy comparison ran yet"):
        pipeline.export()
        pipeline.autofix()
    pipeline.fuse()
    pipeline.quantize()
    report = pipeline.compare()
    assert not report["int8_dynamic_per_channel"]
    events = []
    pipeline.progress = events.append
    result = pipeline.autofix()
    folder = pipeline.output_dir / "autofix_int8_dynamic_per_channel"
    assert pipeline.candidates["int8_dynamic_per_channel_autofix"].path == result.path == folder / "fixed.onnx"
    assert result.path.is_file() and all(Path(t.path).parent == folder for t in result.trials)
    assert pipeline.plans["int8_dynamic_per_channel_autofix"] == result.plan
    trials = [e.item for e in events if e.item is not None]
    assert [t.index for t in trials] == [t.index for t in result.trials]  # one event per trial, with it
    assert {e.unit for e in events} == {"fix trials"} and not partial_files(pipeline.output_dir)
    with pytest.raises(ConfigError, match="was not made from a precision plan"):
        pipeline.autofix(candidate="fp32")


def test_a_stopped_autofix_leaves_no_folder_and_no_partial_file(tiny_model_dir, tmp_path):
    pipeline = pipeline_for(tiny_model_dir("bert"), tmp_path / "run", budget=STRICT)
    pipeline.export()
    pipeline.quantize()
    pipeline.compare()
    seen = []

    def stop_after_the_first_trial(event):
        seen.append(event)
        if event.item is not None:
            raise Stopped()

    pipeline.progress = stop_after_the_first_trial
    with pytest.raises(Stopped):
        pipeline.autofix()
    assert seen and seen[-1].item is not None and seen[-1].item.index == 0
    assert not (pipeline.output_dir / "autofix_int8_dynamic_per_channel").exists()
    assert not partial_files(pipeline.output_dir)
    assert "autofix" not in pipeline.results and [r.step for r in pipeline.history] == ["export", "quantize", "compare"]


def test_run_all_leaves_the_optional_steps_out_and_replay_runs_what_was_recorded(exported, tmp_path):
    assert {s.name for s in Pipeline.steps if s.optional} == {"surgery", "convert", "autofix"}
    exported.convert("cpu_int8_dynamic")
    replayed = replay(Recipe.from_pipeline(exported), output_dir=tmp_path / "replay", progress=False, check=True)
    made = [p.candidates["int8_dynamic"].path for p in (replayed, exported)]
    assert file_sha256(made[0]) == file_sha256(made[1])
    assert replayed.output_check.headline().startswith("replay check: all ")
