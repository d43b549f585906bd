"""bench/tensorrt.py where TensorRT cannot run: exit status 2 and one line saying what is missing and how to fix it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from workbench.engines.tensorrt import tensorrt_status

BENCH = Path(__file__).resolve().parent.parent / "bench" / "tensorrt.py"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=300, cwd=cwd)


@pytest.fixture(scope="module")
def tensorrt_missing() -> str:
    available, reason = tensorrt_status()
    if available:
        pytest.skip(f"TensorRT can run here ({reason}): the benchmark would run for real")
    return reason


@pytest.mark.parametrize("args", [(), ("--json", "--batch-sizes", "1")])
def test_exits_2_with_one_line_saying_what_is_missing(tensorrt_missing, tmp_path, args):
    done = _run(*args, cwd=tmp_path)  # from another folder: the script must not depend on the cwd
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    [line] = lines
    assert line.startswith("bench/tensorrt.py cannot run here: TensorRT: not available")
    assert line.endswith(tensorrt_missing)
    assert "pip install 'inference-workbench[gpu]'" in line
    assert list(tmp_path.iterdir()) == []  # nothing exported or built


def test_the_script_does_not_mistake_itself_for_tensorrt(tensorrt_missing, tmp_path):
    """Run as a script, bench/ is sys.path[0] and holds tensorrt.py: `import tensorrt` must not find it."""
    if "shadows" in tensorrt_missing:
        pytest.skip("a tensorrt.py shadows TensorRT in this test process itself")
    done = _run(cwd=tmp_path)
    assert "is installed" not in done.stderr and "shadows" not in done.stderr
    assert "'tensorrt' is not installed" in done.stderr or "no NVIDIA GPU" in done.stderr


def test_help_works_anywhere(tmp_path):
    done = _run("--help", cwd=tmp_path)
    assert done.returncode == 0 and "TensorRT" in done.stdout and "exits with status 2" in done.stdout
