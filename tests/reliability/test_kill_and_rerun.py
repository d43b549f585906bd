"""SIGKILL in the middle of a stage, then a re-run: no partial or wrong file is left, and the re-run succeeds.

Each stage runs in a process of its own that stops where it has its temporary files on disk (kill_script.py);
the test waits for that (bounded), checks the temporary files are there, kills the process with SIGKILL, and
runs the stage again into the same folder. Afterwards the folder must hold no temporary or partial file, and
the results must be exactly those of a run that was never killed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.reliability.conftest import leftovers
from workbench._files import LOCK_FILE, OutputFolder, file_sha256
from workbench.errors import OutputFolderBusy, OutputFolderError

pytestmark = [pytest.mark.slow, pytest.mark.reliability]
pytest.importorskip("onnxruntime")

SCRIPT = Path(__file__).with_name("kill_script.py")
ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 180.0
SMALL = {
    "sequence_length": 16,
    "max_eval_samples": 4,
    "max_calibration_samples": 4,
    "eval_batch_size": 2,
    "benchmark_batch_sizes": [1],
    "benchmark_iterations": 2,
}


def start(mode: str, output: Path, hold: str, args: dict) -> tuple[subprocess.Popen, Path]:
    marker = output.parent / f".{output.name}.{mode}.held"
    marker.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), mode, str(output), hold, str(marker), json.dumps(args)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process, marker


def kill_when_held(process: subprocess.Popen, marker: Path) -> None:
    deadline = time.monotonic() + WAIT_S
    while not marker.exists():
        if process.poll() is not None:
            raise AssertionError(
                f"the stage ended (rc {process.returncode}) before it was held: {process.stderr.read()[-3000:]}"
            )
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError(f"the stage was not held within {WAIT_S} s")
        time.sleep(0.02)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    process.stderr.close()
    marker.unlink()
    assert process.returncode == -signal.SIGKILL


def run(mode: str, output: Path, args: dict) -> None:
    process, _marker = start(mode, output, "none", args)
    _, errors = process.communicate(timeout=600)
    assert process.returncode == 0, errors[-3000:]


@pytest.fixture(scope="module")
def inputs(tiny_model_dir, tiny_bert_onnx, fused_tiny):
    return {"model_dir": str(tiny_model_dir("bert")), "onnx": str(tiny_bert_onnx), "fused": str(fused_tiny[0])}


@pytest.mark.parametrize(
    "mode, hold, result",
    [
        ("export", "publish", "model.onnx"),
        ("quantize_dynamic", "publish", "int8.onnx"),
        ("quantize_static", "publish", "int8.onnx"),
        ("calibrate", "calibrate", "cache"),
    ],
)
def test_sigkill_in_a_stage_then_a_rerun_leaves_exactly_the_clean_result(inputs, tmp_path, mode, hold, result):
    args = {"export": {"model": inputs["model_dir"]}}.get(
        mode, {"model": inputs["fused"], "tokenizer": inputs["model_dir"]}
    )
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    run(mode, clean, args)

    process, marker = start(mode, killed, hold, args)
    kill_when_held(process, marker)
    left = leftovers(killed)
    assert left, "the kill came when the stage had no temporary file on disk"
    assert not (killed / result).exists() or result == "cache" and not list((killed / result).glob("*.json"))

    run(mode, killed, args)  # the re-run into the same folder
    assert leftovers(killed) == []
    if result == "cache":
        (clean_entry,) = (clean / "cache").glob("*.json")
        (entry,) = (killed / "cache").glob("*.json")
        assert entry.name == clean_entry.name
        assert json.loads(entry.read_text())["data"] == json.loads(clean_entry.read_text())["data"]
    else:
        assert file_sha256(killed / result) == file_sha256(clean / result)
        assert oct((killed / result).stat().st_mode & 0o777) == "0o644"


def test_sigkill_in_the_triton_export_then_a_rerun(inputs, tmp_path):
    args = {"model": inputs["onnx"], "tokenizer": inputs["model_dir"], "hold_step": "tiny_pooling"}
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    run("triton", clean, args)
    process, marker = start("triton", killed, "publish", args)  # held after placing tiny and tiny_tokenizer
    kill_when_held(process, marker)
    assert leftovers(killed / "repo")
    # the re-run refuses the entries the killed one placed, before writing anything, with the exact class
    from workbench.errors import TritonExportError

    with pytest.raises(TritonExportError, match="already exist"):
        run_in_process_triton(inputs, killed, overwrite=False)
    assert leftovers(killed / "repo")  # a refused re-run changes nothing
    run("triton", killed, {**args, "overwrite": True, "hold_step": None})
    assert leftovers(killed / "repo") == []
    clean_files = sorted(p.relative_to(clean) for p in clean.rglob("*") if p.is_file())
    killed_files = sorted(p.relative_to(killed) for p in killed.rglob("*") if p.is_file())
    assert killed_files == clean_files
    for relative in clean_files:
        if relative.name != "provenance.json":  # it records the time of the export
            assert file_sha256(killed / relative) == file_sha256(clean / relative), relative


def run_in_process_triton(inputs, output: Path, *, overwrite: bool):
    from workbench.triton.config import TritonConfig
    from workbench.triton.ensemble import export_triton_ensemble

    return export_triton_ensemble(
        inputs["onnx"],
        output / "repo",
        inputs["model_dir"],
        TritonConfig(model_name="tiny"),
        sequence_length=16,
        overwrite=overwrite,
    )


@pytest.fixture(scope="module")
def clean_pipeline_run(inputs, tmp_path_factory):
    output = tmp_path_factory.mktemp("pipeline") / "clean"
    run("pipeline", output, {"model_path": inputs["model_dir"], **SMALL})
    return output


DETERMINISTIC = ("fp32", "fp32_fused", "int8_dynamic_per_channel")


def assert_summary_matches_models(output: Path, clean: Path) -> None:
    summary = json.loads((output / "summary.json").read_text())
    named = {Path(c["path"]).name for c in summary["candidates"]}
    models = {p.name for pattern in ("*.onnx", "*.xml") for p in output.glob(pattern)}  # ONNX and OpenVINO IRs
    assert models == named  # no model the summary does not describe
    by_name = {c["name"]: Path(c["path"]) for c in summary["candidates"]}
    clean_summary = json.loads((clean / "summary.json").read_text())
    clean_by_name = {c["name"]: Path(c["path"]) for c in clean_summary["candidates"]}
    assert sorted(by_name) == sorted(clean_by_name)
    for name in DETERMINISTIC:
        assert by_name[name].parent == output
        assert file_sha256(by_name[name]) == file_sha256(clean_by_name[name]), name
    served = Path(summary["triton_repository"]) / summary["triton_model"].removesuffix("_ensemble") / "1" / "model.onnx"
    assert file_sha256(served) == file_sha256(by_name[summary["chosen"]])


@pytest.mark.parametrize("step", ["model.onnx", "model_int8_dynamic_per_channel", "triton_repository"])
def test_sigkill_in_a_pipeline_step_then_a_rerun(inputs, clean_pipeline_run, tmp_path, step):
    from workbench.pipeline import Pipeline, PipelineParameters
    from workbench.stages.accuracy.compare import AccuracyBudget

    output = tmp_path / "run"
    args = {"model_path": inputs["model_dir"], **SMALL, "hold_step": step}
    process, marker = start("pipeline", output, "publish", args)
    deadline = time.monotonic() + WAIT_S
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    # while it runs, the folder is its: a second run is refused, naming it
    with pytest.raises(OutputFolderBusy, match=f"process {process.pid}"):
        OutputFolder(output).claim(overwrite=True)
    kill_when_held(process, marker)
    assert leftovers(output) and (output / LOCK_FILE).exists()
    assert not (output / "summary.json").exists()

    parameters = PipelineParameters(
        model_path=inputs["model_dir"],
        output_dir=str(output),
        **{k: tuple(v) if isinstance(v, list) else v for k, v in SMALL.items()},
    )
    if step != "model.onnx":  # the killed run left complete models behind: without overwrite, refused up front
        before = sorted(p.name for p in output.iterdir())
        with pytest.raises(OutputFolderError, match="was killed before it finished"):
            Pipeline(parameters)
        assert sorted(p.name for p in output.iterdir()) == before
    Pipeline(parameters.replace(overwrite=True), budget=AccuracyBudget.preset("relaxed")).run_all()
    assert leftovers(output) == []
    assert_summary_matches_models(output, clean_pipeline_run)
