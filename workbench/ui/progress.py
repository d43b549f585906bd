"""A progress bar for a running step: the stages' ProgressEvents (workbench.progress) drawn with ipywidgets.

    bar = ProgressBar()
    bar.start("Benchmark")                  # shows the bar; the elapsed time ticks every second from now on
    pipeline.progress = bar.callback        # the stage's events move the bar; Stop makes the next one raise
    ...
    bar.finish("done")                      # stops the clock; the bar stays with its last line

The label reads "Benchmark: 12 of 40 timing rounds - batch 8, seq 128: round 2 of 20 - 0:14 elapsed". Widget
updates are throttled (every event checks for a stop, at most a few redraws a second go to the browser), and a
clock thread refreshes the elapsed time between events (a step's first unit can take a while). ipywidgets 8 sends
updates made from another thread, so the bar moves while the step runs in a worker thread.
"""

from __future__ import annotations

import html
import threading
import time

import ipywidgets as widgets

from workbench.progress import ProgressEvent, StopFlag, format_elapsed

__all__ = ["ProgressBar"]

REDRAW_S = 0.25  # at most this often, a redraw from the events
CLOCK_S = 1.0  # the elapsed time's refresh between events


class ProgressBar:
    """An ipywidgets progress bar with a label that the stages' progress events drive.

    Attributes:
        stop_flag: Set by `request_stop()` (the Stop button); the next event then raises Stopped.
        last: The last ProgressEvent received (None before the first).
        events: How many events it received in this run.
        bar, label, widget: The IntProgress, the HTML line under it, and the box holding both (hidden when idle).
    """

    def __init__(self) -> None:
        self.stop_flag = StopFlag()
        self.last: ProgressEvent | None = None
        self.events = 0
        self.bar = widgets.FloatProgress(value=0.0, min=0.0, max=1.0, layout=widgets.Layout(width="36em"))
        self.bar.add_class("wb-progress-bar")
        self.label = widgets.HTML("")
        self.label.add_class("wb-progress-label")
        self.widget = widgets.VBox([self.bar, self.label], layout=widgets.Layout(display="none"))
        self.widget.add_class("wb-progress")
        self._title = ""
        self._started = 0.0
        self._drawn = 0.0
        self._lock = threading.Lock()
        self._clock: threading.Thread | None = None
        self._running = threading.Event()

    # -- a run --------------------------------------------------------------------------------------------------

    def start(self, title: str) -> None:
        """Show the bar at 0 and start the clock."""
        self.stop_flag.clear()
        self.last, self.events = None, 0
        self._title = title
        self._started = time.perf_counter()
        self.bar.value, self.bar.bar_style = 0.0, "info"
        self.widget.layout.display = "flex"
        self._draw(force=True)
        self._running.set()
        self._clock = threading.Thread(target=self._tick, name="workbench-progress-clock", daemon=True)
        self._clock.start()

    def finish(self, state: str) -> None:
        """Stop the clock; a stopped or failed run's bar stays, with its last line (how far it got); a finished
        run's bar is hidden (its status line says it)."""
        self._running.clear()
        if self._clock is not None:
            self._clock.join(timeout=2 * CLOCK_S)
            self._clock = None
        if state == "done":
            self.bar.value, self.bar.bar_style = 1.0, "success"
        else:
            self.bar.bar_style = "warning" if state == "stopped" else "danger"
        self._draw(force=True, ended=state)
        if state == "done":  # the status line says it; a stopped or failed run keeps its bar, to show how far
            self.widget.layout.display = "none"

    def request_stop(self) -> None:
        """Ask the running stage to stop at its next unit of work."""
        self.stop_flag.set()
        self._draw(force=True)

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self._started if self._started else 0.0

    # -- the stages' callback -------------------------------------------------------------------------------------

    def callback(self, event: ProgressEvent) -> None:
        """A workbench.progress.ProgressCallback: record the event, redraw now and then, raise Stopped when a stop
        was requested."""
        self.last = event
        self.events += 1
        self.stop_flag.check()
        self._draw()

    # -- drawing ------------------------------------------------------------------------------------------------

    def text(self, ended: str | None = None) -> str:
        """The label's text: what runs, how far it is, and the elapsed time."""
        parts = [self._title]
        event = self.last
        if event is not None:
            count = f"{event.done} of {event.total}" if event.total is not None else str(event.done)
            parts.append(f"{event.stage}: {count} {event.unit}")
            if event.message:
                parts.append(event.message)
        if self.stop_flag.is_set() and ended is None:
            parts.append("stopping at the next checkpoint...")
        elapsed = format_elapsed(self.elapsed_s)
        suffix = f"{ended} after {elapsed}" if ended else f"{elapsed} elapsed"
        return " - ".join(p for p in parts if p) + f" - {suffix}"

    def _draw(self, *, force: bool = False, ended: str | None = None) -> None:
        now = time.perf_counter()
        with self._lock:
            if not force and now - self._drawn < REDRAW_S:
                return
            self._drawn = now
            event = self.last
            if event is not None and event.fraction is not None and ended is None:
                self.bar.value = event.fraction
            self.label.value = f'<span class="wb-progress-text">{html.escape(self.text(ended))}</span>'

    def _tick(self) -> None:
        while self._running.wait(0) and not _sleep_until_cleared(self._running, CLOCK_S):
            self._draw(force=True)

    def __repr__(self) -> str:
        return f"<ProgressBar: {self.text()}>"


def _sleep_until_cleared(flag: threading.Event, seconds: float) -> bool:
    """Sleep up to `seconds`; True when `flag` was cleared meanwhile (the run ended)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not flag.is_set():
            return True
        time.sleep(min(0.1, max(deadline - time.monotonic(), 0)))
    return not flag.is_set()
