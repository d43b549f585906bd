"""Benchmark stage: latency and throughput of every candidate, interleaved, and the choice among them."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import numpy as np

from workbench.backends.base import Runner
from workbench.config import StageConfig, check_positive
from workbench.errors import ConfigError, WorkbenchError

Shape = tuple[int, int]  # (batch, sequence)


@dataclass(frozen=True)
class BenchmarkConfig(StageConfig):
    """How to time candidates.

    Attributes:
        batch_sizes: Batch sizes to time.
        sequence_lengths: Padded sequence lengths to time.
        warmup: Untimed runs per candidate and shape before timing.
        iterations: Timed runs per candidate and shape. Candidates take turns run by run (interleaved), so
            a noisy machine slows them alike.
        threads: Intra-op threads for every engine (torch and onnxruntime); None: all cores.
    """

    batch_sizes: tuple[int, ...] = (1, 8)
    sequence_lengths: tuple[int, ...] = (128,)
    warmup: int = 5
    iterations: int = 30
    threads: int | None = None

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"batch_sizes": (1,), "warmup": 2, "iterations": 10},
        "default": {},
        "thorough": {"batch_sizes": (1, 8, 32), "sequence_lengths": (32, 128, 512), "iterations": 100},
    }

    def __post_init__(self) -> None:
        check_positive(self, "batch_sizes", "sequence_lengths", "iterations")
        if self.warmup < 0:
            raise ConfigError(f"BenchmarkConfig.warmup must be >= 0, got {self.warmup}.")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"BenchmarkConfig.threads must be >= 1 or None, got {self.threads}.")

    @property
    def effective_threads(self) -> int:
        return self.threads or os.cpu_count() or 1


@dataclass(frozen=True)
class BenchmarkRow:
    """Timing of one candidate at one shape, in milliseconds."""

    name: str
    batch: int
    seq: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float  # samples per second at this batch size

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class BenchmarkResult:
    """Every row, with the settings and machine they were measured on."""

    rows: tuple[BenchmarkRow, ...]
    config: BenchmarkConfig
    machine: dict[str, Any]
    notes: tuple[str, ...] = ()

    def row(self, name: str, batch: int, seq: int) -> BenchmarkRow:
        for r in self.rows:
            if (r.name, r.batch, r.seq) == (name, batch, seq):
                return r
        raise KeyError(f"no row for {name!r} at batch {batch}, seq {seq}")

    def p50(self, name: str, batch: int, seq: int) -> float | None:
        try:
            return self.row(name, batch, seq).p50_ms
        except KeyError:
            return None

    def to_dict(self) -> dict[str, Any]:
        return {"rows": [r.to_dict() for r in self.rows], "config": self.config.to_dict(),
                "machine": self.machine, "notes": list(self.notes)}

    def figure(self, baseline: str | None = "pytorch") -> Any:
        """Plotly bar chart of p50 latency per candidate and shape (speed-up vs `baseline` in the hover)."""
        import plotly.graph_objects as go

        figure = go.Figure()
        shapes = sorted({(r.batch, r.seq) for r in self.rows})
        for name in dict.fromkeys(r.name for r in self.rows):
            rows = [self.row(name, b, s) for b, s in shapes if self.p50(name, b, s) is not None]
            speedups = [
                (self.p50(baseline, r.batch, r.seq) or float("nan")) / r.p50_ms if baseline else float("nan")
                for r in rows
            ]
            figure.add_bar(
                name=name,
                x=[f"batch {r.batch}, seq {r.seq}" for r in rows],
                y=[r.p50_ms for r in rows],
                customdata=speedups,
                hovertemplate="%{y:.2f} ms (%{customdata:.2f}x vs " + str(baseline) + ")",
            )
        figure.update_layout(barmode="group", yaxis_title="p50 latency (ms)", title="Latency by candidate")
        return figure

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{r.name}</td><td>{r.batch}</td><td>{r.seq}</td><td>{r.p50_ms:.2f}</td><td>{r.p90_ms:.2f}</td>"
            f"<td>{r.p99_ms:.2f}</td><td>{r.throughput:.1f}</td></tr>"
            for r in self.rows
        )
        return (f"<b>Latency</b> ({self.machine.get('cpu_count')} cores, {self.config.effective_threads} threads, "
                f"{self.config.iterations} interleaved runs)<table><tr><th>candidate</th><th>batch</th><th>seq</th>"
                f"<th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>samples/s</th></tr>{rows}</table>")


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo on Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """The facts a latency figure is meaningless without."""
    return {"platform": platform.platform(), "processor": cpu_name(), "cpu_count": os.cpu_count(),
            "python": platform.python_version()}


def benchmark(
    runners: Sequence[Runner],
    feeds_for: Callable[[int, int], Mapping[str, np.ndarray]],
    config: BenchmarkConfig = BenchmarkConfig(),
) -> BenchmarkResult:
    """Time each runner at every (batch, sequence) in the config, interleaving the runners run by run.

    Args:
        runners: Inactive runners; they are activated here, all at once, and deactivated at the end. Create
            onnxruntime runners with `allow_spinning=False` so idle pool threads do not steal cores from the
            runner being timed.
        feeds_for: (batch, sequence) -> the feed dict to time with.
        config: Shapes, warm-up, iterations, threads.
    """
    names = [r.name for r in runners]
    if len(set(names)) != len(names):
        raise ConfigError(f"Runner names must be unique, got {names}.")
    rows = []
    active: list[Runner] = []
    try:
        for runner in runners:
            runner.activate()
            active.append(runner)
        for batch in config.batch_sizes:
            for seq in config.sequence_lengths:
                feeds = dict(feeds_for(batch, seq))
                for runner in active:
                    for _ in range(config.warmup):
                        runner.infer(feeds)
                timings: dict[str, list[float]] = {r.name: [] for r in active}
                for iteration in range(config.iterations):
                    # rotate who goes first, so no runner always follows the same neighbour
                    order = active[iteration % len(active):] + active[: iteration % len(active)]
                    for runner in order:
                        started = time.perf_counter()
                        runner.infer(feeds)
                        timings[runner.name].append((time.perf_counter() - started) * 1000.0)
                for name, values in timings.items():
                    ms = np.asarray(values)
                    rows.append(BenchmarkRow(
                        name=name, batch=batch, seq=seq,
                        p50_ms=float(np.percentile(ms, 50)), p90_ms=float(np.percentile(ms, 90)),
                        p99_ms=float(np.percentile(ms, 99)), mean_ms=float(ms.mean()),
                        throughput=float(batch * 1000.0 / ms.mean()),
                    ))
    finally:
        for runner in active:
            runner.deactivate()
    return BenchmarkResult(rows=tuple(rows), config=config, machine=machine_info(),
                           notes=("onnxruntime thread spinning off for every session; runs interleaved",))


@dataclass(frozen=True)
class Choice:
    """The candidate to ship and why."""

    name: str
    reason: str
    batch: int
    seq: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def _repr_html_(self) -> str:
        return f"<b>Chosen:</b> {self.name}. {self.reason}"


def choose_candidate(accuracy: Any, timings: BenchmarkResult, *, batch: int = 1, seq: int | None = None) -> Choice:
    """Pick the fastest candidate at (batch, seq) among those that meet the accuracy budget.

    Args:
        accuracy: A ComparisonReport (its candidates are truthy when they meet the budget).
        timings: The benchmark of the same candidates.
        batch: Batch size the choice optimises for (1: online latency).
        seq: Sequence length; default the first one benchmarked.
    """
    seq = seq or timings.config.sequence_lengths[0]
    measured = [(c, timings.p50(c.name, batch, seq)) for c in accuracy.candidates]
    measured = [(c, p50) for c, p50 in measured if p50 is not None]
    if not measured:
        raise WorkbenchError(f"No candidate was benchmarked at batch {batch}, seq {seq}.",
                             fix="benchmark the candidates at the shape you choose for")
    passing = [(c, p50) for c, p50 in measured if c]
    if not passing:
        raise WorkbenchError(
            "No candidate meets the accuracy budget: " + "; ".join(f"{c.name}: {', '.join(c.failures)}" for c, _ in measured),
            fix="relax the budget, or keep the failing nodes in FP32 (the accuracy stage's fixes)",
        )
    best, best_p50 = min(passing, key=lambda pair: pair[1])
    rejected = [f"{c.name} ({p50:.1f} ms) misses the budget: {', '.join(c.failures)}" for c, p50 in measured
                if not c and p50 < best_p50]
    reason = f"fastest candidate that meets the accuracy budget at batch {batch}, seq {seq}: {best_p50:.2f} ms p50"
    if best.embedding_cosine_mean is not None:
        reason += f", embedding cosine mean {best.embedding_cosine_mean:.4f} / min {best.embedding_cosine_min:.4f}"
    if rejected:
        reason += ". Faster but rejected: " + "; ".join(rejected)
    return Choice(name=best.name, reason=reason, batch=batch, seq=seq)
