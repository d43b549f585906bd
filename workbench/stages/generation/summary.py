"""The choice among decoder candidates and the `generation` section of summary.json."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.decoding import DecoderSpec
from workbench.engines.base import Candidate
from workbench.errors import DataError

GENERATION_SUMMARY_VERSION = 1


@dataclass(frozen=True)
class GenerationChoice:
    """The candidate to ship and why."""

    name: str
    reason: str
    tokens_per_s: float | None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "reason": self.reason, "tokens_per_s": self.tokens_per_s}


def _shape(benchmark: Any) -> tuple[int, int]:
    """The shape a choice is made at: batch 1 (one stream) and the shortest prompt timed."""
    return min(benchmark.config.batch_sizes), min(benchmark.config.prompt_lengths)


def choose_generation_candidate(
    accuracy: Mapping[str, Any], benchmark: Any, *, reference: str = "ort_fp32"
) -> GenerationChoice:
    """The fastest candidate (decode tokens/s at batch 1, shortest prompt) among those that meet the budget;
    the FP32 reference when none does.

    Args:
        accuracy: Name -> GenerationAccuracy (a GenerationAccuracyReport); the reference need not be in it.
        benchmark: The GenerationBenchmark of the same names.
        reference: The FP32 candidate's name in the benchmark (always acceptable: it is the reference).

    Raises:
        DataError: The benchmark timed none of the candidates.
    """
    batch, length = _shape(benchmark)
    speeds = {
        name: t.decode_tokens_per_s
        for name in benchmark.names
        if (t := benchmark.get(name, batch, length)) is not None and name != "pytorch"
    }
    if not speeds:
        raise DataError(
            "The generation benchmark has no candidate timings to choose from.",
            fix="benchmark the candidates with benchmark_generation() first",
        )
    passing = {
        name: speed
        for name, speed in speeds.items()
        if name == reference or (name in accuracy and accuracy[name].meets_budget)
    }
    if not passing:
        name = max(speeds, key=lambda n: speeds[n])
        return GenerationChoice(
            name,
            "no candidate meets the budget and the FP32 reference was not timed; the "
            "fastest is shown, but it does not meet the budget",
            speeds[name],
        )
    name = max(passing, key=lambda n: passing[n])
    missed = sorted(set(speeds) - set(passing))
    reason = (
        f"fastest decode ({passing[name]:.1f} tokens/s at batch {batch}, prompt {length}) among the "
        f"candidates that meet the budget" + (f"; {', '.join(missed)} miss it" if missed else "")
    )
    return GenerationChoice(name, reason, passing[name])


def _path_of(model: Candidate | str | os.PathLike[str]) -> str:
    return str(model.path if isinstance(model, Candidate) else Path(model))


def _precision_of(model: Candidate | str | os.PathLike[str], name: str) -> str:
    if isinstance(model, Candidate):
        return model.precision
    for method in ("int4_weight_only", "int8_weight_only", "int8_dynamic", "fp16"):
        if method in name:
            return method
    return "fp32"


def _timing(benchmark: Any, name: str, batch: int, length: int) -> dict[str, float | None]:
    timing = benchmark.get(name, batch, length) if benchmark is not None else None
    keys = ("ttft_ms_p50", "ttft_ms_p90", "itl_ms_p50", "itl_ms_p90", "tokens_per_s", "decode_tokens_per_s")
    return {key: (getattr(timing, key) if timing is not None else None) for key in keys}


def generation_summary(
    *,
    spec: DecoderSpec,
    candidates: Mapping[str, Candidate | str | os.PathLike[str]],
    export: Any = None,
    fusion: Any = None,
    accuracy: Any = None,
    benchmark: Any = None,
    choice: GenerationChoice | None = None,
    triton: Any = None,
    reference: str | None = "ort_fp32",
) -> dict[str, Any]:
    """The `generation` section of summary.json.

    Every key is always present (None, {} or [] where a step has not run), so CI can read the section of any
    run. Stable keys:

    - ``summary_version`` (int): 1.
    - ``task``: "text-generation".
    - ``decoder``: model_type, num_layers, num_kv_heads, head_dim, vocab_size, max_positions, eos_token_ids.
    - ``export``: path, exporter, opset, max_abs_error, min_cosine, checks (count), check_shapes
      ([batch, cache length, step length] lists) -- or None.
    - ``fusion``: nodes_before, nodes_after, fused ({op: count}), not_fused ([op]) -- or None.
    - ``budget``: the GenerationBudget as a dict (with "task") -- or None.
    - ``candidates``: one entry per candidate, in order: name, path, precision, next_token_agreement,
      perplexity_ratio, logits_cosine_mean, logits_cosine_min, greedy_agreement, meets_budget, failures, and
      speed at batch 1 with the shortest prompt: ttft_ms_p50, ttft_ms_p90, itl_ms_p50, itl_ms_p90, tokens_per_s,
      decode_tokens_per_s (None where not measured).
    - ``pytorch``: the same speed keys for transformers' generate (the baseline) -- or None.
    - ``benchmark``: batch_sizes, prompt_lengths, new_tokens, iterations, threads, and ``timings`` (every row of
      the benchmark: name, batch, prompt_length, and the speed keys) -- or None.
    - ``machine``: the benchmark's machine facts -- or None.
    - ``chosen``, ``chosen_reason``: the candidate to ship and why -- or None.
    - ``triton``: repository, model_name, streaming (True) -- or None.

    Args:
        spec: The decoder spec.
        candidates: Name -> model file or Candidate, the reference (FP32) included.
        export: DecoderExportResult.
        fusion: FusionResult of fuse_decoder.
        accuracy: GenerationAccuracyReport (evaluate_generation).
        benchmark: GenerationBenchmark (benchmark_generation).
        choice: GenerationChoice (choose_generation_candidate).
        triton: TritonGenerationResult (export_triton_generation).
        reference: The candidate accuracy was measured against: its metrics are those of the reference itself
            (agreement, ratio and cosines 1.0) and it meets the budget by definition.
    """
    from workbench.stages.generation.fusion import fusion_report

    shape = _shape(benchmark) if benchmark is not None else (1, 0)
    rows = []
    for name, model in candidates.items():
        result = accuracy.get(name) if accuracy is not None else None
        values = dict(result.values) if result is not None else {}
        is_reference = result is None and accuracy is not None and name == reference
        rows.append(
            {
                "name": name,
                "path": _path_of(model),
                "precision": _precision_of(model, name),
                **{
                    key: values.get(key, 1.0 if is_reference else None)
                    for key in (
                        "next_token_agreement",
                        "perplexity_ratio",
                        "logits_cosine_mean",
                        "logits_cosine_min",
                        "greedy_agreement",
                    )
                },
                "meets_budget": result.meets_budget if result is not None else (True if is_reference else None),
                "failures": list(result.failures) if result is not None else [],
                **_timing(benchmark, name, *shape),
            }
        )
    return {
        "summary_version": GENERATION_SUMMARY_VERSION,
        "task": "text-generation",
        "decoder": {
            "model_type": spec.model_type,
            "num_layers": spec.num_layers,
            "num_kv_heads": spec.num_kv_heads,
            "head_dim": spec.head_dim,
            "vocab_size": spec.vocab_size,
            "max_positions": spec.max_positions,
            "eos_token_ids": list(spec.eos_token_ids),
        },
        "export": None
        if export is None
        else {
            "path": str(export.path),
            "exporter": export.config.exporter,
            "opset": export.config.opset,
            "max_abs_error": export.max_abs_error,
            "min_cosine": export.min_cosine,
            "checks": len(export.checks),
            "check_shapes": sorted([list(s) for s in {(c.batch, c.past, c.sequence) for c in export.checks}]),
        },
        "fusion": None
        if fusion is None
        else {
            k: v for k, v in fusion_report(fusion).items() if k in ("nodes_before", "nodes_after", "fused", "not_fused")
        },
        "budget": accuracy.budget.to_dict() if accuracy is not None else None,
        "candidates": rows,
        "pytorch": _timing(benchmark, "pytorch", *shape)
        if benchmark is not None and "pytorch" in benchmark.names
        else None,
        "benchmark": None
        if benchmark is None
        else {
            "batch_sizes": list(benchmark.config.batch_sizes),
            "prompt_lengths": list(benchmark.config.prompt_lengths),
            "new_tokens": benchmark.config.new_tokens,
            "iterations": benchmark.config.iterations,
            "threads": benchmark.config.effective_threads,
            "timings": [
                {
                    "name": t.name,
                    "batch": t.batch,
                    "prompt_length": t.prompt_length,
                    **{
                        k: getattr(t, k)
                        for k in (
                            "ttft_ms_p50",
                            "ttft_ms_p90",
                            "itl_ms_p50",
                            "itl_ms_p90",
                            "tokens_per_s",
                            "decode_tokens_per_s",
                        )
                    },
                }
                for t in benchmark.timings
            ],
        },
        "machine": dict(benchmark.machine) if benchmark is not None else None,
        "chosen": choice.name if choice is not None else None,
        "chosen_reason": choice.reason if choice is not None else None,
        "triton": None
        if triton is None
        else {"repository": str(triton.repository), "model_name": triton.model_name, "streaming": True},
    }
