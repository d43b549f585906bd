"""Serving-throughput estimate: N threads, each with its own session, sharing the cores."""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from workbench.engines.base import Runner
from workbench.errors import ConfigError, DataError
from workbench.machine import machine_info

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
        return {
            "name": self.name,
            "batch": self.batch,
            "duration_s": self.duration_s,
            "rows": [r.to_dict() for r in self.rows],
            "machine": self.machine,
            "notes": list(self.notes),
        }

    def figure(self) -> Any:
        """Plotly: requests/s (bars) and p50/p90 latency (lines, right axis) per concurrency."""
        import plotly.graph_objects as go

        x = [str(r.concurrency) for r in self.rows]
        figure = go.Figure()
        figure.add_bar(x=x, y=[r.requests_per_s for r in self.rows], name="requests/s")
        for key in ("p50_ms", "p90_ms"):
            figure.add_scatter(
                x=x,
                y=[getattr(r, key) for r in self.rows],
                name=key.replace("_ms", " latency"),
                mode="lines+markers",
                yaxis="y2",
            )
        figure.update_layout(
            title=f"{self.name}: serving throughput by concurrency (batch {self.batch})",
            xaxis_title="concurrent threads (one session each)",
            yaxis_title="requests/s",
            yaxis2={"title": "latency (ms)", "overlaying": "y", "side": "right"},
        )
        return figure

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{r.concurrency}</td><td>{r.requests}</td><td>{r.requests_per_s:.1f}</td>"
            f"<td>{r.samples_per_s:.1f}</td><td>{r.p50_ms:.2f}</td><td>{r.p90_ms:.2f}</td><td>{r.p99_ms:.2f}</td></tr>"
            for r in self.rows
        )
        return (
            f"<b>Concurrency</b>: {html.escape(self.name)}, batch {self.batch}, {self.duration_s:g} s per "
            f"setting ({self.machine.get('cpu_count')} cores)<table><tr><th>threads</th><th>requests</th>"
            f"<th>requests/s</th><th>samples/s</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th></tr>{rows}"
            "</table>"
        )


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
    batching requests together. Each session is created by `runner_factory` (so it comes from the engines) and
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
        raise DataError(
            "benchmark_concurrency() needs at least one non-empty feed dict.",
            fix="pass feeds_for(batch, seq) of the benchmark, or tokenize_batches(...)[0]",
        )
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
        rows.append(
            ConcurrencyRow(
                concurrency=concurrency,
                requests=requests,
                seconds=round(seconds, 4),
                requests_per_s=requests / seconds,
                samples_per_s=requests * batch / seconds,
                p50_ms=float(np.percentile(ms, 50)),
                p90_ms=float(np.percentile(ms, 90)),
                p99_ms=float(np.percentile(ms, 99)),
                mean_ms=float(ms.mean()),
            )
        )
    note = (
        f"each thread owns its own session; {duration_s:g} s per concurrency after {warmup} warm-up requests "
        "per session; requests are not batched together"
    )
    return ConcurrencyResult(
        name=name, batch=batch, duration_s=float(duration_s), rows=tuple(rows), machine=machine_info(), notes=(note,)
    )


def _run_threads(
    runners: Sequence[Runner], feed_list: Sequence[Mapping[str, np.ndarray]], duration_s: float
) -> tuple[list[float], float]:
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

    threads = [
        threading.Thread(target=work, args=(i,), name=f"benchmark-concurrency-{i}", daemon=True)
        for i in range(len(runners))
    ]
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
