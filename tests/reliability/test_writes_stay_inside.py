"""Nothing outside the given output paths is created by any stage.

Every stage runs on inputs in a read-only folder (really read-only: when the tests run as root, the stages run
without the capabilities that let root ignore file modes), with the current directory inside that folder, and
TMPDIR and HOME in folders of their own.
Afterwards the input folder must be exactly as before (listing with sizes and mtimes), TMPDIR empty (temporary
folders removed), and each stage's output folder must hold its results and no temporary or partial file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.reliability.conftest import leftovers

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

SCRIPT = Path(__file__).with_name("stage_writes_script.py")
ROOT = Path(__file__).resolve().parents[2]
# root ignores file modes through these capabilities; without them a 0555 folder is read-only for root too
WITHOUT_OVERRIDES = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]


def _make_read_only(folder: Path) -> None:
    for root, _dirs, files in os.walk(folder):
        for name in files:
            os.chmod(Path(root) / name, 0o444)
        os.chmod(root, 0o555)


def run_stages(base: Path, stages: str = "") -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    env.update(
        TMPDIR=str(base / "tmp"),
        HOME=str(base / "home"),
        PYTHONPATH=str(ROOT),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        MPLCONFIGDIR=str(base / "home" / ".cache/matplotlib"),
    )
    prefix = WITHOUT_OVERRIDES if os.geteuid() == 0 else []
    if prefix and shutil.which("setpriv") is None:
        pytest.skip("running as root without util-linux's setpriv, so a folder cannot be made read-only for root")
    completed = subprocess.run(
        [*prefix, sys.executable, str(SCRIPT), str(base), stages],
        cwd=base / "ro",
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    lines = [line for line in completed.stdout.splitlines() if line.startswith("REPORT ")]
    assert completed.returncode == 0 and lines, completed.stderr[-4000:]
    return json.loads(lines[-1][len("REPORT ") :])


@pytest.fixture(scope="module")
def stage_report(tiny_model_dir, tiny_bert_onnx, fused_tiny):
    base = Path(tempfile.mkdtemp(prefix="wb-readonly-"))
    try:
        ro = base / "ro"
        shutil.copytree(tiny_model_dir("bert"), ro / "tiny")
        shutil.copyfile(tiny_bert_onnx, ro / "model.onnx")
        shutil.copyfile(fused_tiny[0], ro / "fused.onnx")
        (ro / "data").mkdir()
        for name in ("calibration.txt", "evaluation.txt"):
            (ro / "data" / name).write_text("the cat sat on the mat\nrevenue grew 12%\nhow do I reset it?\nshort\n")
        _make_read_only(ro)
        for name in ("out", "tmp", "home"):
            (base / name).mkdir()
        yield base, run_stages(base)
    finally:
        for root, _dirs, _files in os.walk(base):
            os.chmod(root, 0o755)
        shutil.rmtree(base, ignore_errors=True)


STAGES = (
    "export",
    "fuse",
    "quantize_dynamic",
    "quantize_static",
    "calibrate",
    "fp16",
    "smoothquant",
    "surgery",
    "compare",
    "benchmark",
    "triton",
    "pipeline",
)


@pytest.mark.parametrize("stage", STAGES)
def test_a_stage_writes_only_under_its_output_path(stage_report, stage):
    base, report = stage_report
    entry = report[stage]
    assert "error" not in entry, entry.get("traceback")
    assert entry["input_changed"] == [], "the stage changed its read-only input folder"
    assert entry["tmp_left"] == [], "the stage left temporary files in TMPDIR"
    assert entry["home_left"] == [], f"the stage wrote into HOME: {entry['home_left']}"
    for output in entry["outputs"]:
        assert Path(output).is_relative_to(base / "out"), output
        assert Path(output).exists(), output
    assert leftovers(base / "out") == []
