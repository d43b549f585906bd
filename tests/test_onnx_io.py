"""Saving and loading ONNX models, inline and with external data."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import workbench.onnx.io as onnx_io
from workbench.errors import ModelSourceError
from workbench.onnx.io import load_onnx, model_size_mb, save_onnx

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _model(size: int = 16, seed: int = 0):
    weights = np.random.default_rng(seed).standard_normal(size).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _weights(model) -> np.ndarray:
    return numpy_helper.to_array(model.graph.initializer[0])


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name.endswith(".partial"))


@pytest.fixture
def tiny_threshold(monkeypatch):
    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_THRESHOLD_BYTES", 1024)


def test_round_trip_inline(tmp_path):
    model = _model()
    path = save_onnx(model, tmp_path / "sub" / "model.onnx")
    assert path == tmp_path / "sub" / "model.onnx"
    assert path.is_file()
    assert not (path.parent / "model.onnx.data").exists()
    assert _leftovers(path.parent) == []
    loaded = load_onnx(path)
    assert loaded.graph.node[0].op_type == "Add"
    assert [i.name for i in loaded.graph.input] == ["x"]
    np.testing.assert_array_equal(_weights(loaded), _weights(model))
    assert loaded == model


def test_save_replaces_existing_file(tmp_path):
    path = tmp_path / "model.onnx"
    save_onnx(_model(seed=0), path)
    save_onnx(_model(seed=1), path)
    np.testing.assert_array_equal(_weights(load_onnx(path)), _weights(_model(seed=1)))
    assert _leftovers(tmp_path) == []


def test_external_data_above_threshold(tmp_path, tiny_threshold):
    model = _model(size=4096)
    expected = _weights(model).copy()
    path = save_onnx(model, tmp_path / "model.onnx")
    data = tmp_path / "model.onnx.data"
    assert data.is_file()
    assert data.stat().st_size >= 4096 * 4
    assert path.stat().st_size < 4096 * 4  # the weights are not inline
    assert _leftovers(tmp_path) == []
    loaded = load_onnx(path)
    np.testing.assert_array_equal(_weights(loaded), expected)


def test_external_save_leaves_the_callers_model_intact(tmp_path, tiny_threshold):
    model = _model(size=4096)
    expected = _weights(model).copy()
    save_onnx(model, tmp_path / "first" / "model.onnx")
    assert model.graph.initializer[0].data_location == TensorProto.DEFAULT
    np.testing.assert_array_equal(_weights(model), expected)
    # saving the same in-memory model again elsewhere gives a self-contained copy
    second = save_onnx(model, tmp_path / "second" / "copy.onnx")
    shutil.rmtree(tmp_path / "first")
    assert (second.parent / "copy.onnx.data").is_file()
    np.testing.assert_array_equal(_weights(load_onnx(second)), expected)


def test_below_threshold_removes_stale_data_file(tmp_path, monkeypatch):
    path = tmp_path / "model.onnx"
    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_THRESHOLD_BYTES", 1024)
    save_onnx(_model(size=4096), path)
    assert (tmp_path / "model.onnx.data").exists()
    monkeypatch.setattr(onnx_io, "EXTERNAL_DATA_THRESHOLD_BYTES", 10**9)
    small = _model(size=4096, seed=3)
    save_onnx(small, path)
    assert not (tmp_path / "model.onnx.data").exists()
    np.testing.assert_array_equal(_weights(load_onnx(path)), _weights(small))


def test_model_size_mb_counts_data_file(tmp_path, tiny_threshold):
    path = save_onnx(_model(size=4096), tmp_path / "model.onnx")
    data = tmp_path / "model.onnx.data"
    expected = (path.stat().st_size + data.stat().st_size) / 1e6
    assert model_size_mb(path) == pytest.approx(expected)
    assert model_size_mb(path) > path.stat().st_size / 1e6


def test_model_size_mb_inline(tmp_path):
    path = save_onnx(_model(size=4096), tmp_path / "model.onnx")
    assert model_size_mb(path) == pytest.approx(path.stat().st_size / 1e6)
    assert model_size_mb(path) >= 4096 * 4 / 1e6


def test_load_truncated_file(tmp_path):
    path = save_onnx(_model(size=256), tmp_path / "model.onnx")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ModelSourceError, match="truncated"):
        load_onnx(path)


def test_load_with_missing_data_file(tmp_path, tiny_threshold):
    path = save_onnx(_model(size=4096), tmp_path / "model.onnx")
    (tmp_path / "model.onnx.data").unlink()
    with pytest.raises(ModelSourceError):
        load_onnx(path)
