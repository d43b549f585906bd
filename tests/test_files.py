"""Atomic writes: a failed block leaves the destination as it was and no temporary files behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench._files import atomic_directory, atomic_path


class Boom(RuntimeError):
    pass


def _entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- atomic_path ---------------------------------------------------------------------------------------------


def test_atomic_path_success(tmp_path):
    destination = tmp_path / "out" / "summary.json"  # parent is created
    with atomic_path(destination) as tmp:
        assert tmp.parent == destination.parent
        assert tmp != destination
        assert not destination.exists()  # nothing visible before the block ends
        tmp.write_text("new")
    assert destination.read_text() == "new"
    assert _entries(destination.parent) == ["summary.json"]


def test_atomic_path_replaces_existing(tmp_path):
    destination = tmp_path / "summary.json"
    destination.write_text("old")
    with atomic_path(destination) as tmp:
        tmp.write_text("new")
        assert destination.read_text() == "old"
    assert destination.read_text() == "new"
    assert _entries(tmp_path) == ["summary.json"]


def test_atomic_path_failure_leaves_destination_untouched(tmp_path):
    destination = tmp_path / "summary.json"
    destination.write_text("old")
    with pytest.raises(Boom):
        with atomic_path(destination) as tmp:
            tmp.write_text("half-writ")
            raise Boom()
    assert destination.read_text() == "old"
    assert _entries(tmp_path) == ["summary.json"]  # no temporary file left


def test_atomic_path_failure_creates_nothing(tmp_path):
    destination = tmp_path / "summary.json"
    with pytest.raises(Boom):
        with atomic_path(destination) as tmp:
            tmp.write_text("half-writ")
            raise Boom()
    assert not destination.exists()
    assert _entries(tmp_path) == []


# --- atomic_directory ----------------------------------------------------------------------------------------


def test_atomic_directory_success(tmp_path):
    destination = tmp_path / "repo" / "model"
    with atomic_directory(destination) as staging:
        assert staging.is_dir() and staging.parent == destination.parent
        assert not destination.exists()
        (staging / "1").mkdir()
        (staging / "1" / "model.onnx").write_text("weights")
        (staging / "config.pbtxt").write_text("config")
    assert (destination / "1" / "model.onnx").read_text() == "weights"
    assert (destination / "config.pbtxt").read_text() == "config"
    assert _entries(destination.parent) == ["model"]


def test_atomic_directory_refuses_to_merge_into_existing(tmp_path):
    destination = tmp_path / "model"
    destination.mkdir()
    (destination / "keep.txt").write_text("earlier run")
    with pytest.raises(OSError):
        with atomic_directory(destination) as staging:
            (staging / "new.txt").write_text("new run")
    assert _entries(destination) == ["keep.txt"]
    assert (destination / "keep.txt").read_text() == "earlier run"
    assert _entries(tmp_path) == ["model"]  # no *.partial folder


def test_atomic_directory_overwrite_replaces_existing(tmp_path):
    destination = tmp_path / "model"
    destination.mkdir()
    (destination / "old.txt").write_text("earlier run")
    with atomic_directory(destination, overwrite=True) as staging:
        (staging / "new.txt").write_text("new run")
        assert (destination / "old.txt").exists()  # the old folder stays until the new one is complete
    assert _entries(destination) == ["new.txt"]
    assert _entries(tmp_path) == ["model"]  # no *.partial or *.old folder


def test_atomic_directory_failure_leaves_nothing(tmp_path):
    destination = tmp_path / "model"
    with pytest.raises(Boom):
        with atomic_directory(destination) as staging:
            (staging / "half.txt").write_text("half")
            raise Boom()
    assert not destination.exists()
    assert _entries(tmp_path) == []
    assert not list(tmp_path.glob("*.partial"))


def test_atomic_directory_failed_overwrite_keeps_old(tmp_path):
    destination = tmp_path / "model"
    destination.mkdir()
    (destination / "old.txt").write_text("earlier run")
    with pytest.raises(Boom):
        with atomic_directory(destination, overwrite=True) as staging:
            (staging / "new.txt").write_text("half")
            raise Boom()
    assert _entries(destination) == ["old.txt"]
    assert (destination / "old.txt").read_text() == "earlier run"
    assert _entries(tmp_path) == ["model"]
