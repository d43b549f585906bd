"""Calibration cache entries verify themselves: a corrupt or implausible entry is never a silent cache hit.

The two defects of issue 12: a truncated entry failed every later run with an error that never named the file,
and an entry with valid JSON but wrong ranges was used as a hit and gave a model whose outputs were all zero.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from workbench.stages.precision.calibrate import CalibrationCacheWarning, CalibrationConfig, calibrate

pytestmark = pytest.mark.reliability
pytest.importorskip("onnxruntime")


@pytest.fixture
def measured(fused_tiny, tmp_path):
    path, feeds = fused_tiny
    first = calibrate(path, feeds, cache_dir=tmp_path, progress=False)
    return path, feeds, first


def again(measured, tmp_path, config=None):
    path, feeds, _first = measured
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = calibrate(path, feeds, config or CalibrationConfig(), cache_dir=tmp_path, progress=False)
    return result, [w for w in caught if issubclass(w.category, CalibrationCacheWarning)]


def test_an_intact_entry_is_a_hit_without_a_warning(measured, tmp_path):
    result, warned = again(measured, tmp_path)
    assert result.cache_hit and not warned
    assert result.ranges() == measured[2].ranges()
    entry = json.loads(result.cache_path.read_text())
    assert entry["workbench"]["checksum"] and entry["workbench"]["model_sha256"]
    assert sorted(entry["workbench"]["tensors"]) == sorted(entry["data"])


def test_a_truncated_entry_is_re_measured_with_a_warning_naming_the_file(measured, tmp_path):
    cache_path, ranges = measured[2].cache_path, measured[2].ranges()
    text = cache_path.read_text()
    cache_path.write_text(text[: len(text) // 2])
    result, warned = again(measured, tmp_path)
    assert not result.cache_hit and result.ranges() == ranges
    assert len(warned) == 1 and str(cache_path) in str(warned[0].message)
    assert "not valid JSON" in str(warned[0].message)
    assert again(measured, tmp_path)[0].cache_hit  # the entry was written again, intact


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda e, k: e["data"][k].update(lowest=0.0, highest=0.0), "checksum"),  # valid JSON, wrong ranges
        (lambda e, k: e.pop("workbench"), "no checksum"),  # an entry of an older workbench, or hand-made
        (lambda e, k: e["workbench"].update(model_sha256="0" * 64), "another model"),
        (lambda e, k: e.update(data={}), "checksum"),
    ],
)
def test_a_damaged_entry_is_never_a_hit(measured, tmp_path, damage, words):
    cache_path, ranges = measured[2].cache_path, measured[2].ranges()
    entry = json.loads(cache_path.read_text())
    damage(entry, next(iter(entry["data"])))
    cache_path.write_text(json.dumps(entry))
    result, warned = again(measured, tmp_path)
    assert not result.cache_hit and result.ranges() == ranges
    assert len(warned) == 1 and str(cache_path) in str(warned[0].message) and words in str(warned[0].message)


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda e, k: e["data"][k].update(lowest=float("nan")), "not finite"),
        (lambda e, k: e["data"].update({"no_such_tensor": e["data"][k]}), "no_such_tensor"),
        (lambda e, k: [v.update(lowest=0.0, highest=0.0) for v in e["data"].values()], "empty"),
        (lambda e, k: e["data"][k].update(lowest=5.0, highest=-5.0), "low > high"),
    ],
)
def test_an_implausible_entry_with_a_valid_checksum_is_re_measured(measured, tmp_path, damage, words):
    # what a bug in a writer (ours or a copy of another tool's cache) could produce: the checksum matches
    from workbench.stages.precision.calibrate import _checksum

    cache_path, ranges = measured[2].cache_path, measured[2].ranges()
    entry = json.loads(cache_path.read_text())
    damage(entry, next(iter(entry["data"])))
    entry["workbench"]["checksum"] = _checksum(entry)
    cache_path.write_text(json.dumps(entry))
    result, warned = again(measured, tmp_path)
    assert not result.cache_hit and result.ranges() == ranges
    assert len(warned) == 1 and words in str(warned[0].message)


def test_wrong_ranges_in_the_cache_never_reach_the_quantized_model(fused_tiny, tmp_path):
    from workbench.engines.onnxruntime import OnnxRuntimeRunner
    from workbench.stages.precision.quantize import quantize_static

    path, feeds = fused_tiny
    good = quantize_static(path, tmp_path / "good.onnx", feeds, cache_dir=tmp_path / "cache", progress=False)
    (entry_path,) = (tmp_path / "cache").glob("*.json")
    entry = json.loads(entry_path.read_text())
    for value in entry["data"].values():
        value.update(lowest=0.0, highest=0.0)  # every range empty: every quantized activation is zero
    entry_path.write_text(json.dumps(entry))
    with pytest.warns(CalibrationCacheWarning, match=str(entry_path)):
        again_result = quantize_static(
            path, tmp_path / "again.onnx", feeds, cache_dir=tmp_path / "cache", progress=False
        )
    assert not again_result.calibration.cache_hit
    with OnnxRuntimeRunner(good.path) as a, OnnxRuntimeRunner(again_result.path) as b:
        out_a, out_b = a.infer(feeds[0]), b.infer(feeds[0])
    for name in out_a:
        assert np.abs(out_b[name]).max() > 0
        np.testing.assert_allclose(out_b[name], out_a[name], atol=1e-5)


def test_a_cache_folder_that_is_a_file_is_an_error_naming_it(fused_tiny, tmp_path):
    from workbench.errors import OutputFolderError

    path, feeds = fused_tiny
    (tmp_path / "cache").write_text("not a folder")
    with pytest.raises(OutputFolderError, match="cache"):
        calibrate(path, feeds, cache_dir=tmp_path / "cache", progress=False)
