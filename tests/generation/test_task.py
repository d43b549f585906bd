"""The text-generation task: detection, its budget, its feeds and its teacher-forced metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest

from workbench.errors import ConfigError, DataError, ModelSourceError
from workbench.tasks.base import Budget, detect_task, get_task
from workbench.tasks.generation import GenerationBudget, TextGeneration, load_prompts


@pytest.mark.parametrize("architecture", ["GPT2LMHeadModel", "LlamaForCausalLM", "MistralForCausalLM"])
def test_causal_lms_are_detected_as_text_generation(architecture):
    task = detect_task({"architectures": [architecture], "model_type": "x"})
    assert isinstance(task, TextGeneration)
    assert task.auto_model == "AutoModelForCausalLM"
    assert task.primary_cosine == ("logits_cosine_mean", "logits_cosine_min")


def test_encoders_keep_their_tasks():
    assert detect_task({"architectures": ["BertModel"]}).name == "feature-extraction"
    assert detect_task({"architectures": ["BertForSequenceClassification"]}).name == "text-classification"


def test_the_default_budget_gates_agreement_and_perplexity_ratio():
    budget = get_task("text-generation").default_budget()
    assert isinstance(budget, GenerationBudget)
    assert [(g.metric, g.op, g.limit) for g in budget.gates()] == [
        ("next_token_agreement", ">=", 0.95),
        ("perplexity_ratio", "<=", 1.05),
    ]
    assert budget.failures({"next_token_agreement": 0.97, "perplexity_ratio": 1.01}) == ()
    assert budget.failures({"next_token_agreement": 0.9, "perplexity_ratio": 1.2}) == (
        "next-token agreement 0.90000 < 0.95",
        "perplexity ratio 1.20000 > 1.05",
    )
    assert Budget.from_dict(budget.to_dict()) == budget
    with pytest.raises(ConfigError, match="gates nothing"):
        GenerationBudget(next_token_agreement_min=None, perplexity_ratio_max=None)
    with pytest.raises(ConfigError, match="perplexity_ratio_max must be in"):
        GenerationBudget(perplexity_ratio_max=0.5)


def test_teacher_forced_metrics_on_known_logits():
    task = TextGeneration()
    ids = np.array([[0, 2, 1, 3]])
    mask = np.array([[0, 1, 1, 1]])  # a left-padded row: two predicted positions (2 -> 1, 1 -> 3)
    reference = np.zeros((1, 4, 4))
    reference[0, 1] = [0.0, 3.0, 0.0, 0.0]  # predicts 1, right
    reference[0, 2] = [0.0, 0.0, 2.0, 1.0]  # predicts 2, label 3
    candidate = reference.copy()
    candidate[0, 2] = [0.0, 0.0, 1.0, 2.0]  # predicts 3: disagrees with the reference at one of two positions
    values = task.metrics(
        [{"logits": reference}], [{"logits": candidate}], [{"input_ids": ids, "attention_mask": mask}]
    ).values

    def nll(row, label):
        return math.log(sum(math.exp(x) for x in row)) - row[label]

    ref_nll = (nll(reference[0, 1], 1) + nll(reference[0, 2], 3)) / 2
    cand_nll = (nll(candidate[0, 1], 1) + nll(candidate[0, 2], 3)) / 2
    assert values["positions"] == 2
    assert values["next_token_agreement"] == 0.5
    assert values["reference_perplexity"] == pytest.approx(math.exp(ref_nll))
    assert values["perplexity_ratio"] == pytest.approx(math.exp(cand_nll - ref_nll))
    assert values["perplexity_ratio"] < 1.0  # the candidate is more sure of the true label 3
    assert values["logits_cosine_min"] == pytest.approx(4 / 5)


def test_encode_builds_runnable_decoder_feeds_and_a_model_agrees_with_itself(exported_decoder, tiny_decoder_dir):
    from workbench.engines.onnxruntime import OnnxRuntimeRunner
    from workbench.models import load_model

    result = exported_decoder("llama")
    tokenizer = load_model(tiny_decoder_dir("llama")).load_tokenizer()
    task = get_task("text-generation")
    task.check_tokenizer(tokenizer, model_path="tiny llama")
    texts = task.load_samples(None, max_eval=6).evaluation
    encoded = task.encode(
        tokenizer, texts, batch_size=3, sequence_length=24, spec=result.spec, input_names=result.input_names
    )
    assert len(encoded.feeds) == 2 and [len(m) for m in encoded.meta] == [3, 3]
    first = encoded.feeds[0]
    assert first["past_key_values.0.key"].shape[2] == 0
    assert first["input_ids"].shape[1] == max(len(r) for r in encoded.meta[0]) <= 24
    assert all(r[0] == tokenizer.bos_token_id for r in encoded.meta[0])  # the tokenizer's <s> is kept
    with OnnxRuntimeRunner(result.path) as runner:
        outputs = [runner.infer(f) for f in encoded.feeds]
    assert outputs[0]["logits"].shape[:2] == first["input_ids"].shape
    values = task.metrics(outputs, outputs, encoded.feeds).values
    assert values["next_token_agreement"] == 1.0 and values["perplexity_ratio"] == 1.0
    assert values["logits_cosine_min"] == pytest.approx(1.0)
    noisy = [{"logits": o["logits"] + np.random.default_rng(0).normal(0, 2.0, o["logits"].shape)} for o in outputs]
    worse = task.metrics(outputs, noisy, encoded.feeds).values
    assert worse["next_token_agreement"] < 1.0 and worse["perplexity_ratio"] > 1.0


def test_encode_without_a_spec_refuses_cache_inputs(tiny_decoder_dir, exported_decoder):
    from workbench.models import load_model

    tokenizer = load_model(tiny_decoder_dir("gpt2")).load_tokenizer()
    with pytest.raises(DataError, match="spec"):
        get_task("text-generation").encode(
            tokenizer,
            ["hello there"],
            batch_size=1,
            sequence_length=8,
            input_names=exported_decoder("gpt2").input_names,
        )


def test_a_tokenizer_without_pad_and_eos_is_refused():
    class Bare:
        pad_token = None
        eos_token = None

    with pytest.raises(ModelSourceError, match="neither a pad token nor an eos token"):
        TextGeneration().check_tokenizer(Bare(), model_path="m")


def test_prompts_are_bundled():
    prompts = load_prompts()
    assert len(prompts) == 24 and all(p.strip() == p and p for p in prompts)
    assert len(load_prompts(limit=3)) == 3


def test_the_generic_comparison_judges_a_decoder_by_the_generation_task(
    exported_decoder, fused_decoder, tiny_decoder_dir, tmp_path
):
    """workbench.stages.accuracy.compare (the Polygraphy comparison every task goes through) finds the
    text-generation task from the decoder's outputs and gives its metrics and budget verdict."""
    pytest.importorskip("polygraphy")
    from workbench.models import load_model
    from workbench.stages.accuracy.compare import compare_candidates
    from workbench.stages.precision.plan import PrecisionPlan

    fused = fused_decoder("gpt2").path
    spec = exported_decoder("gpt2").spec
    int4 = PrecisionPlan.preset("cpu_int4_weight_only").convert(fused, tmp_path / "int4.onnx").path
    tokenizer = load_model(tiny_decoder_dir("gpt2")).load_tokenizer()
    task = get_task("text-generation")
    encoded = task.encode(
        tokenizer, task.load_samples(None, max_eval=8).evaluation, batch_size=1, sequence_length=32, spec=spec
    )
    report = compare_candidates(fused, {"fp32": fused, "int4": int4}, encoded)
    assert report.task == "text-generation"
    fp32, quantized = report.candidates
    assert fp32.task_metrics["next_token_agreement"] == 1.0 and fp32.cosine_mean == pytest.approx(1.0)
    assert quantized.task_metrics["next_token_agreement"] < 0.95 and not quantized
    assert any("next-token agreement" in line for line in quantized.failures)
    with pytest.raises(DataError, match="need all of them"):
        task.check_feeds([{**encoded.feeds[0], "logit_positions": encoded.feeds[0]["logit_positions"][-1:]}])
