"""The guided Workbench: every pipeline step as a panel, in order, over one Pipeline, recorded as a recipe.

    wb = Workbench.from_parameters(model_path="models/bert", output_dir="runs/wb")   # then click Run, step by step
    wb.save_recipe("runs/wb/recipe.json")         # replay headless: python -m workbench run runs/wb/recipe.json

Steps (panel keys): load, export, fuse (graph surgery, optional), quantize (precision), compare (accuracy),
benchmark, choose, export_triton (deploy), write_summary. Each panel is a StageView: its controls are the
fields of the config the step reads (ExportConfig, DynamicQuantConfig, AccuracyBudget, the PipelineParameters
fields of that step); its Run sets that config on the Workbench's Pipeline and calls ONE Pipeline method (load
builds the Pipeline). A panel's Run is enabled once its inputs exist (quantize: an exported model; choose: an
accuracy comparison and a benchmark; ...). Its status line says "not run", "running...", "done in X s",
"failed: <error>" (the full error in the panel; earlier results stay as they were) or "stale" (an upstream step
re-ran since: run it again to bring it up to date).

The Pipeline is a RecordingPipeline, so `wb.recipe` is always what ran, in order, with the configs of each
call; the Workbench also keeps it in <output_dir>/recipe.json after every step.
"""

from __future__ import annotations

import html
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import ipywidgets as widgets

from workbench.errors import ConfigError, WorkbenchError
from workbench.pipeline import STEPS, Pipeline, PipelineParameters
from workbench.stages.export import EXPORTERS, ExportConfig
from workbench.stages.precision.quantize import WEIGHT_TYPES, DynamicQuantConfig
from workbench.ui.base import StageView
from workbench.ui.controls import config_from_controls, controls_for

__all__ = ["Workbench", "STEP_KEYS", "NOT_RUN", "RUNNING", "DONE", "FAILED", "STALE", "panel_for"]

# step states
NOT_RUN, RUNNING, DONE, FAILED, STALE = "not run", "running", "done", "failed", "stale"

#: The Workbench's own first step (it builds the Pipeline), then every registered pipeline step.
LOAD = "load"
STEP_KEYS = (LOAD, *STEPS.names)
# Other names for the steps, as the issue and the stage views call them.
ALIASES = {"surgery": "fuse", "graph_surgery": "fuse", "precision": "quantize", "accuracy": "compare",
           "choice": "choose", "deploy": "export_triton", "triton": "export_triton", "summary": "write_summary",
           "smoothquant": "quantize_smoothquant"}
_STATE_COLORS = {NOT_RUN: "#777", RUNNING: "#1565c0", DONE: "#2e7d32", FAILED: "#b00020", STALE: "#a86b00"}


# -----------------------------------------------------------------------------------------------------------------
# the step panels
# -----------------------------------------------------------------------------------------------------------------


class StepPanel(StageView):
    """One Workbench step: a StageView whose Run calls one registered step of the Workbench's pipeline.

    Built from the step's declaration (workbench.pipeline.Step): its title, blurb, what it needs; its controls
    are the fields of the one config it reads (`Step.configs`), else the PipelineParameters fields it reads
    (`Step.parameters`). Subclasses (registered with :func:`panel_for`) only refine labels, choices and what is
    shown; any step a Pipeline registers gets this generic panel.

    Attributes:
        step: The Step it runs.
        state: "not run", "running", "done", "failed" or "stale".
        runs: How many times Run was clicked; the status line carries it as `data-run` once a run ends, so a
            browser test can wait for the end of the run it started.
        workbench: The Workbench it belongs to.
        needs: The HTML line that says which steps must run first (empty once they have).
        settings: The Accordion the controls fold into (closed at first; `settings.selected_index = 0` opens it).
    """

    placeholders: ClassVar[Mapping[str, str]] = {}
    short: ClassVar[str] = ""
    blurb: ClassVar[str] = ""

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
        super().__init__(title=f"{number}. {step.title if step is not None else self.title}", config_base=config_base)
        self.needs = widgets.HTML("")
        self.blurb_widget = widgets.HTML(f"<small><i>{html.escape(self.blurb)}</i></small>" if self.blurb else "")
        # the controls fold away under "settings" (their defaults are what most runs want)
        self.settings = widgets.Accordion(children=(widgets.VBox(list(self.controls.values())),),
                                          titles=("settings",), selected_index=None)
        self.settings.add_class("wb-settings")
        self.widget.children = (self.title_widget, self.blurb_widget, *((self.settings,) if self.controls else ()),
                                self.widget.children[2], self.needs, *self.widget.children[3:])
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

    # -- running ------------------------------------------------------------------------------------------------

    def _run(self) -> Any:
        missing = self.workbench.missing_inputs(self.key)
        if missing:
            titles = ", ".join(self.workbench.panels[step].title for step in missing)
            raise WorkbenchError(f"{self.title} needs {titles} first.",
                                 fix=f"run {titles} (the Run buttons above)")
        pipeline = self.workbench.pipeline
        kwargs = self._prepare(pipeline)
        return pipeline.run_step(self.key, **kwargs)

    def run(self, *, raise_errors: bool = False) -> Any:
        """StageView.run, then the Workbench updates every step's state (and stale marks) and the recipe."""
        if self._running:
            return None
        self.state = RUNNING
        self.runs += 1
        self.workbench._before_run(self)
        try:
            return super().run(raise_errors=raise_errors)
        finally:
            self.workbench._after_run(self)

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
    placeholders = {"model_path": "empty: the bundled all-MiniLM-L6-v2", "task": "empty: from the model's config",
                    "data_dir": "empty: the bundled data (data/)", "threads": "empty: all cores"}
    blurb = ("A local Hugging Face folder or an .onnx file (nothing is downloaded); its task (from config.json); "
             "the calibration and evaluation data; where every file of the run goes. Running it again starts a new "
             "pipeline.")

    def _run(self) -> Any:
        parameters = self.config()
        wb = self.workbench
        pipeline = wb.pipeline_class(parameters, export_config=wb.export_config, quant_config=wb.quant_config,
                                     budget=wb.budget_for(parameters))
        pipeline.sentences  # noqa: B018 - read them now, so a bad data folder fails here and not in a later step
        wb._set_pipeline(pipeline)
        return pipeline

    def _show(self, pipeline: Any) -> None:
        source = pipeline.source
        splits = pipeline.sentences
        rows = [("model", f"{type(source).__name__}: {getattr(source, 'path', source.name)}"),
                ("task", f"{pipeline.task.title} ({pipeline.task.name})"),
                ("samples", f"{len(splits.calibration)} calibration, {len(splits.evaluation)} evaluation"),
                ("output folder", str(pipeline.output_dir))]
        rows += [("warning", w) for w in getattr(source, "warnings", ())]
        self.show(widgets.HTML("<table>" + "".join(
            f"<tr><td><b>{html.escape(k)}</b></td><td><code>{html.escape(v)}</code></td></tr>" for k, v in rows)
            + "</table>"))


@panel_for("export")
class ExportPanel(StepPanel):
    config_cls = ExportConfig
    config_choices = {"exporter": EXPORTERS}


@panel_for("quantize")
class QuantizePanel(StepPanel):
    config_cls = DynamicQuantConfig
    config_choices = {"weight_type": WEIGHT_TYPES}

    def _show(self, result: Any) -> None:
        from workbench.stages.precision.plan import PrecisionPlan

        self.show(result)
        self.show(PrecisionPlan("int8_dynamic", self.workbench.pipeline.quant_config))


@panel_for("benchmark")
class BenchmarkPanel(StepPanel):
    config_labels = {"benchmark_batch_sizes": "batch sizes", "benchmark_iterations": "iterations"}

    def _show(self, result: Any) -> None:
        self.show(result)
        self.show(result.figure(baseline="pytorch" if "pytorch" in result.names else None))


@panel_for("choose")
class ChoosePanel(StepPanel):
    def _controls(self) -> Mapping[str, widgets.Widget]:
        batch = widgets.IntText(value=int(self.config_base or 1), description="batch size",
                                style={"description_width": "14em"}, layout=widgets.Layout(width="36em"),
                                tooltip="The batch size the choice optimises latency for (one of those benchmarked)")
        return {"batch": batch}

    def _prepare(self, pipeline: Any) -> dict[str, Any]:
        return {"batch": int(self.controls["batch"].value)}


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
        autosave: Keep <output_dir>/recipe.json up to date after every step that succeeds.
        pipeline_class: The Pipeline class whose registered steps become the panels (an extended pipeline's
            steps appear as panels too).

    Attributes:
        pipeline: The Pipeline the steps run on (None until load has run).
        panels: Step key -> its StepPanel ("load", then every registered step; `wb["precision"]` and other
            ALIASES work too).
        widget: The whole UI (a VBox); displaying the Workbench displays it.
        recipe_path, save_button, run_all_button, message, overview: the toolbar's and the overview's widgets.
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
    ) -> None:
        if not isinstance(parameters, PipelineParameters):
            raise ConfigError(f"Workbench takes PipelineParameters, got {type(parameters).__name__}.",
                              fix="use Workbench.from_parameters(**values)")
        self.parameters = parameters
        self.export_config = export_config if export_config is not None else ExportConfig()
        self.quant_config = quant_config if quant_config is not None else DynamicQuantConfig()
        self.pipeline_class = pipeline_class
        self.steps = pipeline_class.steps
        self.budget = budget if budget is not None else self.budget_for(parameters)
        self.source_recipe = recipe
        self.autosave = autosave
        self.pipeline: Any = None

        configs = {"export_config": self.export_config, "quant_config": self.quant_config, "budget": self.budget}
        self.panels: dict[str, StepPanel] = {LOAD: LoadPanel(self, 1, None, config_base=parameters)}
        for number, declared in enumerate(self.steps, 2):
            base = configs.get(declared.configs[0]) if len(declared.configs) == 1 else None
            if declared.name == "choose":
                base = choose_batch
            panel_cls = _PANELS.get(declared.name, StepPanel)
            self.panels[declared.name] = panel_cls(self, number, declared, config_base=base)

        self.header = widgets.HTML("<h2>Inference Workbench</h2><p>Run the steps in order; each Run is one "
                                   "pipeline call. What ran is recorded as a recipe that "
                                   "<code>python -m workbench run</code> replays headless.</p>")
        self.overview = widgets.HTML("")
        self.overview.add_class("wb-overview")
        self.run_all_button = widgets.Button(description="Run all steps", icon="forward",
                                             tooltip="Run every step in order (a recipe's steps, when built from one)")
        self.run_all_button.on_click(lambda _button: self.run_all())
        self.recipe_path = widgets.Text(value=str(Path(parameters.output_dir) / "recipe.json"),
                                        description="recipe file", style={"description_width": "7em"},
                                        layout=widgets.Layout(width="36em"))
        self.save_button = widgets.Button(description="Save recipe", icon="save",
                                          tooltip="Write the recipe of what ran to the recipe file")
        self.save_button.on_click(lambda _button: self._save_clicked())
        self.message = widgets.HTML("")
        self.message.add_class("wb-message")
        toolbar = widgets.HBox([self.run_all_button, self.recipe_path, self.save_button])
        self.widget = widgets.VBox([self.header, toolbar, self.message, self.overview,
                                    *(panel.widget for panel in self.panels.values())])
        self.widget.add_class("wb-workbench")
        self._refresh()
        if load:
            self.panels["load"].run()

    # -- construction -------------------------------------------------------------------------------------------

    @classmethod
    def from_parameters(cls, *, recipe: Any = None, pipeline_class: type[Pipeline] = Pipeline,
                        **parameters: Any) -> Workbench:
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
            overrides = {"output_dir": output_dir} if output_dir is not None else {}
            return cls.from_recipe(recipe, **overrides)
        return cls.from_parameters(output_dir=output_dir, **parameters) if output_dir is not None else \
            cls.from_parameters(**parameters)

    @classmethod
    def from_recipe(cls, recipe: Any, *, load: bool = True, pipeline_class: type[Pipeline] = Pipeline,
                    **overrides: Any) -> Workbench:
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
        workbench = cls(parameters, export_config=configs.get("export_config"),
                        quant_config=configs.get("quant_config"), budget=configs.get("budget"),
                        choose_batch=int(choose.args.get("batch", 1)) if choose else 1, recipe=recipe, load=False,
                        pipeline_class=pipeline_class)
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
        """Run steps in order through their panels, stopping at the first failure; True when all succeeded.

        Args:
            steps: Step keys; default: the recipe's steps (from_recipe), else every step from export on.
        """
        if steps is None:
            if self.source_recipe is not None:
                steps = [step.step for step in self.source_recipe.steps]
            else:
                steps = list(self.steps.names)
        if self.pipeline is None or self.panels["load"].state != DONE:
            steps = ["load", *steps]
        for key in steps:
            panel = self[key]
            panel.run(raise_errors=raise_errors)
            if panel.error is not None:
                self.message.value = (f'<span style="color:{_STATE_COLORS[FAILED]}">'
                                      f"stopped at {html.escape(panel.title)}</span>")
                return False
        self.message.value = f"ran {len(steps)} steps"
        return True

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
        self._refresh_overview()

    def _after_run(self, panel: StepPanel) -> None:
        if panel.error is None:
            panel.state = DONE
            for key in (self.steps.names if panel.key == LOAD else self.steps.downstream(panel.key)):
                other = self.panels[key]
                if other.state in (DONE, STALE):
                    other._mark(STALE, f"stale: {panel.short} ran again since; run again")
            if self.autosave and self.pipeline is not None and panel.key != "load":
                try:
                    self.save_recipe()
                except Exception as exc:  # the step's result stands; say why the recipe file is not current
                    self.message.value = (f'<span style="color:{_STATE_COLORS[FAILED]}">recipe not saved: '
                                          f"{html.escape(type(exc).__name__)}: {html.escape(str(exc))}</span>")
        else:
            panel.state = FAILED
        panel.status.value = f'<span data-run="{panel.runs}">{panel.status.value}</span>'
        self._refresh()

    def _refresh(self) -> None:
        for key, panel in self.panels.items():
            missing = self.missing_inputs(key)
            panel.run_button.disabled = bool(missing) or panel.running
            panel.needs.value = ("<small>needs: " + ", ".join(html.escape(self.panels[m].title) for m in missing)
                                 + "</small>") if missing else ""
        self._refresh_overview()

    def _refresh_overview(self) -> None:
        cells = []
        for panel in self.panels.values():
            color = _STATE_COLORS[panel.state]
            name = html.escape(panel.short)
            cells.append(f'<span style="margin-right:1.2em"><b>{name}</b> '
                         f'<span style="color:{color}">{panel.state}</span></span>')
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
        target = Path(path) if path is not None else Path(self.pipeline.output_dir if self.pipeline is not None
                                                          else self.parameters.output_dir) / "recipe.json"
        written = self.recipe.save(target)
        self.message.value = f"recipe saved: <code>{html.escape(str(written))}</code>"
        return written

    def _save_clicked(self) -> None:
        try:
            self.save_recipe(self.recipe_path.value.strip() or None)
        except Exception as exc:
            self.message.value = (f'<span style="color:{_STATE_COLORS[FAILED]}">recipe not saved: '
                                  f"{html.escape(type(exc).__name__)}: {html.escape(str(exc))}</span>")

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
        control.value = "" if value is None else (", ".join(map(str, value)) if isinstance(value, (list, tuple))
                                                  else str(value))
    else:
        control.value = value
