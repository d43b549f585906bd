"""The quickstart notebook on token-classification and question-answering models of four architectures.

Tiny random-init models (tests/tasks/tiny_heads.py, built from configs) run through the notebook under papermill
with the smallest useful parameters (a few evaluation samples, batch size 1 timed twice), so the eight runs stay
cheap; question answering runs at 64 tokens so that the bundled contexts are split into several windows.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tasks.tiny_heads import KINDS, build_tiny_head

papermill = pytest.importorskip("papermill")
pytest.importorskip("onnxruntime")

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "quickstart.ipynb"
#: Per task: the sequence length the notebook runs at, and the front model's (inputs, outputs) clients see.
CASES = {
    "token-classification": (32, ["TEXT"], ["ENTITIES"]),
    "question-answering": (64, ["QUESTION", "CONTEXT"], ["ANSWER", "SCORE", "START", "END"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("head", sorted(CASES))
def test_quickstart_runs_the_task_of_a_tiny_model(head, kind, tmp_path):
    """The task comes from config.json (ELECTRA runs name it with the `task` parameter instead); every candidate
    carries the task's metrics and is judged by every gate of the task's default budget; the Triton step writes
    the task's front model (entities / answers) beside the chosen engine model."""
    from workbench.tasks.base import budget_type, get_task
    from workbench.triton.config import parse_model_config

    sequence_length, front_inputs, front_outputs = CASES[head]
    model_dir = build_tiny_head(kind, head, tmp_path / "model")
    output_dir = tmp_path / "run"
    parameters = {"model_path": str(model_dir), "output_dir": str(output_dir), "sequence_length": sequence_length,
                  "max_eval_samples": 4, "max_calibration_samples": 4, "benchmark_batch_sizes": [1],
                  "benchmark_iterations": 2, "threads": 1}
    if kind == "electra":
        parameters["task"] = head
    papermill.execute_notebook(str(NOTEBOOK), str(tmp_path / "executed.ipynb"), cwd=str(NOTEBOOK.parent),
                               progress_bar=False, parameters=parameters)
    summary = json.loads((output_dir / "summary.json").read_text())
    task = get_task(head)
    assert summary["task"] == head and summary["budget"]["task"] == head
    gates = budget_type(head).from_dict(summary["budget"]).gates()
    assert gates and all(g.metric in task.metric_names for g in gates)  # it gates the task's own metrics
    base = {"fp32", "fp32_fused", "int8_dynamic_per_channel", "int8_dynamic_smoothquant"}
    openvino = {"openvino_fp32", "openvino_int8_nncf"}  # where the openvino extra is installed (make test does)
    assert base <= {c["name"] for c in summary["candidates"]} <= base | openvino
    for candidate in summary["candidates"]:
        metrics = candidate["metrics"]
        assert all(metrics.get(name) is not None for name in task.metric_names), (candidate["name"], metrics)
        for g in gates:  # non-vacuous: every gate was measured, and the verdict is the gates'
            assert metrics[g.metric] is not None
            assert g.holds(metrics[g.metric]) or any(f.startswith(g.label) for f in candidate["failures"])
        assert candidate["meets_budget"] == (not candidate["failures"])
        assert candidate["cosine_mean"] == metrics[task.primary_cosine[0]]
        assert candidate["latency_ms_p50"] > 0
    fp32 = next(c for c in summary["candidates"] if c["name"] == "fp32")
    assert fp32["meets_budget"] and all(fp32["metrics"][g.metric] == 1.0 for g in gates)
    assert summary["chosen"] in {c["name"] for c in summary["candidates"] if c["meets_budget"]}

    repository = Path(summary["triton_repository"])
    configs = {p.parent.name: parse_model_config(p.read_text()) for p in repository.glob("*/config.pbtxt")}
    front = configs[summary["triton_model"]]
    assert front.backend == "python" and (repository / summary["triton_model"] / "1" / "model.py").is_file()
    assert [i.name for i in front.input] == front_inputs and [o.name for o in front.output] == front_outputs
    engines = [name for name, config in configs.items() if config.backend == "onnxruntime"]
    assert len(engines) == 1 and front.parameters["engine_model"].string_value == engines[0]
    provenance = json.loads((repository / "provenance.json").read_text())
    assert provenance["chosen"] == summary["chosen"] and provenance["task"] == head


def test_the_task_parameter_overrides_the_checkpoint(tmp_path):
    """A token-classification checkpoint treated as a base model: the pipeline's task, samples and budget follow
    the parameter, not config.json."""
    import workbench as wb

    model_dir = build_tiny_head("bert", "token-classification", tmp_path / "model")
    detected = wb.Pipeline.from_parameters(model_path=str(model_dir), output_dir=str(tmp_path / "a"))
    assert detected.task.name == "token-classification" and detected.budget.task == "token-classification"
    overridden = wb.Pipeline.from_parameters(model_path=str(model_dir), task="feature-extraction",
                                             output_dir=str(tmp_path / "b"))
    assert overridden.task.name == "feature-extraction" and overridden.budget.task == "feature-extraction"
    assert all(isinstance(s, str) for s in overridden.sentences.evaluation)
