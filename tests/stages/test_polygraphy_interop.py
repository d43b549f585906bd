"""Polygraphy interop: the workbench writes inputs and reference outputs that Polygraphy's own CLI checks against."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("polygraphy")

from polygraphy.comparator import RunResults  # noqa: E402

from tests.stages.test_accuracy import TEXTS, _noisy_copy  # noqa: E402
from workbench.data import tokenize_batches  # noqa: E402
from workbench.errors import ConfigError, DataError, ModelSourceError  # noqa: E402
from workbench.models import load_model  # noqa: E402
from workbench.stages.accuracy.compare import load_polygraphy_inputs, save_polygraphy_data  # noqa: E402


@pytest.fixture(scope="module")
def feeds(tiny_model_dir):
    return tokenize_batches(
        load_model(tiny_model_dir("bert")).load_tokenizer(), TEXTS, batch_size=2, sequence_length=24
    )


@pytest.fixture(scope="module")
def saved(tiny_bert_onnx, feeds, tmp_path_factory):
    folder = tmp_path_factory.mktemp("polygraphy-data")
    return save_polygraphy_data(tiny_bert_onnx, feeds, folder / "inputs.json", folder / "outputs.json", threads=1)


def _polygraphy(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Polygraphy's real command line, from this interpreter's environment (the package has no __main__)."""
    script = Path(sys.executable).with_name("polygraphy")
    command = (
        [str(script)]
        if script.is_file()
        else [sys.executable, "-c", "import sys; from polygraphy.tools import main; sys.exit(main())"]
    )
    return subprocess.run([*command, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


def _run(candidate: Path, saved, cwd: Path) -> subprocess.CompletedProcess[str]:
    return _polygraphy(
        "run",
        candidate,
        "--onnxrt",
        "--load-inputs",
        saved.inputs,
        "--load-outputs",
        saved.outputs,
        "--atol",
        "1e-4",
        "--rtol",
        "1e-4",
        cwd=cwd,
    )


def test_polygraphy_cli_passes_the_same_model(tiny_bert_onnx, feeds, saved, tmp_path):
    process = _run(tiny_bert_onnx, saved, tmp_path)
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    assert f"Passed: {len(feeds)}/{len(feeds)} iterations" in process.stdout  # every batch was compared


def test_polygraphy_cli_fails_a_noisy_copy(tiny_bert_onnx, saved, tmp_path):
    noisy = _noisy_copy(tiny_bert_onnx, tmp_path / "noisy.onnx", scale=0.5)
    process = _run(noisy, saved, tmp_path)
    assert process.returncode != 0, process.stdout[-3000:]
    assert "FAILED" in process.stdout + process.stderr


def test_inputs_round_trip_exactly(feeds, saved):
    loaded = load_polygraphy_inputs(saved.inputs)
    assert len(loaded) == len(feeds)
    for original, back in zip(feeds, loaded):
        assert list(back) == list(original)
        for name, array in original.items():
            assert back[name].dtype == array.dtype and back[name].shape == array.shape
            np.testing.assert_array_equal(back[name], array)


def test_outputs_are_polygraphy_run_results(tiny_bert_onnx, feeds, saved):
    from workbench.engines.onnxruntime import OnnxRuntimeRunner

    results = RunResults.load(str(saved.outputs))
    assert list(results.keys()) == ["reference"] and len(results["reference"]) == len(feeds)
    with OnnxRuntimeRunner(tiny_bert_onnx, intra_op_threads=1) as runner:
        expected = runner.infer(feeds[0])["last_hidden_state"]
    np.testing.assert_array_equal(results["reference"][0]["last_hidden_state"], expected)


def test_loading_the_outputs_file_as_inputs_is_an_error(saved, tmp_path):
    with pytest.raises(DataError, match="RunResults"):
        load_polygraphy_inputs(saved.outputs)
    with pytest.raises(DataError, match="do not exist"):
        load_polygraphy_inputs(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DataError, match="broken.json"):
        load_polygraphy_inputs(tmp_path / "broken.json")


def test_per_iteration_directories_load_in_order(feeds, tmp_path):
    from polygraphy.json import save_json

    folder = tmp_path / "inputs"
    folder.mkdir()
    for index, feed in enumerate(feeds):
        save_json(feed, str(folder / f"{index:010d}.json"))
    loaded = load_polygraphy_inputs(folder)
    assert [f["input_ids"].tolist() for f in loaded] == [f["input_ids"].tolist() for f in feeds]


def test_a_failed_save_writes_nothing(tiny_bert_onnx, feeds, tmp_path, monkeypatch):
    with pytest.raises(ModelSourceError):
        save_polygraphy_data(tmp_path / "missing.onnx", feeds, tmp_path / "in.json", tmp_path / "out.json")
    assert list(tmp_path.iterdir()) == []

    def broken_save(self, dest):
        raise OSError("disk full")

    monkeypatch.setattr(RunResults, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):  # the inputs were written already: they must not appear
        save_polygraphy_data(tiny_bert_onnx, feeds, tmp_path / "in.json", tmp_path / "out.json")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ConfigError):
        save_polygraphy_data(tmp_path / "model.onnx", feeds, tmp_path / "same.json", tmp_path / "same.json")
    with pytest.raises(DataError):
        save_polygraphy_data(tmp_path / "model.onnx", [], tmp_path / "in.json", tmp_path / "out.json")
