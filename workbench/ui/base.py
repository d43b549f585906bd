"""StageView: the base of every view, a thin shell over one library call.

A view is its controls, a Run button (disabled while it runs), a status line, an error panel, an Output for
the result, and `.result`. No logic lives in a widget: a subclass reads its controls, calls ONE library
function and shows what it returns.

    class FusionView(StageView):
        title = "Fuse transformer subgraphs"
        config_cls = FusionConfig                      # optional: controls from the config's fields

        def __init__(self, model_path, output_path):
            self.model_path, self.output_path = model_path, output_path   # set inputs first,
            super().__init__()                                           # then build the widgets

        def _run(self):
            return fuse_transformer(self.model_path, self.output_path, self.config())

        def _show(self, result):
            self.show(result)                          # renders with result._repr_html_
            self.show(some_plotly_figure)

Tests drive a view the way a user does: set control values, `view.click()`, then assert on `view.result`,
`view.status.value`, `view.error_output.value` and `view.shown` (every object `_show` displayed).
"""

from __future__ import annotations

import html
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import ipywidgets as widgets

from workbench.errors import WorkbenchError
from workbench.ui.controls import config_from_controls, controls_for

__all__ = ["StageView", "error_text", "mime_bundle"]

NOT_RUN = "not run"
RUNNING = "running..."


class StageView:
    """Base class of the stage views.

    Subclasses implement:
        _controls(self) -> dict[str, Widget] | list[Widget]: the inputs (default: controls_for(config_cls)).
        _run(self) -> result: read the controls and call ONE library function; raise on failure.
        _show(self, result) -> None: display the result with `self.show(obj)` (default: show the result).

    Class attributes (all optional):
        title: Heading of the view (default: the class name).
        config_cls: A StageConfig dataclass; then the default `_controls` builds a widget per field and
            `self.config()` reads them back into a validated config.
        config_choices: Field -> allowed values, for Dropdowns (with config_cls).
        config_exclude: Fields without a control (with config_cls); they come from `config_base`.
        config_labels: Field -> label (with config_cls).

    Attributes:
        result: The last successful result (None before the first); a failed run leaves it as it was.
        error: The exception of the last run, None after a success.
        shown: Every object the last successful run displayed, in order (what tests assert on).
        controls: Field name (or "control_<i>" for a list) -> widget.
        run_button, status, error_output, output, widget: the widgets (status and error_output are HTML).
    """

    title: ClassVar[str | None] = None
    config_cls: type | None = None  # a class default; a panel may set its own from the step's config
    config_choices: ClassVar[Mapping[str, Sequence[Any]] | None] = None
    config_exclude: ClassVar[Sequence[str]] = ()
    config_labels: ClassVar[Mapping[str, str] | None] = None

    def __init__(self, *, title: str | None = None, config_base: Any = None) -> None:
        """Build the widgets only; no library call, no heavy import.

        Args:
            title: Heading; default the class's `title`, else the class name.
            config_base: With config_cls, a config instance the controls start from and that fills the
                excluded fields (default: the config's defaults).
        """
        self.result: Any = None
        self.error: BaseException | None = None
        self.shown: list[Any] = []
        self.seconds: float | None = None
        self.config_base = config_base
        self._listeners: list[Callable[[Any], None]] = []
        self._running = False

        self.title_widget = widgets.HTML(f"<h3>{html.escape(title or self.title or type(self).__name__)}</h3>")
        built = self._controls()
        if isinstance(built, Mapping):
            self.controls: dict[str, widgets.Widget] = dict(built)
        else:
            self.controls = {f"control_{i}": w for i, w in enumerate(built or ())}
        self.run_button = widgets.Button(
            description="Run", button_style="primary", icon="play", tooltip="Run this stage"
        )
        self.run_button.on_click(self._on_click)
        self.status = widgets.HTML(NOT_RUN)
        self.error_output = widgets.HTML("")
        self.output = widgets.Output()
        self.widget = widgets.VBox(
            [
                self.title_widget,
                widgets.VBox(list(self.controls.values())),
                widgets.HBox([self.run_button, self.status]),
                self.error_output,
                self.output,
            ]
        )

    # -- what subclasses implement ----------------------------------------------------------------------------

    def _controls(self) -> Mapping[str, widgets.Widget] | Sequence[widgets.Widget]:
        if self.config_cls is None:
            return {}
        return controls_for(
            self.config_base if self.config_base is not None else self.config_cls,
            exclude=self.config_exclude,
            labels=self.config_labels,
            choices=self.config_choices,
        )

    def _run(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement _run()")

    def _show(self, result: Any) -> None:
        self.show(result)

    # -- helpers for subclasses -------------------------------------------------------------------------------

    def config(self) -> Any:
        """The config read from the controls (needs config_cls); raises ConfigError for a bad value."""
        if self.config_cls is None:
            raise TypeError(f"{type(self).__name__} has no config_cls")
        return config_from_controls(self.config_cls, self.controls, base=self.config_base)

    def show(self, obj: Any) -> None:
        """Display `obj` in the result Output and record it in `self.shown`.

        Result objects (their `_repr_html_` and other `_repr_*_` methods), plotly figures, widgets,
        IPython.display objects; a str is shown as plain text. The display data is appended to
        `self.output.outputs` directly rather than through `with self.output: display(...)`, so it lands in
        the Output from a button click in a kernel and is recorded there without one (tests). Plotly figures
        go as plotly's JSON mimetype, which JupyterLab and Voila render with the jupyterlab-plotly extension
        that ships with plotly (no anywidget, no FigureWidget).
        """
        self.shown.append(obj)
        if isinstance(obj, str):
            self.output.append_stdout(obj if obj.endswith("\n") else obj + "\n")
        else:
            self.output.outputs += ({"output_type": "display_data", "data": mime_bundle(obj), "metadata": {}},)

    def clear(self) -> None:
        """Empty the result Output and `self.shown`."""
        self.shown = []
        self.output.outputs = ()

    # -- running ----------------------------------------------------------------------------------------------

    def run(self, *, raise_errors: bool = False) -> Any:
        """What the Run button does; returns the result, or None when the run failed.

        Disables the button and shows "running..." while `_run` works. On success: stores `.result`,
        clears `.error`, replaces what the Output shows with `_show(result)`, says "done in X s", and calls
        the `on_result` listeners. On failure: stores `.error`, shows its message in the error panel and
        "failed: ..." in the status, and keeps the previous `.result` and what it showed. The button is
        enabled again in every case. Errors are re-raised only with `raise_errors=True`.
        """
        if self._running:  # a second click while running (the button is disabled; this is a guard)
            return None
        self._running = True
        self.run_button.disabled = True
        self.status.value = RUNNING
        self.error_output.value = ""
        started = time.perf_counter()
        try:
            try:
                result = self._run()
            except Exception as exc:
                self._fail(exc)
                if raise_errors:
                    raise
                return None
            self.seconds = time.perf_counter() - started
            self.result, self.error = result, None
            try:
                self.clear()
                self._show(result)
                for listener in list(self._listeners):
                    listener(result)
            except Exception as exc:  # showing or a listener failed; the result itself is kept
                self._fail(exc)
                if raise_errors:
                    raise
                return result
            self.status.value = f"done in {self.seconds:.2f} s"
            return result
        finally:
            self._running = False
            self.run_button.disabled = False

    def click(self) -> None:
        """Click the Run button, as a user does (errors are shown, not raised)."""
        self.run_button.click()

    def on_result(self, callback: Callable[[Any], None]) -> Callable[[Any], None]:
        """Call `callback(result)` after every successful run (a containing Workbench listens this way).

        Returns the callback, so it can be used as a decorator. A listener that raises marks the run failed
        in the panel; the result is kept.
        """
        self._listeners.append(callback)
        return callback

    @property
    def running(self) -> bool:
        return self._running

    def _on_click(self, _button: widgets.Button) -> None:
        self.run()

    def labels(self) -> dict[str, str]:
        """Field name -> the label its control shows (what error messages call the field here)."""
        return {
            name: str(getattr(control, "description", "") or "")
            for name, control in self.controls.items()
            if getattr(control, "description", "")
        }

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        labels = self.labels()
        self.status.value = (
            f'<span style="color:#b00020">failed: {html.escape(user_words(_headline(exc), labels))}</span>'
        )
        self.error_output.value = _error_html(exc, labels)

    # -- display ----------------------------------------------------------------------------------------------

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        state = (
            "running"
            if self._running
            else ("failed" if self.error else ("done" if self.result is not None else "not run"))
        )
        return f"<{type(self).__name__}: {state}>"


def mime_bundle(obj: Any) -> dict[str, Any]:
    """The display data of `obj` (mimetype -> data), computed here rather than published by the object.

    Objects with `_ipython_display_` (plotly figures among them) would publish themselves to wherever the
    current kernel message goes, not into an Output, so their own display hook is never called.
    """
    if hasattr(obj, "to_plotly_json") and hasattr(obj, "to_dict"):  # a plotly figure
        import plotly.io as pio

        bundle = dict(pio.renderers["plotly_mimetype"].to_mimebundle(obj.to_dict()))
        title = getattr(getattr(obj.layout, "title", None), "text", None)
        bundle["text/plain"] = f"<plotly figure{': ' + title if title else ''}>"
        return bundle
    if isinstance(obj, widgets.Widget):
        return dict(obj._repr_mimebundle_() or {"text/plain": repr(obj)})
    data, _metadata = _formatter().format(obj)
    return data or {"text/plain": repr(obj)}


_FORMATTER: Any = None


def _formatter() -> Any:
    """An IPython DisplayFormatter of our own (no shell needed) that never calls `_ipython_display_`."""
    global _FORMATTER
    if _FORMATTER is None:
        from IPython.core.formatters import DisplayFormatter

        _FORMATTER = DisplayFormatter()
        _FORMATTER.ipython_display_formatter.enabled = False
    return _FORMATTER


def _headline(exc: BaseException) -> str:
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def error_text(exc: BaseException) -> str:
    """The text the error panel shows: 'Type: message' (all lines: what, Expected:, Fix:)."""
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def user_words(text: str, labels: Mapping[str, str]) -> str:
    """`text` with config field paths (`PipelineParameters.benchmark_batch_sizes`) named by the labels the user
    sees ('batch sizes'); fields without a label keep their path."""
    import re

    def replace(match: re.Match[str]) -> str:
        label = labels.get(match.group(2))
        return f"'{label}'" if label else match.group(0)

    return re.sub(r"\b([A-Z][A-Za-z0-9]*)\.([a-z_][a-z0-9_]*)\b", replace, text)


def _error_html(exc: BaseException, labels: Mapping[str, str] | None = None) -> str:
    text = user_words(error_text(exc), labels or {})
    body = f'<pre style="color:#b00020;white-space:pre-wrap;margin:0">{html.escape(text)}</pre>'
    if not isinstance(exc, WorkbenchError):  # not raised on purpose: a bug, so keep the traceback at hand
        trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        body += f"<details><summary>traceback</summary><pre>{html.escape(trace)}</pre></details>"
    return body
