"""The benchmark says when its numbers cannot be trusted (busy_warnings), reports progress and stops cleanly."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from tests.stages.test_benchmark import FEEDS, FakeRunner
from workbench.machine import cpu_times, run_queue_wait_ns
from workbench.progress import Stopped
from workbench.stages.benchmark.latency import (
    OTHERS_LIMIT,
    WAIT_LIMIT,
    BenchmarkConfig,
    BenchmarkRow,
    CpuContention,
    benchmark,
    busy_warnings,
)


def row(name: str, batch: int, p50: float, p90: float | None = None, iterations: int = 30) -> BenchmarkRow:
    p90 = p50 * 1.1 if p90 is None else p90
    return BenchmarkRow(name, batch, 128, p50, p90, p90 * 1.1, p50, batch * 1000 / p50, iterations)


QUIET = [row("pytorch", 1, 20.0), row("pytorch", 8, 90.0), row("int8", 1, 8.0), row("int8", 8, 40.0)]


def test_quiet_timings_raise_no_warning():
    assert busy_warnings(QUIET, cores=2, load_average=(0.5, 1.2)) == ()
    assert busy_warnings(QUIET, cores=2) == ()


def test_a_wide_spread_is_flagged_with_the_worst_rows():
    rows = [*QUIET[:3], row("int8", 8, 40.0, p90=130.0)]
    warnings = busy_warnings(rows, cores=2)
    assert len(warnings) == 1 and "spread" in warnings[0] and "int8 at batch 8, seq 128 (3.2x)" in warnings[0]
    # too few runs for a p90 to mean anything: not judged
    assert busy_warnings([row("int8", 8, 40.0, p90=130.0, iterations=3)], cores=2) == ()


def test_batch_1_slower_in_absolute_time_than_batch_8_is_flagged_slower_per_sample_is_not():
    # the run: PyTorch 264 ms at batch 1, 10 ms at batch 8
    rows = [row("pytorch", 1, 264.0), row("pytorch", 8, 10.0), *QUIET[2:]]
    warnings = busy_warnings(rows, cores=2)
    assert len(warnings) == 1
    assert "pytorch at seq 128: batch 1 took 264.00 ms, batch 8 10.00 ms" in warnings[0]
    # 20 ms per sample at batch 1 vs 11 ms per sample at batch 8: expected, no warning (QUIET has it)
    assert QUIET[0].p50_ms / 1 > QUIET[1].p50_ms / 8


def test_a_high_load_average_is_flagged():
    warnings = busy_warnings(QUIET, cores=2, load_average=(1.0, 9.5))
    assert warnings == (
        "The load average was 9.5 (1 minute) on 2 cores while timing: other processes competed for the CPU.",
    )


def contended(batch: int, wait_ms: float, others_ms: float | None, wall_ms: float = 1000.0) -> CpuContention:
    return CpuContention(batch, 128, wall_ms=wall_ms, wait_ms=wait_ms, others_cpu_ms=others_ms)


def test_waiting_for_a_core_while_other_processes_used_cpu_is_flagged_with_the_worst_shape():
    contention = [contended(1, 40.0, 700.0), contended(8, 600.0, 900.0)]
    warnings = busy_warnings(QUIET, cores=2, contention=contention)
    assert warnings == (
        "Other processes kept 0.8 of the 2 cores busy while timing, and this benchmark's threads waited for a free "
        "core 32% of the timed time (most at batch 8, seq 128: 60%): every run was slowed by the competition, "
        "evenly or not.",
    )


def test_waiting_without_other_processes_or_other_processes_without_waiting_is_not_a_busy_machine():
    # PyTorch's 2-thread pool in the same process makes the other candidates' threads wait on a quiet machine
    assert busy_warnings(QUIET, cores=2, contention=[contended(1, 210.0, 10.0)]) == ()
    # other processes on cores this benchmark does not need (a big machine) hold nobody up
    assert busy_warnings(QUIET, cores=16, contention=[contended(1, 5.0, 3000.0)]) == ()
    # at the limits is not over them; too short a window says nothing; unreadable CPU counters say nothing
    at_limits = contended(1, WAIT_LIMIT * 1000.0, OTHERS_LIMIT * 1000.0 + 1.0)
    assert busy_warnings(QUIET, cores=2, contention=[at_limits]) == ()
    assert busy_warnings(QUIET, cores=2, contention=[contended(1, 50.0, 80.0, wall_ms=100.0)]) == ()
    assert busy_warnings(QUIET, cores=2, contention=[contended(1, 600.0, None)]) == ()
    assert contended(1, 300.0, 600.0).to_dict() == {
        "batch": 1,
        "seq": 128,
        "wall_ms": 1000.0,
        "wait_ms": 300.0,
        "others_cpu_ms": 600.0,
        "steal_ms": None,
        "wait_fraction": 0.3,
        "others_cores": 0.6,
    }


@pytest.mark.skipif(
    run_queue_wait_ns() is None or cpu_times() is None,
    reason="the kernel keeps no /proc/self/task/*/schedstat or /proc/stat here (not Linux)",
)
def test_the_counters_see_other_processes_take_the_cores_this_thread_wants():
    """The counters the contention warning reads: spinning processes make this process wait, and show as others."""
    import subprocess
    import sys

    cores = os.cpu_count() or 1
    spin = "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end:\n    pass\n"
    quiet_before = run_queue_wait_ns()
    time.sleep(0.3)  # nothing of ours wants a core: no wait
    quiet_wait_s = (run_queue_wait_ns() - quiet_before) / 1e9
    hogs = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(2 * cores)]
    try:
        time.sleep(0.3)
        before, cpu, started = run_queue_wait_ns(), cpu_times(), time.perf_counter()
        while time.perf_counter() - started < 0.5:  # this thread wants a core all the time
            pass
        waited_s = (run_queue_wait_ns() - before) / 1e9
        after = cpu_times()
        wall_s = time.perf_counter() - started
    finally:
        for hog in hogs:
            hog.terminate()
        for hog in hogs:
            hog.wait(timeout=10)
    assert quiet_wait_s < 0.05, quiet_wait_s  # a sleeping thread is not waiting for a core
    # with two other spinners per core, the scheduler gives this thread about a third of a core: it waits the rest
    assert waited_s > 2 * WAIT_LIMIT * wall_s, (waited_s, wall_s)
    assert cpu is not None and after is not None
    others_cores = ((after.busy - cpu.busy) - (after.own - cpu.own)) / wall_s
    assert others_cores > 2 * OTHERS_LIMIT, others_cores


class Inverted(FakeRunner):
    """Slower at batch 1 than at batch 2 in absolute time, as a batch-1 run held up by other processes is."""

    batch = 1

    def infer(self, feeds):
        self.log.append(self.batch)
        time.sleep(0.008 if self.batch == 1 else 0.001)
        return {"y": np.zeros(1)}


def test_the_result_carries_the_warnings_and_the_load_average_and_shows_them():
    inverted = Inverted("inverted")

    def feeds_for(batch: int, seq: int):
        inverted.batch = batch
        return FEEDS

    result = benchmark(
        [inverted, FakeRunner("other", ms=1.0)],
        feeds_for,
        BenchmarkConfig(batch_sizes=(1, 2), sequence_lengths=(4,), warmup=0, iterations=6),
    )
    assert any("inverted at seq 4: batch 1 took" in w for w in result.warnings), result.warnings
    assert result.busy and result.load_average is not None and len(result.load_average) == 2
    assert result.to_dict()["warnings"] == list(result.warnings)
    assert "The machine looked busy" in result._repr_html_() and "load average" in result._repr_html_()
    # small bars stay readable: one panel per shape, each with its own y axis; latency vs batch on a log axis
    pytest.importorskip("plotly")
    facets = result.figure(baseline="other")
    assert [a.text for a in facets.layout.annotations] == ["batch 1, seq 4", "batch 2, seq 4"]
    assert facets.layout.yaxis2.matches is None and facets.layout.yaxis2.anchor == "x2"
    assert {t.xaxis for t in facets.data} == {"x", "x2"} and "machine looked busy" in facets.layout.title.text
    assert result.latency_figure().layout.yaxis.type == "log"


def test_progress_events_count_rounds_and_a_stop_ends_the_run_with_every_runner_deactivated():
    runners = [FakeRunner("a", ms=0.5), FakeRunner("b", ms=0.5)]
    config = BenchmarkConfig(batch_sizes=(1, 8), sequence_lengths=(4,), warmup=1, iterations=5)
    events = []
    benchmark(runners, lambda b, s: FEEDS, config, progress=events.append)
    assert {e.stage for e in events} == {"benchmark"} and events[-1].done == events[-1].total == 10
    assert [e.done for e in events] == sorted(e.done for e in events)  # never backwards
    assert any(e.message.startswith("loading a") for e in events)
    assert events[-1].message == "batch 8, seq 4: round 5 of 5, 2 candidates each"

    def stop_after_three(event):
        if event.done >= 3:
            raise Stopped()

    fresh = [FakeRunner("a", ms=0.5), FakeRunner("b", ms=0.5)]
    with pytest.raises(Stopped):
        benchmark(fresh, lambda b, s: FEEDS, config, progress=stop_after_three)
    assert not any(r.is_active for r in fresh) and all(r.activations == 1 for r in fresh)  # deactivated on the way
    assert len(fresh[0].log) == 1 + 3  # warm-up, then three rounds: it stopped in the first shape


#: A bounded busy loop for another process: for at most 120 s, spin 15 ms then sleep 35 ms (runs that start while it
#: spins are held up, the others are not: the spread a busy machine gives); the test stops it at the end.
BUSY_LOOP = """
import time
end = time.monotonic() + 120
while time.monotonic() < end:
    spin = time.monotonic() + 0.015
    while time.monotonic() < spin:
        pass
    time.sleep(0.035)
"""


@pytest.mark.slow
def test_a_benchmark_under_deliberate_cpu_contention_says_the_machine_was_busy(tiny_bert_onnx):
    """Busy processes (two per core) compete with the tiny BERT's timing; the result says the machine was busy."""
    import subprocess
    import sys

    from workbench.engines.onnxruntime import OnnxRuntimeRunner

    cores = os.cpu_count() or 1
    feeds = {
        "input_ids": np.ones((1, 16), np.int64),
        "attention_mask": np.ones((1, 16), np.int64),
        "token_type_ids": np.zeros((1, 16), np.int64),
    }

    def feeds_for(batch: int, seq: int):
        return {k: np.repeat(v[:, :seq], batch, axis=0) for k, v in feeds.items()}

    hogs = [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(2 * cores)]
    try:
        time.sleep(0.5)  # let them start spinning
        runners = [
            OnnxRuntimeRunner(tiny_bert_onnx, name=f"tiny{i}", intra_op_threads=cores, allow_spinning=False)
            for i in range(2)
        ]
        result = benchmark(
            runners, feeds_for, BenchmarkConfig(batch_sizes=(1, 8), sequence_lengths=(16,), warmup=2, iterations=300)
        )
        running = [hog.poll() is None for hog in hogs]
    finally:
        for hog in hogs:
            hog.terminate()
        for hog in hogs:
            hog.wait(timeout=10)
    assert all(running)  # the contention lasted the whole benchmark
    assert result.busy, result.rows
    if run_queue_wait_ns() is None or cpu_times() is None:  # not Linux: the timings and load average are all
        return
    # the contention warning sees it however it slows the runs: unevenly (this busy loop's duty cycle, which spread
    # and order may also see) or evenly (another 100% process beside it, e.g. the other xdist worker)
    assert [(c.batch, c.seq) for c in result.contention] == [(1, 16), (8, 16)]
    assert any(w.startswith("Other processes kept") for w in result.warnings), (result.warnings, result.contention)
    assert result.to_dict()["contention"] == [c.to_dict() for c in result.contention]
    assert "other processes used" in result._repr_html_()
