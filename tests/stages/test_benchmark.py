"""The benchmark stage: interleaved timing, time budgets, memory, concurrency, the candidates table and the choice.

Most tests use fake runners (sleeps, call logs) and hand-made accuracy reports, so they are fast and exact; the
last ones time the tiny BERT ONNX with the real backends.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from workbench.errors import ConfigError, DataError, WorkbenchError
from workbench.stages.accuracy.compare import AccuracyBudget
from workbench.stages.benchmark.concurrency import ConcurrencyResult, benchmark_concurrency
from workbench.stages.benchmark.latency import BenchmarkConfig, BenchmarkResult, BenchmarkRow, benchmark
from workbench.stages.choose import (
    CandidatesTable,
    Choice,
    ChoiceConfig,
    candidates_table,
    choose_candidate,
    pareto_figure,
)

FEEDS = {"x": np.zeros((1, 4), dtype=np.int64)}
HAS_PROC = os.path.exists("/proc/self/status")


class FakeRunner:
    """A runner that sleeps `ms` per call (sleep releases the GIL, as onnxruntime's run does) and logs calls."""

    def __init__(
        self,
        name: str,
        ms: float = 0.0,
        *,
        log: list | None = None,
        jitter_ms: float = 0.0,
        allocate_mb: int = 0,
        fail: bool = False,
    ) -> None:
        self.name = name
        self.ms = ms
        self.jitter_ms = jitter_ms
        self.log = log if log is not None else []
        self.allocate_mb = allocate_mb
        self.fail = fail
        self.is_active = False
        self.activations = 0
        self.threads: set[int] = set()
        self.buffer: Any = None
        self.random = np.random.default_rng(len(name))

    def activate(self) -> None:
        self.is_active = True
        self.activations += 1
        if self.allocate_mb:
            self.buffer = np.ones(self.allocate_mb * 2**20 // 8)  # touched pages: resident

    def infer(self, feeds):
        assert self.is_active, f"{self.name} used while inactive"
        self.log.append(self.name)
        self.threads.add(threading.get_ident())
        if self.fail:
            raise RuntimeError(f"{self.name} broke")
        delay = self.ms + (self.random.uniform(0, self.jitter_ms) if self.jitter_ms else 0.0)
        if delay:
            time.sleep(delay / 1000.0)
        return {"y": np.asarray(feeds["x"])}

    def deactivate(self) -> None:
        self.is_active = False
        self.buffer = None

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc):
        self.deactivate()


def feeds_for(batch: int, seq: int) -> dict[str, np.ndarray]:
    return {"x": np.zeros((batch, seq), dtype=np.int64)}


# -- benchmark(): rows, percentiles, interleaving -------------------------------------------------------------


def test_a_row_for_every_candidate_batch_and_sequence():
    runners = [FakeRunner(n) for n in ("a", "b", "c")]
    config = BenchmarkConfig(batch_sizes=(1, 2), sequence_lengths=(4, 8), warmup=1, iterations=4)
    result = benchmark(runners, feeds_for, config)
    assert {(r.name, r.batch, r.seq) for r in result.rows} == {
        (n, b, s) for n in ("a", "b", "c") for b in (1, 2) for s in (4, 8)
    }
    assert len(result.rows) == 12 and result.names == ["a", "b", "c"]
    assert all(r.iterations == 4 for r in result.rows)
    assert all(not r.is_active for r in runners)  # deactivated at the end
    row = result.row("b", 2, 8)
    assert row.throughput == pytest.approx(2 * 1000.0 / row.mean_ms)
    assert result.p50("b", 2, 8) == row.p50_ms and result.p50("b", 3, 8) is None
    assert {"rows", "config", "machine", "notes", "peak_memory_mb", "process_peak_rss_mb"} <= set(result.to_dict())


def test_percentiles_are_ordered():
    runners = [FakeRunner("steady", 1.0), FakeRunner("noisy", 1.0, jitter_ms=4.0)]
    result = benchmark(
        runners, feeds_for, BenchmarkConfig(batch_sizes=(1,), sequence_lengths=(8,), warmup=0, iterations=25)
    )
    for row in result.rows:
        assert 0 < row.p50_ms <= row.p90_ms <= row.p99_ms
        assert row.mean_ms > 0 and row.throughput > 0
    assert result.row("noisy", 1, 8).p99_ms > result.row("steady", 1, 8).p50_ms


def test_runners_take_turns_run_by_run():
    log: list[str] = []
    names = ("a", "b", "c")
    runners = [FakeRunner(n, log=log) for n in names]
    benchmark(runners, feeds_for, BenchmarkConfig(batch_sizes=(1,), sequence_lengths=(4,), warmup=0, iterations=6))
    assert len(log) == 18
    rounds = [log[i : i + 3] for i in range(0, len(log), 3)]
    assert all(sorted(r) == sorted(names) for r in rounds)  # every runner once per round: interleaved
    assert [r[0] for r in rounds] == ["a", "b", "c", "a", "b", "c"]  # who goes first rotates
    assert log != sorted(log)  # not all of a's runs before b's


def test_warmup_runs_are_not_timed():
    log: list[str] = []
    benchmark(
        [FakeRunner("a", log=log)],
        feeds_for,
        BenchmarkConfig(batch_sizes=(1,), sequence_lengths=(4,), warmup=3, iterations=5),
    )
    assert len(log) == 8


def test_runner_names_must_be_unique():
    with pytest.raises(ConfigError, match="unique"):
        benchmark([FakeRunner("a"), FakeRunner("a")], feeds_for, BenchmarkConfig())


def test_runners_are_deactivated_when_a_run_fails():
    runners = [FakeRunner("ok"), FakeRunner("broken", fail=True)]
    with pytest.raises(RuntimeError, match="broken"):
        benchmark(runners, feeds_for, BenchmarkConfig(batch_sizes=(1,), sequence_lengths=(4,), warmup=0))
    assert not any(r.is_active for r in runners)


# -- time budget ----------------------------------------------------------------------------------------------


def test_time_budget_stops_a_shape_early():
    config = BenchmarkConfig(
        batch_sizes=(1, 2), sequence_lengths=(4,), warmup=0, iterations=10_000, time_budget_s=0.1, min_iterations=3
    )
    result = benchmark([FakeRunner("a", 5.0), FakeRunner("b", 5.0)], feeds_for, config)
    for row in result.rows:  # far fewer than the 10,000 asked for: the budget stopped each shape (no timed assert)
        assert 3 <= row.iterations < 100
    # both candidates of a shape always get the same number of runs
    assert result.row("a", 1, 4).iterations == result.row("b", 1, 4).iterations
    assert any("time budget" in note and "stopped after" in note for note in result.notes)


def test_time_budget_never_cuts_below_min_iterations():
    config = BenchmarkConfig(
        batch_sizes=(1,), sequence_lengths=(4,), warmup=0, iterations=50, time_budget_s=1e-6, min_iterations=4
    )
    result = benchmark([FakeRunner("a", 1.0)], feeds_for, config)
    assert result.row("a", 1, 4).iterations == 4
    # a floor above iterations is capped at iterations
    capped = BenchmarkConfig(
        batch_sizes=(1,), sequence_lengths=(4,), warmup=0, iterations=2, time_budget_s=1e-6, min_iterations=3
    )
    assert benchmark([FakeRunner("a")], feeds_for, capped).row("a", 1, 4).iterations == 2


def test_no_time_budget_runs_every_iteration():
    result = benchmark(
        [FakeRunner("a")], feeds_for, BenchmarkConfig(batch_sizes=(1,), sequence_lengths=(4,), warmup=0, iterations=7)
    )
    assert result.row("a", 1, 4).iterations == 7
    assert not any("time budget" in note for note in result.notes)


@pytest.mark.parametrize(
    "bad",
    [
        {"time_budget_s": 0},
        {"time_budget_s": -1.0},
        {"min_iterations": 0},
        {"iterations": 0},
        {"warmup": -1},
        {"threads": 0},
    ],
)
def test_bad_benchmark_configs_are_rejected(bad):
    with pytest.raises(ConfigError):
        BenchmarkConfig(**bad)


def test_new_config_fields_round_trip_through_json():
    config = BenchmarkConfig(time_budget_s=2.5, min_iterations=5)
    assert BenchmarkConfig.from_json(config.to_json()) == config
    assert BenchmarkConfig.from_json(BenchmarkConfig().to_json()).time_budget_s is None


# -- memory ---------------------------------------------------------------------------------------------------


@pytest.mark.skipif(not HAS_PROC, reason="reads /proc/self/status (Linux)")
def test_peak_memory_is_the_rss_growth_of_each_activation():
    runners = [FakeRunner("small"), FakeRunner("big", allocate_mb=96)]
    result = benchmark(
        runners, feeds_for, BenchmarkConfig(batch_sizes=(1,), sequence_lengths=(4,), warmup=0, iterations=2)
    )
    assert result.peak_memory_mb["big"] >= 80
    assert result.peak_memory_mb["small"] < 16
    assert result.process_peak_rss_mb >= result.peak_memory_mb["big"]
    assert "RSS growth" in result._repr_html_()


# -- concurrency ----------------------------------------------------------------------------------------------


def test_concurrency_gives_each_thread_its_own_runner_and_more_requests_with_more_threads():
    made: list[FakeRunner] = []

    def factory() -> FakeRunner:
        runner = FakeRunner("sleepy", 5.0)
        made.append(runner)
        return runner

    feeds = {"x": np.zeros((4, 8), dtype=np.int64)}
    result = benchmark_concurrency(factory, feeds, threads_list=(1, 2, 4), duration_s=0.3, warmup=1)
    assert isinstance(result, ConcurrencyResult) and result.name == "sleepy" and result.batch == 4
    assert [r.concurrency for r in result.rows] == [1, 2, 4]
    requests = [r.requests for r in result.rows]
    assert requests == sorted(requests) and requests[0] > 0  # increasing or equal
    assert result.row(4).requests_per_s > 1.5 * result.row(1).requests_per_s
    for row in result.rows:
        assert 0 < row.p50_ms <= row.p90_ms <= row.p99_ms
        assert row.samples_per_s == pytest.approx(4 * row.requests_per_s)
        assert row.seconds >= 0.3
    # one session per thread: 1 + 2 + 4 runners made, each used from one thread only, all deactivated
    assert len(made) == 7 and all(r.activations == 1 and not r.is_active for r in made)
    timed = made[3:]  # the four of concurrency 4
    assert all(len(r.threads - {threading.get_ident()}) == 1 for r in timed)
    assert len(set().union(*(r.threads for r in timed)) - {threading.get_ident()}) == 4
    assert result.figure().data and "requests/s" in result._repr_html_()


def test_concurrency_cycles_through_several_feed_dicts():
    seen: list[int] = []

    class Recorder(FakeRunner):
        def infer(self, feeds):
            seen.append(int(feeds["x"][0, 0]))
            return super().infer(feeds)

    feeds = [{"x": np.full((1, 2), i, dtype=np.int64)} for i in range(3)]
    benchmark_concurrency(lambda: Recorder("r", 1.0), feeds, threads_list=(1,), duration_s=0.1, warmup=0)
    assert set(seen) == {0, 1, 2}


def test_concurrency_reports_a_failing_runner_and_deactivates_all():
    made: list[FakeRunner] = []

    def factory() -> FakeRunner:
        made.append(FakeRunner("broken", fail=True))
        return made[-1]

    with pytest.raises(RuntimeError, match="broken"):
        benchmark_concurrency(factory, FEEDS, threads_list=(2,), duration_s=0.1, warmup=0)
    assert made and not any(r.is_active for r in made)


@pytest.mark.parametrize("kwargs", [{"threads_list": (0,)}, {"threads_list": ()}, {"duration_s": 0}, {"warmup": -1}])
def test_concurrency_rejects_bad_settings(kwargs):
    with pytest.raises(ConfigError):
        benchmark_concurrency(lambda: FakeRunner("a"), FEEDS, **{"duration_s": 0.1, **kwargs})


def test_concurrency_needs_feeds():
    with pytest.raises(DataError):
        benchmark_concurrency(lambda: FakeRunner("a"), [], duration_s=0.1)


# -- hand-made accuracy and timings ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FakeCandidate:
    name: str
    cosine_mean: float | None
    cosine_min: float | None
    failures: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return not self.failures


@dataclass(frozen=True)
class FakeReport:
    candidates: tuple[FakeCandidate, ...]
    budget: Any = AccuracyBudget()


def ok(name: str, mean: float, low: float | None = None) -> FakeCandidate:
    return FakeCandidate(name, mean, low if low is not None else mean - 0.001)


def bad(name: str, mean: float) -> FakeCandidate:
    return FakeCandidate(name, mean, mean - 0.05, failures=(f"embedding cosine mean {mean} < 0.995",))


def timings_of(table: dict[str, dict[tuple[int, int], tuple[float, float, float]]]) -> BenchmarkResult:
    """name -> (batch, seq) -> (p50, p90, mean) in ms."""
    rows = []
    for name, shapes in table.items():
        for (batch, seq), (p50, p90, mean) in shapes.items():
            rows.append(
                BenchmarkRow(
                    name=name,
                    batch=batch,
                    seq=seq,
                    p50_ms=p50,
                    p90_ms=p90,
                    p99_ms=p90,
                    mean_ms=mean,
                    throughput=batch * 1000.0 / mean,
                    iterations=10,
                )
            )
    batches = tuple(sorted({r.batch for r in rows}))
    seqs = tuple(sorted({r.seq for r in rows}))
    return BenchmarkResult(
        rows=tuple(rows), config=BenchmarkConfig(batch_sizes=batches, sequence_lengths=seqs), machine={"cpu_count": 2}
    )


REPORT = FakeReport((ok("fp32", 1.0, 1.0), ok("fused", 0.99999), bad("int8", 0.98), ok("int8_fixed", 0.997)))
TIMINGS = timings_of(
    {
        "pytorch": {(1, 128): (30.0, 32.0, 30.0), (8, 128): (200.0, 210.0, 200.0)},
        "fp32": {(1, 128): (24.0, 26.0, 24.0), (8, 128): (170.0, 175.0, 170.0)},
        "fused": {(1, 128): (19.0, 40.0, 21.0), (8, 128): (150.0, 152.0, 150.0)},
        "int8": {(1, 128): (8.0, 9.0, 8.0), (8, 128): (60.0, 62.0, 60.0)},
        "int8_fixed": {(1, 128): (15.0, 16.0, 15.0), (8, 128): (100.0, 300.0, 110.0)},
    }
)


def test_choose_picks_the_fastest_candidate_that_meets_the_budget():
    choice = choose_candidate(REPORT, TIMINGS)
    assert isinstance(choice, Choice)
    assert choice.name == "int8_fixed" and (choice.batch, choice.seq) == (1, 128)
    assert choice.objective == "latency" and choice.p50_ms == 15.0
    assert "fastest candidate that meets the accuracy budget at batch 1, seq 128: 15.00 ms p50" in choice.reason
    assert "Faster but rejected: int8 (8.0 ms) misses the budget" in choice.reason
    assert choice.rejected and choice.rejected[0].startswith("int8 ")
    assert choice.constraints["accuracy_budget"] == AccuracyBudget().to_dict()
    assert choice.constraints["latency_ceiling_ms"] is None
    assert {"name", "reason", "batch", "seq", "objective", "constraints"} <= set(choice.to_dict())


def test_the_old_call_still_works():
    choice = choose_candidate(REPORT, TIMINGS, batch=8, seq=128)
    assert choice.name == "int8_fixed" and choice.batch == 8 and choice.objective == "latency"


def test_choose_respects_the_latency_ceiling_on_p90():
    # int8_fixed is fastest at p50 (100 ms) but its p90 is 300 ms; fused's p90 is 152 ms
    choice = choose_candidate(REPORT, TIMINGS, batch=8, latency_ceiling_ms=200)
    assert choice.name == "fused"
    assert choice.constraints["latency_ceiling_ms"] == 200
    assert choice.constraints["latency_ceiling_statistic"] == "p90"
    assert "under the ceiling of 200 ms" in choice.reason
    assert any("int8_fixed" in r and "exceeds the latency ceiling" in r for r in choice.rejected)
    with pytest.raises(WorkbenchError, match="latency ceiling of 5 ms") as caught:
        choose_candidate(REPORT, TIMINGS, latency_ceiling_ms=5)
    assert "fp32: p90 26.00 ms" in str(caught.value) and "Fix:" in str(caught.value)


def test_choose_by_throughput_defaults_to_the_largest_batch():
    timings = timings_of(
        {
            "a": {(1, 64): (5.0, 6.0, 5.0), (16, 64): (100.0, 110.0, 100.0)},  # 160 samples/s at batch 16
            "b": {(1, 64): (7.0, 8.0, 7.0), (16, 64): (60.0, 65.0, 60.0)},  # 267 samples/s at batch 16
        }
    )
    report = FakeReport((ok("a", 0.999), ok("b", 0.999)))
    assert choose_candidate(report, timings).name == "a"  # latency at batch 1
    by_throughput = choose_candidate(report, timings, objective="throughput")
    assert by_throughput.name == "b" and by_throughput.batch == 16 and by_throughput.objective == "throughput"
    assert by_throughput.throughput == pytest.approx(16 * 1000 / 60)
    assert "highest-throughput candidate" in by_throughput.reason
    assert choose_candidate(report, timings, objective="throughput", batch=1).name == "a"


def test_throughput_uses_the_mean_not_the_median():
    # same p50 at batch 8; b's mean is lower, so it does more samples per second
    timings = timings_of({"a": {(8, 32): (50.0, 90.0, 70.0)}, "b": {(8, 32): (50.0, 55.0, 52.0)}})
    report = FakeReport((ok("a", 0.999), ok("b", 0.999)))
    assert choose_candidate(report, timings, objective="throughput").name == "b"


def test_choose_names_every_failure_when_nothing_meets_the_budget():
    report = FakeReport((bad("int8", 0.98), bad("int8_tensor", 0.95)))
    with pytest.raises(WorkbenchError) as caught:
        choose_candidate(report, TIMINGS)
    text = str(caught.value)
    assert "No candidate meets the accuracy budget" in text
    assert "int8: embedding cosine mean 0.98 < 0.995" in text and "int8_tensor" in text and "Fix:" in text


def test_choose_says_when_the_candidates_that_meet_the_budget_were_not_timed():
    report = FakeReport((bad("int8", 0.98), ok("fp32_untimed", 1.0)))
    with pytest.raises(WorkbenchError) as caught:
        choose_candidate(report, TIMINGS)
    text = str(caught.value)
    assert "int8: embedding cosine mean 0.98" in text
    assert "Meeting it but not benchmarked at batch 1, seq 128: fp32_untimed" in text


def test_choose_needs_timings_at_the_shape():
    with pytest.raises(WorkbenchError, match="No candidate was benchmarked at batch 4, seq 128"):
        choose_candidate(REPORT, TIMINGS, batch=4)


@pytest.mark.parametrize(
    "kwargs", [{"objective": "cheapest"}, {"latency_ceiling_ms": 0}, {"batch": 0}, {"latency_ceiling_ms": -5.0}]
)
def test_choose_rejects_bad_settings(kwargs):
    with pytest.raises(ConfigError):
        choose_candidate(REPORT, TIMINGS, **kwargs)


def test_choice_config_resolves_defaults():
    assert ChoiceConfig().resolve(TIMINGS) == (1, 128)
    assert ChoiceConfig(objective="throughput").resolve(TIMINGS) == (8, 128)
    assert ChoiceConfig(batch=8, seq=128).resolve(TIMINGS) == (8, 128)
    assert ChoiceConfig.from_json(ChoiceConfig(latency_ceiling_ms=12.5).to_json()).latency_ceiling_ms == 12.5


# -- candidates table and Pareto front ------------------------------------------------------------------------


def test_pareto_flags_on_a_hand_made_example():
    report = FakeReport(
        (
            ok("exact", 1.0),  # slowest, most accurate: on the front
            ok("fast", 0.99),  # on the front
            ok("worse", 0.98),  # slower and less accurate than "fast": dominated
            ok("fastest", 0.90),  # fastest of all: on the front
            ok("tie_slow", 0.999),  # as slow as "exact" and less accurate: dominated
            ok("untimed", 1.0),  # not benchmarked: never on the front
        )
    )
    timings = timings_of(
        {
            "exact": {(1, 16): (20.0, 21.0, 20.0)},
            "fast": {(1, 16): (10.0, 11.0, 10.0)},
            "worse": {(1, 16): (15.0, 16.0, 15.0)},
            "fastest": {(1, 16): (5.0, 6.0, 5.0)},
            "tie_slow": {(1, 16): (20.0, 22.0, 20.0)},
        }
    )
    table = candidates_table(report, timings, 1, 16)
    assert isinstance(table, CandidatesTable) and isinstance(table, list)
    flags = {row["name"]: row["pareto"] for row in table}
    assert flags == {"exact": True, "fast": True, "worse": False, "fastest": True, "tie_slow": False, "untimed": False}
    untimed = table[-1]
    assert untimed["p50_ms"] is None and untimed["meets_ceiling"] is None


def test_candidates_table_joins_accuracy_and_speed():
    table = candidates_table(REPORT, TIMINGS, 1, 128, latency_ceiling_ms=30)
    assert [row["name"] for row in table] == ["fp32", "fused", "int8", "int8_fixed"]  # not pytorch
    expected = {
        "name",
        "engine",
        "p50_ms",
        "p90_ms",
        "throughput",
        "speedup",
        "cosine_mean",
        "cosine_min",
        "meets_budget",
        "failures",
        "meets_ceiling",
        "batch_invariance_min",
        "pareto",
    }
    assert all(set(row) == expected for row in table)
    fused = table[1]
    assert (fused["p50_ms"], fused["p90_ms"]) == (19.0, 40.0)
    assert fused["throughput"] == pytest.approx(1000 / 21.0)
    assert fused["speedup"] == pytest.approx(30.0 / 19.0)
    assert fused["meets_budget"] and not fused["meets_ceiling"]  # p90 40 > 30
    assert table[2]["meets_budget"] is False and table[2]["failures"]
    assert [row["pareto"] for row in table] == [True, True, True, True]  # each trades speed for accuracy
    shown = table._repr_html_()
    assert "int8_fixed" in shown and "Pareto" in shown and "ceiling 30 ms" in shown
    assert "cos mean, cos min: the task's primary cosine vs FP32" in shown  # what the figures beside it are
    assert table.gated == AccuracyBudget().describe() and "embedding cosine mean &gt;= " in shown  # what was gated


def test_candidates_table_falls_back_to_the_output_cosine():
    @dataclass(frozen=True)
    class Classifier:
        name: str
        outputs: dict
        cosine_mean: None = None
        cosine_min: None = None
        failures: tuple = ()

        def __bool__(self):
            return True

    report = FakeReport((Classifier("a", {"logits": {"cosine_mean": 0.97, "cosine_min": 0.9}}),))
    row = candidates_table(report, timings_of({"a": {(1, 8): (1.0, 1.0, 1.0)}}), 1, 8)[0]
    assert (row["cosine_mean"], row["cosine_min"]) == (0.97, 0.9) and row["pareto"]


# -- charts ---------------------------------------------------------------------------------------------------


def test_latency_figure_has_a_line_per_candidate_and_sequence():
    pytest.importorskip("plotly")
    timings = timings_of(
        {
            name: {(b, s): (b * s / 10, b * s / 8, b * s / 10) for b in (1, 8) for s in (32, 128)}
            for name in ("a", "b", "c")
        }
    )
    figure = timings.latency_figure()
    assert len(figure.data) == 6
    assert {trace.name for trace in figure.data} == {f"{n}, seq {s}" for n in "abc" for s in (32, 128)}
    line = next(t for t in figure.data if t.name == "b, seq 128")
    assert list(line.x) == [1, 8] and list(line.y) == [12.8, 102.4]


def test_speedup_figure_divides_the_baseline_by_each_candidate():
    pytest.importorskip("plotly")
    figure = TIMINGS.speedup_figure()
    assert {trace.name for trace in figure.data} == {"fp32", "fused", "int8", "int8_fixed"}
    int8 = next(t for t in figure.data if t.name == "int8")
    assert list(int8.y) == pytest.approx([30.0 / 8.0, 200.0 / 60.0])
    with pytest.raises(WorkbenchError, match="baseline 'torch' was not benchmarked"):
        TIMINGS.speedup_figure(baseline="torch")
    assert len(TIMINGS.speedup_figure(baseline="fp32").data) == 4


def test_pareto_figure_draws_the_front_and_the_limits():
    pytest.importorskip("plotly")
    figure = pareto_figure(REPORT, TIMINGS, 1, 128, latency_ceiling_ms=20)
    front = next(t for t in figure.data if t.name == "Pareto front")
    assert list(front.x) == [8.0, 15.0, 19.0, 24.0]
    assert {t.name for t in figure.data} == {"meets budget", "misses budget", "Pareto front"}
    shapes = figure.layout.shapes
    assert len(shapes) == 2  # the budget line and the ceiling line


# -- the real backends on the tiny BERT ------------------------------------------------------------------------


def test_benchmark_candidates_times_onnx_files_and_pytorch(tiny_model_dir, tiny_bert_onnx):
    pytest.importorskip("onnxruntime")
    from workbench.models import load_model
    from workbench.stages.benchmark.latency import benchmark_candidates, feeds_from_sentences

    source = load_model(tiny_model_dir("bert"))
    feeds = feeds_from_sentences(
        source.load_tokenizer(),
        ["a short sentence", "another one"],
        input_names=("input_ids", "attention_mask", "token_type_ids"),
    )
    assert feeds(2, 16)["input_ids"].shape == (2, 16) and feeds(2, 16) is feeds(2, 16)
    config = BenchmarkConfig(batch_sizes=(1, 2), sequence_lengths=(16,), warmup=1, iterations=3, threads=1)
    result = benchmark_candidates(
        {"onnx_a": tiny_bert_onnx, "onnx_b": tiny_bert_onnx}, feeds, config, pytorch_module=source.load_module()
    )
    assert result.names == ["pytorch", "onnx_a", "onnx_b"]
    assert len(result.rows) == 6 and all(r.p50_ms > 0 for r in result.rows)
    assert set(result.peak_memory_mb) == {"pytorch", "onnx_a", "onnx_b"}
    assert len(result.speedup_figure().data) == 2


def test_concurrency_with_onnxruntime_sessions(tiny_bert_onnx):
    pytest.importorskip("onnxruntime")
    from workbench.engines.onnxruntime import OnnxRuntimeRunner

    feeds = {
        "input_ids": np.ones((1, 16), dtype=np.int64),
        "attention_mask": np.ones((1, 16), dtype=np.int64),
        "token_type_ids": np.zeros((1, 16), dtype=np.int64),
    }
    result = benchmark_concurrency(
        lambda: OnnxRuntimeRunner(tiny_bert_onnx, intra_op_threads=1, allow_spinning=False),
        feeds,
        threads_list=(1, 2),
        duration_s=0.3,
    )
    assert [r.concurrency for r in result.rows] == [1, 2]
    assert all(r.requests > 0 and r.requests_per_s > 0 for r in result.rows)
    assert result.name == "model"


def test_candidates_table_says_which_engines_are_not_available_here():
    """Without TensorRT (this machine) the engine registry says why, and the table and its HTML show it."""
    import importlib.util

    from workbench.engines.base import engines

    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed here: nothing is unavailable")
    unavailable = {e.title: e.availability().reason for e in engines().values() if not e.availability()}
    table = candidates_table(REPORT, TIMINGS, 1, 128, unavailable=unavailable)
    assert "TensorRT" in table.unavailable and "[gpu]" in table.unavailable["TensorRT"]
    assert "TensorRT: not available" in table._repr_html_()


def test_choosing_never_probes_the_hardware(monkeypatch):
    """choose_candidate reads the comparison and the timings only: no nvidia-smi, no torch.cuda."""
    import shutil
    import subprocess

    def refuse(*args, **kwargs):
        raise AssertionError(f"the choice probed the machine: {args}")

    monkeypatch.setattr(shutil, "which", refuse)
    monkeypatch.setattr(subprocess, "run", refuse)
    choice = choose_candidate(REPORT, TIMINGS, batch=1, seq=128)
    assert choice.name in {c.name for c in REPORT.candidates}
    assert candidates_table(REPORT, TIMINGS, 1, 128).unavailable == {}
