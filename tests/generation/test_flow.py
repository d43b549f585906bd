"""The whole generation path in the order the Pipeline runs it (export -> fuse -> precision candidates ->
accuracy -> benchmark -> choose -> Triton), ending in the `generation` section of summary.json."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("onnxruntime")
pytest.importorskip("tritonclient.grpc.model_config_pb2")

from workbench.engines.base import Candidate
from workbench.models import load_model
from workbench.stages.generation.accuracy import evaluate_generation
from workbench.stages.generation.benchmark import (
    GenerationBenchmarkConfig,
    benchmark_generation,
)
from workbench.stages.generation.export import load_causal_lm
from workbench.stages.generation.summary import (
    choose_generation_candidate,
    generation_summary,
)
from workbench.stages.precision.plan import PrecisionPlan
from workbench.tasks.base import detect_task
from workbench.tasks.generation import load_prompts
from workbench.triton.generation import (
    GenerationServingConfig,
    export_triton_generation,
)

SUMMARY_KEYS = {
    "summary_version",
    "task",
    "decoder",
    "export",
    "fusion",
    "budget",
    "candidates",
    "pytorch",
    "benchmark",
    "machine",
    "chosen",
    "chosen_reason",
    "triton",
}
CANDIDATE_KEYS = {
    "name",
    "path",
    "precision",
    "next_token_agreement",
    "perplexity_ratio",
    "logits_cosine_mean",
    "logits_cosine_min",
    "greedy_agreement",
    "meets_budget",
    "failures",
    "ttft_ms_p50",
    "ttft_ms_p90",
    "itl_ms_p50",
    "itl_ms_p90",
    "tokens_per_s",
    "decode_tokens_per_s",
}


def test_the_llama_generation_path_ends_in_a_complete_summary(
    tiny_decoder_dir, exported_decoder, fused_decoder, tmp_path
):
    folder = tiny_decoder_dir("llama")
    source = load_model(folder)
    task = detect_task(source.config)
    assert task.name == "text-generation"
    exported, fused = exported_decoder("llama"), fused_decoder("llama")  # export_decoder, fuse_decoder
    candidates = {"ort_fp32": Candidate("ort_fp32", fused.path, precision="fp32")}
    for method in ("int8_weight_only", "int4_weight_only"):
        plan = PrecisionPlan(method)
        result = plan.convert(fused.path, tmp_path / f"{method}.onnx")
        candidates[f"ort_{method}"] = Candidate(f"ort_{method}", result.path, precision=method)
    tokenizer = source.load_tokenizer()
    texts = task.load_samples(None, max_eval=12).evaluation
    accuracy = evaluate_generation(
        fused.path,
        {k: v for k, v in candidates.items() if k != "ort_fp32"},
        tokenizer,
        budget=task.default_budget(),
        texts=texts,
        prompts=load_prompts(limit=3),
        sequence_length=32,
        greedy_tokens=6,
    )
    model, _ = load_causal_lm(folder)
    timings = benchmark_generation(
        candidates,
        exported.spec,
        GenerationBenchmarkConfig(
            batch_sizes=(1,), prompt_lengths=(8,), new_tokens=4, warmup=0, iterations=1, threads=1
        ),
        pytorch_model=model,
    )
    choice = choose_generation_candidate(accuracy, timings)
    assert choice.name == "ort_fp32" or accuracy[choice.name].meets_budget
    triton = export_triton_generation(
        candidates[choice.name].path, tmp_path / "triton", folder, GenerationServingConfig(model_name="llama_generator")
    )
    summary = generation_summary(
        spec=exported.spec,
        candidates=candidates,
        export=exported,
        fusion=fused,
        accuracy=accuracy,
        benchmark=timings,
        choice=choice,
        triton=triton,
    )

    assert set(summary) == SUMMARY_KEYS
    json.dumps(summary)  # plain JSON
    assert summary["decoder"]["num_kv_heads"] == 2 and summary["decoder"]["model_type"] == "llama"
    assert summary["export"]["checks"] == len(exported.checks) and [1, 0, 1] in summary["export"]["check_shapes"]
    assert summary["fusion"]["fused"]["SkipSimplifiedLayerNormalization"] == 4
    assert summary["budget"]["task"] == "text-generation"
    assert [c["name"] for c in summary["candidates"]] == list(candidates)
    for row in summary["candidates"]:
        assert set(row) == CANDIDATE_KEYS
        assert row["tokens_per_s"] > 0 and row["ttft_ms_p50"] > 0
    reference, int8, int4 = summary["candidates"]
    assert reference["next_token_agreement"] == 1.0 and reference["meets_budget"] is True
    assert int8["next_token_agreement"] == accuracy["ort_int8_weight_only"].values["next_token_agreement"]
    assert int4["precision"] == "int4_weight_only"
    assert int4["failures"] == list(accuracy["ort_int4_weight_only"].failures)
    assert summary["pytorch"]["tokens_per_s"] > 0
    assert summary["chosen"] == choice.name and summary["triton"]["model_name"] == "llama_generator"


def test_the_summary_of_a_run_that_stopped_after_export_still_has_every_key(exported_decoder):
    exported = exported_decoder("gpt2")
    summary = generation_summary(spec=exported.spec, candidates={"ort_fp32": exported.path}, export=exported)
    assert set(summary) == SUMMARY_KEYS
    assert summary["candidates"][0]["meets_budget"] is None and summary["candidates"][0]["tokens_per_s"] is None
    assert summary["benchmark"] is None and summary["chosen"] is None and summary["triton"] is None
