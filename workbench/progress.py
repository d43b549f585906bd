"""Progress events and cooperative stopping: one small seam for every long stage.

A long stage (benchmark, calibration, auto-fix) takes `progress: ProgressCallback | None` and calls it after each
unit of work with a :class:`ProgressEvent`: which stage, how many units of what are done out of how many, what it
is doing now, and the seconds since it started. The same events drive the command line's tqdm bar
(:class:`TqdmProgress`) and the Workbench's ipywidgets bar (workbench.ui.progress).

    benchmark(runners, feeds_for, config, progress=TqdmProgress())
    calibrate(model, feeds, progress=lambda event: print(event.describe()))

Stopping is cooperative: a callback may raise :class:`Stopped` (the Workbench's Stop button sets a
:class:`StopFlag` that its callback checks), which unwinds the stage between two units of work. Stages write
their files atomically (workbench._files), so a stopped stage leaves nothing half-written. `Stopped` derives
from BaseException, as asyncio.CancelledError does, so the stages' `except Exception` handlers let it through.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

__all__ = [
    "ProgressEvent",
    "ProgressCallback",
    "Progress",
    "Stopped",
    "StopFlag",
    "TqdmProgress",
    "as_callback",
    "format_elapsed",
]


@dataclass(frozen=True)
class ProgressEvent:
    """How far a stage is.

    Attributes:
        stage: The stage, for people ("benchmark", "calibration", "auto-fix").
        done: Units of work finished.
        total: Units it will do in all (None: not known yet; an upper bound for auto-fix's trials).
        unit: What a unit is, plural ("timing rounds", "calibration batches", "fix trials").
        message: What it is doing now ("batch 8, seq 128: 5 candidates").
        elapsed_s: Seconds since the stage started.
        item: The unit's own result where it has one (auto-fix: the Trial just evaluated), else None.
    """

    stage: str
    done: int
    total: int | None
    unit: str
    message: str = ""
    elapsed_s: float = 0.0
    item: Any = None

    @property
    def fraction(self) -> float | None:
        """done / total in [0, 1], or None when the total is not known."""
        if not self.total:
            return None
        return min(max(self.done / self.total, 0.0), 1.0)

    def describe(self) -> str:
        """One line: "benchmark: 12 of 40 timing rounds, 3.1 s - batch 8, seq 128: 5 candidates"."""
        count = f"{self.done} of {self.total}" if self.total is not None else f"{self.done}"
        line = f"{self.stage}: {count} {self.unit}, {format_elapsed(self.elapsed_s)}"
        return f"{line} - {self.message}" if self.message else line


ProgressCallback = Callable[[ProgressEvent], None]


class Stopped(BaseException):
    """Raised from a progress callback to stop a stage between units of work (nothing is half-written)."""

    def __init__(self, message: str = "stopped on request") -> None:
        super().__init__(message)


class StopFlag:
    """A thread-safe stop request: one thread calls `set()`, the working thread's callback calls `check()`."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise Stopped when a stop was requested."""
        if self._event.is_set():
            raise Stopped()


class Progress:
    """What a stage uses to report: it counts the time since the stage started and builds the events.

    A stage makes one per run, `report = Progress(progress, "benchmark", "timing rounds", total=40)`, and calls
    `report(done, message)` after each unit; with `progress=None` that does nothing.
    """

    def __init__(self, callback: ProgressCallback | None, stage: str, unit: str, *, total: int | None = None) -> None:
        self.callback = callback
        self.stage = stage
        self.unit = unit
        self.total = total
        self.started = time.perf_counter()

    def __call__(self, done: int, message: str = "", *, total: int | None = None, item: Any = None) -> None:
        if total is not None:
            self.total = total
        if self.callback is not None:
            self.callback(
                ProgressEvent(
                    self.stage, done, self.total, self.unit, message, time.perf_counter() - self.started, item
                )
            )


class TqdmProgress:
    """A ProgressCallback that draws the events with tqdm.auto: one bar per stage run, closed when it is done.

    Args:
        file: Where terminal bars go; default the sys.stderr of the moment the object is made (so a step that
            captures stderr for its log does not swallow the bar).
        leave: Keep finished bars on screen.
    """

    def __init__(self, *, file: TextIO | None = None, leave: bool = False) -> None:
        self.file = file if file is not None else sys.stderr
        self.leave = leave
        self._bar: Any = None
        self._key: tuple[str, str] | None = None
        self._last = -1

    def __call__(self, event: ProgressEvent) -> None:
        key = (event.stage, event.unit)
        if self._bar is None or key != self._key or event.done < self._last:
            self.close()
            from workbench._lazy import require

            tqdm = require("tqdm.auto", purpose="Progress bars").tqdm
            self._bar = tqdm(
                total=event.total,
                desc=event.stage,
                unit=event.unit.split()[-1],
                file=self.file,
                leave=self.leave,
                dynamic_ncols=True,
            )
            self._key = key
        bar = self._bar
        if event.total is not None and bar.total != event.total:
            bar.total = event.total
        bar.n = event.done
        self._last = event.done
        bar.set_postfix_str(event.message, refresh=False)
        bar.refresh()
        if event.total is not None and event.done >= event.total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._key, self._last = None, None, -1


def as_callback(progress: bool | ProgressCallback | None) -> ProgressCallback | None:
    """The callback a stage reports to: True draws a tqdm.auto bar, False or None nothing, a callable itself."""
    if progress is True:
        return TqdmProgress()
    if progress is False or progress is None:
        return None
    return progress


def format_elapsed(seconds: float) -> str:
    """ "4.2 s", "1:05" (minutes:seconds) or "1:02:03"."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
