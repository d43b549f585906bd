"""Accuracy views: compare candidates with the reference, find the layers that lose accuracy, and fix them.

    AccuracyView(reference, {"int8": "model_int8.onnx"}, feeds, budget=AccuracyBudget())   # compare_candidates
    DiagnosisView(fused, "model_int8.onnx", feeds[:4])                                       # diagnose
    FixView(fused, PrecisionPlan.preset("cpu_int8_dynamic"), feeds, "runs/fix", reference=export)

FixView is the manual fix and the automatic one side by side: pin nodes to FP32 (PrecisionPlan.pin / unpin) and
Re-run (`evaluate_plan`: convert with the plan, then measure it), or let Auto-fix (`autofix`) search for the
fewest pins that meet the budget, one line per trial while it runs.

Each button is one library call; nothing heavy is imported until a button runs it.
"""

from __future__ import annotations

import html
import inspect
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from workbench.errors import ConfigError
from workbench.ui.base import StageView, _error_html, _headline

__all__ = ["AccuracyView", "DiagnosisView", "FixView"]

_STYLE = {"description_width": "14em"}
_LAYOUT = {"width": "36em"}
_ERROR_STYLE = "color:#b00020"
# Figures a ComparisonReport may offer (called without arguments when it has them).
REPORT_FIGURES = ("metric_figure", "error_histogram_figure")


def _budget_class() -> type:
    from workbench.stages.accuracy.compare import AccuracyBudget

    return AccuracyBudget


def report_figures(report: Any) -> list[Any]:
    """The figures of `report` among REPORT_FIGURES that it has and that need no argument, in that order."""
    figures = []
    for name in REPORT_FIGURES:
        method = getattr(report, name, None)
        if not callable(method):
            continue
        try:
            inspect.signature(method).bind()
        except (TypeError, ValueError):  # it needs arguments: not one to show unasked
            continue
        figures.append(method())
    return figures


# ---------------------------------------------------------------------------------------------------------------
# AccuracyView
# ---------------------------------------------------------------------------------------------------------------


class AccuracyView(StageView):
    """Compare candidates with the FP32 reference under a budget you set.

    Controls: the AccuracyBudget's fields. Run calls `compare_candidates(reference, candidates, feeds,
    budget=...)` and shows the report (with its metric and error-histogram figures where the report has them).

    Args:
        reference: The FP32 model.
        candidates: Name -> model path.
        feeds: Evaluation feed dicts (padded as served).
        budget: The budget the controls start from (default AccuracyBudget()).
        title: Heading of the view.

    Attributes:
        result: The ComparisonReport of the last successful run (truthy when every candidate meets the budget).
    """

    title = "Accuracy against the FP32 reference"

    def __init__(
        self,
        reference: str | os.PathLike[str],
        candidates: Mapping[str, str | os.PathLike[str]],
        feeds: Sequence[Mapping[str, Any]],
        *,
        budget: Any = None,
        title: str | None = None,
    ) -> None:
        self.reference = reference
        self.candidates = dict(candidates)
        self.feeds = list(feeds)
        self.config_cls = _budget_class()  # type: ignore[misc]
        super().__init__(title=title, config_base=budget)

    def _run(self) -> Any:
        from workbench.stages.accuracy.compare import compare_candidates

        return compare_candidates(self.reference, self.candidates, self.feeds, budget=self.config())

    def _show(self, result: Any) -> None:
        self.show(result)
        for figure in report_figures(result):
            self.show(figure)


# ---------------------------------------------------------------------------------------------------------------
# DiagnosisView
# ---------------------------------------------------------------------------------------------------------------


class DiagnosisView(StageView):
    """Where along the graph a candidate loses accuracy, layer by layer.

    Run calls `diagnose(reference, candidate, feeds)` and shows the nodes that add the most error and the
    error-along-the-graph chart. Pin the worst nodes in a FixView.

    Args:
        reference: The FP32 model the candidate was converted from (the fused graph, for a fused candidate).
        candidate: The converted model.
        feeds: Evaluation feed dicts (a few batches are enough).
        title: Heading of the view.

    Attributes:
        result: The Diagnosis of the last successful run.
    """

    title = "Diagnosis: which layers lose the accuracy"

    def __init__(
        self,
        reference: str | os.PathLike[str],
        candidate: str | os.PathLike[str],
        feeds: Sequence[Mapping[str, Any]],
        *,
        title: str | None = None,
    ) -> None:
        self.reference = reference
        self.candidate = candidate
        self.feeds = list(feeds)
        super().__init__(title=title)

    def _run(self) -> Any:
        from workbench.stages.accuracy.diagnose import diagnose

        return diagnose(self.reference, self.candidate, self.feeds)

    def _show(self, result: Any) -> None:
        self.show(result)
        self.show(result.figure())


# ---------------------------------------------------------------------------------------------------------------
# FixView
# ---------------------------------------------------------------------------------------------------------------


class FixView(StageView):
    """Keep nodes in FP32 by hand, or let the search find the fewest that meet the budget.

    Controls: the AccuracyBudget's fields, and the nodes to pin (comma-separated names of `model_path`'s graph).

    - "Pin" / "Unpin": `plan.pin(names)` / `plan.unpin(names)`; the plan is shown below the buttons.
    - "Re-run" (the view's run button): `evaluate_plan(model_path, plan, evaluation_feeds,
      output_dir / "manual.onnx", ...)`, which converts with the plan and measures the result.
    - "Auto-fix": `autofix(model_path, plan, evaluation_feeds, output_dir / "autofix", ...)`, one line per trial
      in the progress area while it runs; the plan it found becomes the view's plan.

    A failure (a pinned name that is not in the graph, a budget out of reach) is shown in the error panel and
    keeps the previous result. Every button is disabled while Re-run or Auto-fix runs.

    Args:
        model_path: The FP32 model the plan converts (node names are this model's; the fused graph, usually).
        plan: The PrecisionPlan to start from (e.g. PrecisionPlan.preset("cpu_int8_dynamic")).
        evaluation_feeds: Held-out feed dicts, padded as served.
        output_dir: Where Re-run's model and Auto-fix's trials go.
        reference: The FP32 model accuracy is measured against; default `model_path`.
        calibration_feeds: For static INT8, SmoothQuant and FP16's overflow scan.
        budget: The budget the controls start from (default AccuracyBudget()).
        cache_dir: Calibration cache folder.
        config: The AutofixConfig of Auto-fix (default AutofixConfig()).
        title: Heading of the view.

    Attributes:
        result: The last successful PlanEvaluation (Re-run) or AutofixResult (Auto-fix).
        plan: The current PrecisionPlan (settable).
        trials: The trials Auto-fix reported so far (the last search's).
        nodes: The node-names Text (also `controls["nodes"]`).
        pin_button, unpin_button, autofix_button, plan_status, plan_html, progress: the other widgets; the run
            button reads "Re-run".
    """

    title = "Fix: keep the nodes that lose accuracy in FP32"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        plan: Any,
        evaluation_feeds: Sequence[Mapping[str, Any]],
        output_dir: str | os.PathLike[str],
        *,
        reference: str | os.PathLike[str] | None = None,
        calibration_feeds: Sequence[Mapping[str, Any]] | None = None,
        budget: Any = None,
        cache_dir: str | os.PathLike[str] | None = None,
        config: Any = None,
        title: str | None = None,
    ) -> None:
        self.model_path = model_path
        self.evaluation_feeds = list(evaluation_feeds)
        self.output_dir = Path(output_dir)
        self.reference = reference
        self.calibration_feeds = list(calibration_feeds) if calibration_feeds is not None else None
        self.cache_dir = cache_dir
        self.autofix_config = config
        self.trials: list[Any] = []
        self._action = "evaluate"
        self.config_cls = _budget_class()  # type: ignore[misc]
        super().__init__(title=title, config_base=budget)
        self.run_button.description = "Re-run"
        self.run_button.icon = "refresh"
        self.run_button.tooltip = "Convert with the current plan and measure it against the reference"
        self.pin_button = widgets.Button(
            description="Pin", icon="thumb-tack", tooltip="Keep these nodes in FP32 (PrecisionPlan.pin)"
        )
        self.pin_button.on_click(lambda _button: self.pin())
        self.unpin_button = widgets.Button(
            description="Unpin", icon="times", tooltip="Let these nodes run at the plan's precision again"
        )
        self.unpin_button.on_click(lambda _button: self.unpin())
        self.autofix_button = widgets.Button(
            description="Auto-fix",
            icon="magic",
            button_style="warning",
            tooltip="Search for the fewest FP32 nodes that meet the budget",
        )
        self.autofix_button.on_click(lambda _button: self.autofix())
        self.plan_status = widgets.HTML("")
        self.plan_html = widgets.HTML("")
        self.progress = widgets.HTML("")
        self.plan = plan
        self.widget.children = (
            self.title_widget,
            widgets.VBox(list(self.controls.values())),
            widgets.HBox([self.pin_button, self.unpin_button, self.plan_status]),
            self.plan_html,
            widgets.HBox([self.run_button, self.autofix_button, self.status]),
            self.error_output,
            self.progress,
            self.output,
        )

    # -- controls and the plan -----------------------------------------------------------------------------------

    def _controls(self) -> dict[str, widgets.Widget]:
        controls = dict(super()._controls())  # type: ignore[arg-type]  # the config's controls are a dict here
        self.nodes = widgets.Text(
            description="nodes to pin",
            placeholder="node names, comma-separated",
            style=dict(_STYLE),
            layout=widgets.Layout(**_LAYOUT),
            tooltip="Names of nodes of the model (e.g. from the diagnosis) to keep in FP32",
        )
        return {**controls, "nodes": self.nodes}

    @property
    def plan(self) -> Any:
        return self._plan

    @plan.setter
    def plan(self, plan: Any) -> None:
        from workbench.stages.precision.plan import PrecisionPlan

        if not isinstance(plan, PrecisionPlan):
            raise ConfigError(
                f"FixView.plan must be a PrecisionPlan, got {type(plan).__name__}.",
                fix='start from a preset: PrecisionPlan.preset("cpu_int8_dynamic")',
            )
        self._plan = plan
        self.plan_html.value = plan._repr_html_()

    def names(self) -> tuple[str, ...]:
        """The node names typed in the nodes control."""
        from workbench.stages.precision.choices import parse_node_names

        return parse_node_names(self.nodes.value)

    def pin(self) -> Any:
        """What "Pin" does: keep the typed nodes in FP32 (`plan.pin`); returns the new plan, None on failure."""
        return self._edit_plan("pin")

    def unpin(self) -> Any:
        """What "Unpin" does: run the typed nodes at the plan's precision again; returns the new plan."""
        return self._edit_plan("unpin")

    def _edit_plan(self, action: str) -> Any:
        if self._running:
            return None
        self.error_output.value = ""
        try:
            names = self.names()
            if not names:
                raise ConfigError(
                    f"No node names to {action}.", fix="type node names, comma-separated, e.g. from the diagnosis table"
                )
            plan = self.plan.pin(names) if action == "pin" else self.plan.unpin(names)
        except Exception as exc:
            self.error_output.value = _error_html(exc)
            self.plan_status.value = f'<span style="{_ERROR_STYLE}">{html.escape(_headline(exc))}</span>'
            return None
        self.plan = plan
        listed = ", ".join(f"<code>{html.escape(n)}</code>" for n in names)
        self.plan_status.value = (
            f"{'pinned' if action == 'pin' else 'unpinned'} {listed} ({len(plan.keep_fp32)} node(s) kept in FP32)"
        )
        return plan

    # -- running -------------------------------------------------------------------------------------------------

    def autofix(self, *, raise_errors: bool = False) -> Any:
        """What "Auto-fix" does (through `run`): returns the AutofixResult, or None when the search failed."""
        self._action = "autofix"
        try:
            return self.run(raise_errors=raise_errors)
        finally:
            self._action = "evaluate"

    def run(self, *, raise_errors: bool = False) -> Any:
        """StageView.run, with every button of the view disabled while it runs."""
        buttons = (self.pin_button, self.unpin_button, self.autofix_button)
        if self._running:
            return None
        for button in buttons:
            button.disabled = True
        try:
            return super().run(raise_errors=raise_errors)
        finally:
            for button in buttons:
                button.disabled = False

    def _run(self) -> Any:
        budget = self.config()
        if self._action == "autofix":
            return self._autofix(budget)
        from workbench.stages.accuracy.fixes import evaluate_plan

        return evaluate_plan(
            self.model_path,
            self.plan,
            self.evaluation_feeds,
            self.output_dir / "manual.onnx",
            reference=self.reference,
            budget=budget,
            calibration_feeds=self.calibration_feeds,
            cache_dir=self.cache_dir,
        )

    def _autofix(self, budget: Any) -> Any:
        from workbench.stages.accuracy.autofix import AutofixConfig, autofix

        self.trials = []
        self.progress.value = "<b>Auto-fix trials</b>"
        result = autofix(
            self.model_path,
            self.plan,
            self.evaluation_feeds,
            self.output_dir / "autofix",
            budget=budget,
            reference=self.reference,
            calibration_feeds=self.calibration_feeds,
            config=self.autofix_config if self.autofix_config is not None else AutofixConfig(),
            cache_dir=self.cache_dir,
            progress=self._on_trial,
        )
        self.plan = result.plan
        return result

    def _on_trial(self, event: Any) -> None:
        """autofix's progress callback: one line per finished trial in the progress area."""
        trial = event.item
        if trial is None:  # a trial starting, or the diagnosis: no line of its own
            return
        self.trials.append(trial)
        verdict = "meets" if trial.meets_budget else "misses"
        smoothed = ", smoothed" if trial.smoothed else ""
        self.progress.value += (
            f"<br>trial {trial.index} ({html.escape(trial.stage)}{smoothed}): "
            f"{len(trial.pins)} pin(s), cosine mean {trial.cosine_mean:.5f}, "
            f"min {trial.cosine_min:.5f}, {verdict} the budget, {trial.latency_ms:.2f} ms"
        )

    def _show(self, result: Any) -> None:
        self.show(result)
        if hasattr(result, "figure"):  # an AutofixResult: latency vs accuracy of every trial
            self.show(result.figure())
        self.show(self.plan)
