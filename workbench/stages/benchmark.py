"""Benchmark stage: latency, throughput and memory of every candidate, interleaved, and the choice among them.

- :func:`benchmark` times every runner at every (batch, sequence), interleaved run by run, in one process.
- :func:`benchmark_candidates` does the same for ONNX files (and optionally the PyTorch module), building the
  runners from the backends.
- :func:`benchmark_concurrency` estimates serving throughput: N threads, each with its own session.
- :func:`candidates_table`, :func:`pareto_figure` and :func:`choose_candidate` join accuracy and speed and pick
  the candidate to ship.

Sessions are only ever created by the runners in ``workbench.backends``; this module asks for runners.
"""

from __future__ import annotations

import ctypes
import gc
import html
import math
import os
import platform
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from workbench.backends.base import Runner
from workbench.config import StageConfig, check_choice, check_positive
from workbench.errors import ConfigError, DataError, WorkbenchError

Shape = tuple[int, int]  # (batch, sequence)

OBJECTIVES = ("latency", "throughput")
# The latency a ceiling is held against: p90 is a tail that stays stable over a few dozen interleaved runs
# (p99 of 20 runs is their maximum, one hiccup of a shared machine).
CEILING_STATISTIC = "p90_ms"


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
        if self.time_budget_s is not None and (not isinstance(self.time_budget_s, (int, float))
                                               or not self.time_budget_s > 0):
            raise ConfigError(f"BenchmarkConfig.time_budget_s must be > 0 seconds or None, got {self.time_budget_s!r}.",
                              fix="leave it empty (None) to run every iteration")

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
    """

    rows: tuple[BenchmarkRow, ...]
    config: BenchmarkConfig
    machine: dict[str, Any]
    notes: tuple[str, ...] = ()
    peak_memory_mb: dict[str, float | None] = field(default_factory=dict)
    process_peak_rss_mb: float | None = None

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
        return {"rows": [r.to_dict() for r in self.rows], "config": self.config.to_dict(),
                "machine": self.machine, "notes": list(self.notes), "peak_memory_mb": dict(self.peak_memory_mb),
                "process_peak_rss_mb": self.process_peak_rss_mb}

    def figure(self, baseline: str | None = "pytorch") -> Any:
        """Plotly bar chart of p50 latency per candidate and shape (speed-up vs `baseline` in the hover)."""
        import plotly.graph_objects as go

        figure = go.Figure()
        shapes = sorted({(r.batch, r.seq) for r in self.rows})
        for name in self.names:
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
                    x=[r.batch for r in rows], y=[r.p50_ms for r in rows], mode="lines+markers",
                    name=f"{name}, seq {seq}",
                    error_y={"type": "data", "symmetric": False, "array": [r.p90_ms - r.p50_ms for r in rows],
                             "arrayminus": [0.0] * len(rows), "thickness": 1},
                    customdata=[[r.p90_ms, r.p99_ms, r.throughput] for r in rows],
                    hovertemplate=(f"{name}, seq {seq}, batch %{{x}}: p50 %{{y:.2f}} ms, p90 %{{customdata[0]:.2f}}"
                                   " ms, p99 %{customdata[1]:.2f} ms, %{customdata[2]:.1f} samples/s<extra></extra>"),
                )
        batches = sorted({r.batch for r in self.rows})
        figure.update_layout(title="Latency vs batch size (p50; bars up to p90)", xaxis_title="batch size",
                             yaxis_title="p50 latency (ms)", xaxis={"tickmode": "array", "tickvals": batches})
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
            points = [(b, s, self.p50(baseline, b, s), self.p50(name, b, s)) for b, s in shapes]
            points = [(b, s, base, p50) for b, s, base, p50 in points if base is not None and p50 is not None]
            figure.add_bar(name=name, x=[f"batch {b}, seq {s}" for b, s, _, _ in points],
                           y=[base / p50 for _, _, base, p50 in points],
                           customdata=[[p50, base] for _, _, base, p50 in points],
                           hovertemplate=(f"{name}: %{{y:.2f}}x (%{{customdata[0]:.2f}} ms vs {baseline} "
                                          "%{customdata[1]:.2f} ms)<extra></extra>"))
        figure.add_hline(y=1.0, line_dash="dash", line_color="gray", annotation_text=baseline)
        figure.update_layout(barmode="group", title=f"Speed-up over {baseline} (p50, same run)",
                             yaxis_title=f"{baseline} p50 / candidate p50")
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
        peak = (f"; process peak RSS {self.process_peak_rss_mb:.0f} MB" if self.process_peak_rss_mb is not None
                else "")
        return (f"<b>Latency</b> ({self.machine.get('cpu_count')} cores, {self.config.effective_threads} threads, "
                f"{runs}{peak})<table><tr><th>candidate</th><th>batch</th><th>seq</th>"
                f"<th>p50 ms</th><th>p90 ms</th><th>p99 ms</th><th>mean ms</th><th>samples/s</th>"
                f"<th>RSS growth at activation (MB)</th></tr>{rows}</table>")


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


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


def _proc_status_mb(key: str) -> float | None:
    """A memory line of /proc/self/status (kB there) in MB, or None where there is no such file."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mb() -> float | None:
    """This process's resident memory now (VmRSS), in MB; None off Linux."""
    return _proc_status_mb("VmRSS")


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far (VmHWM), in MB; None off Linux."""
    return _proc_status_mb("VmHWM")


_MALLOC_TRIM: Any = None


def release_free_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the OS (glibc's malloc_trim; a no-op elsewhere).

    Done before each RSS reading of an activation, so that a session does not appear to cost nothing just
    because it reused pages that earlier work (an export, a quantization) freed but the allocator kept.
    """
    global _MALLOC_TRIM
    gc.collect()
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError, TypeError):  # not glibc: nothing to trim with
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


def benchmark(
    runners: Sequence[Runner],
    feeds_for: Callable[[int, int], Mapping[str, np.ndarray]],
    config: BenchmarkConfig = BenchmarkConfig(),
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
    """
    names = [r.name for r in runners]
    if len(set(names)) != len(names):
        raise ConfigError(f"Runner names must be unique, got {names}.")
    rows = []
    active: list[Runner] = []
    memory: dict[str, float | None] = {}
    notes = ["onnxruntime thread spinning off for every session; runs interleaved"]
    floor = min(config.min_iterations, config.iterations)
    try:
        for runner in runners:
            release_free_memory()
            before = rss_mb()
            runner.activate()
            after = rss_mb()
            active.append(runner)
            memory[runner.name] = round(after - before, 1) if before is not None and after is not None else None
        for batch in config.batch_sizes:
            for seq in config.sequence_lengths:
                feeds = dict(feeds_for(batch, seq))
                for runner in active:
                    for _ in range(config.warmup):
                        runner.infer(feeds)
                timings: dict[str, list[float]] = {r.name: [] for r in active}
                shape_started = time.perf_counter()
                rounds = 0
                for iteration in range(config.iterations):
                    # rotate who goes first, so no runner always follows the same neighbour
                    order = active[iteration % len(active):] + active[: iteration % len(active)]
                    for runner in order:
                        started = time.perf_counter()
                        runner.infer(feeds)
                        timings[runner.name].append((time.perf_counter() - started) * 1000.0)
                    rounds += 1
                    if (config.time_budget_s is not None and rounds >= floor
                            and time.perf_counter() - shape_started >= config.time_budget_s):
                        break
                if rounds < config.iterations:
                    notes.append(f"time budget {config.time_budget_s:g} s: batch {batch}, seq {seq} stopped after "
                                 f"{rounds} of {config.iterations} rounds")
                for name, values in timings.items():
                    ms = np.asarray(values)
                    rows.append(BenchmarkRow(
                        name=name, batch=batch, seq=seq,
                        p50_ms=float(np.percentile(ms, 50)), p90_ms=float(np.percentile(ms, 90)),
                        p99_ms=float(np.percentile(ms, 99)), mean_ms=float(ms.mean()),
                        throughput=float(batch * 1000.0 / ms.mean()), iterations=len(values),
                    ))
    finally:
        for runner in active:
            runner.deactivate()
    return BenchmarkResult(rows=tuple(rows), config=config, machine=machine_info(), notes=tuple(notes),
                           peak_memory_mb=memory, process_peak_rss_mb=_round(peak_rss_mb()))


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
    from workbench.backends.onnxrt import OnnxRuntimeRunner
    from workbench.backends.pytorch import PyTorchRunner

    if not candidates and pytorch_module is None:
        raise ConfigError("There is nothing to benchmark: no candidates and no PyTorch module.",
                          fix="pass at least one name -> .onnx path")
    threads = config.effective_threads
    runners: list[Any] = []
    if pytorch_module is not None:
        runners.append(PyTorchRunner(pytorch_module, output_names=pytorch_output_names, name=pytorch_name,
                                     threads=threads))
    runners += [OnnxRuntimeRunner(Path(path), name=name, intra_op_threads=threads, allow_spinning=False)
                for name, path in candidates.items()]
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
            cache[(batch, seq)] = tokenize_batches(tokenizer, chosen, batch_size=batch, sequence_length=seq,
                                                   input_names=input_names)[0]
        return cache[(batch, seq)]

    return feeds_for


# --------------------------------------------------------------------------------------------------------------
# Concurrency: serving throughput with several sessions


@dataclass(frozen=True)
class ConcurrencyRow:
    """N threads, each with its own session, sending requests back to back for the duration.

    Attributes:
        concurrency: Threads (and sessions).
        requests: Requests completed by all threads together.
        seconds: Wall time from the start until the last request finished.
        requests_per_s: requests / seconds.
        samples_per_s: requests_per_s * the batch size of a request.
        p50_ms, p90_ms, p99_ms, mean_ms: Latency of one request, over every thread's requests.
    """

    concurrency: int
    requests: int
    seconds: float
    requests_per_s: float
    samples_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ConcurrencyResult:
    """Serving throughput and latency of one model at each concurrency."""

    name: str
    batch: int
    duration_s: float
    rows: tuple[ConcurrencyRow, ...]
    machine: dict[str, Any]
    notes: tuple[str, ...] = ()

    def row(self, concurrency: int) -> ConcurrencyRow:
        for r in self.rows:
            if r.concurrency == concurrency:
                return r
        raise KeyError(f"no row at concurrency {concurrency}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "batch": self.batch, "duration_s": self.duration_s,
                "rows": [r.to_dict() for r in self.rows], "machine": self.machine, "notes": list(self.notes)}

    def figure(self) -> Any:
        """Plotly: requests/s (bars) and p50/p90 latency (lines, right axis) per concurrency."""
        import plotly.graph_objects as go

        x = [str(r.concurrency) for r in self.rows]
        figure = go.Figure()
        figure.add_bar(x=x, y=[r.requests_per_s for r in self.rows], name="requests/s")
        for key in ("p50_ms", "p90_ms"):
            figure.add_scatter(x=x, y=[getattr(r, key) for r in self.rows], name=key.replace("_ms", " latency"),
                               mode="lines+markers", yaxis="y2")
        figure.update_layout(title=f"{self.name}: serving throughput by concurrency (batch {self.batch})",
                             xaxis_title="concurrent threads (one session each)", yaxis_title="requests/s",
                             yaxis2={"title": "latency (ms)", "overlaying": "y", "side": "right"})
        return figure

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{r.concurrency}</td><td>{r.requests}</td><td>{r.requests_per_s:.1f}</td>"
            f"<td>{r.samples_per_s:.1f}</td><td>{r.p50_ms:.2f}</td><td>{r.p90_ms:.2f}</td><td>{r.p99_ms:.2f}</td></tr>"
            for r in self.rows)
        return (f"<b>Concurrency</b>: {html.escape(self.name)}, batch {self.batch}, {self.duration_s:g} s per "
                f"setting ({self.machine.get('cpu_count')} cores)<table><tr><th>threads</th><th>requests</th>"
                f"<th>requests/s</th><th>samples/s</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th></tr>{rows}"
                "</table>")


def benchmark_concurrency(
    runner_factory: Callable[[], Runner],
    feeds: Mapping[str, np.ndarray] | Sequence[Mapping[str, np.ndarray]],
    *,
    threads_list: Sequence[int] = (1, 2, 4),
    duration_s: float = 5.0,
    warmup: int = 2,
) -> ConcurrencyResult:
    """Estimate serving throughput: for each N in `threads_list`, N threads each own a session and send requests
    back to back for `duration_s` seconds.

    This is what N model instances (Triton's `instance_count`) or N worker threads of a server achieve without
    batching requests together. Each session is created by `runner_factory` (so it comes from the backends) and
    activated before the clock starts; every runner is deactivated before the next N. Give each session fewer
    intra-op threads than the machine has cores (for example `cores // N`, with spinning off), or N sessions
    fight over the same cores and the numbers show that fight rather than the model. Every session holds its own
    copy of the weights.

    Args:
        runner_factory: Returns a new, inactive runner each call (e.g. `lambda: OnnxRuntimeRunner(path,
            intra_op_threads=1, allow_spinning=False)`).
        feeds: One feed dict, or several that each thread cycles through (a request is one feed dict; its first
            input's first dimension is the request's batch size).
        threads_list: The concurrencies to measure.
        duration_s: Seconds each concurrency sends requests for.
        warmup: Untimed requests per session before its clock starts.

    Returns:
        Requests/s, samples/s and latency percentiles per concurrency.
    """
    if isinstance(feeds, Mapping):
        feed_list = [dict(feeds)]
    else:
        feed_list = [dict(f) for f in feeds]
    if not feed_list or not feed_list[0]:
        raise DataError("benchmark_concurrency() needs at least one non-empty feed dict.",
                        fix="pass feeds_for(batch, seq) of the benchmark, or tokenize_batches(...)[0]")
    concurrencies = tuple(threads_list)
    if not concurrencies or any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in concurrencies):
        raise ConfigError(f"threads_list must hold whole numbers >= 1, got {threads_list!r}.")
    if not duration_s > 0:
        raise ConfigError(f"duration_s must be > 0 seconds, got {duration_s!r}.")
    if warmup < 0:
        raise ConfigError(f"warmup must be >= 0, got {warmup}.")
    first = next(iter(feed_list[0].values()))
    batch = int(np.shape(first)[0]) if np.ndim(first) else 1
    rows = []
    name = "model"
    for concurrency in concurrencies:
        runners: list[Runner] = []
        try:
            for _ in range(concurrency):
                runner = runner_factory()
                runner.activate()
                runners.append(runner)
            name = runners[0].name
            for index, runner in enumerate(runners):
                for i in range(warmup):
                    runner.infer(feed_list[(index + i) % len(feed_list)])
            latencies, seconds = _run_threads(runners, feed_list, duration_s)
        finally:
            for runner in runners:
                runner.deactivate()
        ms = np.asarray(latencies) if latencies else np.asarray([float("nan")])
        requests = len(latencies)
        rows.append(ConcurrencyRow(
            concurrency=concurrency, requests=requests, seconds=round(seconds, 4),
            requests_per_s=requests / seconds, samples_per_s=requests * batch / seconds,
            p50_ms=float(np.percentile(ms, 50)), p90_ms=float(np.percentile(ms, 90)),
            p99_ms=float(np.percentile(ms, 99)), mean_ms=float(ms.mean()),
        ))
    note = (f"each thread owns its own session; {duration_s:g} s per concurrency after {warmup} warm-up requests "
            "per session; requests are not batched together")
    return ConcurrencyResult(name=name, batch=batch, duration_s=float(duration_s), rows=tuple(rows),
                             machine=machine_info(), notes=(note,))


def _run_threads(runners: Sequence[Runner], feed_list: Sequence[Mapping[str, np.ndarray]],
                 duration_s: float) -> tuple[list[float], float]:
    """Every runner in a thread of its own, requests back to back until the deadline; (latencies ms, seconds)."""
    per_thread: list[list[float]] = [[] for _ in runners]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(runners) + 1)
    clock = {"deadline": 0.0}

    def work(index: int) -> None:
        runner, out = runners[index], per_thread[index]
        try:
            barrier.wait()
            deadline = clock["deadline"]
            request = index
            while time.perf_counter() < deadline:
                feeds = feed_list[request % len(feed_list)]
                started = time.perf_counter()
                runner.infer(feeds)
                out.append((time.perf_counter() - started) * 1000.0)
                request += 1
        except BaseException as exc:  # noqa: BLE001 - re-raised in the calling thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,), name=f"benchmark-concurrency-{i}", daemon=True)
               for i in range(len(runners))]
    for thread in threads:
        thread.start()
    started = time.perf_counter()
    clock["deadline"] = started + duration_s  # written before the barrier releases the workers
    barrier.wait()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - started
    if errors:
        raise errors[0]
    return [value for values in per_thread for value in values], seconds


# --------------------------------------------------------------------------------------------------------------
# Choosing: accuracy joined with speed


@dataclass(frozen=True)
class ChoiceConfig(StageConfig):
    """What the chosen candidate must do best, and the limits it must stay within.

    Attributes:
        objective: "latency" (lowest p50 at the batch size: online serving) or "throughput" (most samples/s at
            the batch size: batched or offline serving).
        batch: Batch size the choice is made at; None: 1 for latency, the largest benchmarked for throughput.
        seq: Sequence length; None: the first one benchmarked.
        latency_ceiling_ms: Candidates whose p90 latency at (batch, seq) is above this are out; None: no ceiling.
    """

    objective: str = "latency"
    batch: int | None = None
    seq: int | None = None
    latency_ceiling_ms: float | None = None

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "online": {"objective": "latency", "batch": 1},
        "batch": {"objective": "throughput"},
    }

    def __post_init__(self) -> None:
        check_choice(self, "objective", OBJECTIVES)
        for name in ("batch", "seq"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"ChoiceConfig.{name} must be a whole number >= 1 or None, got {value!r}.")
        ceiling = self.latency_ceiling_ms
        if ceiling is not None and (not isinstance(ceiling, (int, float)) or isinstance(ceiling, bool)
                                    or not ceiling > 0 or math.isinf(ceiling)):
            raise ConfigError(f"ChoiceConfig.latency_ceiling_ms must be a positive number of ms or None, got "
                              f"{ceiling!r}.", fix="leave it empty (None) for no ceiling")

    def resolve(self, timings: BenchmarkResult) -> Shape:
        """The (batch, seq) this choice is made at, defaults filled in from what `timings` measured."""
        batch = self.batch
        if batch is None:
            batch = max(timings.config.batch_sizes) if self.objective == "throughput" else 1
        return batch, self.seq or timings.config.sequence_lengths[0]


@dataclass(frozen=True)
class Choice:
    """The candidate to ship and why.

    Attributes:
        name: The chosen candidate.
        reason: Why, in one paragraph: the objective, its value, the accuracy, the faster candidates rejected.
        batch, seq: The shape the choice was made at.
        objective: "latency" or "throughput".
        constraints: The limits every candidate was held to: "accuracy_budget" (the comparison's budget, or
            None), "latency_ceiling_ms" and "latency_ceiling_statistic" ("p90").
        p50_ms, throughput: The chosen candidate's p50 latency and samples/s at (batch, seq).
        rejected: Candidates better on the objective that were ruled out, each with why.
    """

    name: str
    reason: str
    batch: int
    seq: int
    objective: str = "latency"
    constraints: dict[str, Any] = field(default_factory=dict)
    p50_ms: float | None = None
    throughput: float | None = None
    rejected: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        values = dict(self.__dict__)
        values["rejected"] = list(self.rejected)
        return values

    def _repr_html_(self) -> str:
        return f"<b>Chosen:</b> {html.escape(self.name)} (objective: {self.objective}). {html.escape(self.reason)}"


class CandidatesTable(list):
    """The rows of :func:`candidates_table` (plain dicts): a list that also renders itself as an HTML table."""

    batch: int = 1
    seq: int = 0
    latency_ceiling_ms: float | None = None
    #: Engines that could not be candidates on this machine, with the reason (e.g. TensorRT without a GPU).
    unavailable: dict[str, str] = {}

    def _repr_html_(self) -> str:
        def number(value: Any, digits: int) -> str:
            return "-" if value is None else f"{value:.{digits}f}"

        def verdict(value: Any) -> str:
            return {True: "yes", False: "no", None: "-"}[value]

        body = "".join(
            f"<tr><td>{html.escape(r['name'])}</td><td>{number(r['p50_ms'], 2)}</td><td>{number(r['p90_ms'], 2)}</td>"
            f"<td>{number(r['throughput'], 1)}</td><td>{number(r['speedup'], 2)}</td>"
            f"<td>{number(r['cosine_mean'], 5)}</td><td>{number(r['cosine_min'], 5)}</td>"
            f"<td>{verdict(r['meets_budget'])}</td><td>{verdict(r['meets_ceiling'])}</td>"
            f"<td>{'yes' if r['pareto'] else ''}</td></tr>"
            for r in self)
        ceiling = (f"; latency ceiling {self.latency_ceiling_ms:g} ms p90" if self.latency_ceiling_ms is not None
                   else "")
        missing = "".join(f"<br><i>{html.escape(engine)}: not available ({html.escape(reason)})</i>"
                          for engine, reason in self.unavailable.items())
        return (f"<b>Candidates</b> at batch {self.batch}, seq {self.seq}{ceiling}<table><tr><th>candidate</th>"
                "<th>p50 ms</th><th>p90 ms</th><th>samples/s</th><th>vs pytorch</th><th>cos mean</th>"
                "<th>cos min</th><th>meets budget</th><th>under ceiling</th><th>Pareto</th></tr>"
                f"{body}</table>{missing}")


def _cosines(candidate: Any) -> tuple[float | None, float | None]:
    """(mean, min) cosine of a candidate: the sentence-embedding cosine, else its first output's cosine."""
    mean = getattr(candidate, "embedding_cosine_mean", None)
    low = getattr(candidate, "embedding_cosine_min", None)
    if mean is None:
        outputs = getattr(candidate, "outputs", None) or {}
        stats = next(iter(outputs.values()), None) if isinstance(outputs, Mapping) else None
        if stats:
            mean, low = stats.get("cosine_mean"), stats.get("cosine_min")
    return mean, low


def _pareto_flags(points: Sequence[tuple[float | None, float | None]]) -> list[bool]:
    """For (latency, accuracy) points: True where no other point is at least as fast and as accurate and
    strictly better on one of them. Points missing either value are never on the front."""
    flags = []
    for i, (latency, accuracy) in enumerate(points):
        if latency is None or accuracy is None or (isinstance(accuracy, float) and math.isnan(accuracy)):
            flags.append(False)
            continue
        dominated = any(
            j != i and other_latency is not None and other_accuracy is not None
            and other_latency <= latency and other_accuracy >= accuracy
            and (other_latency < latency or other_accuracy > accuracy)
            for j, (other_latency, other_accuracy) in enumerate(points)
        )
        flags.append(not dominated)
    return flags


def candidates_table(
    accuracy: Any,
    timings: BenchmarkResult,
    batch: int = 1,
    seq: int | None = None,
    *,
    latency_ceiling_ms: float | None = None,
    baseline: str = "pytorch",
) -> CandidatesTable:
    """Accuracy and speed of every compared candidate at (batch, seq), one dict per candidate.

    Keys: name, p50_ms, p90_ms, throughput (samples/s), speedup (baseline p50 / p50; None without a baseline
    row), cosine_mean, cosine_min (the sentence-embedding cosine, or the first output's cosine when the
    comparison computed no embedding metric), meets_budget (the accuracy budget), failures, meets_ceiling
    (p90 <= latency_ceiling_ms; True without a ceiling, None when not timed), pareto (no other candidate is at
    least as fast at p50 and at least as accurate by mean cosine, and better on one of them).

    Args:
        accuracy: A ComparisonReport, or anything with `.candidates` whose items have `name`, `failures`,
            `embedding_cosine_mean`/`_min` and are truthy when they meet the budget.
        timings: The benchmark of the same candidates (its other rows, such as PyTorch's, are not candidates).
        batch, seq: The shape; seq None: the first benchmarked.
        latency_ceiling_ms: p90 limit for `meets_ceiling`.
        baseline: The row `speedup` is relative to.
    """
    seq = seq or timings.config.sequence_lengths[0]
    base = timings.p50(baseline, batch, seq)
    table = CandidatesTable()
    table.batch, table.seq, table.latency_ceiling_ms = batch, seq, latency_ceiling_ms
    for candidate in accuracy.candidates:
        try:
            row: BenchmarkRow | None = timings.row(candidate.name, batch, seq)
        except KeyError:
            row = None
        mean, low = _cosines(candidate)
        p90 = row.p90_ms if row else None
        table.append({
            "name": candidate.name,
            "p50_ms": row.p50_ms if row else None,
            "p90_ms": p90,
            "throughput": row.throughput if row else None,
            "speedup": base / row.p50_ms if row and base else None,
            "cosine_mean": mean,
            "cosine_min": low,
            "meets_budget": bool(candidate),
            "failures": list(getattr(candidate, "failures", ())),
            "meets_ceiling": None if p90 is None else (latency_ceiling_ms is None or p90 <= latency_ceiling_ms),
            "pareto": False,
        })
    for row_dict, flag in zip(table, _pareto_flags([(r["p50_ms"], r["cosine_mean"]) for r in table])):
        row_dict["pareto"] = flag
    table.unavailable = unavailable_engines()
    return table


def unavailable_engines() -> dict[str, str]:
    """Engines the workbench supports that cannot run on this machine, each with the reason."""
    from workbench.stages.tensorrt import tensorrt_status

    available, reason = tensorrt_status()
    return {} if available else {"TensorRT": reason.removeprefix("TensorRT: not available — ")}


def pareto_figure(
    accuracy: Any,
    timings: BenchmarkResult,
    batch: int = 1,
    seq: int | None = None,
    *,
    latency_ceiling_ms: float | None = None,
) -> Any:
    """Plotly scatter: p50 latency vs mean cosine of every candidate, the Pareto front as a line, the accuracy
    budget (when the report has one) and the latency ceiling (when given) as dashed lines."""
    import plotly.graph_objects as go

    table = candidates_table(accuracy, timings, batch, seq, latency_ceiling_ms=latency_ceiling_ms)
    plotted = [r for r in table if r["p50_ms"] is not None and r["cosine_mean"] is not None]
    figure = go.Figure()
    for meets, colour, label in ((True, "seagreen", "meets budget"), (False, "indianred", "misses budget")):
        rows = [r for r in plotted if r["meets_budget"] == meets]
        figure.add_scatter(
            x=[r["p50_ms"] for r in rows], y=[r["cosine_mean"] for r in rows], mode="markers+text",
            text=[r["name"] for r in rows], textposition="top center", name=label,
            marker={"color": colour, "size": 11, "symbol": ["star" if r["pareto"] else "circle" for r in rows]},
            customdata=[[r["p90_ms"], r["cosine_min"] if r["cosine_min"] is not None else float("nan")] for r in rows],
            hovertemplate="%{text}: p50 %{x:.2f} ms (p90 %{customdata[0]:.2f}), cosine mean %{y:.5f}, "
                          "min %{customdata[1]:.5f}<extra></extra>",
        )
    front = sorted((r for r in plotted if r["pareto"]), key=lambda r: r["p50_ms"])
    figure.add_scatter(x=[r["p50_ms"] for r in front], y=[r["cosine_mean"] for r in front], mode="lines",
                       line={"dash": "dot", "color": "gray"}, name="Pareto front", hoverinfo="skip")
    budget = getattr(getattr(accuracy, "budget", None), "embedding_cosine_mean", None)
    if budget is not None:
        figure.add_hline(y=budget, line_dash="dash", line_color="gray", annotation_text=f"budget: mean >= {budget}")
    if latency_ceiling_ms is not None:
        figure.add_vline(x=latency_ceiling_ms, line_dash="dash", line_color="indianred",
                         annotation_text=f"ceiling {latency_ceiling_ms:g} ms (p90)")
    figure.update_layout(title=f"Latency vs accuracy at batch {table.batch}, seq {table.seq}",
                         xaxis_title="p50 latency (ms)", yaxis_title="mean cosine vs reference")
    return figure


def choose_candidate(
    accuracy: Any,
    timings: BenchmarkResult,
    *,
    batch: int | None = None,
    seq: int | None = None,
    objective: str = "latency",
    latency_ceiling_ms: float | None = None,
) -> Choice:
    """Pick the best candidate on `objective` at (batch, seq) among those that meet the accuracy budget and stay
    under the latency ceiling.

    Args:
        accuracy: A ComparisonReport (its candidates are truthy when they meet the budget).
        timings: The benchmark of the same candidates.
        batch: Batch size the choice optimises for; None: 1 (online latency) for objective "latency", the
            largest benchmarked batch size for "throughput".
        seq: Sequence length; default the first one benchmarked.
        objective: "latency" (lowest p50) or "throughput" (most samples/s).
        latency_ceiling_ms: Rule out candidates whose p90 at (batch, seq) is above it; None: no ceiling.

    Raises:
        ConfigError: A bad objective, batch, seq or ceiling.
        WorkbenchError: Nothing was benchmarked at (batch, seq), no candidate meets the accuracy budget (the
            message names every candidate's failures), or none of those that do stays under the ceiling.
    """
    config = ChoiceConfig(objective=objective, batch=batch, seq=seq, latency_ceiling_ms=latency_ceiling_ms)
    batch, seq = config.resolve(timings)
    table = candidates_table(accuracy, timings, batch, seq, latency_ceiling_ms=latency_ceiling_ms)
    measured = [r for r in table if r["p50_ms"] is not None]
    if not measured:
        raise WorkbenchError(f"No candidate was benchmarked at batch {batch}, seq {seq}.",
                             fix="benchmark the candidates at the shape you choose for")
    accurate = [r for r in measured if r["meets_budget"]]
    if not accurate:
        untimed = [r["name"] for r in table if r["p50_ms"] is None and r["meets_budget"]]
        raise WorkbenchError(
            "No candidate meets the accuracy budget: "
            + "; ".join(f"{r['name']}: {', '.join(r['failures'])}" for r in table if not r["meets_budget"])
            + (f". Meeting it but not benchmarked at batch {batch}, seq {seq}: {', '.join(untimed)}" if untimed
               else ""),
            fix="relax the budget, or keep the failing nodes in FP32 (the accuracy stage's fixes)"
            + (", or benchmark the candidates that meet it at this shape" if untimed else ""),
        )
    passing = [r for r in accurate if r["meets_ceiling"]]
    if not passing:
        raise WorkbenchError(
            f"No candidate that meets the accuracy budget stays under the latency ceiling of {latency_ceiling_ms:g} "
            f"ms (p90) at batch {batch}, seq {seq}: "
            + "; ".join(f"{r['name']}: p90 {r['p90_ms']:.2f} ms" for r in accurate),
            fix="raise latency_ceiling_ms, choose for a smaller batch size, or make a faster candidate meet the "
                "budget (INT8 with the failing nodes kept in FP32)",
        )

    def score(row: dict[str, Any]) -> float:  # lower is better
        return row["p50_ms"] if config.objective == "latency" else -row["throughput"]

    best = min(passing, key=score)
    if config.objective == "latency":
        reason = (f"fastest candidate that meets the accuracy budget at batch {batch}, seq {seq}: "
                  f"{best['p50_ms']:.2f} ms p50")
    else:
        reason = (f"highest-throughput candidate that meets the accuracy budget at batch {batch}, seq {seq}: "
                  f"{best['throughput']:.1f} samples/s ({best['p50_ms']:.2f} ms p50)")
    if latency_ceiling_ms is not None:
        reason += f", p90 {best['p90_ms']:.2f} ms under the ceiling of {latency_ceiling_ms:g} ms"
    if best["cosine_mean"] is not None:
        kind = "embedding cosine" if _cosines_are_embedding(accuracy, best["name"]) else "output cosine"
        reason += f", {kind} mean {best['cosine_mean']:.4f} / min {best['cosine_min']:.4f}"

    def value(row: dict[str, Any]) -> str:
        return (f"{row['p50_ms']:.1f} ms" if config.objective == "latency"
                else f"{row['throughput']:.1f} samples/s")

    rejected = []
    for r in measured:
        if r is best or score(r) >= score(best):
            continue
        if not r["meets_budget"]:
            rejected.append(f"{r['name']} ({value(r)}) misses the budget: {', '.join(r['failures'])}")
        elif not r["meets_ceiling"]:
            rejected.append(f"{r['name']} ({value(r)}) exceeds the latency ceiling: p90 {r['p90_ms']:.2f} ms > "
                            f"{latency_ceiling_ms:g} ms")
    if rejected:
        reason += (". Faster but rejected: " if config.objective == "latency"
                   else ". Higher throughput but rejected: ") + "; ".join(rejected)
    budget = getattr(accuracy, "budget", None)
    constraints = {
        "accuracy_budget": budget.to_dict() if hasattr(budget, "to_dict") else None,
        "latency_ceiling_ms": latency_ceiling_ms,
        "latency_ceiling_statistic": CEILING_STATISTIC.removesuffix("_ms"),
    }
    return Choice(name=best["name"], reason=reason, batch=batch, seq=seq, objective=config.objective,
                  constraints=constraints, p50_ms=best["p50_ms"], throughput=best["throughput"],
                  rejected=tuple(rejected))


def _cosines_are_embedding(accuracy: Any, name: str) -> bool:
    for candidate in accuracy.candidates:
        if candidate.name == name:
            return getattr(candidate, "embedding_cosine_mean", None) is not None
    return False
