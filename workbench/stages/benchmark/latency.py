"""Benchmark stage: latency, throughput and memory of every candidate, interleaved, and the choice among them.

- :func:`benchmark` times every runner at every (batch, sequence), interleaved run by run, in one process.
- :func:`benchmark_candidates` does the same for ONNX files (and optionally the PyTorch module), building the
  runners from the engines.
- :func:`benchmark_concurrency` estimates serving throughput: N threads, each with its own session.
- :func:`candidates_table`, :func:`pareto_figure` and :func:`choose_candidate` join accuracy and speed and pick
  the candidate to ship.

Sessions are only ever created by the runners in ``workbench.engines``; this module asks for runners.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np

from workbench.config import StageConfig, check_positive
from workbench.engines.base import Runner
from workbench.errors import ConfigError, DataError, WorkbenchError
from workbench.machine import (
    cpu_times,
    machine_info,
    peak_rss_mb,
    release_free_memory,
    rss_mb,
    run_queue_wait_ns,
)
from workbench.progress import Progress, ProgressCallback

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
        time_budget_s: Stop a shape's timing loop once it has run this many seconds (and at least
            min_iterations rounds); None: always run every iteration. Warm-up is not counted.
        min_iterations: Rounds a time budget never cuts below (capped at iterations).
    """

    batch_sizes: tuple[int, ...] = (1, 8)
    sequence_lengths: tuple[int, ...] = (128,)
    warmup: int = 5
    iterations: int = 30
    threads: int | None = None
    time_budget_s: float | None = None
    min_iterations: int = 3

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "quick": {"batch_sizes": (1,), "warmup": 2, "iterations": 10},
        "default": {},
        "thorough": {"batch_sizes": (1, 8, 32), "sequence_lengths": (32, 128, 512), "iterations": 100},
    }

    def __post_init__(self) -> None:
        check_positive(self, "batch_sizes", "sequence_lengths", "iterations", "min_iterations")
        if self.warmup < 0:
            raise ConfigError(f"BenchmarkConfig.warmup must be >= 0, got {self.warmup}.")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"BenchmarkConfig.threads must be >= 1 or None, got {self.threads}.")
        if self.time_budget_s is not None and (
            not isinstance(self.time_budget_s, (int, float)) or not self.time_budget_s > 0
        ):
            raise ConfigError(
                f"BenchmarkConfig.time_budget_s must be > 0 seconds or None, got {self.time_budget_s!r}.",
                fix="leave it empty (None) to run every iteration",
            )

    @property
    def effective_threads(self) -> int:
        return self.threads or os.cpu_count() or 1


@dataclass(frozen=True)
class BenchmarkRow:
    """Timing of one candidate at one shape, in milliseconds.

    `throughput` is samples per second of back-to-back sequential runs (batch * 1000 / mean_ms); concurrent
    serving throughput is what :func:`benchmark_concurrency` measures. `iterations` is how many timed runs the
    percentiles are over (fewer than configured when a time budget stopped the shape early).
    """

    name: str
    batch: int
    seq: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float  # samples per second at this batch size
    iterations: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class CpuContention:
    """Who had the CPU while one shape was timed: how long this benchmark's threads waited for a free core, and
    how much CPU time other processes took meanwhile.

    Attributes:
        batch: The shape's batch size.
        seq: The shape's sequence length.
        wall_ms: Wall-clock time of the shape's timed runs (all candidates, all rounds).
        wait_ms: Run-queue delay summed over this process's threads during those runs
            (machine.run_queue_wait_ns): time they could have run but found no core free.
        others_cpu_ms: CPU time every other process used meanwhile (machine.cpu_times); None where it cannot
            be read.
        steal_ms: CPU time the hypervisor gave this virtual machine's CPUs to something else meanwhile (0 on
            bare metal); shown, not judged: on a shared cloud machine it is there even when the machine is quiet.
    """

    batch: int
    seq: int
    wall_ms: float
    wait_ms: float
    others_cpu_ms: float | None
    steal_ms: float | None = None

    @property
    def wait_fraction(self) -> float:
        """wait_ms / wall_ms: near 0 on a quiet machine; above 1 when several threads waited at once."""
        return self.wait_ms / self.wall_ms if self.wall_ms > 0 else 0.0

    @property
    def others_cores(self) -> float | None:
        """How many cores other processes kept busy on average (others_cpu_ms / wall_ms)."""
        if self.others_cpu_ms is None or self.wall_ms <= 0:
            return None
        return self.others_cpu_ms / self.wall_ms

    def to_dict(self) -> dict[str, Any]:
        others = self.others_cores
        return {
            **self.__dict__,
            "wait_fraction": round(self.wait_fraction, 4),
            "others_cores": None if others is None else round(others, 3),
        }


class PooledContention(NamedTuple):
    """CpuContention over every timed shape together."""

    wait_fraction: float
    others_cores: float | None  #: None where other processes' CPU could not be read for some shape
    steal_cores: float | None
    wall_s: float


def pooled_contention(contention: Sequence[CpuContention]) -> PooledContention | None:
    """Every timed shape's contention pooled by wall time; None when nothing was read."""
    wall = sum(c.wall_ms for c in contention)
    if not contention or wall <= 0:
        return None

    def cores(values: list[float | None]) -> float | None:
        return None if any(v is None for v in values) else sum(v or 0.0 for v in values) / wall

    return PooledContention(
        sum(c.wait_ms for c in contention) / wall,
        cores([c.others_cpu_ms for c in contention]),
        cores([c.steal_ms for c in contention]),
        wall / 1000.0,
    )


@dataclass(frozen=True)
class BenchmarkResult:
    """Every row, with the settings and machine they were measured on.

    Attributes:
        rows: One row per (candidate, batch, seq).
        config: The settings.
        machine: Platform, processor, cores, Python.
        notes: How the runs were made (interleaving, spinning, time budget cuts).
        peak_memory_mb: Candidate -> how much this process's resident memory (VmRSS) grew while that runner was
            activated: the weights and buffers its session keeps resident (for PyTorch, whose module is loaded
            before, about 0). Free heap pages are handed back to the OS before each reading (glibc), so a
            session does not look free because it reused them; still, buffers an engine allocates at its first
            inference are not in it, so it is an estimate of the memory a candidate adds, not an exact footprint.
            None where /proc/self/status is not available (not Linux).
        process_peak_rss_mb: This process's peak resident memory (VmHWM) at the end of the benchmark: an upper
            bound of what all runners together (plus everything the process did before: torch, export ...)
            needed at once. Serve a candidate alone to know its own peak.
        warnings: What says the machine was busy while timing (busy_warnings: contention, spread, order, load);
            empty when nothing does. Numbers with warnings are worth a re-run on a quiet machine.
        load_average: The 1-minute load average (os.getloadavg) before and after timing; None where the
            platform has none.
        contention: Per shape, how long this process's threads waited for a free core during the timed runs
            and how much CPU other processes took meanwhile; empty where the platform does not say (not Linux).
    """

    rows: tuple[BenchmarkRow, ...]
    config: BenchmarkConfig
    machine: dict[str, Any]
    notes: tuple[str, ...] = ()
    peak_memory_mb: dict[str, float | None] = field(default_factory=dict)
    process_peak_rss_mb: float | None = None
    warnings: tuple[str, ...] = ()
    load_average: tuple[float, float | None] | None = None
    contention: tuple[CpuContention, ...] = ()

    @property
    def busy(self) -> bool:
        """Whether the timings look like a busy machine's (there are warnings)."""
        return bool(self.warnings)

    @property
    def names(self) -> list[str]:
        """Candidate names, in the order they were given."""
        return list(dict.fromkeys(r.name for r in self.rows))

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
        return {
            "rows": [r.to_dict() for r in self.rows],
            "config": self.config.to_dict(),
            "machine": self.machine,
            "notes": list(self.notes),
            "peak_memory_mb": dict(self.peak_memory_mb),
            "process_peak_rss_mb": self.process_peak_rss_mb,
            "warnings": list(self.warnings),
            "load_average": list(self.load_average) if self.load_average is not None else None,
            "contention": [c.to_dict() for c in self.contention],
        }

    def figure(self, baseline: str | None = "pytorch") -> Any:
        """Plotly bar chart of p50 latency per candidate, one panel per shape, each with its own y axis (so the
        batch-1 bars stay readable beside batch 8); the speed-up vs `baseline` is in the hover."""
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        shapes = sorted({(r.batch, r.seq) for r in self.rows})
        figure = make_subplots(
            rows=1,
            cols=max(len(shapes), 1),
            shared_yaxes=False,
            subplot_titles=[f"batch {b}, seq {s}" for b, s in shapes],
        )
        colors = (
            "#1f77b4",
            "#ff7f0e",
            "#2ca02c",
            "#d62728",
            "#9467bd",
            "#8c564b",
            "#e377c2",
            "#7f7f7f",
            "#bcbd22",
            "#17becf",
        )
        for index, name in enumerate(self.names):
            for column, (b, s) in enumerate(shapes, 1):
                p50 = self.p50(name, b, s)
                if p50 is None:
                    continue
                base = self.p50(baseline, b, s) if baseline else None
                figure.add_trace(
                    go.Bar(
                        name=name,
                        x=[name],
                        y=[p50],
                        legendgroup=name,
                        showlegend=column == 1,
                        marker_color=colors[index % len(colors)],
                        customdata=[base / p50 if base else float("nan")],
                        hovertemplate=f"{name}, batch {b}, seq {s}: %{{y:.2f}} ms (%{{customdata:.2f}}x vs "
                        f"{baseline})<extra></extra>",
                    ),
                    row=1,
                    col=column,
                )
        figure.update_xaxes(showticklabels=False)
        figure.update_yaxes(title_text="p50 latency (ms)", row=1, col=1)
        title = "Latency by candidate (p50; each panel has its own scale)"
        if self.warnings:
            title += " - the machine looked busy"
        figure.update_layout(title=title, barmode="group")
        return figure

    def latency_figure(self) -> Any:
        """Plotly line chart: p50 latency vs batch size, one line per candidate and sequence length.

        Error bars reach up to p90; the hover shows p90, p99 and throughput.
        """
        import plotly.graph_objects as go

        figure = go.Figure()
        for name in self.names:
            for seq in sorted({r.seq for r in self.rows if r.name == name}):
                rows = sorted((r for r in self.rows if r.name == name and r.seq == seq), key=lambda r: r.batch)
                figure.add_scatter(
                    x=[r.batch for r in rows],
                    y=[r.p50_ms for r in rows],
                    mode="lines+markers",
                    name=f"{name}, seq {seq}",
                    error_y={
                        "type": "data",
                        "symmetric": False,
                        "array": [r.p90_ms - r.p50_ms for r in rows],
                        "arrayminus": [0.0] * len(rows),
                        "thickness": 1,
                    },
                    customdata=[[r.p90_ms, r.p99_ms, r.throughput] for r in rows],
                    hovertemplate=(
                        f"{name}, seq {seq}, batch %{{x}}: p50 %{{y:.2f}} ms, p90 %{{customdata[0]:.2f}}"
                        " ms, p99 %{customdata[1]:.2f} ms, %{customdata[2]:.1f} samples/s<extra></extra>"
                    ),
                )
        batches = sorted({r.batch for r in self.rows})
        figure.update_layout(
            title="Latency vs batch size (p50; bars up to p90; log scale)",
            xaxis_title="batch size",
            yaxis_title="p50 latency (ms)",
            xaxis={"tickmode": "array", "tickvals": batches},
            yaxis_type="log",
        )
        return figure

    def speedup_figure(self, baseline: str = "pytorch") -> Any:
        """Plotly bar chart: p50 speed-up of every other candidate over `baseline`, per (batch, seq).

        Raises:
            WorkbenchError: `baseline` was not benchmarked.
        """
        import plotly.graph_objects as go

        if baseline not in self.names:
            raise WorkbenchError(
                f"The speed-up baseline {baseline!r} was not benchmarked; the candidates are {self.names}.",
                fix="pass baseline= one of them, or benchmark the PyTorch module too (pytorch_module=...)",
            )
        figure = go.Figure()
        shapes = sorted({(r.batch, r.seq) for r in self.rows})
        for name in self.names:
            if name == baseline:
                continue
            measured = [(b, s, self.p50(baseline, b, s), self.p50(name, b, s)) for b, s in shapes]
            points = [(b, s, base, p50) for b, s, base, p50 in measured if base is not None and p50 is not None]
            figure.add_bar(
                name=name,
                x=[f"batch {b}, seq {s}" for b, s, _, _ in points],
                y=[base / p50 for _, _, base, p50 in points],
                customdata=[[p50, base] for _, _, base, p50 in points],
                hovertemplate=(
                    f"{name}: %{{y:.2f}}x (%{{customdata[0]:.2f}} ms vs {baseline} "
                    "%{customdata[1]:.2f} ms)<extra></extra>"
                ),
            )
        figure.add_hline(y=1.0, line_dash="dash", line_color="gray", annotation_text=baseline)
        figure.update_layout(
            barmode="group",
            title=f"Speed-up over {baseline} (p50, same run)",
            yaxis_title=f"{baseline} p50 / candidate p50",
        )
        return figure

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(r.name)}</td><td>{r.batch}</td><td>{r.seq}</td><td>{r.p50_ms:.2f}</td>"
            f"<td>{r.p90_ms:.2f}</td><td>{r.p99_ms:.2f}</td><td>{r.mean_ms:.2f}</td><td>{r.throughput:.1f}</td>"
            f"<td>{_mb(self.peak_memory_mb.get(r.name))}</td></tr>"
            for r in self.rows
        )
        runs = f"{self.config.iterations} interleaved runs"
        if self.config.time_budget_s is not None:
            runs = f"up to {runs}, {self.config.time_budget_s:g} s per shape"
        peak = f"; process peak RSS {self.process_peak_rss_mb:.0f} MB" if self.process_peak_rss_mb is not None else ""
        load = ""
        if self.load_average is not None:
            load = "; load average " + " then ".join(f"{v:.1f}" for v in self.load_average if v is not None)
        pooled = pooled_contention(self.contention)
        if pooled is not None:
            load += f"; threads waited for a core {pooled.wait_fraction:.0%} of the time"
            if pooled.others_cores is not None:
                load += f", other processes used {pooled.others_cores:.2f} cores"
            if pooled.steal_cores:
                load += f", the hypervisor stole {pooled.steal_cores:.2f} cores"
        warnings = ""
        if self.warnings:
            items = "".join(f"<li>{html.escape(w)}</li>" for w in self.warnings)
            warnings = (
                f'<div class="wb-busy" style="color:#a86b00"><b>The machine looked busy while timing: these '
                f"numbers may be off. Re-run on a quiet machine.</b><ul>{items}</ul></div>"
            )
        return (
            f"{warnings}<b>Latency</b> ({self.machine.get('cpu_count')} cores, {self.config.effective_threads} "
            f"threads, {runs}{peak}{load})<table><tr><th>candidate</th><th>batch</th><th>seq</th>"
            f"<th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>mean ms</th><th>samples/s</th>"
            f"<th>RSS growth at activation (MB)</th></tr>{rows}</table>"
        )


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def benchmark(
    runners: Sequence[Runner],
    feeds_for: Callable[[int, int], Mapping[str, np.ndarray]],
    config: BenchmarkConfig = BenchmarkConfig(),
    *,
    progress: ProgressCallback | None = None,
) -> BenchmarkResult:
    """Time each runner at every (batch, sequence) in the config, interleaving the runners run by run.

    Each round runs every runner once, in an order rotated round by round, so no runner always follows the
    same neighbour. With `config.time_budget_s`, a shape stops after the round that crosses the budget (never
    before `config.min_iterations` rounds); its rows say how many rounds they are over.

    Args:
        runners: Inactive runners; they are activated here, one after the other (the growth of this process's
            resident memory during each activation is recorded), and all deactivated at the end. Create
            onnxruntime runners with `allow_spinning=False` so idle pool threads do not steal cores from the
            runner being timed.
        feeds_for: (batch, sequence) -> the feed dict to time with.
        config: Shapes, warm-up, iterations, threads, time budget.
        progress: Called with a ProgressEvent (unit "timing rounds": each round times every runner once) as
            runners load, shapes warm up and after every round; it may raise workbench.progress.Stopped to end
            the benchmark there (the runners are deactivated; nothing is written).

    The result's `warnings` say when the timings look like a busy machine's (see busy_warnings), with the
    load average seen before and after timing.
    """
    runners = list(runners)
    if not runners:
        raise ConfigError(
            "benchmark() was given no runners, so there is nothing to time.",
            expected="at least one runner (a candidate model, or PyTorch)",
            fix="pass the candidates, e.g. [OnnxRuntimeRunner(path, name='fp32', allow_spinning=False)]",
        )
    names = [r.name for r in runners]
    if len(set(names)) != len(names):
        raise ConfigError(f"Runner names must be unique, got {names}.")
    rows = []
    active: list[Runner] = []
    memory: dict[str, float | None] = {}
    notes = ["onnxruntime thread spinning off for every session; runs interleaved"]
    floor = min(config.min_iterations, config.iterations)
    contention: list[CpuContention] = []
    shapes = [(b, s) for b in config.batch_sizes for s in config.sequence_lengths]
    report = Progress(progress, "benchmark", "timing rounds", total=len(shapes) * config.iterations)
    load_before = _load_average()
    try:
        for index, runner in enumerate(runners, 1):
            report(0, f"loading {runner.name} ({index} of {len(runners)})")
            release_free_memory()
            before = rss_mb()
            runner.activate()
            after = rss_mb()
            active.append(runner)
            memory[runner.name] = round(after - before, 1) if before is not None and after is not None else None
        for shape_index, (batch, seq) in enumerate(shapes):
            done = shape_index * config.iterations
            report(done, f"batch {batch}, seq {seq}: warming up {len(active)} candidates")
            feeds = dict(feeds_for(batch, seq))
            for runner in active:
                for _ in range(config.warmup):
                    runner.infer(feeds)
            timings: dict[str, list[float]] = {r.name: [] for r in active}
            wait_before, cpu_before = run_queue_wait_ns(), cpu_times()
            shape_started = time.perf_counter()
            rounds = 0
            for iteration in range(config.iterations):
                # rotate who goes first, so no runner always follows the same neighbour
                order = active[iteration % len(active) :] + active[: iteration % len(active)]
                for runner in order:
                    started = time.perf_counter()
                    runner.infer(feeds)
                    timings[runner.name].append((time.perf_counter() - started) * 1000.0)
                rounds += 1
                report(
                    done + rounds,
                    f"batch {batch}, seq {seq}: round {rounds} of {config.iterations}, {len(active)} candidates each",
                )
                if (
                    config.time_budget_s is not None
                    and rounds >= floor
                    and time.perf_counter() - shape_started >= config.time_budget_s
                ):
                    break
            wall_ms = (time.perf_counter() - shape_started) * 1000.0
            wait_after, cpu_after = run_queue_wait_ns(), cpu_times()
            if wait_before is not None and wait_after is not None:
                others = steal = None
                if cpu_before is not None and cpu_after is not None:
                    used = (cpu_after.busy - cpu_before.busy) - (cpu_after.own - cpu_before.own)
                    others, steal = max(used, 0.0) * 1000.0, (cpu_after.steal - cpu_before.steal) * 1000.0
                # threads that ended meanwhile take their delay with them: never report a negative wait
                wait_ms = max(wait_after - wait_before, 0) / 1e6
                contention.append(
                    CpuContention(batch, seq, round(wall_ms, 3), round(wait_ms, 3), _round(others), _round(steal))
                )
            if rounds < config.iterations:
                notes.append(
                    f"time budget {config.time_budget_s:g} s: batch {batch}, seq {seq} stopped after "
                    f"{rounds} of {config.iterations} rounds"
                )
            for name, values in timings.items():
                ms = np.asarray(values)
                rows.append(
                    BenchmarkRow(
                        name=name,
                        batch=batch,
                        seq=seq,
                        p50_ms=float(np.percentile(ms, 50)),
                        p90_ms=float(np.percentile(ms, 90)),
                        p99_ms=float(np.percentile(ms, 99)),
                        mean_ms=float(ms.mean()),
                        throughput=float(batch * 1000.0 / ms.mean()),
                        iterations=len(values),
                    )
                )
    finally:
        for runner in active:
            runner.deactivate()
    machine = machine_info()
    load = (load_before, _load_average()) if load_before is not None else None
    pooled = pooled_contention(contention)
    if (
        pooled is not None
        and pooled.wait_fraction > WAIT_LIMIT
        and pooled.others_cores is not None
        and pooled.others_cores <= OTHERS_LIMIT
    ):
        notes.append(
            f"this process's own threads waited for a core {pooled.wait_fraction:.0%} of the timed time while other "
            f"processes used {pooled.others_cores:.2f} cores: more of its threads wanted to run than there are "
            "cores (measured: PyTorch's 2-thread pool beside the other candidates in one process; not with PyTorch "
            "at 1 thread); that is this benchmark's own doing, not a busy machine"
        )
    return BenchmarkResult(
        rows=tuple(rows),
        config=config,
        machine=machine,
        notes=tuple(notes),
        peak_memory_mb=memory,
        process_peak_rss_mb=_round(peak_rss_mb()),
        warnings=busy_warnings(rows, cores=os.cpu_count() or 1, load_average=load, contention=contention),
        load_average=load,
        contention=tuple(contention),
    )


def _load_average() -> float | None:
    """The 1-minute load average (os.getloadavg), None where the platform has none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


#: A row whose p90 is more than this many times its p50 spread as timings do on a busy machine (on a quiet one
#: p90 stays within a few tens of percent of p50).
SPREAD_LIMIT = 1.5
#: A smaller batch whose p50 exceeds a larger batch's by more than this factor (same candidate and sequence).
ORDER_TOLERANCE = 1.05
#: Spread is judged on rows of at least this many timed runs (p90 of fewer says little).
MIN_RUNS_FOR_SPREAD = 5
#: The timed runs were held up by other processes when, over all shapes, this process's threads waited for a core
#: more than WAIT_LIMIT of the timed wall time AND other processes kept more than OTHERS_LIMIT cores busy. Both are
#: needed: with PyTorch's 2-thread pool in the same process, the other candidates' threads wait on a quiet
#: machine (0.04-0.21 per shape, others 0.00-0.04 cores: make demo's candidates); other processes using cores this
#: benchmark does not need (a 16-core machine) make nobody wait. Measured on the 2-core machine: one 100% process
#: beside the benchmark gave waits 0.42-1.25 with others 0.65-0.79 cores; four 30%-duty processes 0.51-0.88, 0.60-1.12.
WAIT_LIMIT = 0.10
OTHERS_LIMIT = 0.25
#: Contention is judged over at least this much timed wall time (the CPU counters tick every 10 ms).
MIN_CONTENTION_WINDOW_S = 0.2


def busy_warnings(
    rows: Sequence[BenchmarkRow],
    *,
    cores: int,
    load_average: tuple[float, float | None] | None = None,
    contention: Sequence[CpuContention] = (),
) -> tuple[str, ...]:
    """What says the machine was busy while these timings were taken (empty: nothing does).

    - contention: over all shapes, this benchmark's threads waited for a free core more than WAIT_LIMIT of the
      timed time while other processes kept more than OTHERS_LIMIT cores busy. This is the one that sees steady
      contention (another process at 100% beside the benchmark, as another test worker is), which slows every
      run alike, so spread and order see nothing, and which a 1-minute load average shows late or not at all;
    - spread: a row's p90 above SPREAD_LIMIT x its p50;
    - order: a smaller batch slower in absolute time than a larger one of the same candidate and sequence (slower
      per sample is expected; slower in all means the small batch's runs were held up);
    - load: the 1-minute load average above 1.5 x the cores before or after timing (other processes competed).
    """
    found = []
    pooled = pooled_contention(contention)
    if pooled is not None:
        waited, others = pooled.wait_fraction, pooled.others_cores
        if (
            pooled.wall_s >= MIN_CONTENTION_WINDOW_S
            and waited > WAIT_LIMIT
            and others is not None
            and others > OTHERS_LIMIT
        ):
            most = max(contention, key=lambda c: c.wait_fraction)
            found.append(
                f"Other processes kept {others:.1f} of the {cores} cores busy while timing, and this benchmark's "
                f"threads waited for a free core {waited:.0%} of the timed time (most at batch {most.batch}, seq "
                f"{most.seq}: {most.wait_fraction:.0%}): every run was slowed by the competition, evenly or not."
            )
    spread = [
        r
        for r in rows
        if (r.iterations or MIN_RUNS_FOR_SPREAD) >= MIN_RUNS_FOR_SPREAD
        and r.p50_ms > 0
        and r.p90_ms > SPREAD_LIMIT * r.p50_ms
    ]
    if spread:
        worst = sorted(spread, key=lambda r: r.p90_ms / r.p50_ms, reverse=True)
        listed = ", ".join(f"{r.name} at batch {r.batch}, seq {r.seq} ({r.p90_ms / r.p50_ms:.1f}x)" for r in worst[:4])
        more = f" and {len(worst) - 4} more" if len(worst) > 4 else ""
        found.append(
            f"The timings spread: p90 is over {SPREAD_LIMIT:g}x p50 for {len(spread)} of {len(rows)} "
            f"measurements ({listed}{more}), as on a busy machine."
        )
    by_series: dict[tuple[str, int], list[BenchmarkRow]] = {}
    for r in rows:
        by_series.setdefault((r.name, r.seq), []).append(r)
    for (name, seq), series in by_series.items():
        ordered = sorted(series, key=lambda r: r.batch)
        for i, small in enumerate(ordered):
            larger = [big for big in ordered[i + 1 :] if small.p50_ms > ORDER_TOLERANCE * big.p50_ms]
            if larger:
                big = max(larger, key=lambda r: r.batch)
                found.append(
                    f"{name} at seq {seq}: batch {small.batch} took {small.p50_ms:.2f} ms, batch {big.batch} "
                    f"{big.p50_ms:.2f} ms; a smaller batch is not slower in absolute time on a quiet "
                    "machine, so its runs were held up."
                )
                break
    readings = [value for value in (load_average or ()) if value is not None]
    if readings and max(readings) > 1.5 * cores:
        found.append(
            f"The load average was {max(readings):.1f} (1 minute) on {cores} cores while timing: other "
            "processes competed for the CPU."
        )
    return tuple(found)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def benchmark_candidates(
    candidates: Mapping[str, str | os.PathLike[str]],
    feeds_for: Callable[[int, int], Mapping[str, np.ndarray]],
    config: BenchmarkConfig = BenchmarkConfig(),
    *,
    pytorch_module: Any = None,
    pytorch_name: str = "pytorch",
    pytorch_output_names: Sequence[str] = ("last_hidden_state",),
) -> BenchmarkResult:
    """:func:`benchmark` ONNX files (and optionally the PyTorch module they came from), interleaved.

    Each file gets an onnxruntime runner with `config.effective_threads` intra-op threads and thread spinning
    off; the module gets a PyTorch runner with the same thread count, named `pytorch_name` (the baseline of
    `BenchmarkResult.speedup_figure`).

    Args:
        candidates: Name -> .onnx file.
        feeds_for: (batch, sequence) -> the feed dict to time with.
        config: Shapes, warm-up, iterations, threads, time budget.
        pytorch_module: A torch.nn.Module taking the feed names as keywords; None: no PyTorch row.
        pytorch_name: The PyTorch runner's name.
        pytorch_output_names: The module's outputs to fetch.
    """
    from workbench.engines.onnxruntime import OnnxRuntimeRunner
    from workbench.engines.pytorch import PyTorchRunner

    if not candidates and pytorch_module is None:
        raise ConfigError(
            "There is nothing to benchmark: no candidates and no PyTorch module.",
            fix="pass at least one name -> .onnx path",
        )
    threads = config.effective_threads
    runners: list[Any] = []
    if pytorch_module is not None:
        runners.append(
            PyTorchRunner(pytorch_module, output_names=pytorch_output_names, name=pytorch_name, threads=threads)
        )
    runners += [
        OnnxRuntimeRunner(Path(path), name=name, intra_op_threads=threads, allow_spinning=False)
        for name, path in candidates.items()
    ]
    return benchmark(runners, feeds_for, config)


def feeds_from_sentences(
    tokenizer: Any, sentences: Sequence[str], *, input_names: Sequence[str] | None = None
) -> Callable[[int, int], dict[str, np.ndarray]]:
    """A `feeds_for(batch, seq)` for :func:`benchmark`: `batch` of the sentences (cycled), padded to `seq`.

    Args:
        tokenizer: A Hugging Face tokenizer.
        sentences: The texts to draw from.
        input_names: Keep only these inputs, in this order (the ONNX model's inputs).
    """
    from workbench.data import tokenize_batches

    texts = list(sentences)
    if not texts:
        raise DataError("No sentences to build benchmark feeds from.", fix="pass at least one sentence")
    cache: dict[Shape, dict[str, np.ndarray]] = {}

    def feeds_for(batch: int, seq: int) -> dict[str, np.ndarray]:
        if (batch, seq) not in cache:
            chosen = [texts[i % len(texts)] for i in range(batch)]
            cache[(batch, seq)] = tokenize_batches(
                tokenizer, chosen, batch_size=batch, sequence_length=seq, input_names=input_names
            )[0]
        return cache[(batch, seq)]

    return feeds_for
