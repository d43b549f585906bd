"""The generation benchmark: its rows and settings (speed itself is measured by bench/generation.py)."""

from __future__ import annotations

import pytest

pytest.importorskip("onnxruntime")

from workbench.errors import ConfigError
from workbench.stages.generation.benchmark import (
    GenerationBenchmarkConfig,
    benchmark_generation,
)
from workbench.stages.generation.export import load_causal_lm


def test_benchmark_times_every_candidate_and_pytorch_at_every_shape(exported_decoder, fused_decoder, tiny_decoder_dir):
    model, _ = load_causal_lm(tiny_decoder_dir("gpt2"))
    config = GenerationBenchmarkConfig(
        batch_sizes=(1, 2), prompt_lengths=(4, 20), new_tokens=5, warmup=0, iterations=2, threads=1
    )
    result = benchmark_generation(
        {"fp32": exported_decoder("gpt2").path, "fused": fused_decoder("gpt2").path},
        exported_decoder("gpt2").spec,
        config,
        pytorch_model=model,
    )
    assert result.names == ("pytorch", "fp32", "fused")
    assert {(t.batch, t.prompt_length) for t in result.timings} == {(1, 4), (1, 20), (2, 4), (2, 20)}
    for t in result.timings:
        assert t.runs == 2 and t.new_tokens == 5
        assert 0 < t.ttft_ms_p50 <= t.ttft_ms_p90 and 0 < t.itl_ms_p50 <= t.itl_ms_p90
        assert t.total_ms_p50 > t.ttft_ms_p50 and t.tokens_per_s > 0 and t.decode_tokens_per_s > 0
    assert result.speedup("fused", 1, 4) is not None
    assert result.machine["threads"] == 1
    assert "TTFT p50" in result.table() and len(result.to_dict()["timings"]) == 12


def test_a_shape_that_does_not_fit_the_positions_is_refused(exported_decoder):
    spec = exported_decoder("gpt2").spec
    with pytest.raises(ConfigError, match="positions"):
        benchmark_generation(
            {"fp32": exported_decoder("gpt2").path},
            spec,
            GenerationBenchmarkConfig(prompt_lengths=(spec.max_positions,), new_tokens=4),
        )
