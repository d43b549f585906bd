"""StageView driven the way a user drives it: set controls, click Run, read the result, status and panels.

The view under test is a tiny example defined here (not in the library): a view over a function that adds
numbers, with a config, a hook to look inside the call, and a way to make the call fail.
"""

from __future__ import annotations

import html
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import ipywidgets as widgets
import pytest

from workbench.config import StageConfig
from workbench.errors import ConfigError, WorkbenchError
from workbench.ui import StageView

# -- the example "library": a config, a result that renders itself, one function ------------------------------


@dataclass(frozen=True)
class AddConfig(StageConfig):
    """How to add.

    Attributes:
        a: First number.
        b: Second number; must not be negative.
        extra: More numbers to add.
        fail: Make the call fail on purpose (an error the user can act on).
    """

    a: int = 1
    b: float = 2.0
    extra: tuple[int, ...] = ()
    fail: bool = False

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        if self.b < 0:
            raise ConfigError(f"AddConfig.b must be >= 0, got {self.b}.", fix="enter 0 or a positive number")


@dataclass(frozen=True)
class Sum:
    total: float
    config: AddConfig

    def _repr_html_(self) -> str:
        return f"<b>Sum</b>: {self.total:g}"


def add_numbers(config: AddConfig, *, hook: Callable[[], None] | None = None) -> Sum:
    if hook is not None:
        hook()
    if config.fail:
        raise WorkbenchError(
            "Adding failed on purpose.", expected="fail=False", fix="untick the fail box and run again"
        )
    return Sum(config.a + config.b + sum(config.extra), config)


class AddView(StageView):
    title = "Add numbers"
    config_cls = AddConfig

    def __init__(self, hook: Callable[[], None] | None = None, **kwargs: Any) -> None:
        self.hook = hook
        self.calls = 0
        super().__init__(**kwargs)

    def _run(self) -> Sum:
        config = self.config()
        self.calls += 1
        return add_numbers(config, hook=self.hook)

    def _show(self, result: Sum) -> None:
        self.show(result)
        self.show(f"total {result.total:g}")


# -- helpers ---------------------------------------------------------------------------------------------------


def html_shown(view: StageView) -> list[str]:
    return [o["data"]["text/html"] for o in view.output.outputs if "text/html" in o.get("data", {})]


def text_shown(view: StageView) -> str:
    return "".join(o.get("text", "") for o in view.output.outputs)


def panel_text(view: StageView) -> str:
    return html.unescape(view.error_output.value)


# -- tests -----------------------------------------------------------------------------------------------------


def test_a_new_view_has_its_widgets_and_has_not_run():
    view = AddView()
    assert view.result is None and view.error is None and view.shown == []
    assert view.status.value == "not run" and view.error_output.value == ""
    assert view.run_button.description == "Run" and not view.run_button.disabled
    assert list(view.controls) == ["a", "b", "extra", "fail"]
    assert isinstance(view.widget, widgets.VBox) and isinstance(view.output, widgets.Output)
    assert "Add numbers" in view.title_widget.value
    assert view.calls == 0  # building the view calls nothing

    # every part is in the displayed widget tree
    def descendants(w):
        yield w
        for child in getattr(w, "children", ()):
            yield from descendants(child)

    tree = list(descendants(view.widget))
    for part in [view.run_button, view.status, view.error_output, view.output, *view.controls.values()]:
        assert any(part is w for w in tree)


def test_click_runs_the_call_with_the_controls_values_and_shows_the_result():
    view = AddView()
    view.controls["a"].value = 38
    view.controls["extra"].value = "1, 1"
    view.click()
    assert view.calls == 1 and view.error is None
    assert view.result == Sum(42.0, AddConfig(a=38, b=2.0, extra=(1, 1)))
    assert view.status.value.startswith("done in ") and view.status.value.endswith(" s")
    assert view.shown == [view.result, "total 42"]
    assert html_shown(view) == ["<b>Sum</b>: 42"] and text_shown(view) == "total 42\n"
    assert not view.run_button.disabled


def test_a_second_run_replaces_what_is_shown():
    view = AddView()
    view.click()
    view.controls["a"].value = 10
    view.click()
    assert view.result.total == 12 and html_shown(view) == ["<b>Sum</b>: 12"] and len(view.shown) == 2


def test_the_button_is_disabled_only_while_the_call_runs():
    seen = []
    view = AddView(hook=lambda: seen.append((view.run_button.disabled, view.status.value, view.running)))
    assert not view.run_button.disabled
    view.click()
    assert seen == [(True, "running...", True)]
    assert not view.run_button.disabled and not view.running
    # re-enabled after a failure too
    view.controls["fail"].value = True
    view.click()
    assert seen[-1] == (True, "running...", True) and not view.run_button.disabled


def test_a_failed_run_shows_the_full_error_and_keeps_the_earlier_result():
    view = AddView()
    view.click()
    earlier, earlier_outputs = view.result, view.output.outputs
    view.controls["fail"].value = True
    view.click()  # does not raise: the panel shows the error
    assert isinstance(view.error, WorkbenchError)
    assert view.result is earlier and view.output.outputs == earlier_outputs
    assert view.status.value.startswith('<span style="color:#b00020">failed: WorkbenchError: Adding failed')
    text = panel_text(view)
    assert "WorkbenchError: Adding failed on purpose." in text
    assert "Expected: fail=False" in text and "Fix: untick the fail box and run again" in text
    assert "color:#b00020" in view.error_output.value
    assert "traceback" not in text  # an error raised on purpose needs no traceback
    assert not view.run_button.disabled
    # the next good run clears the error
    view.controls["fail"].value = False
    view.click()
    assert view.error is None and view.error_output.value == "" and view.status.value.startswith("done in")


def test_a_bad_control_value_fails_the_run_with_the_config_error_in_the_panel():
    view = AddView()
    view.controls["b"].value = -1.0
    view.click()
    assert isinstance(view.error, ConfigError) and view.calls == 0 and view.result is None
    assert "failed: ConfigError: &#x27;b&#x27; must be &gt;= 0" in view.status.value  # the label, not AddConfig.b
    assert "ConfigError: 'b' must be >= 0, got -1.0." in panel_text(view) and "AddConfig.b" in str(view.error)
    assert "Fix: enter 0 or a positive number" in panel_text(view)
    # unreadable text in a control is a ConfigError as well, naming the control
    view.controls["b"].value = 1.0
    view.controls["extra"].value = "1, two"
    view.click()
    assert isinstance(view.error, ConfigError)
    assert "'extra': cannot read '1, two'" in panel_text(view) and "AddConfig.extra" in str(view.error)
    assert "Fix: correct the 'extra' control" in panel_text(view)


def test_run_raise_errors_re_raises_for_scripts_and_tests():
    view = AddView()
    view.controls["fail"].value = True
    with pytest.raises(WorkbenchError, match="Adding failed on purpose"):
        view.run(raise_errors=True)
    assert isinstance(view.error, WorkbenchError) and not view.run_button.disabled
    assert "Fix: untick" in panel_text(view)
    assert view.run() is None  # without raise_errors: shown, not raised
    view.controls["fail"].value = False
    assert view.run(raise_errors=True) == view.result and view.result.total == 3


def test_an_unexpected_exception_is_shown_with_its_traceback():
    class Broken(StageView):
        def _run(self):
            return {}["missing"]

    view = Broken()
    view.click()
    assert isinstance(view.error, KeyError)
    assert "KeyError: 'missing'" in panel_text(view) and "<details><summary>traceback" in view.error_output.value
    assert view.status.value.count("failed: KeyError") == 1


def test_on_result_listeners_get_each_successful_result():
    view = AddView()
    got = []
    assert view.on_result(got.append) == got.append
    view.click()
    view.controls["fail"].value = True
    view.click()
    assert got == [Sum(3.0, AddConfig())]


def test_a_failing_listener_is_shown_but_the_result_is_kept():
    view = AddView()

    @view.on_result
    def bad(result):
        raise WorkbenchError("The workbench could not take the result.", fix="report it")

    view.click()
    assert view.result == Sum(3.0, AddConfig())
    assert "Fix: report it" in panel_text(view) and view.status.value.count("failed") == 1
    assert not view.run_button.disabled
    with pytest.raises(WorkbenchError):
        view.run(raise_errors=True)


def test_a_click_while_running_is_ignored():
    inner = []
    view = AddView(hook=lambda: inner.append(view.run()))
    view.click()
    assert inner == [None] and view.calls == 1 and view.result.total == 3


def test_config_base_and_list_controls():
    view = AddView(config_base=AddConfig(a=5, extra=(1,)), title="Sum it")
    assert view.controls["a"].value == 5 and "Sum it" in view.title_widget.value
    assert view.run(raise_errors=True).total == 8

    class Listed(StageView):
        def _controls(self):
            return [widgets.IntText(value=2), widgets.IntText(value=3)]

        def _run(self):
            return self.controls["control_0"].value * self.controls["control_1"].value

    view = Listed()
    view.click()
    assert view.result == 6 and view.shown == [6]
    assert view.output.outputs[0]["data"]["text/plain"] == "6"


def test_a_plotly_figure_is_shown():
    go = pytest.importorskip("plotly.graph_objects")

    class Charted(AddView):
        def _show(self, result):
            self.show(result)
            figure = go.Figure()
            figure.add_bar(x=["total"], y=[result.total])
            self.show(figure)

    view = Charted()
    view.click()
    assert view.shown[0] == view.result and isinstance(view.shown[1], go.Figure)
    assert view.shown[1].data[0].y == (3.0,)
    html_out, figure_out = view.output.outputs
    assert html_out["data"]["text/html"] == "<b>Sum</b>: 3"
    # plotly's JSON mimetype (rendered by jupyterlab-plotly in Lab and Voila), not a FigureWidget
    plotly_json = figure_out["data"]["application/vnd.plotly.v1+json"]
    assert plotly_json["data"][0]["type"] == "bar" and plotly_json["data"][0]["y"] == [3.0]
    assert figure_out["data"]["text/plain"] == "<plotly figure>"


def test_show_accepts_ipython_display_objects_and_widgets():
    from IPython.display import HTML, Markdown

    class Various(StageView):
        def _run(self):
            return 1

        def _show(self, result):
            self.show(HTML("<i>html</i>"))
            self.show(Markdown("**md**"))
            self.show(widgets.Label("a label"))

    view = Various()
    view.run(raise_errors=True)
    html_out, md_out, widget_out = (o["data"] for o in view.output.outputs)
    assert html_out["text/html"] == "<i>html</i>" and md_out["text/markdown"] == "**md**"
    assert widget_out["application/vnd.jupyter.widget-view+json"]["model_id"] == view.shown[2].model_id


def test_the_view_displays_as_its_widget():
    view = AddView()
    bundle = view._repr_mimebundle_()
    assert bundle["application/vnd.jupyter.widget-view+json"]["model_id"] == view.widget.model_id
    view._ipython_display_()  # no kernel: must not fail
    assert "not run" in repr(view)


def test_import_workbench_ui_is_light():
    code = (
        "import sys, json, workbench.ui as ui\n"
        "ui.StageView, ui.controls_for, ui.config_from_controls\n"
        "from workbench.stages.export import ExportConfig, EXPORTERS\n"
        "from workbench.stages.benchmark.latency import BenchmarkConfig\n"
        "ui.config_from_controls(ExportConfig, ui.controls_for(ExportConfig, choices={'exporter': EXPORTERS}))\n"
        "ui.config_from_controls(BenchmarkConfig, ui.controls_for(BenchmarkConfig))\n"
        "print(json.dumps([m for m in ('torch', 'onnxruntime', 'tensorrt') if m in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
