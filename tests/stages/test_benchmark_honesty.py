"""The benchmark says when its numbers cannot be trusted (busy_warnings), reports progress and stops cleanly."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from tests.stages.test_benchmark import FEEDS, FakeRunner
from workbench.progress import Stopped
from workbench.stages.benchmark.latency import BenchmarkConfig, BenchmarkRow, benchmark, busy_warnings


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
            runners, feeds_for, BenchmarkConfig(batch_sizes=(1, 8), sequence_lengths=(16,), warmup=2, iterations=60)
        )
        running = [hog.poll() is None for hog in hogs]
    finally:
        for hog in hogs:
            hog.terminate()
        for hog in hogs:
            hog.wait(timeout=10)
    assert all(running)  # the contention lasted the whole benchmark
    assert result.busy, result.rows
    # a measurement-based warning (spread or order), not only the load average, unless the machine was already
    # loaded before timing began (a CI worker beside other tests): then every run is slowed alike, p90 stays near
    # p50, and the load average is the evidence (spread and order are covered with fixed timings above)
    already_busy = result.load_average is not None and result.load_average[0] > 1.5 * cores
    if not already_busy:
        assert any("spread" in w or "held up" in w for w in result.warnings), (result.warnings, result.rows)
    else:
        assert any("load average" in w for w in result.warnings), result.warnings
