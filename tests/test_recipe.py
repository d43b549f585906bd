"""Recipes: a pipeline's steps and configs recorded as JSON, replayed headless to identical model files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tritonclient")

from workbench.__main__ import main  # noqa: E402
from workbench.errors import WorkbenchError  # noqa: E402
from workbench.pipeline import Pipeline, PipelineParameters  # noqa: E402
from workbench.recipe import (  # noqa: E402
    RECIPE_FILE,
    Recipe,
    RecipeError,
    RecipeStep,
    RecordingPipeline,
    file_sha256,
    input_hashes,
    replay,
    run_recipe,
)
from workbench.stages.accuracy.compare import AccuracyBudget  # noqa: E402
from workbench.stages.export import ExportConfig  # noqa: E402
from workbench.stages.precision.quantize import DynamicQuantConfig  # noqa: E402

SMALL = {
    "sequence_length": 16,
    "max_eval_samples": 8,
    "max_calibration_samples": 8,
    "eval_batch_size": 4,
    "benchmark_batch_sizes": (1,),
    "benchmark_iterations": 2,
}
# the files of the deterministic steps: export, fuse, dynamic quantization
MODEL_FILES = ("model.onnx", "model_fused.onnx", "model_int8_dynamic_per_channel.onnx")


def model_hashes(folder: Path) -> dict[str, str]:
    hashes = {name: file_sha256(folder / name) for name in MODEL_FILES}
    assert len(set(hashes.values())) == len(MODEL_FILES)  # three different models, all written
    return hashes


@pytest.fixture(scope="module")
def recorded(tiny_model_dir, tmp_path_factory):
    """The tiny BERT through every step of a RecordingPipeline, and its recipe saved in the run folder."""
    output_dir = tmp_path_factory.mktemp("recorded") / "run"
    pipeline = RecordingPipeline(
        PipelineParameters(model_path=str(tiny_model_dir("bert")), output_dir=str(output_dir), **SMALL),
        budget=AccuracyBudget.preset("relaxed"),
    )
    pipeline.run_all()
    recipe = Recipe.from_pipeline(pipeline)
    recipe.save(output_dir / RECIPE_FILE)
    return pipeline, recipe, output_dir


def test_a_replay_twice_writes_identical_model_files(recorded, tmp_path):
    _pipeline, _recipe, output_dir = recorded
    original = model_hashes(output_dir)
    summaries = [
        run_recipe(output_dir / RECIPE_FILE, output_dir=tmp_path / name, progress=False, check=True)
        for name in ("a", "b")
    ]
    assert model_hashes(tmp_path / "a") == original
    assert model_hashes(tmp_path / "b") == original
    for name, summary in zip(("a", "b"), summaries, strict=True):
        assert json.loads((tmp_path / name / "summary.json").read_text()) == json.loads(json.dumps(summary))
        openvino = [] if summary["skipped_steps"] else ["openvino_fp32", "openvino_int8_nncf"]
        assert [c["name"] for c in summary["candidates"]] == [
            "fp32",
            "fp32_fused",
            "int8_dynamic_per_channel",
            "int8_dynamic_smoothquant",
            *openvino,
        ]
        assert summary["parameters"]["output_dir"] == str(tmp_path / name)
        # a replay records itself: same steps, same model files
        replayed = Recipe.load(tmp_path / name)
        assert replayed.step_names == _recipe.step_names
        assert {k: v for k, v in replayed.outputs().items() if k in MODEL_FILES} == original


def test_the_recipe_holds_steps_configs_versions_and_input_hashes(recorded, tiny_model_dir):
    pipeline, recipe, output_dir = recorded
    openvino = () if pipeline.skipped else ("openvino_fp32", "openvino_int8")  # skipped without the openvino extra
    assert recipe.step_names == (
        "export",
        "fuse",
        "quantize",
        "quantize_smoothquant",
        *openvino,
        "compare",
        "benchmark",
        "choose",
        "export_triton",
        "write_summary",
    )
    assert recipe.parameters.model_path == str(tiny_model_dir("bert").resolve())
    assert recipe.parameters.output_dir == str(output_dir)
    assert recipe.last("export").config == {"export_config": ExportConfig()}
    assert recipe.last("quantize").config == {"quant_config": DynamicQuantConfig()}
    assert recipe.last("compare").config == {"budget": AccuracyBudget.preset("relaxed")}
    assert recipe.last("choose").args == {"batch": 1}
    assert recipe.last("choose").details["chosen"] == pipeline.results["choose"].name
    assert recipe.last("export_triton").details["model_name"]
    for name in MODEL_FILES:
        assert recipe.outputs()[name] == file_sha256(output_dir / name)
    assert {"torch", "onnx", "onnxruntime", "transformers"} <= set(recipe.versions)
    folder = tiny_model_dir("bert")
    assert recipe.inputs["model/config.json"] == file_sha256(folder / "config.json")
    assert recipe.inputs["model/model.safetensors"] == file_sha256(folder / "model.safetensors")
    assert {"model/tokenizer.json", "data/calibration.txt", "data/evaluation.txt"} <= set(recipe.inputs)
    # JSON round trip: the file holds the same recipe, with typed configs
    assert Recipe.load(output_dir / RECIPE_FILE) == recipe
    on_disk = json.loads((output_dir / RECIPE_FILE).read_text())
    assert on_disk["steps"][0] == {
        "step": "export",
        "config": {"export_config": ExportConfig().to_dict()},
        "outputs": {"model.onnx": file_sha256(output_dir / "model.onnx")},
    }


def test_each_step_records_the_configs_it_ran_with(tiny_model_dir, tmp_path):
    pipeline = RecordingPipeline(
        PipelineParameters(model_path=str(tiny_model_dir("bert")), output_dir=str(tmp_path / "run"), **SMALL)
    )
    pipeline.export()
    pipeline.quant_config = DynamicQuantConfig(per_channel=False)
    pipeline.quantize()
    pipeline.parameters = pipeline.parameters.replace(benchmark_iterations=3)
    pipeline.benchmark()
    recipe = Recipe.from_pipeline(pipeline)
    assert recipe.step_names == ("export", "quantize", "benchmark")
    assert recipe.last("quantize").config["quant_config"].per_channel is False
    assert recipe.last("export").parameters == {} and recipe.last("benchmark").parameters == {"benchmark_iterations": 3}
    assert recipe.parameters.benchmark_iterations == 2
    replayed = replay(recipe, output_dir=tmp_path / "replay", progress=False, check=True)
    assert "int8_dynamic_per_tensor" in replayed.candidates
    assert replayed.results["benchmark"].config.iterations == 3
    assert replayed.parameters.benchmark_iterations == 3
    assert file_sha256(tmp_path / "replay" / "model_int8_dynamic_per_tensor.onnx") == file_sha256(
        tmp_path / "run" / "model_int8_dynamic_per_tensor.onnx"
    )


def test_a_plain_pipeline_is_recorded_from_its_results(tiny_model_dir, tmp_path):
    pipeline = Pipeline(
        PipelineParameters(model_path=str(tiny_model_dir("bert")), output_dir=str(tmp_path / "run"), **SMALL)
    )
    pipeline.export()
    pipeline.fuse()
    recipe = Recipe.from_pipeline(pipeline)
    assert recipe.step_names == ("export", "fuse")
    files = ("model.onnx", "model_fused.onnx")
    assert recipe.outputs() == {name: file_sha256(tmp_path / "run" / name) for name in files}


def test_changed_inputs_refuse_to_replay_unless_asked(tiny_model_dir, tmp_path):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir("bert"), folder)
    parameters = PipelineParameters(model_path=str(folder), output_dir=str(tmp_path / "run"), **SMALL)
    recipe = Recipe(parameters=parameters, steps=(RecipeStep("export"),), inputs=input_hashes(parameters))
    assert recipe.input_differences() == {}
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config, indent=4))  # same model, other bytes
    assert set(recipe.input_differences()) == {"model/config.json"}
    with pytest.raises(RecipeError, match=r"model/config\.json") as caught:
        replay(recipe, output_dir=tmp_path / "refused", progress=False)
    assert "check_inputs=False" in str(caught.value)
    assert not (tmp_path / "refused").exists()
    pipeline = replay(recipe, output_dir=tmp_path / "anyway", progress=False, check_inputs=False)
    assert (tmp_path / "anyway" / "model.onnx").is_file() and pipeline.recorded[0].step == "export"


def test_a_failing_step_names_the_step(tiny_model_dir, tmp_path):
    parameters = PipelineParameters(model_path=str(tiny_model_dir("bert")), output_dir=str(tmp_path), **SMALL)
    recipe = Recipe(parameters=parameters, steps=(RecipeStep("fuse"),), inputs=input_hashes(parameters))
    with pytest.raises(RecipeError, match="Step 'fuse' failed on replay: WorkbenchError") as caught:
        replay(recipe, progress=False)
    assert isinstance(caught.value.__cause__, WorkbenchError) and "run export() first" in str(caught.value)


def test_cli_run_replays_and_prints_the_summary_table(recorded, tmp_path, capsys):
    _pipeline, _recipe, output_dir = recorded
    assert main(["run", str(output_dir), "--output-dir", str(tmp_path / "cli"), "--quiet", "--check"]) == 0
    out, _err = capsys.readouterr()
    assert "candidate" in out and "int8_dynamic_per_channel" in out and "chosen:" in out
    assert "model files identical to the recording: " in out and "differs" not in out
    # the headline says which it is: identical files (a near-tied choice may differ), not "wrote different bytes"
    assert "replay check: all " in out and "a step wrote different bytes" not in out
    assert ("near-tied" in out) == ("different choice" in out)
    assert model_hashes(tmp_path / "cli") == model_hashes(output_dir)
    assert (tmp_path / "cli" / "summary.json").is_file() and (tmp_path / "cli" / RECIPE_FILE).is_file()


def test_cli_run_reports_a_missing_recipe(tmp_path, capsys):
    assert main(["run", str(tmp_path / "nothing.json")]) == 1
    _out, err = capsys.readouterr()
    assert err.startswith("RecipeError: No recipe at") and "Fix:" in err


def test_an_in_memory_module_cannot_be_recorded(tmp_path):
    torch = pytest.importorskip("torch")
    from workbench.models import ModuleSource

    source = ModuleSource(torch.nn.Linear(4, 2), {"x": torch.zeros(1, 4)})
    pipeline = Pipeline(PipelineParameters(output_dir=str(tmp_path)), source=source)
    with pytest.raises(RecipeError, match="cannot record a ModuleSource"):
        Recipe.from_pipeline(pipeline)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.update(recipe_version=99), "newer than this workbench reads"),
        (lambda r: r.update(colour="blue"), "unknown key"),
        (lambda r: r["steps"].append({"step": "deploy"}), "'deploy' is not a pipeline step"),
        (lambda r: r["steps"].append({"step": "fuse", "config": {"budget": {}}}), "unknown config"),
        (lambda r: r["steps"].append({"step": "benchmark", "parameters": {"model_path": "x"}}), "cannot change"),
        (lambda r: r["steps"].append({"step": "export", "args": {"batch": 1}}), "takes no argument"),
        (lambda r: r["steps"].append({"step": "export", "config": {"export_config": {"opset": 3}}}), "opset"),
    ],
)
def test_invalid_recipe_files_say_what_is_wrong(tmp_path, change, message):
    values = Recipe(parameters=PipelineParameters(output_dir=str(tmp_path))).to_dict()
    change(values)
    path = tmp_path / "recipe.json"
    path.write_text(json.dumps(values))
    with pytest.raises(RecipeError, match=message):
        Recipe.load(path)


@pytest.mark.slow
def test_minilm_recipe_recorded_through_the_workbench_replays_with_the_cli_to_identical_model_files(tmp_path):
    """The issue's Done-when: record through the UI on MiniLM, replay with `python -m workbench run`."""
    from workbench.ui import Workbench

    wb = Workbench.from_parameters(
        output_dir=str(tmp_path / "ui"),
        sequence_length=32,
        max_eval_samples=8,
        max_calibration_samples=8,
        benchmark_batch_sizes=[1],
        benchmark_iterations=3,
    )
    for step in ("export", "fuse", "quantize", "compare", "benchmark", "choose", "deploy", "summary"):
        wb[step].click()
        assert wb.state(step) == "done", (step, wb[step].error_output.value)
    recipe_path = wb.save_recipe(tmp_path / "minilm_recipe.json")
    assert Recipe.load(recipe_path).parameters.model_path is None  # the bundled model, by its hashes
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "workbench",
            "run",
            str(recipe_path),
            "--output-dir",
            str(tmp_path / "replay"),
            "--check",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "model files identical to the recording" in completed.stdout
    assert "recipe:" in completed.stderr and "8/8" in completed.stderr  # the progress bar, one step each
    assert model_hashes(tmp_path / "replay") == model_hashes(tmp_path / "ui")
