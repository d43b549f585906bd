"""precision_summary / write_precision_summary: converted candidates with their accuracy, as CI reads them."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("polygraphy")

from workbench.stages.accuracy.compare import AccuracyBudget, compare_candidates  # noqa: E402
from workbench.stages.precision.plan import PrecisionPlan  # noqa: E402
from workbench.stages.precision.summary import (  # noqa: E402
    PRECISION_SUMMARY_VERSION,
    precision_summary,
    write_precision_summary,
)


def test_summary_of_real_candidates(fused_tiny, tmp_path):
    path, feeds = fused_tiny
    results = {
        "int8_dynamic": PrecisionPlan.preset("cpu_int8_dynamic").convert(path, tmp_path / "dyn.onnx"),
        "fp16": PrecisionPlan.preset("gpu_fp16").convert(path, tmp_path / "fp16.onnx", calibration_feeds=feeds),
    }
    report = compare_candidates(
        path, {name: r.path for name, r in results.items()}, feeds, budget=AccuracyBudget.preset("relaxed")
    )
    written = write_precision_summary(results, report, tmp_path / "out" / "precision_summary.json")
    summary = json.loads((tmp_path / "out" / "precision_summary.json").read_text())
    assert summary == written
    assert summary["version"] == PRECISION_SUMMARY_VERSION and summary["reference"] == str(path)
    assert summary["samples"] == 4 and summary["budget"]["embedding_cosine_min"] == 0.95
    rows = {row["name"]: row for row in summary["candidates"]}
    assert list(rows) == ["int8_dynamic", "fp16"]
    for _name, row in rows.items():
        assert set(row) == {
            "name",
            "path",
            "method",
            "size_mb",
            "keep_fp32_count",
            "cosine_mean",
            "cosine_min",
            "meets_budget",
            "failures",
        }
        assert Path(row["path"]).is_file() and row["size_mb"] > 0
        assert -1 <= row["cosine_min"] <= row["cosine_mean"] <= 1 + 1e-9
        assert row["meets_budget"] is (not row["failures"])
    assert rows["fp16"]["method"] == "fp16" and rows["int8_dynamic"]["method"] == "int8 dynamic per-channel"
    assert rows["fp16"]["cosine_min"] > 0.999


def test_missing_candidate_and_pins_count():
    result = SimpleNamespace(path=Path("a.onnx"), method="fp16", size_mb=1.5, keep_fp32=("n1", "n2"))
    accuracy = SimpleNamespace(name="other", embedding_cosine_mean=1.0, embedding_cosine_min=1.0, failures=())
    report = SimpleNamespace(candidates=(accuracy,), reference=Path("ref.onnx"), samples=3, budget=AccuracyBudget())
    (row,) = precision_summary({"a": result}, report)["candidates"]
    assert row["keep_fp32_count"] == 2
    assert row["cosine_mean"] is None and row["meets_budget"] is None and row["failures"] == []


def test_a_failed_write_leaves_nothing(tmp_path):
    result = SimpleNamespace(path=Path("a.onnx"), method=object(), size_mb=1.0, keep_fp32=())  # not JSON
    report = SimpleNamespace(candidates=(), reference=Path("ref.onnx"), samples=1, budget=AccuracyBudget())
    with pytest.raises(TypeError):
        write_precision_summary({"a": result}, report, tmp_path / "summary.json")
    assert list(tmp_path.iterdir()) == []
