"""The guided Workbench: every pipeline step as a panel, in order, over one Pipeline, recorded as a recipe.

    wb = Workbench.from_parameters(model_path="models/bert", output_dir="runs/wb")   # then click Run, step by step
    wb.save_recipe("runs/wb/recipe.json")         # replay headless: python -m workbench run runs/wb/recipe.json

Panels: "load" (the Workbench's own: it builds the Pipeline), then one per step the Pipeline class registers
(workbench.pipeline.Step), in registry order: export, fuse, surgery (a plan of edits), quantize, quantize_smoothquant,
convert (any precision plan), compare (accuracy), autofix, benchmark, choose, export_triton (deploy), write_summary,
and any step an extended pipeline adds. Each panel's controls come from the config or parameters its step reads;
where a stage has its own view, the panel hosts it (the precision plan's methods and choices, the surgery plan
builder, the accuracy report with its fixes, the auto-fix trial chart and Pareto front). Its Run sets that config
on the Pipeline and calls ONE registered step. A panel's Run is enabled once the steps it needs have run.

A click runs the step in a worker thread, so the notebook stays responsive: the panel shows a progress bar with the
elapsed time and what the step is doing (the stage's progress events), and a Stop button that ends it at its next
unit of work (nothing half-written is kept; the step shows "stopped"). Its status line says "not run",
"running...", "done in X s", "failed: <error>" (the full error in the panel, in the words of its controls;
earlier results stay as they were), "stopped" or "stale" (a step it reads ran again since). What the libraries
said while it ran is in a collapsible log under the result, not in stderr.

The Workbench keeps <output_dir>/recipe.json (what ran, replayable) and <output_dir>/workbench_state.pkl (the
results; workbench.ui.state) up to date after every step: a Workbench built again on the same parameters (the
cell re-run, the page reloaded, the kernel restarted) re-attaches to them and shows the finished steps as done,
with their results. Loading another model clears every panel.
"""

from __future__ import annotations

import html
import os
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import ipywidgets as widgets

from workbench.errors import ConfigError, WorkbenchError
from workbench.pipeline import STEPS, Pipeline, PipelineParameters
from workbench.progress import Stopped
from workbench.stages.export import EXPORTERS, ExportConfig
from workbench.stages.precision.quantize import WEIGHT_TYPES, DynamicQuantConfig
from workbench.ui.base import StageView, _error_html, _headline, user_words
from workbench.ui.controls import config_from_controls, controls_for
from workbench.ui.progress import ProgressBar

__all__ = ["Workbench", "STEP_KEYS", "NOT_RUN", "RUNNING", "DONE", "FAILED", "STALE", "STOPPED", "panel_for"]

# step states
NOT_RUN, RUNNING, DONE, FAILED, STALE, STOPPED = "not run", "running", "done", "failed", "stale", "stopped"

#: The Workbench's own first step (it builds the Pipeline), then every registered pipeline step.
LOAD = "load"
STEP_KEYS = (LOAD, *STEPS.names)
# Other names for the steps, as the issue and the stage views call them (a registered step's own name wins).
ALIASES = {
    "graph_surgery": "fuse",
    "fusion": "fuse",
    "precision": "quantize",
    "accuracy": "compare",
    "choice": "choose",
    "deploy": "export_triton",
    "triton": "export_triton",
    "summary": "write_summary",
    "smoothquant": "quantize_smoothquant",
    "precision_plan": "convert",
    "fix": "autofix",
}
_STATE_COLORS = {
    NOT_RUN: "#777",
    RUNNING: "#1565c0",
    DONE: "#2e7d32",
    FAILED: "#b00020",
    STALE: "#a86b00",
    STOPPED: "#6d4c41",
}


# -----------------------------------------------------------------------------------------------------------------
# the step panels
# -----------------------------------------------------------------------------------------------------------------


def _missing_here(steps: Any, key: str, error: BaseException) -> bool:
    """Whether `error` is a skippable step saying what it needs is not installed (or present) here."""
    from workbench.errors import DeviceUnavailable, MissingDependency

    return key in steps and steps[key].skippable and isinstance(error, (MissingDependency, DeviceUnavailable))


class StepPanel(StageView):
    """One Workbench step: a StageView whose Run calls one registered step of the Workbench's pipeline.

    Built from the step's declaration (workbench.pipeline.Step): its title, blurb, what it needs; its controls
    are the fields of the one config it reads (`Step.configs`), else the PipelineParameters fields it reads
    (`Step.parameters`). Subclasses (registered with :func:`panel_for`) only refine labels, choices and what is
    shown, or host the stage's own view; any step a Pipeline registers gets this generic panel.

    While it runs (in a worker thread when the Run button is clicked, so the notebook stays responsive), the
    panel shows a progress bar with the elapsed time, driven by the stage's progress events, and a Stop button:
    the stage stops at its next unit of work, nothing it was writing is kept, and the step is marked "stopped".
    What the libraries said while it ran (warnings, log records) is in the collapsible log under its result.

    Attributes:
        step: The Step it runs.
        state: "not run", "running", "done", "failed", "stopped" or "stale".
        runs: How many times it ran; the status line carries it as `data-run` once a run ends, so a browser test
            can wait for the end of the run it started.
        workbench: The Workbench it belongs to.
        needs: The HTML line that says which steps must run first (empty once they have).
        settings: The Accordion the controls fold into (closed at first; `settings.selected_index = 0` opens it).
        progress: Its ProgressBar (workbench.ui.progress); stop_button: the Stop button (shown while it runs).
        log: The collapsible log of its last run (HTML); log_text: that log as text.
        stopped: Whether its last run was stopped.
    """

    placeholders: ClassVar[Mapping[str, str]] = {}
    short: str = ""  # class defaults; a step's panel takes its own from the step
    blurb: str = ""
    open_settings: ClassVar[bool] = False

    def __init__(self, workbench: Workbench, number: int, step: Any, *, config_base: Any = None) -> None:
        self.workbench = workbench
        self.step = step
        self.title = step.title if step is not None else type(self).title  # type: ignore[misc]
        self.key = step.name if step is not None else LOAD
        self.short = step.short if step is not None else self.short
        self.blurb = step.blurb if step is not None else self.blurb
        self.config_attr = step.configs[0] if step is not None and len(step.configs) == 1 else None
        if self.config_attr is not None and config_base is not None and type(self).config_cls is None:
            self.config_cls = type(config_base)
        self.state = NOT_RUN
        self.runs = 0
        self.stopped = False
        self.log_text = ""
        super().__init__(title=f"{number}. {step.title if step is not None else self.title}", config_base=config_base)
        self.needs = widgets.HTML("")
        self.blurb_widget = widgets.HTML(f"<small><i>{html.escape(self.blurb)}</i></small>" if self.blurb else "")
        # the controls fold away under "settings" (their defaults are what most runs want)
        self.settings = widgets.Accordion(
            children=(widgets.VBox(list(self.controls.values())),),
            titles=("settings",),
            selected_index=0 if self.open_settings else None,
        )
        self.settings.add_class("wb-settings")
        self.progress = ProgressBar()
        self.stop_button = widgets.Button(
            description="Stop",
            icon="stop",
            button_style="danger",
            tooltip="Stop this step at its next unit of work; nothing half-written is kept",
            layout=widgets.Layout(display="none"),
        )
        self.stop_button.add_class("wb-stop")
        self.stop_button.on_click(lambda _button: self.stop())
        self.log = widgets.HTML("")
        self.log.add_class("wb-log")
        self.extra = widgets.VBox([])  # what a refined panel adds under the result (a fix to try, a re-run)
        self.controls_row = widgets.HBox([self.run_button, self.stop_button, self.status])
        self.widget.children = (
            self.title_widget,
            self.blurb_widget,
            *((self.settings,) if self.controls else ()),
            self.controls_row,
            self.needs,
            self.progress.widget,
            self.error_output,
            self.output,
            self.extra,
            self.log,
        )
        self.widget.add_class("wb-step")
        self.widget.add_class(f"wb-step-{self.key}")
        self.status.add_class("wb-status")
        self.run_button.add_class("wb-run")
        self.widget.layout = widgets.Layout(border="1px solid #d0d7de", padding="0 12px 8px 12px", margin="6px 0")

    # -- controls -----------------------------------------------------------------------------------------------

    def _controls(self) -> Mapping[str, widgets.Widget]:
        if self.config_cls is not None:
            controls = dict(super()._controls())
        elif self.step is not None and self.step.parameters:
            from dataclasses import fields

            base = self.workbench.parameters
            exclude = [f.name for f in fields(PipelineParameters) if f.name not in self.step.parameters]
            controls = dict(controls_for(base, exclude=exclude, labels=self.config_labels))
        else:
            controls = {}
        for name, text in self.placeholders.items():
            if name in controls:
                controls[name].placeholder = text
        return controls

    def _prepare(self, pipeline: Any) -> dict[str, Any]:
        """Set the step's config (or parameters) on `pipeline` from the controls; return the call's arguments."""
        if self.config_attr is not None and self.config_cls is not None:
            setattr(pipeline, self.config_attr, self.config())
        elif self.step is not None and self.step.parameters:
            pipeline.parameters = config_from_controls(PipelineParameters, self.controls, base=pipeline.parameters)
        return {}

    def rebuild(self, config_base: Any) -> None:
        """New controls for another config type (a new model's task has another Budget type)."""
        self.config_cls = type(config_base)
        self.config_base = config_base
        self.controls = dict(self._controls())
        self.settings.children = (widgets.VBox(list(self.controls.values())),)

    def show_config(self, pipeline: Any) -> None:
        """Set the controls to what the step last ran with on `pipeline` (a re-attached run)."""
        if self.config_attr is not None and self.config_cls is not None:
            config = getattr(pipeline, self.config_attr, None)
            if isinstance(config, self.config_cls):
                for name, control in self.controls.items():
                    if hasattr(config, name):
                        _set_control(control, getattr(config, name))
        elif self.step is not None and self.step.parameters:
            for name in self.step.parameters:
                if name in self.controls:
                    _set_control(self.controls[name], getattr(pipeline.parameters, name))

    def refresh_inputs(self) -> None:
        """Called after every step: a panel whose choices depend on the run (the candidates) updates them."""

    # -- running ------------------------------------------------------------------------------------------------

    def _run(self) -> Any:
        missing = self.workbench.missing_inputs(self.key)
        if missing:
            titles = ", ".join(str(self.workbench.panels[step].title) for step in missing)
            raise WorkbenchError(f"{self.title} needs {titles} first.", fix=f"run {titles} (the Run buttons above)")
        pipeline = self.workbench.pipeline
        kwargs = self._prepare(pipeline)
        return pipeline.run_step(self.key, **kwargs)

    def run(self, *, raise_errors: bool = False) -> Any:
        """StageView.run with a progress bar and a Stop button; then the Workbench updates every step's state
        (and stale marks), the recipe and the saved state. A stopped run keeps the previous result and returns
        None."""
        if self._running:
            return None
        self.state = RUNNING
        self.runs += 1
        self.stopped = False
        self.workbench._before_run(self)
        pipeline = self.workbench.pipeline
        self.progress.start(self.short or str(self.title))
        self.stop_button.disabled = False
        self.stop_button.layout.display = "inline-flex"
        if pipeline is not None:
            pipeline.progress = self.progress.callback
        ended = FAILED
        try:
            try:
                result = super().run(raise_errors=raise_errors)
            except Stopped:
                self.stopped = True
                ended = STOPPED
                seconds = self.progress.elapsed_s
                self.status.value = (
                    f'<span style="color:{_STATE_COLORS[STOPPED]}">stopped after {seconds:.1f} s: '
                    "nothing it was writing was kept"
                    + ("; the previous result stands" if self.result is not None else "")
                    + "</span>"
                )
                return None
            ended = DONE if self.error is None else FAILED
            return result
        finally:
            if pipeline is not None:
                pipeline.progress = None
                self.show_log(pipeline.logs.get(self.key, "") if self.key != LOAD else "")
            self.progress.finish(ended)
            self.stop_button.layout.display = "none"
            self.workbench._after_run(self)

    def stop(self) -> None:
        """What Stop does: the running stage ends at its next unit of work (batch, timing round, fix trial)."""
        if self._running:
            self.progress.request_stop()
            self.stop_button.disabled = True

    def click(self) -> None:
        """Click the Run button, as a user does (errors are shown, not raised), and wait for the step to end."""
        self.run_button.click()
        self.workbench.wait()

    def _on_click(self, _button: widgets.Button) -> None:
        self.workbench.start(self)

    def _fail(self, exc: BaseException) -> None:
        labels = {**self.workbench.labels(), **self.labels()}
        self.error = exc
        self.status.value = (
            f'<span style="color:{_STATE_COLORS[FAILED]}">failed: '
            f"{html.escape(user_words(_headline(exc), labels))}</span>"
        )
        self.error_output.value = _error_html(exc, labels)

    def show_log(self, text: str) -> None:
        """Show what the libraries said during the step, folded (nothing when they said nothing)."""
        self.log_text = text
        lines = [line for line in text.splitlines() if line.strip()]
        self.log.value = (
            (
                f'<details class="wb-log-details"><summary><small>log: {len(lines)} line(s) from the '
                f'libraries (warnings, messages)</small></summary><pre style="white-space:pre-wrap;'
                f'font-size:85%">{html.escape(text)}</pre></details>'
            )
            if lines
            else ""
        )

    def reset(self) -> None:
        """Forget every result: a new model was loaded."""
        self.result, self.error, self.seconds, self.stopped = None, None, None, False
        self.clear()
        self.error_output.value = ""
        self.extra.children = ()
        self.show_log("")
        self.progress.widget.layout.display = "none"
        self._mark(NOT_RUN, NOT_RUN)

    def restore(self, result: Any, state: str) -> None:
        """Show a result restored from disk (workbench.ui.state) as this step's."""
        self.result, self.error = result, None
        self.clear()
        try:
            self._show(result)
        except Exception as exc:  # the result stands; say why it cannot be shown
            self._fail(exc)
        pipeline = self.workbench.pipeline
        self.show_log(pipeline.logs.get(self.key, "") if pipeline is not None else "")
        record = next((r for r in reversed(pipeline.history) if r.step == self.key), None) if pipeline else None
        seconds = f" in {record.seconds:.2f} s" if record is not None else ""
        if state == STALE:
            self._mark(STALE, "stale: a step it reads ran again since; run again (restored from disk)")
        else:
            self._mark(DONE, f"done{seconds} (restored from disk)")

    def _mark(self, state: str, text: str | None = None) -> None:
        self.state = state
        if text is not None:
            self.status.value = f'<span style="color:{_STATE_COLORS[state]}">{html.escape(text)}</span>'


_PANELS: dict[str, type[StepPanel]] = {}
P = TypeVar("P", bound=type[StepPanel])


def panel_for(step: str) -> Callable[[P], P]:
    """Class decorator: the panel class a step gets (steps without one get the generic StepPanel)."""

    def register(cls: P) -> P:
        _PANELS[step] = cls
        return cls

    return register


class LoadPanel(StepPanel):
    short = "Load"
    title = "Load the model and the data"
    config_cls = PipelineParameters
    config_exclude = ("benchmark_batch_sizes", "benchmark_iterations", "triton_model_name", "overwrite")
    config_labels = {"model_path": "model path", "data_dir": "data folder"}
    placeholders = {
        "model_path": "empty: the bundled all-MiniLM-L6-v2",
        "task": "empty: from the model's config",
        "data_dir": "empty: the bundled data (data/)",
        "threads": "empty: all cores",
    }
    blurb = (
        "A local Hugging Face folder or an .onnx file (nothing is downloaded); its task (from config.json); "
        "the calibration and evaluation data; where every file of the run goes. Running it again starts a new "
        "pipeline; when the output folder holds this very run (same parameters), its finished steps come back."
    )

    def _run(self) -> Any:
        from workbench.ui.state import load_state

        parameters = self.config()
        wb = self.workbench
        from workbench.pipeline import pipeline_class_for

        pipeline_class = pipeline_class_for(parameters) if wb.pipeline_class is Pipeline else wb.pipeline_class
        pipeline = pipeline_class(
            parameters, export_config=wb.export_config, quant_config=wb.quant_config, budget=wb.budget_for(parameters)
        )
        pipeline.sentences  # noqa: B018 - read them now, so a bad data folder fails here and not in a later step
        self.saved = load_state(pipeline)  # the same run in this folder: its results come back
        wb._set_pipeline(pipeline)
        return pipeline

    def _show(self, pipeline: Any) -> None:
        source = pipeline.source
        splits = pipeline.sentences
        rows = [
            ("model", f"{type(source).__name__}: {getattr(source, 'path', source.name)}"),
            ("task", f"{pipeline.task.title} ({pipeline.task.name})"),
            ("samples", f"{len(splits.calibration)} calibration, {len(splits.evaluation)} evaluation"),
            ("output folder", str(pipeline.output_dir)),
        ]
        saved = getattr(self, "saved", None)
        if saved:
            rows.append(("re-attached", f"{len(saved.steps)} finished step(s) restored from {saved.path.name}"))
        elif saved is not None and saved.reason != "no saved state":
            rows.append(("not re-attached", f"{saved.reason}; the next step overwrites {saved.path.name}"))
        rows += [("warning", w) for w in getattr(source, "warnings", ())]
        self.show(
            widgets.HTML(
                "<table>"
                + "".join(
                    f"<tr><td><b>{html.escape(k)}</b></td><td><code>{html.escape(v)}</code></td></tr>" for k, v in rows
                )
                + "</table>"
            )
        )


@panel_for("export")
class ExportPanel(StepPanel):
    config_cls = ExportConfig
    config_choices = {"exporter": EXPORTERS}


@panel_for("surgery")
class SurgeryPanel(StepPanel):
    """The surgery plan builder (workbench.ui.surgery.SurgeryView's edit kinds and options, Add / Remove last);
    Run applies the plan through the pipeline's surgery step."""

    open_settings = True

    def _controls(self) -> Mapping[str, widgets.Widget]:
        from workbench.stages.surgery.edits import Cleanup, FoldConstants, SurgeryPlan
        from workbench.ui.surgery import SurgeryView

        self.view = SurgeryView("", "", plan=SurgeryPlan((FoldConstants(), Cleanup())), title="")
        return {
            "kind": self.view.kind,
            "description": self.view.edit_doc,
            "options": self.view.options_box,
            "edit_buttons": widgets.HBox([self.view.add_button, self.view.remove_button, self.view.plan_status]),
            "plan": self.view.plan_html,
        }

    def _prepare(self, pipeline: Any) -> dict[str, Any]:
        return {"plan": self.view.plan.to_json()}


@panel_for("quantize")
class QuantizePanel(StepPanel):
    config_cls = DynamicQuantConfig
    config_choices = {"weight_type": WEIGHT_TYPES}

    def _show(self, result: Any) -> None:
        from workbench.stages.precision.plan import PrecisionPlan

        self.show(result)
        self.show(PrecisionPlan("int8_dynamic", self.workbench.pipeline.quant_config))


@panel_for("convert")
class PrecisionPanel(StepPanel):
    """The precision view (workbench.ui.precision.PrecisionView): every method the library offers now (each
    PrecisionPlan preset, then each method without one, as an engine adds it), calibration method, SmoothQuant
    and its alpha, nodes kept in FP32, activation statistics; Run converts through the pipeline's convert step
    and adds the candidate the later steps compare and time."""

    open_settings = True

    def _controls(self) -> Mapping[str, widgets.Widget]:
        from workbench.ui.precision import PrecisionView

        self.view = PrecisionView("", "", preset="cpu_int8_static", title="")
        self.view.inputs = self._statistics_inputs
        return dict(self.view.controls)

    def __init__(self, workbench: Workbench, number: int, step: Any, *, config_base: Any = None) -> None:
        super().__init__(workbench, number, step, config_base=config_base)
        self.controls_row.children = (self.run_button, self.stop_button, self.view.stats_button, self.status)
        self.extra.children = (self.view.stats_output,)

    def _statistics_inputs(self) -> tuple[Any, Any]:
        pipeline = self.workbench.pipeline
        if pipeline is None or "export" not in pipeline.results:
            raise WorkbenchError("There is no model to measure yet.", fix="run Export to ONNX first")
        return pipeline._base_model().path, pipeline.calibration_feeds()

    def _prepare(self, pipeline: Any) -> dict[str, Any]:
        return {"plan": self.view.build_plan().to_dict()}

    def _show(self, result: Any) -> None:
        self.show(result)
        pipeline = self.workbench.pipeline
        made = [name for name, c in pipeline.candidates.items() if Path(c.path) == Path(result.path)]
        if made and made[0] in pipeline.plans:
            self.show(widgets.HTML(f"candidate <code>{html.escape(made[0])}</code>"))
            self.show(pipeline.plans[made[0]])


@panel_for("compare")
class AccuracyPanel(StepPanel):
    """The accuracy report with its figures (workbench.ui.accuracy); for every candidate that misses the budget,
    the fix to try, offered in one click (the auto-fix step), and a layer-by-layer diagnosis."""

    def _show(self, report: Any) -> None:
        from workbench.ui.accuracy import report_figures

        self.show(report)
        for figure in report_figures(report):
            self.show(figure)
        self.extra.children = tuple(self._fix_rows(report))

    def _fix_rows(self, report: Any) -> list[widgets.Widget]:
        pipeline = self.workbench.pipeline
        rows: list[widgets.Widget] = []
        for candidate in report.candidates:
            if candidate or pipeline is None or candidate.name not in pipeline.plans:
                continue
            plan = pipeline.plans[candidate.name]
            first = (
                "SmoothQuant first (every node stays INT8), then "
                if plan.smoothing is None and plan.method in ("int8_dynamic", "int8_static")
                else ""
            )
            text = (
                f"<b>{html.escape(candidate.name)}</b> misses the budget "
                f"({html.escape('; '.join(candidate.failures))}). Try the auto-fix: {first}the fewest layers "
                "kept in FP32 that meet it, found from a layer-by-layer diagnosis."
            )
            button = widgets.Button(
                description=f"Auto-fix {candidate.name}",
                icon="magic",
                button_style="warning",
                layout=widgets.Layout(width="auto"),
                tooltip="Run the auto-fix step on this candidate (its fixed model becomes a candidate)",
            )
            button.add_class("wb-fix")
            button.on_click(lambda _button, name=candidate.name: self.workbench.fix(name))
            diagnose = widgets.Button(
                description="Diagnose",
                icon="search",
                layout=widgets.Layout(width="auto"),
                tooltip="Which layers lose the accuracy (quantized alone, one by one)",
            )
            diagnose.on_click(lambda _button, name=candidate.name: self.diagnose(name))
            row = widgets.VBox([widgets.HTML(text), widgets.HBox([button, diagnose])])
            row.add_class("wb-fix-row")
            rows.append(row)
        self.diagnosis_output = widgets.VBox([])
        return [*rows, self.diagnosis_output] if rows else []

    def diagnose(self, name: str) -> Any:
        """The layer-by-layer diagnosis of candidate `name` (workbench.ui.accuracy.DiagnosisView), shown below."""
        from workbench.ui.accuracy import DiagnosisView

        pipeline = self.workbench.pipeline
        view = DiagnosisView(
            pipeline._base_model().path,
            pipeline.candidates[name].path,
            pipeline.evaluation_feeds()[:4],
            title=f"Diagnosis of {name}",
        )
        self.diagnosis_output.children = (view.widget,)
        view.run()
        return view


@panel_for("autofix")
class AutofixPanel(StepPanel):
    """The auto-fix (workbench.ui.accuracy's FixView search): the candidate to fix, then every trial as it runs
    (the progress bar), the trial chart with its Pareto front, and the plan it found."""

    def _controls(self) -> Mapping[str, widgets.Widget]:
        self.candidate = widgets.Dropdown(
            options=[],
            description="candidate to fix",
            style={"description_width": "14em"},
            layout=widgets.Layout(width="36em"),
            tooltip="A candidate made from a precision plan; default: the first that misses the budget",
        )
        return {"candidate": self.candidate}

    open_settings = True

    def refresh_inputs(self) -> None:
        pipeline = self.workbench.pipeline
        names = [n for n in (pipeline.plans if pipeline is not None else {}) if n in pipeline.candidates]
        if list(self.candidate.options) != names:
            current = self.candidate.value
            self.candidate.options = names
            report = pipeline.results.get("compare") if pipeline is not None else None
            missing = [c.name for c in report.candidates if not c and c.name in names] if report is not None else []
            self.candidate.value = (
                current if current in names else (missing[0] if missing else (names[0] if names else None))
            )

    def _prepare(self, pipeline: Any) -> dict[str, Any]:
        return {"candidate": self.candidate.value}

    def _show(self, result: Any) -> None:
        self.show(result)
        self.show(result.figure())
        self.show(result.plan)
        name = next(
            (n for n, c in self.workbench.pipeline.candidates.items() if Path(c.path) == Path(result.path)), None
        )
        if name:
            self.show(
                widgets.HTML(
                    f"The fixed model is the candidate <code>{html.escape(name)}</code>: run Accuracy "
                    "and Benchmark again to compare and time it with the others."
                )
            )


@panel_for("benchmark")
class BenchmarkPanel(StepPanel):
    config_labels = {"benchmark_batch_sizes": "batch sizes", "benchmark_iterations": "iterations"}

    def _show(self, result: Any) -> None:
        self.show(result)
        self.show(result.figure(baseline="pytorch" if "pytorch" in result.names else None))
        self.show(result.latency_figure())
        if "pytorch" in result.names:
            self.show(result.speedup_figure("pytorch"))
        rerun = []
        if getattr(result, "warnings", ()):
            button = widgets.Button(
                description="Re-run the benchmark",
                icon="refresh",
                button_style="warning",
                layout=widgets.Layout(width="auto"),
                tooltip="Time again (best when nothing else runs on this machine)",
            )
            button.add_class("wb-rerun")
            button.on_click(lambda _button: self.workbench.start(self))
            rerun = [
                widgets.HTML(
                    "<b>These timings look like a busy machine's</b> (see above): re-run them when "
                    "the machine is quiet."
                ),
                button,
            ]
        self.extra.children = tuple(rerun)


@panel_for("choose")
class ChoosePanel(StepPanel):
    def _controls(self) -> Mapping[str, widgets.Widget]:
        batch = widgets.IntText(
            value=int(self.config_base or 1),
            description="batch size",
            style={"description_width": "14em"},
            layout=widgets.Layout(width="36em"),
            tooltip="The batch size the choice optimises latency for (one of those benchmarked)",
        )
        return {"batch": batch}

    def _prepare(self, pipeline: Any) -> dict[str, Any]:
        return {"batch": int(self.controls["batch"].value)}

    def show_config(self, pipeline: Any) -> None:
        record = next((r for r in reversed(pipeline.history) if r.step == "choose"), None)
        if record is not None and "batch" in record.args:
            self.controls["batch"].value = int(record.args["batch"])

    def _show(self, choice: Any) -> None:
        from workbench.stages.choose import candidates_table, pareto_figure

        self.show(choice)
        pipeline = self.workbench.pipeline
        report, timings = pipeline.results.get("compare"), pipeline.results.get("benchmark")
        if report is not None and timings is not None:
            try:
                self.show(candidates_table(report, timings, choice.batch, choice.seq))
                self.show(pareto_figure(report, timings, choice.batch, choice.seq))
            except WorkbenchError:  # the table needs both for the same candidates; the choice stands without it
                pass


@panel_for("export_triton")
class DeployPanel(StepPanel):
    config_labels = {"triton_model_name": "model name", "overwrite": "overwrite"}
    placeholders = {"triton_model_name": "empty: from the model's folder name"}


@panel_for("write_summary")
class SummaryPanel(StepPanel):
    def _show(self, summary: Any) -> None:
        from workbench.summary import format_summary

        self.show(format_summary(summary))


# -----------------------------------------------------------------------------------------------------------------
# the workbench
# -----------------------------------------------------------------------------------------------------------------


class Workbench:
    """Every pipeline step as a panel over one Pipeline; what ran is a replayable Recipe.

    Args:
        parameters: The run's parameters (the load step's controls start from them).
        export_config, quant_config, budget: The configs the export, precision and accuracy steps start from
            (budget None: the task's default budget).
        choose_batch: The batch size the choice step starts from.
        recipe: A Recipe whose step order "Run all" follows (see from_recipe).
        load: Run the load step now (the model is only located, not read; a failure shows in its panel).
        autosave: Keep <output_dir>/recipe.json and <output_dir>/workbench_state.pkl (the results, which a
            Workbench on the same parameters re-attaches to) up to date after every step.
        pipeline_class: The Pipeline class whose registered steps become the panels (an extended pipeline's
            steps appear as panels too).
        background: A click runs its step in a worker thread (the notebook stays responsive; Stop works);
            `panel.run()` and `run_all()` called from code always run in the calling thread.

    Attributes:
        pipeline: The Pipeline the steps run on (None until load has run).
        panels: Step key -> its StepPanel ("load", then every registered step; `wb["precision"]` and other
            ALIASES work too).
        widget: The whole UI (a VBox); displaying the Workbench displays it.
        recipe_path, save_button, run_all_button, message, overview: the toolbar's and the overview's widgets.
        saved: What the load step re-attached to (workbench.ui.state.SavedState), or None.
        worker: The thread running the step (or "Run all") a click started, while it runs.
    """

    def __init__(
        self,
        parameters: PipelineParameters = PipelineParameters(),
        *,
        export_config: Any = None,
        quant_config: Any = None,
        budget: Any = None,
        choose_batch: int = 1,
        recipe: Any = None,
        load: bool = True,
        autosave: bool = True,
        pipeline_class: type[Pipeline] = Pipeline,
        background: bool = True,
    ) -> None:
        if not isinstance(parameters, PipelineParameters):
            raise ConfigError(
                f"Workbench takes PipelineParameters, got {type(parameters).__name__}.",
                fix="use Workbench.from_parameters(**values)",
            )
        self.parameters = parameters
        self.export_config = export_config if export_config is not None else ExportConfig()
        self.quant_config = quant_config if quant_config is not None else DynamicQuantConfig()
        self.pipeline_class = pipeline_class
        self.steps = pipeline_class.steps
        self.budget = budget if budget is not None else self.budget_for(parameters)
        self.source_recipe = recipe
        self.autosave = autosave
        self.background = background
        self.pipeline: Any = None
        self.saved: Any = None
        self.worker: threading.Thread | None = None
        self._stop_all = False

        configs = {"export_config": self.export_config, "quant_config": self.quant_config, "budget": self.budget}
        self.panels: dict[str, StepPanel] = {LOAD: LoadPanel(self, 1, None, config_base=parameters)}
        for number, declared in enumerate(self.steps, 2):
            base = configs.get(declared.configs[0]) if len(declared.configs) == 1 else None
            if declared.name == "choose":
                base = choose_batch
            panel_cls = _PANELS.get(declared.name, StepPanel)
            self.panels[declared.name] = panel_cls(self, number, declared, config_base=base)

        self.header = widgets.HTML(
            "<h2>Inference Workbench</h2><p>Run the steps in order; each Run is one "
            "pipeline call. What ran is recorded as a recipe that "
            "<code>python -m workbench run</code> replays headless.</p>"
        )
        self.overview = widgets.HTML("")
        self.overview.add_class("wb-overview")
        self.run_all_button = widgets.Button(
            description="Run all steps",
            icon="forward",
            tooltip="Run every step in order (a recipe's steps, when built from one)",
        )
        self.run_all_button.on_click(lambda _button: self.start_all())
        self.recipe_path = widgets.Text(
            value=str(Path(parameters.output_dir) / "recipe.json"),
            description="recipe file",
            style={"description_width": "7em"},
            layout=widgets.Layout(width="36em"),
        )
        self.save_button = widgets.Button(
            description="Save recipe", icon="save", tooltip="Write the recipe of what ran to the recipe file"
        )
        self.save_button.on_click(lambda _button: self._save_clicked())
        self.message = widgets.HTML("")
        self.message.add_class("wb-message")
        toolbar = widgets.HBox([self.run_all_button, self.recipe_path, self.save_button])
        self.widget = widgets.VBox(
            [self.header, toolbar, self.message, self.overview, *(panel.widget for panel in self.panels.values())]
        )
        self.widget.add_class("wb-workbench")
        self._refresh()
        if load:
            self.panels["load"].run()

    # -- construction -------------------------------------------------------------------------------------------

    @classmethod
    def from_parameters(
        cls, *, recipe: Any = None, pipeline_class: type[Pipeline] = Pipeline, **parameters: Any
    ) -> Workbench:
        """Build from keyword parameters, as papermill passes them (unknown names are a ConfigError).

        With `recipe` (a Recipe, a recipe file or a run folder), the recipe's parameters and step configs are
        used and `parameters` override the recipe's parameters (see from_recipe).
        """
        if recipe is not None:
            return cls.from_recipe(recipe, pipeline_class=pipeline_class, **parameters)
        return cls(PipelineParameters.from_dict(parameters), pipeline_class=pipeline_class)

    @classmethod
    def from_notebook(cls, *, recipe: Any = None, output_dir: str | None = None, **parameters: Any) -> Workbench:
        """The notebook's one call. With `recipe`, start from it (only `output_dir` overrides it: the other
        notebook parameters are ignored, so a replay uses the recorded settings); else from `parameters`."""
        if recipe:
            overrides: dict[str, Any] = {"output_dir": output_dir} if output_dir is not None else {}
            return cls.from_recipe(recipe, **overrides)
        return (
            cls.from_parameters(output_dir=output_dir, **parameters)
            if output_dir is not None
            else cls.from_parameters(**parameters)
        )

    @classmethod
    def from_recipe(
        cls, recipe: Any, *, load: bool = True, pipeline_class: type[Pipeline] = Pipeline, **overrides: Any
    ) -> Workbench:
        """A Workbench whose controls hold a recipe's parameters and step configs (the last call of each step).

        Nothing but load runs: "Run all steps" (or `run_all()`) replays the recipe's steps in its order, through
        the panels. `overrides` replace recipe parameters, e.g. output_dir= a new folder.
        """
        from workbench.recipe import Recipe

        if not isinstance(recipe, Recipe):
            recipe = Recipe.load(recipe, pipeline_class=pipeline_class)
        parameters = PipelineParameters.from_dict({**recipe.parameters.to_dict(), **overrides})
        configs: dict[str, Any] = {}
        for step in recipe.steps:
            configs.update(step.config)
        choose = recipe.last("choose")
        workbench = cls(
            parameters,
            export_config=configs.get("export_config"),
            quant_config=configs.get("quant_config"),
            budget=configs.get("budget"),
            choose_batch=int(choose.args.get("batch", 1)) if choose else 1,
            recipe=recipe,
            load=False,
            pipeline_class=pipeline_class,
        )
        for declared in workbench.steps:  # the parameters each step ran with, where it changed them
            step = recipe.last(declared.name)
            if step is not None and step.parameters:
                panel = workbench.panels[declared.name]
                for name, value in step.parameters.items():
                    if name in panel.controls:
                        _set_control(panel.controls[name], value)
        if load:
            workbench.panels["load"].run()
        return workbench

    # -- state --------------------------------------------------------------------------------------------------

    def __getitem__(self, key: str) -> StepPanel:
        return self.panels[ALIASES.get(key, key)]

    @property
    def states(self) -> dict[str, str]:
        """Step key -> "not run", "running", "done", "failed" or "stale"."""
        return {key: panel.state for key, panel in self.panels.items()}

    def state(self, key: str) -> str:
        return self[key].state

    def missing_inputs(self, key: str) -> list[str]:
        """The steps that must run before `key` can (empty when its inputs exist): load, then what the step's
        registry entry needs."""
        key = ALIASES.get(key, key)
        if key == LOAD:
            return []
        required = [LOAD, *self.steps[key].needs]
        return [step for step in required if not self._has_run(step)]

    def _has_run(self, step: str) -> bool:
        pipeline = self.pipeline
        if pipeline is None:
            return False
        return step == LOAD or step in pipeline.results

    def budget_for(self, parameters: PipelineParameters) -> Any:
        """The budget the accuracy step starts from for these parameters: the Workbench's own when it fits the
        model's task, else the task's default (a new model of another task gets its task's budget)."""
        from workbench.models import load_model
        from workbench.tasks.base import get_task

        current = getattr(self, "budget", None)
        try:
            source = load_model(parameters.model_path, task=parameters.task)
            task = source.task if hasattr(source, "task") else get_task(parameters.task or "feature-extraction")
        except WorkbenchError:
            return current if current is not None else get_task("feature-extraction").default_budget()
        return current if isinstance(current, task.budget_type) else task.default_budget()

    # -- running ------------------------------------------------------------------------------------------------

    def run(self, key: str, *, raise_errors: bool = False) -> Any:
        """What the step's Run button does; returns its result (None when it failed: see the panel)."""
        return self[key].run(raise_errors=raise_errors)

    def run_all(self, steps: Any = None, *, raise_errors: bool = False) -> bool:
        """Run steps in order through their panels, stopping at the first that fails or is stopped; True when all
        succeeded. After a recipe's steps, the message says how the files compare with the recording's.

        Args:
            steps: Step keys; default: the recipe's steps (from_recipe), else every step that is not optional (the
                precision plan, the surgery plan and the auto-fix run when their own Run is clicked).
        """
        if steps is None:
            if self.source_recipe is not None:
                steps = [step.step for step in self.source_recipe.steps]
            else:
                steps = [step.name for step in self.steps if not step.optional]
        if self.pipeline is None or self.panels["load"].state != DONE:
            steps = ["load", *steps]
        self._stop_all = False
        for key in steps:
            panel = self[key]
            panel.run(raise_errors=raise_errors)
            if panel.error is not None and _missing_here(self.steps, key, panel.error):
                continue  # a skippable step this machine cannot run (its panel says which extra): not a failure
            if panel.error is not None or panel.stopped or self._stop_all:
                verb = "stopped" if panel.stopped or self._stop_all else "failed"
                self.message.value = (
                    f'<span style="color:{_STATE_COLORS[FAILED]}">'
                    f"stopped at {html.escape(str(panel.title))} ({verb})</span>"
                )
                return False
        self.message.value = f"ran {len(steps)} steps"
        if self.source_recipe is not None and self.pipeline is not None:
            self.message.value += "; " + html.escape(self.replay_check())
        return True

    def replay_check(self) -> str:
        """How the files this Workbench wrote compare with those of the recipe it started from (one line)."""
        from workbench.recipe import check_outputs

        if self.source_recipe is None:
            return "not a replay: there is no recipe to compare with"
        return check_outputs(self.source_recipe, self.recipe).headline()

    def start(self, panel: StepPanel) -> bool:
        """What a Run click does: run `panel` in a worker thread (in this thread without `background`); False when
        another step is still running."""
        if self.worker is not None and self.worker.is_alive():
            self.message.value = "a step is running: wait for it, or stop it"
            return False
        if not self.background:
            panel.run()
            return True
        self._before_run(panel)  # every Run disabled now, before the thread starts: no second click gets in
        self.worker = threading.Thread(target=panel.run, name=f"workbench-{panel.key}", daemon=True)
        self.worker.start()
        return True

    def start_all(self) -> bool:
        """What "Run all steps" does: run_all() in a worker thread (in this thread without `background`)."""
        if self.worker is not None and self.worker.is_alive():
            self.message.value = "a step is running: wait for it, or stop it"
            return False
        if not self.background:
            self.run_all()
            return True
        self._before_run(self.panels[LOAD])
        self.worker = threading.Thread(target=self.run_all, name="workbench-run-all", daemon=True)
        self.worker.start()
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the step a click started; True when nothing runs any more."""
        worker = self.worker
        if worker is not None:
            worker.join(timeout)
            if worker.is_alive():
                return False
            self.worker = None
        return True

    def stop(self) -> None:
        """Stop the running step (and "Run all") at the step's next unit of work."""
        self._stop_all = True
        for panel in self.panels.values():
            if panel.running:
                panel.stop()

    def fix(self, candidate: str) -> bool:
        """What an accuracy panel's "Auto-fix <candidate>" does: run the auto-fix step on that candidate."""
        panel: Any = self.panels["autofix"]  # the auto-fix panel: its candidate dropdown
        panel.refresh_inputs()
        if candidate in panel.candidate.options:
            panel.candidate.value = candidate
        return self.start(panel)

    def labels(self) -> dict[str, str]:
        """Field name -> the label its control shows, over every panel (error messages use these words)."""
        found: dict[str, str] = {}
        for panel in self.panels.values():
            for name, label in StageView.labels(panel).items():
                found.setdefault(name, label)
        return found

    def _set_pipeline(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.budget = pipeline.budget
        compare = self.panels.get("compare")
        if compare is not None and compare.config_cls is not type(pipeline.budget):
            compare.rebuild(pipeline.budget)  # another task: its own budget's controls
        self.recipe_path.value = str(Path(pipeline.output_dir) / "recipe.json")

    def _before_run(self, panel: StepPanel) -> None:
        for other in self.panels.values():
            other.run_button.disabled = True
        self.run_all_button.disabled = True
        self._refresh_overview()

    def _after_run(self, panel: StepPanel) -> None:
        if panel.stopped:
            panel.state = STOPPED  # the previous result, if any, is still shown (and still the pipeline's)
        elif panel.error is None:
            panel.state = DONE
            if panel.key == LOAD:
                self._attach(getattr(panel, "saved", None))
            else:
                for key in self.steps.downstream(panel.key):
                    other = self.panels[key]
                    if other.state in (DONE, STALE):
                        other._mark(STALE, f"stale: {panel.short} ran again since; run again")
                        # the mark keeps the run count (a browser test waits for the next number)
                        other.status.value = f'<span data-run="{other.runs}">{other.status.value}</span>'
                self._save()
        else:
            panel.state = FAILED
        panel.status.value = f'<span data-run="{panel.runs}">{panel.status.value}</span>'
        self._refresh()

    def _attach(self, saved: Any) -> None:
        """After load: forget every result of the previous pipeline, then show what `saved` restored."""
        self.saved = saved
        for key, panel in self.panels.items():
            if key != LOAD:
                panel.reset()
        if not saved:
            return
        for key in saved.steps:
            restored = self.panels.get(key)
            if restored is not None:
                restored.show_config(self.pipeline)
                restored.restore(self.pipeline.results[key], saved.states.get(key, DONE))
        self.message.value = (
            f"re-attached to <code>{html.escape(str(self.pipeline.output_dir))}</code>: "
            f"{len(saved.steps)} finished step(s) restored"
        )

    def _save(self) -> None:
        """Keep recipe.json and workbench_state.pkl up to date (autosave)."""
        if not self.autosave or self.pipeline is None or not self.pipeline.history:
            return
        try:
            self.save_recipe()
            from workbench.ui.state import save_state

            save_state(self.pipeline, {key: panel.state for key, panel in self.panels.items() if key != LOAD})
        except Exception as exc:  # the step's result stands; say why the files are not current
            self.message.value = (
                f'<span style="color:{_STATE_COLORS[FAILED]}">recipe or state not saved: '
                f"{html.escape(type(exc).__name__)}: {html.escape(str(exc))}</span>"
            )

    def _refresh(self) -> None:
        busy = any(panel.running for panel in self.panels.values())
        for key, panel in self.panels.items():
            if self.pipeline is not None:
                try:
                    panel.refresh_inputs()
                except Exception as exc:  # a panel's choices could not be updated: its Run says why
                    panel.needs.value = f"<small>{html.escape(_headline(exc))}</small>"
            missing = self.missing_inputs(key)
            panel.run_button.disabled = bool(missing) or busy
            panel.needs.value = (
                ("<small>needs: " + ", ".join(html.escape(str(self.panels[m].title)) for m in missing) + "</small>")
                if missing
                else ""
            )
        self.run_all_button.disabled = busy
        self._refresh_overview()

    def _refresh_overview(self) -> None:
        cells = []
        for panel in self.panels.values():
            color = _STATE_COLORS[panel.state]
            name = html.escape(panel.short)
            cells.append(
                f'<span style="margin-right:1.2em"><b>{name}</b> '
                f'<span style="color:{color}">{panel.state}</span></span>'
            )
        self.overview.value = "<div>" + "".join(cells) + "</div>"

    # -- the recipe ---------------------------------------------------------------------------------------------

    @property
    def recipe(self) -> Any:
        """The Recipe of what ran on the current pipeline (every successful step call, in order)."""
        from workbench.recipe import Recipe

        if self.pipeline is None:
            raise WorkbenchError("Nothing has run yet: there is no pipeline to record.", fix="run the load step")
        return Recipe.from_pipeline(self.pipeline)

    def save_recipe(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Write the recipe (default: <output_dir>/recipe.json); `python -m workbench run PATH` replays it."""
        target = (
            Path(path)
            if path is not None
            else Path(self.pipeline.output_dir if self.pipeline is not None else self.parameters.output_dir)
            / "recipe.json"
        )
        written = self.recipe.save(target)
        self.message.value = f"recipe saved: <code>{html.escape(str(written))}</code>"
        return written

    def _save_clicked(self) -> None:
        try:
            self.save_recipe(self.recipe_path.value.strip() or None)
        except Exception as exc:
            self.message.value = (
                f'<span style="color:{_STATE_COLORS[FAILED]}">recipe not saved: '
                f"{html.escape(type(exc).__name__)}: {html.escape(str(exc))}</span>"
            )

    # -- display ------------------------------------------------------------------------------------------------

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return "<Workbench: " + ", ".join(f"{k} {v}" for k, v in self.states.items()) + ">"


def _set_control(control: widgets.Widget, value: Any) -> None:
    if isinstance(control, widgets.Text) and not isinstance(value, str):
        control.value = (
            "" if value is None else (", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value))
        )
    else:
        control.value = value
