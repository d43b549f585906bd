"""Views for the graph-surgery step: inspect an ONNX graph, and build and run a surgery plan.

    InspectView(model_path)                       inspect_model + node_table; the table re-filtered in place
    SurgeryView(model_path, output_path, feeds)   a plan built edit by edit from the edits' own configs, then
                                                  run_surgery(...) with every edit checked on the feeds

Both views offer "Show in Netron" when the `netron` package is installed: it serves the model on 127.0.0.1 and
shows it in an IFrame below the results (the browser must run on the same machine as the kernel). Without
netron the button is absent and a note says how to get it.

Nothing heavy is imported when a view is built; each library call imports what it needs when it runs.
"""

from __future__ import annotations

import contextlib
import html
import importlib.util
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import ipywidgets as widgets

from workbench.errors import ConfigError, WorkbenchError
from workbench.ui.base import StageView, _error_html, mime_bundle
from workbench.ui.controls import config_from_controls, controls_for

__all__ = ["InspectView", "SurgeryView", "NodeFilter", "netron_available"]

NETRON_HOST = "127.0.0.1"
NETRON_HEIGHT = 600
_ERROR_STYLE = "color:#b00020"


def netron_available() -> bool:
    """Whether the `netron` package can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec("netron") is not None
    except (ImportError, ValueError):
        return False


@contextlib.contextmanager
def _logging_left_alone() -> Iterator[None]:
    """Keep netron from configuring the root logger (it calls logging.basicConfig(level=INFO) when the root
    has no handler, which would make every library's INFO messages appear in the notebook from then on)."""
    guard = logging.NullHandler()
    logging.root.addHandler(guard)
    try:
        yield
    finally:
        logging.root.removeHandler(guard)


class _NetronMixin:
    """A "Show in Netron" button (or, without netron, a note saying why there is none) and its IFrame.

    The view provides `_netron_path()`. Each click stops the view's earlier server and serves the model on a
    free port (netron cannot reliably rebind the port it just closed).
    """

    netron_address: tuple[str, int] | None = None

    def _build_netron(self) -> widgets.Widget:
        self.netron_output = widgets.Output()
        self.netron_url: str | None = None
        if netron_available():
            self.netron_button: widgets.Button | None = widgets.Button(
                description="Show in Netron",
                icon="sitemap",
                tooltip=f"Serve the model with netron on {NETRON_HOST} and show it below",
            )
            self.netron_button.on_click(lambda _button: self.show_in_netron())
            self.netron_note = widgets.HTML("")
            return widgets.HBox([self.netron_button, self.netron_note])
        self.netron_button = None
        self.netron_note = widgets.HTML(
            "<small><i>No graph viewer: the <code>netron</code> package is not installed "
            "(<code>pip install netron</code>, then rebuild this view).</i></small>"
        )
        return self.netron_note

    def _netron_path(self) -> str | os.PathLike[str]:
        raise NotImplementedError

    def show_in_netron(self) -> str | None:
        """What "Show in Netron" does: serve the model on 127.0.0.1 and show it in an IFrame; returns its URL.

        A failure (netron missing, the file gone) is shown in the error panel and returns None.
        """
        from IPython.display import IFrame

        self.error_output.value = ""  # type: ignore[attr-defined]
        try:
            if not netron_available():
                raise WorkbenchError(
                    "The graph viewer needs the Python package 'netron', which is not installed.",
                    fix="pip install netron",
                )
            import netron

            path = str(self._netron_path())
            if self.netron_address is not None:
                netron.stop(self.netron_address)
                self.netron_address = None
            with _logging_left_alone():
                host, port = netron.start(path, address=(NETRON_HOST, 0), browse=False)
        except Exception as exc:
            self.error_output.value = _error_html(exc)  # type: ignore[attr-defined]
            self.netron_output.outputs = ()  # the earlier server (if any) is gone: so is its frame
            self.netron_url = None
            return None
        self.netron_address = (host, port)
        self.netron_url = f"http://{host}:{port}"
        frame = IFrame(self.netron_url, width="100%", height=NETRON_HEIGHT)
        self.netron_output.outputs = ({"output_type": "display_data", "data": mime_bundle(frame), "metadata": {}},)
        self.netron_note.value = f"<small>serving <code>{html.escape(path)}</code> at {self.netron_url}</small>"
        return self.netron_url


# ---------------------------------------------------------------------------------------------------------------
# InspectView
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NodeFilter:
    """Which nodes the node table shows (both match case-insensitively; empty keeps every node).

    Attributes:
        name_contains: Keep nodes whose name contains this text.
        op_types: Keep nodes of these op types, comma-separated (e.g. "Attention, MatMul").
    """

    name_contains: str = ""
    op_types: tuple[str, ...] = ()


class InspectView(_NetronMixin, StageView):
    """Summary, op histogram, largest weights and node table of an ONNX model.

    Run calls `inspect_model(model_path)` and `node_table(model_path)`; Filter re-shows the table through
    `NodeTable.filter` with the filter controls, without reading the model again.

    Attributes:
        result: The GraphSummary of the last run.
        table: The full NodeTable of the last run.
        filtered_table: The table as shown (filtered by the controls at the last Run or Filter).
        filter_button: The Filter button (enabled after the first run).
    """

    title = "Inspect the ONNX graph"
    config_cls = NodeFilter
    config_labels = {"name_contains": "node name contains", "op_types": "op types"}

    def __init__(self, model_path: str | os.PathLike[str], *, title: str | None = None) -> None:
        self.model_path = model_path
        self.table: Any = None
        self.filtered_table: Any = None
        super().__init__(title=title)
        self.controls["op_types"].placeholder = "comma-separated, e.g. Attention, MatMul"
        self.filter_button = widgets.Button(
            description="Filter", icon="filter", disabled=True, tooltip="Show only the nodes that match (after a run)"
        )
        self.filter_button.on_click(lambda _button: self.filter())
        netron_row = self._build_netron()
        self.widget.children = (
            self.title_widget,
            widgets.VBox(list(self.controls.values())),
            self.filter_button,
            widgets.HBox([self.run_button, self.status]),
            netron_row,
            self.error_output,
            self.output,
            self.netron_output,
        )

    def _run(self) -> Any:
        from workbench.stages.surgery.inspect import inspect_model, node_table

        summary = inspect_model(self.model_path)
        self.table = node_table(self.model_path)
        return summary

    def _show(self, result: Any) -> None:
        self.filtered_table = self._filtered()
        self._show_all(result)
        self.filter_button.disabled = False
        self.controls["op_types"].placeholder = (
            "comma-separated; this model has "
            + ", ".join(list(result.op_counts)[:6])
            + (", ..." if len(result.op_counts) > 6 else "")
        )

    def filter(self) -> Any:
        """What the Filter button does: re-show the node table filtered by the controls; returns that table.

        Before the first run, or with a bad filter, the error panel says why and nothing else changes.
        """
        self.error_output.value = ""
        try:
            if self.table is None:
                raise WorkbenchError("There is no node table to filter yet.", fix="click Run first")
            table = self._filtered()
        except Exception as exc:
            self.error_output.value = _error_html(exc)
            return None
        self.filtered_table = table
        self.clear()
        self._show_all(self.result)
        return table

    def _filtered(self) -> Any:
        wanted = self.config()
        return self.table.filter(name_contains=wanted.name_contains, op_types=wanted.op_types)

    def _show_all(self, summary: Any) -> None:
        self.show(summary)
        self.show(summary.op_histogram_figure())
        self.show(summary.weight_size_figure())
        self.show(self.filtered_table)

    def _netron_path(self) -> str | os.PathLike[str]:
        return self.model_path


# ---------------------------------------------------------------------------------------------------------------
# SurgeryView
# ---------------------------------------------------------------------------------------------------------------


def _edit_choices() -> dict[str, dict[str, tuple[Any, ...]]]:
    """Edit kind -> field -> allowed values, for the fields that have a fixed set (shown as Dropdowns)."""
    from workbench.stages.fusion import SUPPORTED_MODEL_TYPES

    return {"fuse_transformer": {"model_type": SUPPORTED_MODEL_TYPES, "opt_level": (0, 1, 2, 99)}}


class SurgeryView(_NetronMixin, StageView):
    """Build a surgery plan edit by edit, then run it with every edit checked.

    Choose an edit kind, set its options (mapping fields are JSON, e.g. {"input_ids": "int32"}; list fields are
    comma-separated), and click "Add edit"; the edit is built through its config class, so a bad option shows
    its ConfigError in the panel and is not added. Run calls `run_surgery(model_path, output_path, plan,
    check_feeds=check_feeds, latency_repeats=latency_repeats)`; nothing is written unless every edit succeeds.

    Args:
        model_path: The ONNX model to edit (not modified).
        output_path: Where the edited model is written.
        check_feeds: Feed dicts every edit is checked on (None: edits are applied unchecked).
        plan: The plan to start from (default: empty); `.plan` can also be set later.
        latency_repeats: Timed runs per model in each check (with check_feeds).

    Attributes:
        result: The SurgeryResult of the last successful run.
        plan: The current SurgeryPlan (settable).
        kind: The edit-kind Dropdown (also `controls["kind"]`); option_controls: the chosen kind's option widgets.
        add_button, remove_button, plan_status, plan_html: the plan builder's widgets.
    """

    title = "Graph surgery"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        output_path: str | os.PathLike[str],
        check_feeds: list[dict[str, Any]] | None = None,
        *,
        plan: Any = None,
        latency_repeats: int = 3,
        title: str | None = None,
    ) -> None:
        from workbench.stages.surgery.edits import SurgeryPlan

        self.model_path = model_path
        self.output_path = output_path
        self.check_feeds = check_feeds
        self.latency_repeats = latency_repeats
        self.option_controls: dict[str, widgets.Widget] = {}
        self._plan = SurgeryPlan()
        super().__init__(title=title)
        self.add_button = widgets.Button(description="Add edit", icon="plus", tooltip="Append this edit to the plan")
        self.add_button.on_click(lambda _button: self.add_edit())
        self.remove_button = widgets.Button(
            description="Remove last", icon="minus", tooltip="Remove the plan's last edit"
        )
        self.remove_button.on_click(lambda _button: self.remove_last())
        self.plan_status = widgets.HTML("")
        self.plan_html = widgets.HTML("")
        self.plan = plan if plan is not None else SurgeryPlan()
        netron_row = self._build_netron()
        if self.netron_button is not None:
            self.netron_button.tooltip = "Serve the edited model (the input model before a run) with netron"
        self.widget.children = (
            self.title_widget,
            widgets.VBox(list(self.controls.values())),
            widgets.HBox([self.add_button, self.remove_button, self.plan_status]),
            self.plan_html,
            widgets.HBox([self.run_button, self.status]),
            netron_row,
            self.error_output,
            self.output,
            self.netron_output,
        )

    # -- the plan builder --------------------------------------------------------------------------------------

    @property
    def plan(self) -> Any:
        return self._plan

    @plan.setter
    def plan(self, plan: Any) -> None:
        from workbench.stages.surgery.edits import SurgeryPlan

        if not isinstance(plan, SurgeryPlan):
            raise ConfigError(
                f"SurgeryView.plan must be a SurgeryPlan, got {type(plan).__name__}.",
                fix="wrap the edits: SurgeryPlan((FoldConstants(), Cleanup()))",
            )
        self._plan = plan
        self.plan_html.value = plan._repr_html_() + ("" if plan.edits else "<i>no edits yet: add some above</i>")
        self.remove_button.disabled = not plan.edits

    def _controls(self) -> dict[str, widgets.Widget]:
        from workbench.stages.surgery.edits import EDIT_TYPES

        self.kind = widgets.Dropdown(
            options=list(EDIT_TYPES),
            value=next(iter(EDIT_TYPES)),
            description="edit",
            style={"description_width": "14em"},
            layout=widgets.Layout(width="36em"),
        )
        self.edit_doc = widgets.HTML("")
        self.options_box = widgets.VBox([])
        self.kind.observe(lambda change: self._build_options(change["new"]), names="value")
        self._build_options(self.kind.value)
        return {"kind": self.kind, "description": self.edit_doc, "options": self.options_box}

    def _build_options(self, kind: str) -> None:
        from workbench.stages.surgery.edits import EDIT_TYPES

        edit_cls = EDIT_TYPES[kind]
        self.option_controls = controls_for(edit_cls, choices=_edit_choices().get(kind))
        self.options_box.children = tuple(self.option_controls.values()) or (
            widgets.HTML("<small><i>this edit has no options</i></small>"),
        )
        first_paragraph = " ".join((edit_cls.__doc__ or "").strip().split("\n\n")[0].split())
        self.edit_doc.value = f"<small><i>{html.escape(first_paragraph)}</i></small>"

    def add_edit(self) -> Any:
        """What "Add edit" does: append the chosen edit, built from its option controls; returns it.

        A bad option (a ConfigError from the edit's config) is shown in the error panel; the plan is unchanged
        and None is returned.
        """
        from workbench.stages.surgery.edits import EDIT_TYPES

        try:
            edit = config_from_controls(EDIT_TYPES[self.kind.value], self.option_controls)
        except Exception as exc:
            self.error_output.value = _error_html(exc)
            first_line = str(exc).splitlines()[0] if str(exc) else ""
            self.plan_status.value = (
                f'<span style="{_ERROR_STYLE}">not added: '
                f"{html.escape(type(exc).__name__)}: {html.escape(first_line)}</span>"
            )
            return None
        self.plan = self.plan.then(edit)
        self.error_output.value = ""
        self.plan_status.value = f"added <code>{html.escape(edit.kind)}</code> ({len(self.plan)} edits)"
        return edit

    def remove_last(self) -> Any:
        """What "Remove last" does: drop the plan's last edit; returns it (None for an empty plan)."""
        from workbench.stages.surgery.edits import SurgeryPlan

        if not self.plan.edits:
            return None
        removed = self.plan.edits[-1]
        self.plan = SurgeryPlan(self.plan.edits[:-1])
        self.plan_status.value = f"removed <code>{html.escape(removed.kind)}</code> ({len(self.plan)} edits)"
        return removed

    # -- running -----------------------------------------------------------------------------------------------

    def _run(self) -> Any:
        from workbench.stages.surgery.run import run_surgery

        return run_surgery(
            self.model_path,
            self.output_path,
            self.plan,
            check_feeds=self.check_feeds,
            latency_repeats=self.latency_repeats,
        )

    def _show(self, result: Any) -> None:
        self.show(result)

    def _netron_path(self) -> str | os.PathLike[str]:
        return self.result.path if self.result is not None else self.model_path
