"""The replay check tells a different choice among near-tied candidates apart from a step that wrote other bytes,
in the one line the CLI and the Workbench print (OutputCheck.headline)."""

from __future__ import annotations

from types import SimpleNamespace

from workbench.__main__ import _near_tie
from workbench.recipe import OutputCheck


def test_a_different_choice_among_identical_files_is_not_called_a_nondeterministic_step():
    check = OutputCheck(
        identical=("model.onnx", "model_int8.onnx"),
        choice=("int8", "fp32_fused"),
        skipped={"triton_repository/m/1/model.onnx": "the choice follows timings"},
    )
    assert bool(check)
    line = check.headline()
    assert line.startswith("replay check: all 2 model files identical to the recording")
    assert "a different choice among near-tied candidates (the replay chose fp32_fused, the recording int8" in line
    assert "wrote different bytes" not in line.replace("not a step writing other bytes", "")


def test_a_step_that_wrote_other_bytes_is_named_as_such():
    check = OutputCheck(identical=("model.onnx",), differing={"model_int8.onnx": ("a" * 64, "b" * 64)})
    assert not check
    assert check.headline() == (
        "replay check: a step wrote different bytes: 1 file(s) differ from the recording (model_int8.onnx)"
    )
    assert "identical" in OutputCheck(identical=("x",)).headline() and "choice" not in OutputCheck().headline()


def test_the_cli_shows_how_near_the_two_candidates_were_in_the_replay():
    timings = SimpleNamespace(p50=lambda name, batch, seq: {"int8": 12.67, "fp32_fused": 12.52}.get(name))
    pipeline = SimpleNamespace(results={"benchmark": timings, "choose": SimpleNamespace(batch=1, seq=128)})
    assert _near_tie(pipeline, ("int8", "fp32_fused")) == (
        "  p50 at batch 1, seq 128 in this replay: fp32_fused 12.52 ms, int8 12.67 ms"
    )
    assert "no benchmark" in _near_tie(SimpleNamespace(results={}), ("int8", "fp32"))
