"""The generation benchmark: time to first token, inter-token latency and tokens/s of decoder candidates and of
PyTorch's `generate`, in one interleaved run.

For every (batch, prompt length) each candidate generates `new_tokens` tokens from the same prompts, candidates
taking turns run by run, so a noisy machine slows them alike. Every generation produces exactly `new_tokens`
tokens (no stop token; PyTorch with min_new_tokens), so their work is the same.

- time to first token (TTFT): the prompt's forward pass and the choice of the first token;
- inter-token latency (ITL): each later step, one token per row;
- tokens/s: generated tokens (batch x new tokens) over the whole generation, and over the decode steps alone.

PyTorch's timestamps come from a `transformers` streamer, called by `generate` as each token is chosen. ONNX
Runtime sessions are built with thread spinning off and explicit thread counts (see measured-facts.md).
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from workbench._lazy import require
from workbench.config import StageConfig, check_positive
from workbench.decoding import DecoderSpec
from workbench.engines.base import Candidate, engine_for_path
from workbench.errors import ConfigError
from workbench.machine import machine_info

PYTORCH = "pytorch"


@dataclass(frozen=True)
class GenerationBenchmarkConfig(StageConfig):
    """How to time generation.

    Attributes:
        batch_sizes: Prompts generated together.
        prompt_lengths: Prompt lengths in tokens (a short and a long prompt by default).
        new_tokens: Tokens generated per prompt.
        warmup: Untimed generations per candidate and shape.
        iterations: Timed generations per candidate and shape (interleaved).
        threads: Intra-op threads for torch and every runner; None: all cores.
        seed: Seed of the random prompt tokens.
    """

    batch_sizes: tuple[int, ...] = (1, 4)
    prompt_lengths: tuple[int, ...] = (16, 256)
    new_tokens: int = 32
    warmup: int = 1
    iterations: int = 5
    threads: int | None = None
    seed: int = 0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"batch_sizes": (1,), "prompt_lengths": (16,), "new_tokens": 8, "iterations": 2},
        "default": {},
    }

    def __post_init__(self) -> None:
        check_positive(self, "batch_sizes", "prompt_lengths", "new_tokens", "iterations")
        if self.warmup < 0:
            raise ConfigError(f"GenerationBenchmarkConfig.warmup must be >= 0, got {self.warmup}.")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"GenerationBenchmarkConfig.threads must be >= 1 or None, got {self.threads}.")

    @property
    def effective_threads(self) -> int:
        return self.threads or os.cpu_count() or 1


@dataclass(frozen=True)
class GenerationTiming:
    """One candidate at one (batch, prompt length): medians and 90th percentiles over the timed runs."""

    name: str
    batch: int
    prompt_length: int
    new_tokens: int
    runs: int
    ttft_ms_p50: float
    ttft_ms_p90: float
    itl_ms_p50: float
    itl_ms_p90: float
    total_ms_p50: float
    tokens_per_s: float
    decode_tokens_per_s: float

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@dataclass(frozen=True)
class GenerationBenchmark:
    """Every candidate's timings, the settings and the machine they were measured on."""

    timings: tuple[GenerationTiming, ...]
    config: GenerationBenchmarkConfig
    machine: Mapping[str, Any]
    seconds: float
    notes: tuple[str, ...] = field(default_factory=tuple)

    def get(self, name: str, batch: int, prompt_length: int) -> GenerationTiming | None:
        return next(
            (t for t in self.timings if (t.name, t.batch, t.prompt_length) == (name, batch, prompt_length)), None
        )

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.name for t in self.timings))

    def speedup(self, name: str, batch: int, prompt_length: int, baseline: str = PYTORCH) -> float | None:
        """Decode tokens/s of `name` over the baseline's at one shape."""
        a, b = self.get(name, batch, prompt_length), self.get(baseline, batch, prompt_length)
        return a.decode_tokens_per_s / b.decode_tokens_per_s if a and b and b.decode_tokens_per_s else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "machine": dict(self.machine),
            "seconds": self.seconds,
            "timings": [t.to_dict() for t in self.timings],
            "notes": list(self.notes),
        }

    def table(self) -> str:
        header = (
            f"{'candidate':<24}{'batch':>6}{'prompt':>8}{'TTFT p50':>10}{'TTFT p90':>10}{'ITL p50':>9}"
            f"{'ITL p90':>9}{'tok/s':>8}{'decode tok/s':>14}"
        )
        lines = [header, "-" * len(header)]
        for t in self.timings:
            lines.append(
                f"{t.name:<24}{t.batch:>6}{t.prompt_length:>8}{t.ttft_ms_p50:>10.1f}{t.ttft_ms_p90:>10.1f}"
                f"{t.itl_ms_p50:>9.2f}{t.itl_ms_p90:>9.2f}{t.tokens_per_s:>8.1f}{t.decode_tokens_per_s:>14.1f}"
            )
        return "\n".join(lines)

    def figure(self) -> Any:
        """Decode tokens/s of every candidate per (batch, prompt length), on a log axis (plotly)."""
        go = require("plotly.graph_objects", purpose="Plotting generation timings")
        figure = go.Figure()
        shapes = list(dict.fromkeys((t.batch, t.prompt_length) for t in self.timings))
        for batch, length in shapes:
            rows = [t for t in self.timings if (t.batch, t.prompt_length) == (batch, length)]
            figure.add_bar(
                x=[t.name for t in rows],
                y=[t.decode_tokens_per_s for t in rows],
                name=f"batch {batch}, prompt {length}",
            )
        figure.update_layout(
            title=f"Decode tokens/s ({self.config.new_tokens} new tokens)",
            barmode="group",
            yaxis_type="log",
            yaxis_title="tokens/s (log)",
            xaxis_title="candidate",
        )
        return figure

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(t.name)}</td><td>{t.batch}</td><td>{t.prompt_length}</td>"
            f"<td>{t.ttft_ms_p50:.1f}</td><td>{t.itl_ms_p50:.2f}</td><td>{t.itl_ms_p90:.2f}</td>"
            f"<td>{t.tokens_per_s:.1f}</td></tr>"
            for t in self.timings
        )
        return (
            f"<b>Generation benchmark</b>: {self.config.new_tokens} new tokens, {self.config.iterations} runs "
            f"each, {self.config.effective_threads} threads, interleaved"
            "<table><tr><th>candidate</th><th>batch</th><th>prompt</th><th>TTFT p50 ms</th><th>ITL p50 ms</th>"
            f"<th>ITL p90 ms</th><th>tokens/s</th></tr>{rows}</table>"
        )


class _Recorder:
    """A transformers streamer that timestamps every chosen token (its first call is the prompt)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def put(self, value: Any) -> None:
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass


def _pytorch_generation(model: Any, prompts: np.ndarray, new_tokens: int) -> tuple[float, list[float], float]:
    torch = require("torch", purpose="Timing PyTorch generate")
    ids = torch.from_numpy(prompts)
    recorder = _Recorder()
    started = time.perf_counter()
    with torch.inference_mode():
        model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            streamer=recorder,
            pad_token_id=model.generation_config.pad_token_id or 0,
        )
    total = time.perf_counter() - started
    tokens = recorder.stamps[1:]  # the first put() is the prompt itself
    return tokens[0] - started, list(np.diff(tokens)), total


def _runner_generation(
    runner: Any, spec: DecoderSpec, prompts: np.ndarray, new_tokens: int
) -> tuple[float, list[float], float]:
    from workbench.stages.generation.generate import GenerationConfig, generate_tokens

    started = time.perf_counter()
    result = generate_tokens(
        runner, spec, prompts.tolist(), GenerationConfig(max_new_tokens=new_tokens, stop_token_ids=())
    )
    return result.first_token_s, list(result.step_s), time.perf_counter() - started


def benchmark_generation(
    candidates: Mapping[str, Candidate | str | os.PathLike[str]],
    spec: DecoderSpec,
    config: GenerationBenchmarkConfig = GenerationBenchmarkConfig(),
    *,
    pytorch_model: Any = None,
    progress: Any = None,
) -> GenerationBenchmark:
    """Time generation for every candidate (and PyTorch's generate when `pytorch_model` is given), interleaved.

    Args:
        candidates: Name -> decoder model file (any engine's) or Candidate.
        spec: The decoder spec (the candidates share it).
        config: Shapes, tokens, runs, threads.
        pytorch_model: The transformers causal LM, timed as the baseline under the name "pytorch".
        progress: Called with a line of text after each shape.

    Raises:
        ConfigError: A prompt plus its new tokens would not fit the model's positions.
    """
    started = time.perf_counter()
    longest = max(config.prompt_lengths) + config.new_tokens
    if longest > spec.max_positions:
        raise ConfigError(
            f"A prompt of {max(config.prompt_lengths)} tokens plus {config.new_tokens} new tokens needs "
            f"{longest} positions; the model has {spec.max_positions}.",
            fix="pass shorter GenerationBenchmarkConfig.prompt_lengths or fewer new_tokens",
        )
    threads = config.effective_threads
    runners = {}
    for name, model in candidates.items():
        runners[name] = (
            model.runner(threads=threads)
            if isinstance(model, Candidate)
            else engine_for_path(model).runner(Path(model), name=name, threads=threads)
        )
    if pytorch_model is not None:
        torch = require("torch", purpose="Timing PyTorch generate")
        torch.set_num_threads(threads)  # torch's setting is process-wide: the baseline runs with the same threads
        pytorch_model.eval()
    rng = np.random.default_rng(config.seed)
    timings: list[GenerationTiming] = []
    for runner in runners.values():
        runner.activate()
    try:
        names = ([PYTORCH] if pytorch_model is not None else []) + list(runners)
        for batch in config.batch_sizes:
            for length in config.prompt_lengths:
                prompts = rng.integers(0, spec.vocab_size, (batch, length)).astype(np.int64)
                samples: dict[str, list[tuple[float, list[float], float]]] = {name: [] for name in names}
                for round_index in range(config.warmup + config.iterations):
                    for name in names:
                        measured = (
                            _pytorch_generation(pytorch_model, prompts, config.new_tokens)
                            if name == PYTORCH
                            else _runner_generation(runners[name], spec, prompts, config.new_tokens)
                        )
                        if round_index >= config.warmup:
                            samples[name].append(measured)
                for name in names:
                    timings.append(_timing(name, batch, length, config.new_tokens, samples[name]))
                if progress:
                    progress(
                        f"batch {batch}, prompt {length}: "
                        + ", ".join(f"{t.name} {t.tokens_per_s:.1f} tok/s" for t in timings[-len(names) :])
                    )
    finally:
        for runner in runners.values():
            runner.deactivate()
    return GenerationBenchmark(
        tuple(timings), config, {**machine_info(), "threads": threads}, time.perf_counter() - started
    )


def _timing(
    name: str, batch: int, length: int, new_tokens: int, samples: list[tuple[float, list[float], float]]
) -> GenerationTiming:
    ttft = np.array([s[0] for s in samples]) * 1000.0
    steps = np.array([x for s in samples for x in s[1]]) * 1000.0
    totals = np.array([s[2] for s in samples])
    decode = np.array([sum(s[1]) for s in samples])
    decode_rate = float(np.median(batch * (new_tokens - 1) / decode)) if new_tokens > 1 and decode.all() else 0.0
    return GenerationTiming(
        name=name,
        batch=batch,
        prompt_length=length,
        new_tokens=new_tokens,
        runs=len(samples),
        ttft_ms_p50=float(np.median(ttft)),
        ttft_ms_p90=float(np.percentile(ttft, 90)),
        itl_ms_p50=float(np.median(steps)) if steps.size else 0.0,
        itl_ms_p90=float(np.percentile(steps, 90)) if steps.size else 0.0,
        total_ms_p50=float(np.median(totals) * 1000.0),
        tokens_per_s=float(np.median(batch * new_tokens / totals)),
        decode_tokens_per_s=decode_rate,
    )
