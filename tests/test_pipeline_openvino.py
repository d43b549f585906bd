"""The pipeline's OpenVINO candidates: run_all makes an FP32 IR and an NNCF INT8 IR, compares and times them through
the engine registry beside the ONNX Runtime candidates, chooses by the same rule, records them in the recipe and
replays them; without the openvino extra the steps are skipped with the reason, and asking for them names the extra.
"""

from __future__ import annotations

import sys

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tritonclient")

from workbench._files import file_sha256  # noqa: E402
from workbench.errors import MissingDependency  # noqa: E402
from workbench.pipeline import STEPS, Pipeline, PipelineParameters  # noqa: E402
from workbench.recipe import Recipe, replay  # noqa: E402
from workbench.stages.accuracy.compare import AccuracyBudget  # noqa: E402

SMALL = {
    "sequence_length": 16,
    "max_eval_samples": 8,
    "max_calibration_samples": 8,
    "eval_batch_size": 4,
    "benchmark_batch_sizes": (1,),
    "benchmark_iterations": 2,
}
OPENVINO_STEPS = ("openvino_fp32", "openvino_int8")
OPENVINO_CANDIDATES = {"openvino_fp32": "fp32", "openvino_int8_nncf": "int8_nncf"}


def test_the_openvino_steps_are_registered_skippable_candidate_makers():
    for name in OPENVINO_STEPS:
        assert name in STEPS and STEPS[name].skippable and not STEPS[name].optional and STEPS[name].makes_candidates
        assert STEPS[name].needs == ("export",)
        assert name in STEPS.inputs("compare") and name in STEPS.inputs("benchmark")
    assert STEPS.names.index("openvino_int8") < STEPS.names.index("compare")


def test_run_all_offers_openvino_candidates_chooses_the_fastest_in_budget_and_replays_them(tiny_model_dir, tmp_path):
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    parameters = PipelineParameters(model_path=str(tiny_model_dir("bert")), output_dir=str(tmp_path / "run"), **SMALL)
    pipeline = Pipeline(parameters, budget=AccuracyBudget.preset("relaxed"))
    summary = pipeline.run_all()
    assert summary["skipped_steps"] == {}
    rows = {c["name"]: c for c in summary["candidates"]}
    assert {"fp32", "int8_dynamic_smoothquant", *OPENVINO_CANDIDATES} <= set(rows)
    for name, precision in OPENVINO_CANDIDATES.items():
        row = rows[name]
        assert (row["engine"], row["precision"]) == ("openvino", precision)
        assert row["path"].endswith(".xml") and (tmp_path / "run" / f"model_{name}.bin").is_file()
        assert row["cosine_mean"] is not None and row["latency_ms_p50"] > 0  # compared and timed
    assert rows["openvino_fp32"]["cosine_min"] > 0.9999  # FP32 IR: the export's numbers
    assert {rows[n]["engine"] for n in ("fp32", "int8_dynamic_smoothquant")} == {"onnxruntime"}
    # the choice: the fastest candidate at batch 1 of those that meet the budget, whatever its engine
    meeting = {n: r["latency_ms_p50"] for n, r in rows.items() if r["meets_budget"]}
    assert summary["chosen"] == min(meeting, key=meeting.get)
    # the recipe records the steps and their IR files; a replay runs them again to the same files
    recipe = Recipe.from_pipeline(pipeline)
    assert recipe.step_names[:6] == ("export", "fuse", "quantize", "quantize_smoothquant", *OPENVINO_STEPS)
    assert recipe.last("openvino_int8").details == {"plan": "cpu_int8_nncf"}
    for step_name, candidate in zip(OPENVINO_STEPS, OPENVINO_CANDIDATES, strict=True):
        assert recipe.last(step_name).outputs == {
            f"model_{candidate}.xml": file_sha256(tmp_path / "run" / f"model_{candidate}.xml")
        }
    replayed = replay(
        Recipe.from_dict(recipe.to_dict()), output_dir=tmp_path / "replay", progress=False, check=True
    )  # raises when a step wrote other bytes
    assert {f"model_{name}.xml" for name in OPENVINO_CANDIDATES} <= set(replayed.output_check.identical)
    for name in OPENVINO_CANDIDATES:
        assert replayed.candidates[name].engine == "openvino"
        for suffix in (".xml", ".bin"):  # the same IR, byte for byte (generated op names included)
            assert file_sha256(replayed.candidates[name].path.with_suffix(suffix)) == file_sha256(
                pipeline.candidates[name].path.with_suffix(suffix)
            ), (name, suffix)


def test_without_openvino_run_all_skips_the_steps_and_says_which_extra(tiny_model_dir, tmp_path, monkeypatch):
    for module in [m for m in sys.modules if m.split(".")[0] in ("openvino", "nncf")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now fails as if it were not installed
    monkeypatch.setitem(sys.modules, "nncf", None)
    parameters = PipelineParameters(model_path=str(tiny_model_dir("bert")), output_dir=str(tmp_path / "run"), **SMALL)
    pipeline = Pipeline(parameters, budget=AccuracyBudget.preset("relaxed"))
    summary = pipeline.run_all()
    assert set(summary["skipped_steps"]) == set(OPENVINO_STEPS)
    for reason in summary["skipped_steps"].values():
        assert "OpenVINO is not available" in reason and "inference-workbench[openvino]" in reason
    assert [c["name"] for c in summary["candidates"]] == [
        "fp32",
        "fp32_fused",
        "int8_dynamic_per_channel",
        "int8_dynamic_smoothquant",
    ]
    assert not set(OPENVINO_STEPS) & set(summary["steps"])  # not in the history: a recipe replays what ran
    assert summary["chosen"] and "OpenVINO" in pipeline.unavailable_engines
    assert not list((tmp_path / "run").glob("*.xml")) and not list((tmp_path / "run").glob("*.bin"))
    # asked for directly, each step raises the error that names the extra, and writes nothing
    for name in OPENVINO_STEPS:
        with pytest.raises(MissingDependency, match=r"inference-workbench\[openvino\]"):
            getattr(pipeline, name)()
    assert not list((tmp_path / "run").glob("*.xml"))
