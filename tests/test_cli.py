"""The command line: `python -m workbench summary PATH` and `python -m workbench doctor`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import workbench._lazy as lazy
from workbench.__main__ import main
from workbench.summary import format_summary

# Only the documented stable keys, as a CI job or an older run might write them.
SUMMARY = {
    "model": "/models/all-MiniLM-L6-v2",
    "reference": "runs/x/model.onnx",
    "candidates": [
        {
            "name": "onnx_fp32_fused",
            "path": "runs/x/fused.onnx",
            "latency_ms_p50": 4.0,
            "cosine_mean": 0.999991,
            "cosine_min": 0.99987,
        },
        {
            "name": "onnx_int8_dynamic",
            "path": "runs/x/int8.onnx",
            "latency_ms_p50": 2.5,
            "cosine_mean": 0.99712,
            "cosine_min": 0.98123,
        },
        {
            "name": "not_timed",
            "path": "runs/x/other.onnx",
            "latency_ms_p50": None,
            "cosine_mean": None,
            "cosine_min": None,
        },
    ],
    "pytorch_latency_ms_p50": 10.0,
    "chosen": "onnx_int8_dynamic",
    "triton_repository": "runs/x/triton",
}


def _line(text: str, start: str) -> str:
    matches = [line for line in text.splitlines() if line.startswith(start)]
    assert len(matches) == 1, (start, text)
    return matches[0]


@pytest.fixture
def summary_file(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text(json.dumps(SUMMARY))
    return path


def test_summary_prints_table(summary_file, capsys):
    assert main(["summary", str(summary_file)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert "model: /models/all-MiniLM-L6-v2" in out
    assert "triton repository: runs/x/triton" in out
    assert "chosen: onnx_int8_dynamic" in out

    baseline = _line(out, "pytorch (baseline)")
    assert "10.00" in baseline and "1.00x" in baseline

    fused = _line(out, "onnx_fp32_fused")
    assert fused.split()[1:5] == ["4.00", "2.50x", "1.0000", "0.9999"]
    assert "<- chosen" not in fused

    int8 = _line(out, "onnx_int8_dynamic")
    assert int8.split()[1:5] == ["2.50", "4.00x", "0.9971", "0.9812"]
    assert int8.endswith("<- chosen")

    untimed = _line(out, "not_timed")
    assert untimed.split()[1:5] == ["-", "-", "-", "-"]
    assert out.rstrip("\n") == format_summary(SUMMARY)


def test_summary_from_run_folder(summary_file, capsys):
    assert main(["summary", str(summary_file.parent)]) == 0
    assert "onnx_int8_dynamic" in capsys.readouterr().out


def test_summary_without_pytorch_baseline(tmp_path, capsys):
    summary = {**SUMMARY, "pytorch_latency_ms_p50": None, "chosen": None, "triton_repository": None}
    path = tmp_path / "s.json"
    path.write_text(json.dumps(summary))
    assert main(["summary", str(path)]) == 0
    out = capsys.readouterr().out
    assert "pytorch (baseline)" not in out
    assert _line(out, "onnx_fp32_fused").split()[1:3] == ["4.00", "-"]
    assert "<- chosen" not in out
    assert "triton repository: None" in out


def test_summary_missing_file(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "summary.json"
    assert main(["summary", str(missing)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert str(missing) in err
    assert "No summary" in err and "Fix:" in err


def test_summary_missing_in_folder(tmp_path, capsys):
    assert main(["summary", str(tmp_path)]) == 1
    assert str(tmp_path / "summary.json") in capsys.readouterr().err


def test_summary_needs_a_path(capsys):
    with pytest.raises(SystemExit) as info:
        main(["summary"])
    assert info.value.code == 2


def test_unknown_command(capsys):
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code != 0


def test_doctor(capsys):
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert any(line.startswith("ONNX Runtime:") for line in out.splitlines())
    assert "GPU (torch.cuda):" in out
    assert "TensorRT:" in out
    if lazy.installed_distribution("onnxruntime") and not lazy.installed_distribution("onnxruntime-gpu"):
        assert "ONNX Runtime: onnxruntime" in out
        assert "CPUExecutionProvider" in _line(out, "ONNX Runtime providers:")
    onnx_version = lazy.installed_distribution("onnx")
    if onnx_version:
        assert f"onnx: {onnx_version}" in out.splitlines()


def test_doctor_reports_conflict(monkeypatch, capsys):
    fake = {"onnxruntime": "1.20.0", "onnxruntime-gpu": "1.20.1"}
    monkeypatch.setattr(lazy, "installed_distribution", lambda name: fake.get(name))
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    line = _line(out, "ONNX Runtime: CONFLICT")
    assert "1.20.0" in line and "1.20.1" in line
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in out


def test_module_entry_point(summary_file, tmp_path):
    ok = subprocess.run(
        [sys.executable, "-m", "workbench", "summary", str(summary_file)], capture_output=True, text=True, timeout=120
    )
    assert ok.returncode == 0, ok.stderr
    assert "onnx_int8_dynamic" in ok.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "workbench", "summary", str(tmp_path / "nope.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 1
    assert "No summary" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_summary_that_is_not_a_summary_is_a_clear_error(tmp_path, capsys):
    from workbench.__main__ import main

    broken = tmp_path / "summary.json"
    broken.write_text("{not json")
    assert main(["summary", str(broken)]) == 1
    assert "is not a workbench summary" in capsys.readouterr().err
    broken.write_text('{"model": "m"}')
    assert main(["summary", str(broken)]) == 1
