"""Progress events, stopping and the tqdm rendering (workbench.progress)."""

from __future__ import annotations

import io
import threading

import pytest

from workbench.progress import Progress, ProgressEvent, StopFlag, Stopped, TqdmProgress, as_callback, format_elapsed


def test_an_event_says_how_far_and_what():
    event = ProgressEvent("benchmark", 12, 40, "timing rounds", "batch 8, seq 128", 75.0)
    assert event.fraction == pytest.approx(0.3)
    assert event.describe() == "benchmark: 12 of 40 timing rounds, 1:15 - batch 8, seq 128"
    assert ProgressEvent("auto-fix", 3, None, "fix trials").fraction is None
    assert ProgressEvent("x", 50, 40, "units").fraction == 1.0  # an upper bound passed: full, not above


def test_progress_builds_events_with_the_elapsed_time_and_does_nothing_without_a_callback():
    seen: list[ProgressEvent] = []
    report = Progress(seen.append, "calibration", "calibration batches", total=4)
    report(1, "batch 1 of 4")
    report(2, total=5, item="anything")
    assert [(e.done, e.total, e.message, e.item) for e in seen] == [
        (1, 4, "batch 1 of 4", None),
        (2, 5, "", "anything"),
    ]
    assert all(e.stage == "calibration" and e.elapsed_s >= 0 for e in seen)
    assert seen[1].elapsed_s >= seen[0].elapsed_s
    Progress(None, "quiet", "units")(3)  # no callback: nothing to call, nothing raised


def test_a_stop_flag_set_in_one_thread_stops_the_callback_in_another():
    flag = StopFlag()
    flag.check()  # not set: nothing happens
    thread = threading.Thread(target=flag.set)
    thread.start()
    thread.join()
    with pytest.raises(Stopped):
        flag.check()
    assert not isinstance(Stopped(), Exception)  # `except Exception` in a stage does not swallow a stop
    flag.clear()
    flag.check()


def test_tqdm_progress_draws_one_bar_per_run_to_the_file_it_was_given():
    out = io.StringIO()
    bar = TqdmProgress(file=out)
    for done in range(4):
        bar(ProgressEvent("benchmark", done, 3, "timing rounds", f"round {done}"))
    text = out.getvalue()
    assert "benchmark" in text and "3/3" in text and "round 3" in text
    assert bar._bar is None  # done == total closed it
    bar(ProgressEvent("calibration", 1, 2, "calibration batches"))  # another stage: a new bar
    assert bar._bar is not None and bar._bar.desc.startswith("calibration")
    bar.close()


def test_as_callback_maps_the_old_bool_and_keeps_a_callable():
    assert as_callback(False) is None and as_callback(None) is None
    assert isinstance(as_callback(True), TqdmProgress)
    assert as_callback(print) is print


def test_elapsed_time_reads_as_seconds_then_minutes():
    assert format_elapsed(4.25) == "4.2 s"
    assert format_elapsed(65) == "1:05"
    assert format_elapsed(3723) == "1:02:03"
