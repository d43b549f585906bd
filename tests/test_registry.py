"""One registry of steps, tasks and engines: what derives from it, and what it refuses."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tritonclient")

from workbench._files import file_sha256  # noqa: E402
from workbench.engines.base import Candidate, engine_for_path, engines, get_engine  # noqa: E402
from workbench.errors import ConfigError, ModelSourceError  # noqa: E402
from workbench.models import load_model  # noqa: E402
from workbench.pipeline import STEPS, Pipeline, PipelineParameters, step  # noqa: E402
from workbench.recipe import Recipe, replay  # noqa: E402
from workbench.tasks.base import (  # noqa: E402
    Budget,
    Task,
    TaskMetrics,
    budget_field,
    detect_task,
    registered_task,
    tasks,
)

SMALL = {
    "sequence_length": 16,
    "max_eval_samples": 8,
    "max_calibration_samples": 8,
    "eval_batch_size": 4,
    "benchmark_batch_sizes": (1,),
    "benchmark_iterations": 2,
}
MODEL_FILES = (
    "model.onnx",
    "model_fused.onnx",
    "model_int8_dynamic_per_channel.onnx",
    "model_int8_dynamic_smoothquant.onnx",
)
ROOT = Path(__file__).resolve().parents[1]


def _hashes(folder: Path) -> dict[str, str]:
    return {name: file_sha256(folder / name) for name in MODEL_FILES}


# --- steps -----------------------------------------------------------------------------------------------------


def test_every_built_in_step_is_declared_once_with_what_it_needs():
    assert STEPS.names == (
        "export",
        "fuse",
        "surgery",
        "quantize",
        "quantize_smoothquant",
        "convert",
        "openvino_fp32",
        "openvino_int8",
        "compare",
        "autofix",
        "benchmark",
        "choose",
        "export_triton",
        "write_summary",
    )
    assert STEPS["choose"].needs == ("compare", "benchmark") and STEPS["choose"].args == ("batch",)
    assert set(STEPS.inputs("compare")) == {
        "export",
        "fuse",
        "surgery",
        "quantize",
        "quantize_smoothquant",
        "convert",
        "openvino_fp32",
        "openvino_int8",
        "autofix",
    }
    # run on request (a user's plan or candidate): run_all leaves them out
    assert [s.name for s in STEPS if s.optional] == ["surgery", "convert", "autofix"]
    # run_all runs them where the openvino extra is installed and says why it skipped them elsewhere
    assert [s.name for s in STEPS if s.skippable] == ["openvino_fp32", "openvino_int8"]
    assert STEPS.downstream("compare") == ("choose", "export_triton", "write_summary")
    assert all(callable(getattr(Pipeline, s.name)) and getattr(Pipeline, s.name)._step is s for s in STEPS)


@dataclass(frozen=True)
class NodeCount:
    """A step result of the test's own step: the op histogram of the fused graph, written to a file."""

    path: Path
    nodes: int


class CountingPipeline(Pipeline):
    """The built-in steps plus one the test declares, placed after fuse."""

    @step(
        title="Count the fused graph's nodes",
        short="Count",
        needs=("fuse",),
        after="fuse",
        summary=lambda pipeline, result: {"fused_nodes": result.nodes},
    )
    def count_nodes(self) -> NodeCount:
        import onnx

        graph = onnx.load(str(self.candidates["fp32_fused"]), load_external_data=False).graph
        path = self.output_dir / "node_count.json"
        path.write_text(json.dumps({"nodes": len(graph.node)}))
        return NodeCount(path, len(graph.node))


def test_a_step_added_to_the_registry_appears_in_run_all_the_recipe_and_the_workbench(tiny_model_dir, tmp_path):
    from workbench.ui import Workbench

    assert "count_nodes" not in STEPS  # the built-in registry is untouched
    assert CountingPipeline.steps.names[:3] == ("export", "fuse", "count_nodes")
    parameters = PipelineParameters(model_path=str(tiny_model_dir("bert")), output_dir=str(tmp_path / "run"), **SMALL)
    pipeline = CountingPipeline(
        parameters,
        budget=Budget.from_dict(
            {"task": "feature-extraction", "embedding_cosine_mean": 0.9, "embedding_cosine_min": 0.8}
        ),
    )
    summary = pipeline.run_all()
    assert [r.step for r in pipeline.history][:3] == ["export", "fuse", "count_nodes"]
    assert summary["fused_nodes"] == pipeline.results["count_nodes"].nodes > 0
    recipe = Recipe.from_pipeline(pipeline)
    assert recipe.step_names[:3] == ("export", "fuse", "count_nodes")
    assert recipe.last("count_nodes").outputs == {"node_count.json": file_sha256(tmp_path / "run" / "node_count.json")}
    with pytest.raises(Exception, match="'count_nodes' is not a pipeline step"):
        Recipe.from_dict(recipe.to_dict())  # the plain Pipeline does not know the step
    replayed = replay(
        Recipe.from_dict(recipe.to_dict(), pipeline_class=CountingPipeline),
        output_dir=tmp_path / "replay",
        progress=False,
        check=True,
        pipeline_class=CountingPipeline,
    )
    assert replayed.results["count_nodes"].nodes == pipeline.results["count_nodes"].nodes
    wb = Workbench.from_parameters(
        **{**parameters.to_dict(), "output_dir": str(tmp_path / "ui")}, pipeline_class=CountingPipeline
    )
    assert list(wb.panels)[:4] == ["load", "export", "fuse", "count_nodes"]
    panel = wb["count_nodes"]
    assert panel.title == "Count the fused graph's nodes" and panel.run_button.disabled  # needs fuse first
    wb["export"].click()
    wb["fuse"].click()
    assert not panel.run_button.disabled
    panel.click()
    assert wb.state("count_nodes") == "done" and panel.result.nodes == pipeline.results["count_nodes"].nodes
    wb["fuse"].click()
    assert wb.state("count_nodes") == "stale"  # it reads fuse: re-running fuse makes it stale


@pytest.mark.slow
def test_a_quickstart_recipe_replays_in_the_workbench_and_headless_to_identical_models(tiny_model_dir, tmp_path):
    papermill = pytest.importorskip("papermill")
    from workbench.ui import Workbench

    notebook = ROOT / "notebooks" / "quickstart.ipynb"
    run = tmp_path / "quickstart"
    papermill.execute_notebook(
        str(notebook),
        str(tmp_path / "executed.ipynb"),
        cwd=str(notebook.parent),
        progress_bar=False,
        parameters={
            "model_path": str(tiny_model_dir("bert")),
            "output_dir": str(run),
            **{k: list(v) if isinstance(v, tuple) else v for k, v in SMALL.items() if k != "eval_batch_size"},
        },
    )
    recorded = Recipe.load(run)
    # the quickstart runs every step but those run on request (quantize_smoothquant included; the OpenVINO steps
    # where the extra is installed, as make test installs it)
    skipped = json.loads((run / "summary.json").read_text()).get("skipped_steps") or {}
    ran = tuple(s.name for s in STEPS if not s.optional and s.name not in skipped)
    assert recorded.step_names == ran and {"quantize_smoothquant", "write_summary"} <= set(ran)
    original = _hashes(run)
    assert len(set(original.values())) == len(MODEL_FILES)
    # the guided Workbench, from the quickstart's recipe
    wb = Workbench.from_recipe(run / "recipe.json", output_dir=str(tmp_path / "workbench"))
    assert wb.run_all() is True, {k: v for k, v in wb.states.items() if v != "done"}
    assert _hashes(tmp_path / "workbench") == original
    # headless, with the check
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "workbench",
            "run",
            str(run / "recipe.json"),
            "--output-dir",
            str(tmp_path / "cli"),
            "--check",
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "model files identical to the recording" in completed.stdout and "wrote other bytes" not in completed.stdout
    assert _hashes(tmp_path / "cli") == original


# --- tasks -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NormBudget(Budget):
    task: ClassVar[str] = "toy-norm"
    norm_ratio_min: float = budget_field(0.95, ">=", metric="norm_ratio_min", label="norm ratio min")


class NormTask(Task):
    """A toy task: sentence vectors are the hidden states' norms per token; its metric is their ratio."""

    name = "toy-norm"
    title = "Toy token norms"
    architectures = ("Model",)
    outputs = ("last_hidden_state",)
    budget_type = NormBudget
    primary_cosine = ("norm_cosine_mean", "norm_cosine_min")
    metric_names = ("norm_ratio_min", "norm_cosine_mean", "norm_cosine_min")
    detect_from_outputs = False
    calls: ClassVar[int] = 0

    def detect(self, config):
        return "BertModel" in (config.get("architectures") or [])  # claimed only when asked for: built-ins come first

    def metrics(self, reference, candidate, feeds, meta=None):
        type(self).calls += 1
        ratios, cosines = [], []
        for ref, cand, feed in zip(reference, candidate, feeds):
            a = np.linalg.norm(ref["last_hidden_state"], axis=-1) * feed["attention_mask"]
            b = np.linalg.norm(cand["last_hidden_state"], axis=-1) * feed["attention_mask"]
            ratios += list(np.minimum(a, b).sum(axis=1) / np.maximum(a, b).sum(axis=1))
            cosines += list(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)))
        return TaskMetrics(
            {
                "norm_ratio_min": float(min(ratios)),
                "norm_cosine_mean": float(np.mean(cosines)),
                "norm_cosine_min": float(min(cosines)),
            },
            per_sample=tuple(cosines),
        )


def test_a_task_registered_in_a_test_runs_the_pipeline_end_to_end(tiny_model_dir, tmp_path):
    with registered_task(NormTask):
        assert "toy-norm" in tasks()
        assert load_model(tiny_model_dir("bert")).task.name == "feature-extraction"  # built-in tasks come first
        pipeline = Pipeline(
            PipelineParameters(
                model_path=str(tiny_model_dir("bert")), task="toy-norm", output_dir=str(tmp_path / "run"), **SMALL
            )
        )
        assert pipeline.task.name == "toy-norm" and pipeline.budget == NormBudget()
        summary = pipeline.run_all()
    assert "toy-norm" not in tasks()
    assert NormTask.calls >= 4  # once per candidate
    assert summary["task"] == "toy-norm" and summary["budget"] == {"task": "toy-norm", "norm_ratio_min": 0.95}
    assert summary["primary_metrics"] == ["norm_cosine_mean", "norm_cosine_min"]
    for candidate in summary["candidates"]:
        assert set(candidate["metrics"]) >= {"norm_ratio_min", "norm_cosine_mean", "norm_cosine_min"}
        assert candidate["cosine_mean"] == candidate["metrics"]["norm_cosine_mean"] is not None
        assert candidate["meets_budget"] == (candidate["metrics"]["norm_ratio_min"] >= 0.95)
    chosen = next(c for c in summary["candidates"] if c["name"] == summary["chosen"])
    assert chosen["meets_budget"] and Path(summary["triton_repository"]).is_dir()


def _save_checkpoint(folder: Path, kind: str) -> Path:
    import torch
    import transformers

    from tests.tiny_models import VOCAB_SIZE
    from workbench.models import bundled_model_path

    torch.manual_seed(0)
    if kind == "distilbert-token":
        config = transformers.DistilBertConfig(
            vocab_size=VOCAB_SIZE, dim=32, n_layers=1, n_heads=4, hidden_dim=64, num_labels=5
        )
        model = transformers.DistilBertForTokenClassification(config)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(bundled_model_path()), local_files_only=True)
    else:
        config = transformers.GPT2Config(vocab_size=VOCAB_SIZE, n_embd=32, n_layer=1, n_head=4, n_positions=64)
        model = transformers.GPT2LMHeadModel(config)
        tokenizer = None
    folder.mkdir(parents=True)
    model.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    ("kind", "architecture"), [("distilbert-token", "DistilBertForTokenClassification"), ("gpt2", "GPT2LMHeadModel")]
)
def test_a_checkpoint_whose_head_no_task_supports_is_refused_at_load(tmp_path, kind, architecture):
    folder = _save_checkpoint(tmp_path / kind, kind)
    registered = tasks()
    if any(t.detect(json.loads((folder / "config.json").read_text())) for t in registered.values()):
        pytest.skip(f"a registered task supports {architecture} now")
    with pytest.raises(ModelSourceError) as caught:
        load_model(folder)
    message = str(caught.value)
    assert architecture in message and "silently drop the head" in message
    assert all(name in message for name in registered)  # the supported tasks are named
    with pytest.raises(ModelSourceError, match=architecture):
        Pipeline(PipelineParameters(model_path=str(folder), output_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()
    # asked for explicitly, the base model is exported without the head, and that is said
    source = load_model(folder, task="feature-extraction")
    assert source.task.name == "feature-extraction" and "head is dropped" in source.warnings[0]


def _gpt2_base_with_a_bpe_tokenizer(folder: Path, *, pad: bool, max_length: int | None = 64) -> Path:
    """A tiny GPT2Model (a base model: feature extraction) with a byte-level BPE tokenizer trained on the bundled
    sentences, with or without a pad token, as GPT-2 checkpoints come (they have none)."""
    import torch
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from workbench.data import default_data_dir

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train(
        [str(default_data_dir() / "calibration.txt")],
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    kwargs = {"tokenizer_object": bpe, "eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"}
    if pad:
        kwargs["pad_token"] = "<|endoftext|>"
    if max_length is not None:
        kwargs["model_max_length"] = max_length
    tokenizer = transformers.PreTrainedTokenizerFast(**kwargs)
    torch.manual_seed(0)
    model = transformers.GPT2Model(
        transformers.GPT2Config(vocab_size=bpe.get_vocab_size(), n_embd=32, n_layer=1, n_head=4, n_positions=64)
    )
    folder.mkdir(parents=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_tokenizer_problems_are_found_at_load_with_the_fix(tmp_path):
    no_pad = load_model(_gpt2_base_with_a_bpe_tokenizer(tmp_path / "no-pad", pad=False))
    assert no_pad.task.name == "feature-extraction"
    with pytest.raises(ModelSourceError, match="no pad token") as caught:
        no_pad.load_tokenizer()
    assert "tokenizer.pad_token = tokenizer.eos_token" in caught.value.fix
    with pytest.raises(ModelSourceError, match="no pad token"):  # when the pipeline is built, before any file
        Pipeline(PipelineParameters(model_path=str(no_pad.path), output_dir=str(tmp_path / "run")))
    assert not (tmp_path / "run").exists()
    unbounded = load_model(_gpt2_base_with_a_bpe_tokenizer(tmp_path / "unbounded", pad=True, max_length=None))
    with pytest.raises(ModelSourceError, match="model_max_length") as caught:
        unbounded.load_tokenizer()
    assert "max_position_embeddings" in caught.value.fix
    assert load_model(_gpt2_base_with_a_bpe_tokenizer(tmp_path / "fine", pad=True)).load_tokenizer().pad_token


def test_a_task_asked_for_must_fit_the_checkpoint(tiny_model_dir):
    with pytest.raises(ModelSourceError, match="not a 'text-classification' checkpoint") as caught:
        load_model(tiny_model_dir("bert"), task="text-classification")
    assert "feature-extraction" in caught.value.fix


def test_task_detection_reads_architectures():
    assert detect_task({"architectures": ["BertModel"]}).name == "feature-extraction"
    assert detect_task({}).name == "feature-extraction"  # no head listed: a base model
    assert detect_task({"architectures": ["RobertaForSequenceClassification"]}).name == "text-classification"
    with pytest.raises(ModelSourceError, match="GPT2LMHeadModel"):
        if any(t.detect({"architectures": ["GPT2LMHeadModel"]}) for t in tasks().values()):
            raise ModelSourceError("GPT2LMHeadModel is supported now")  # a later task took it: still named
        detect_task({"architectures": ["GPT2LMHeadModel"]})


def test_gpt2_configs_give_fusion_their_heads_and_width(tmp_path):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(
        json.dumps({"architectures": ["GPT2Model"], "model_type": "gpt2", "n_head": 4, "n_embd": 32, "n_positions": 64})
    )
    (folder / "model.safetensors").write_bytes(b"")
    source = load_model(folder)
    from workbench.stages.fusion import FusionConfig

    config = FusionConfig.for_source(source)
    assert (config.model_type, config.num_heads, config.hidden_size) == ("gpt2", 4, 32)
    assert source.max_positions == 64


# --- engines ---------------------------------------------------------------------------------------------------


def test_engines_are_registered_once_with_what_they_load_and_serve():
    registered = engines()
    assert {"pytorch", "onnxruntime", "tensorrt"} <= set(registered)
    ort = get_engine("onnxruntime")
    assert ort.availability() and "onnxruntime" in ort.availability().reason
    assert (ort.triton_backend, ort.triton_platform, ort.model_files) == (
        "onnxruntime",
        "onnxruntime_onnx",
        ("model.onnx",),
    )
    assert engine_for_path("m.onnx") is ort and engine_for_path("m.plan") is get_engine("tensorrt")
    with pytest.raises(ModelSourceError, match="No registered engine"):
        engine_for_path("m.tflite")
    with pytest.raises(ConfigError, match="no engine 'tvm'"):
        get_engine("tvm")


def test_a_candidate_is_a_path_with_its_engine(tiny_bert_onnx):
    candidate = Candidate("fp32", tiny_bert_onnx)
    assert Path(candidate) == tiny_bert_onnx and str(candidate) == str(tiny_bert_onnx)
    with candidate.runner(threads=1) as runner:
        assert runner.name == "fp32" and set(runner.input_specs()) >= {"input_ids", "attention_mask"}
    assert candidate.to_dict()["engine"] == "onnxruntime"
    assert dataclasses.replace(candidate, engine="tensorrt").runner().name == "fp32"
