"""Recipes: what a pipeline ran, as JSON, replayable headless.

Every Pipeline records each step call it runs (`pipeline.history`: the step registry's wrapper does it, for
every registered step alike). A :class:`Recipe` holds the run's PipelineParameters, every step call (in order)
with the configs it ran with (ExportConfig, DynamicQuantConfig, the task's Budget, the parameters it read),
the files each step wrote with their sha256, the library versions, and the sha256 of the inputs it read (the
model's files and the data files).

    pipeline = Pipeline(PipelineParameters(model_path="models/bert", output_dir="runs/a"))
    pipeline.export(); pipeline.fuse(); pipeline.quantize()         # or the guided UI: workbench.ui.Workbench
    Recipe.from_pipeline(pipeline).save("runs/a/recipe.json")

    run_recipe("runs/a/recipe.json", output_dir="runs/b")            # or: python -m workbench run runs/a/recipe.json

Replaying on the same inputs with the same library versions writes byte-identical model files for the
deterministic steps (export, fuse, dynamic quantization, the Triton repository); timings and therefore the
choice may differ (the check then says so, apart from files that differ). A recipe refuses to replay on inputs
whose hashes differ from the recorded ones unless asked to (`check_inputs=False`, `--no-check-inputs`). Steps
and their configs are validated against the registry of the Pipeline class that replays them
(`pipeline_class=`, default Pipeline), so a recipe of an extended pipeline replays through that class.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench._files import file_sha256
from workbench.errors import ConfigError, WorkbenchError
from workbench.pipeline import MEASURED_OUTPUTS, Pipeline, PipelineParameters, StepRecord

__all__ = [
    "RECIPE_FILE",
    "RECIPE_VERSION",
    "Recipe",
    "RecipeError",
    "RecipeStep",
    "RecordingPipeline",
    "OutputCheck",
    "check_outputs",
    "file_sha256",
    "finish",
    "input_hashes",
    "replay",
    "run_recipe",
    "save_recipe",
]

RECIPE_VERSION = 2
RECIPE_FILE = "recipe.json"
# Files of a run folder that hold measurements or the run's own record: they differ from run to run by design.
_NOT_COMPARED = (*MEASURED_OUTPUTS, "summary.json", RECIPE_FILE)

# Files of a Hugging Face folder that loading the model and its tokenizer reads (top level only).
_MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
)
_MODEL_PATTERNS = ("model-*.safetensors", "pytorch_model-*.bin")


class RecipeError(WorkbenchError):
    """A recipe cannot be recorded, read or replayed as it stands (the message says why and what to do)."""


# -----------------------------------------------------------------------------------------------------------------
# the recipe
# -----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RecipeStep:
    """One step call as the pipeline ran it.

    Attributes:
        step: The step's name in the pipeline's registry ("export", "fuse", ..., "write_summary").
        config: The configs the step read, by Pipeline attribute name ("export_config": ExportConfig,
            "quant_config": DynamicQuantConfig, "budget": the task's Budget), as objects or their dicts (a Recipe
            turns dicts into configs with the pipeline class's `config_types`). Replay sets them before the call.
        parameters: PipelineParameters fields whose value at this step differed from the recipe's `parameters`
            (a UI changes e.g. the benchmark's batch sizes just before benchmarking). Usually empty.
        args: Keyword arguments of the call (choose: batch).
        outputs: Files the step wrote -> sha256; paths relative to the run's output_dir.
        details: What the step decided that is worth reading but not replayed (export_triton: the model name
            and its config.pbtxt; choose: the chosen candidate).
    """

    step: str
    config: Mapping[str, Any] = field(default_factory=dict)
    parameters: Mapping[str, Any] = field(default_factory=dict)
    args: Mapping[str, Any] = field(default_factory=dict)
    outputs: Mapping[str, str] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.step, str):
            raise RecipeError(f"A recipe step's 'step' must be a step name, got {self.step!r}.")
        for name in ("config", "parameters", "args", "outputs", "details"):
            value = getattr(self, name)
            if not isinstance(value, Mapping):
                raise RecipeError(f"Recipe step {self.step!r}: {name} must be an object, got {type(value).__name__}.")
            object.__setattr__(self, name, dict(value))

    def checked(self, pipeline_class: type[Pipeline]) -> RecipeStep:
        """This step validated against `pipeline_class`'s registry, its config dicts turned into configs.

        Raises:
            RecipeError: An unknown step, config, argument or parameter, or an invalid config value.
        """
        steps = pipeline_class.steps
        if self.step not in steps:
            raise RecipeError(
                f"Recipe step {self.step!r} is not a pipeline step.", expected=f"one of {list(steps.names)}"
            )
        declared = steps[self.step]
        unknown = sorted(set(self.config) - set(declared.configs))
        if unknown:
            raise RecipeError(
                f"Recipe step {self.step!r} has unknown config(s) {unknown}.",
                expected=f"configs among {list(declared.configs)}",
            )
        config = {}
        for name, value in self.config.items():
            kind = pipeline_class.config_types[name]
            if isinstance(value, Mapping):
                values = dict(value)
                if name == "budget" and "task" not in values:  # recipes of version 1: only embeddings had budgets
                    values["task"] = "feature-extraction"
                try:
                    value = kind.from_dict(values)
                except ConfigError as exc:
                    raise RecipeError(
                        f"Recipe step {self.step!r} holds an invalid {name}: {exc.what}",
                        expected=exc.expected,
                        fix=exc.fix,
                    ) from exc
            elif not isinstance(value, kind):
                raise RecipeError(
                    f"Recipe step {self.step!r}: {name} must be a {kind.__name__}, got {type(value).__name__}."
                )
            config[name] = value
        unknown_args = sorted(set(self.args) - set(declared.args))
        if unknown_args:
            raise RecipeError(
                f"Recipe step {self.step!r} takes no argument(s) {unknown_args}.",
                expected=f"arguments among {list(declared.args)}",
            )
        fields = {f.name for f in dataclasses.fields(PipelineParameters)} - set(pipeline_class.FIXED_PARAMETERS)
        unknown_parameters = sorted(set(self.parameters) - fields)
        if unknown_parameters:
            raise RecipeError(
                f"Recipe step {self.step!r} sets parameter(s) {unknown_parameters}, which a step cannot change.",
                expected=f"PipelineParameters fields among {sorted(fields)}",
            )
        return dataclasses.replace(self, config=config)

    def to_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = {"step": self.step}
        if self.config:
            values["config"] = {
                name: config.to_dict() if hasattr(config, "to_dict") else dict(config)
                for name, config in self.config.items()
            }
        for name in ("parameters", "args", "outputs", "details"):
            if getattr(self, name):
                values[name] = _plain(getattr(self, name))
        return values

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RecipeStep:
        if not isinstance(values, Mapping):
            raise RecipeError(f"A recipe step is a JSON {type(values).__name__}, not an object.")
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise RecipeError(f"A recipe step has unknown key(s) {unknown}.")
        if "step" not in values:
            raise RecipeError("A recipe step has no 'step' key.")
        return cls(**values)

    @classmethod
    def from_record(cls, record: StepRecord) -> RecipeStep:
        return cls(
            step=record.step,
            config=dict(record.configs),
            parameters=dict(record.parameters),
            args=dict(record.args),
            outputs=dict(record.outputs),
            details=dict(record.details),
        )


@dataclass(frozen=True)
class Recipe:
    """The steps a pipeline ran and what they ran with, replayable headless (see the module docstring).

    Attributes:
        parameters: The pipeline's parameters (model_path and data_dir absolute; None: the bundled ones).
        steps: Every step call, in the order it ran (failed calls are not recorded).
        versions: Library versions of the run (workbench.machine.library_versions()).
        inputs: sha256 of every input file read: "model/<file>" (the model folder's weights, config and
            tokenizer files, or the .onnx file) and "data/<file>" (the calibration and evaluation data).
        workbench_version: The workbench that recorded it.
        recipe_version: The recipe format.
        pipeline_class: The Pipeline class whose step registry the steps are checked against (not saved:
            pass it to load() and replay() for an extended pipeline).
    """

    parameters: PipelineParameters
    steps: tuple[RecipeStep, ...] = ()
    versions: Mapping[str, str] = field(default_factory=dict)
    inputs: Mapping[str, str] = field(default_factory=dict)
    workbench_version: str = ""
    recipe_version: int = RECIPE_VERSION
    pipeline_class: type[Pipeline] = field(default=Pipeline, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.recipe_version, int) or self.recipe_version > RECIPE_VERSION:
            raise RecipeError(
                f"Recipe format {self.recipe_version!r} is newer than this workbench reads ({RECIPE_VERSION}).",
                fix="upgrade the workbench that replays it",
            )
        parameters = self.parameters
        if isinstance(parameters, Mapping):
            try:
                parameters = PipelineParameters.from_dict(dict(parameters))
            except ConfigError as exc:
                raise RecipeError(
                    f"The recipe's parameters are invalid: {exc.what}", expected=exc.expected, fix=exc.fix
                ) from exc
        elif not isinstance(parameters, PipelineParameters):
            raise RecipeError(f"Recipe.parameters must be PipelineParameters, got {type(parameters).__name__}.")
        object.__setattr__(self, "parameters", parameters)
        steps = tuple(
            (s if isinstance(s, RecipeStep) else RecipeStep.from_dict(s)).checked(self.pipeline_class)
            for s in self.steps
        )
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "versions", dict(self.versions))
        object.__setattr__(self, "inputs", dict(self.inputs))
        if not self.workbench_version:
            from workbench import __version__

            object.__setattr__(self, "workbench_version", __version__)

    # -- recording ------------------------------------------------------------------------------------------------

    @classmethod
    def from_pipeline(cls, pipeline: Pipeline) -> Recipe:
        """What `pipeline` ran: every step call with its configs (from `pipeline.history`), the versions and the
        input hashes.

        Raises:
            RecipeError: The model is not a path a replay can load (an in-memory module, a tokenizer folder
                apart from the .onnx file, an attention implementation other than "eager").
        """
        from workbench.machine import library_versions

        parameters = _replayable_parameters(pipeline, pipeline.initial_parameters)
        steps = tuple(RecipeStep.from_record(record) for record in pipeline.history)
        return cls(
            parameters=parameters,
            steps=steps,
            versions=library_versions(),
            inputs=input_hashes(parameters),
            pipeline_class=type(pipeline),
        )

    # -- JSON -----------------------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe_version": self.recipe_version,
            "workbench_version": self.workbench_version,
            "parameters": self.parameters.to_dict(),
            "steps": [step.to_dict() for step in self.steps],
            "versions": dict(self.versions),
            "inputs": dict(self.inputs),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], *, pipeline_class: type[Pipeline] = Pipeline) -> Recipe:
        known = {f.name for f in dataclasses.fields(cls)} - {"pipeline_class"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise RecipeError(f"The recipe has unknown key(s) {unknown}.", expected=f"keys among {sorted(known)}")
        if "parameters" not in values:
            raise RecipeError("The recipe has no 'parameters'.", fix="save recipes with Recipe.save()")
        if not isinstance(values.get("steps", []), list):
            raise RecipeError("The recipe's 'steps' is not a list.")
        return cls(**values, pipeline_class=pipeline_class)

    @classmethod
    def from_json(cls, text: str, *, pipeline_class: type[Pipeline] = Pipeline) -> Recipe:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RecipeError(f"The recipe is not JSON ({exc}).") from exc
        if not isinstance(values, Mapping):
            raise RecipeError(f"The recipe is a JSON {type(values).__name__}, not an object.")
        return cls.from_dict(values, pipeline_class=pipeline_class)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the recipe as JSON (atomically); returns the path."""
        from workbench._files import atomic_path

        with atomic_path(path) as tmp:
            tmp.write_text(self.to_json() + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, pipeline_class: type[Pipeline] = Pipeline) -> Recipe:
        """Read a recipe file (or the recipe.json in a run folder), checked against `pipeline_class`'s steps."""
        path = Path(path)
        if path.is_dir():
            path = path / RECIPE_FILE
        if not path.is_file():
            raise RecipeError(
                f"No recipe at {path}.",
                fix="save one with Workbench.save_recipe(path) or Recipe.from_pipeline(pipeline).save(path)",
            )
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RecipeError(f"{path} cannot be read as text ({exc}).", fix="point at a recipe.json") from exc
        try:
            return cls.from_json(text, pipeline_class=pipeline_class)
        except ConfigError as exc:
            raise RecipeError(f"{path} holds an invalid config: {exc.what}", fix=exc.fix) from exc

    # -- reading --------------------------------------------------------------------------------------------------

    @property
    def step_names(self) -> tuple[str, ...]:
        return tuple(step.step for step in self.steps)

    def last(self, step: str) -> RecipeStep | None:
        """The last call of `step`, or None."""
        return next((s for s in reversed(self.steps) if s.step == step), None)

    def parameters_for(
        self, step: RecipeStep, *, output_dir: str | os.PathLike[str] | None = None
    ) -> PipelineParameters:
        """The parameters `step` ran with (optionally with another output_dir)."""
        values = {**self.parameters.to_dict(), **_plain(dict(step.parameters))}
        if output_dir is not None:
            values["output_dir"] = str(output_dir)
        return PipelineParameters.from_dict(values)

    def input_differences(self) -> dict[str, tuple[str | None, str | None]]:
        """Input file -> (recorded sha256, current sha256) for every input that differs now (None: missing)."""
        current = input_hashes(self.parameters)
        return {
            name: (self.inputs.get(name), current.get(name))
            for name in sorted(set(self.inputs) | set(current))
            if self.inputs.get(name) != current.get(name)
        }

    def version_differences(self) -> dict[str, tuple[str | None, str | None]]:
        """Library -> (recorded version, installed version) where they differ."""
        from workbench.machine import library_versions

        current = library_versions()
        return {
            name: (self.versions.get(name), current.get(name))
            for name in sorted(set(self.versions) | set(current))
            if self.versions.get(name) != current.get(name)
        }

    def outputs(self) -> dict[str, str]:
        """Every file the recorded steps wrote -> its last recorded sha256."""
        outputs: dict[str, str] = {}
        for step in self.steps:
            outputs.update(step.outputs)
        return outputs

    def _repr_html_(self) -> str:
        import html

        rows = "".join(
            f"<tr><td>{i}</td><td><code>{step.step}</code></td><td>{html.escape(_describe(step))}</td>"
            f"<td>{html.escape(', '.join(step.outputs))}</td></tr>"
            for i, step in enumerate(self.steps, 1)
        )
        model = self.parameters.model_path or "bundled all-MiniLM-L6-v2"
        return (
            f"<b>Recipe</b>: {len(self.steps)} steps on <code>{html.escape(model)}</code>, "
            f"{len(self.inputs)} input files hashed<table><tr><th></th><th>step</th><th>with</th>"
            f"<th>wrote</th></tr>{rows}</table>"
        )


def _describe(step: RecipeStep) -> str:
    parts = [f"{name}={config.to_json()}" for name, config in step.config.items()]
    parts += [f"{k}={v!r}" for k, v in {**step.parameters, **step.args}.items()]
    return "; ".join(parts)


# -----------------------------------------------------------------------------------------------------------------
# recording
# -----------------------------------------------------------------------------------------------------------------


class RecordingPipeline(Pipeline):
    """A Pipeline, under the name it had when only it recorded its steps: every Pipeline records them now
    (`history`). `recorded` is that log; `output_check`, after replay(), how the replay's files compare with the
    recording's."""

    output_check: OutputCheck | None = None

    @property
    def recorded(self) -> list[StepRecord]:
        return self.history


def save_recipe(pipeline: Pipeline, path: str | os.PathLike[str] | None = None) -> Path:
    """Write what `pipeline` ran as a recipe (default: <output_dir>/recipe.json); returns the path.

    `python -m workbench run PATH` (or run_recipe(PATH), or Workbench.from_recipe(PATH)) replays it.
    """
    target = Path(path) if path is not None else pipeline.output_dir / RECIPE_FILE
    return Recipe.from_pipeline(pipeline).save(target)


def _absolute(parameters: PipelineParameters, output_dir: Path) -> PipelineParameters:
    changes: dict[str, Any] = {"output_dir": str(output_dir)}
    for name in ("model_path", "data_dir"):
        value = getattr(parameters, name)
        if value is not None:
            changes[name] = str(Path(value).expanduser().resolve())
    return parameters.replace(**changes)


def _replayable_parameters(pipeline: Pipeline, parameters: PipelineParameters) -> PipelineParameters:
    """`parameters` with absolute paths, checked to load the same model as `pipeline.source`."""
    from workbench.models import HFModelSource, OnnxSource, load_model

    parameters = _absolute(parameters, pipeline.output_dir)
    source = pipeline.source
    if not isinstance(source, (HFModelSource, OnnxSource)):
        raise RecipeError(
            f"A recipe cannot record a {type(source).__name__}: a replay loads the model from a path.",
            fix="save the model with save_pretrained() (or export it to .onnx) and pass model_path= that path",
        )
    if isinstance(source, HFModelSource) and source.attn_implementation != "eager":
        raise RecipeError(
            f"The pipeline's model was loaded with attn_implementation={source.attn_implementation!r}; "
            "a replay loads it as the Pipeline does, with 'eager'.",
            fix="build the pipeline from model_path= alone",
        )
    if (
        isinstance(source, OnnxSource)
        and source.tokenizer_path is not None
        and Path(source.tokenizer_path).resolve() != source.path.resolve().parent
    ):
        raise RecipeError(
            "The pipeline's .onnx model takes its tokenizer from another folder; a replay reads the "
            "tokenizer beside the .onnx file.",
            fix="copy the tokenizer files next to the .onnx file",
        )
    expected = load_model(parameters.model_path, task=parameters.task)
    if Path(expected.path).resolve() != Path(source.path).resolve():
        parameters = parameters.replace(model_path=str(Path(source.path).resolve()))
    return parameters


# -----------------------------------------------------------------------------------------------------------------
# input hashes
# -----------------------------------------------------------------------------------------------------------------


def input_hashes(parameters: PipelineParameters) -> dict[str, str]:
    """sha256 of the files a pipeline with these parameters reads: "model/<file>" and "data/<file>"."""
    from workbench.data import CALIBRATION_FILE, EVALUATION_FILE, default_data_dir
    from workbench.models import OnnxSource, load_model

    source = load_model(parameters.model_path, task=parameters.task)
    folder = Path(source.path)
    if isinstance(source, OnnxSource):
        files = [folder, folder.with_name(folder.name + ".data")]
        folder = folder.parent
    else:
        files = []
    files += [folder / name for name in _MODEL_FILES]
    for pattern in _MODEL_PATTERNS:
        files += sorted(folder.glob(pattern))
    hashes = {f"model/{path.name}": file_sha256(path) for path in files if path.is_file()}
    data = Path(parameters.data_dir) if parameters.data_dir is not None else default_data_dir()
    for name in (CALIBRATION_FILE, EVALUATION_FILE):
        if (data / name).is_file():
            hashes[f"data/{name}"] = file_sha256(data / name)
    return dict(sorted(hashes.items()))


# -----------------------------------------------------------------------------------------------------------------
# replay
# -----------------------------------------------------------------------------------------------------------------


def _as_recipe(path_or_recipe: Recipe | str | os.PathLike[str], pipeline_class: type[Pipeline]) -> Recipe:
    if isinstance(path_or_recipe, Recipe):
        return (
            path_or_recipe
            if path_or_recipe.pipeline_class is pipeline_class
            else dataclasses.replace(path_or_recipe, pipeline_class=pipeline_class)
        )
    return Recipe.load(path_or_recipe, pipeline_class=pipeline_class)


def replay(
    path_or_recipe: Recipe | str | os.PathLike[str],
    *,
    output_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    check_inputs: bool = True,
    check: bool = False,
    save: bool = True,
    pipeline_class: type[Pipeline] = Pipeline,
) -> RecordingPipeline:
    """Run a recipe's steps through a Pipeline, in order (each by its registered name); returns the pipeline.

    Args:
        path_or_recipe: A Recipe, a recipe file, or a run folder with a recipe.json.
        output_dir: Where the replay writes; None: the recipe's own output_dir.
        progress: A tqdm bar per step on the terminal (stderr).
        check_inputs: Refuse to run when an input file's sha256 differs from the recorded one.
        check: After the run, raise when a file the recording wrote has a different sha256 now (the
            comparison is kept in every case as `pipeline.output_check`, an OutputCheck).
        save: Write the replay's own recipe to <output_dir>/recipe.json.
        pipeline_class: The Pipeline class whose registry runs the steps (an extended pipeline's own class).

    Raises:
        RecipeError: The inputs differ (with check_inputs), or the outputs differ (with check).
            A step that fails raises RecipeError naming the step, with the step's own error as its cause.
    """
    from tqdm import tqdm

    recipe = _as_recipe(path_or_recipe, pipeline_class)
    if check_inputs:
        differences = recipe.input_differences()
        if differences:
            listed = "; ".join(
                f"{name}: recorded {_short(old)}, now {_short(new)}"
                for name, (old, new) in list(differences.items())[:8]
            )
            raise RecipeError(
                f"The recipe's inputs changed since it was recorded: {listed}.",
                expected="the model and sentence files the recipe was recorded on",
                fix="point model_path / data_dir at those files, or replay anyway with check_inputs=False "
                "(--no-check-inputs)",
            )
    parameters = recipe.parameters if output_dir is None else recipe.parameters.replace(output_dir=str(output_dir))
    runner_class = (
        pipeline_class
        if issubclass(pipeline_class, RecordingPipeline)
        else type(
            f"Recording{pipeline_class.__name__}",
            (pipeline_class,),
            {"output_check": None, "recorded": RecordingPipeline.recorded},
        )
    )
    pipeline = runner_class(parameters)
    with tqdm(total=len(recipe.steps), desc="recipe", unit="step", disable=not progress, leave=True) as bar:
        for step in recipe.steps:
            bar.set_postfix_str(step.step)
            pipeline.parameters = recipe.parameters_for(step, output_dir=output_dir)
            for name, config in step.config.items():
                setattr(pipeline, name, config)
            try:
                pipeline.run_step(step.step, **step.args)
            except WorkbenchError as exc:
                raise RecipeError(
                    f"Step {step.step!r} failed on replay: {type(exc).__name__}: {exc.what}",
                    expected=exc.expected,
                    fix=exc.fix,
                ) from exc
            bar.update(1)
    replayed = Recipe.from_pipeline(pipeline)
    if save:
        replayed.save(pipeline.output_dir / RECIPE_FILE)
    pipeline.output_check = check_outputs(recipe, replayed)
    if check:
        _raise_if_different(recipe, pipeline.output_check)
    return pipeline


@dataclass(frozen=True)
class OutputCheck:
    """A replay's files against the recording's.

    Attributes:
        identical: Files with the recorded sha256.
        differing: File -> (recorded sha256, replayed sha256 or None when it was not written).
        skipped: File -> why it was not compared (measurements; the Triton model when the replay chose another
            candidate: the choice follows timings, which differ run to run).
        choice: (recorded choice, replayed choice) when they differ, else None: a different choice among
            near-tied candidates, which is not a step writing different bytes.
    """

    identical: tuple[str, ...] = ()
    differing: Mapping[str, tuple[str, str | None]] = field(default_factory=dict)
    skipped: Mapping[str, str] = field(default_factory=dict)
    choice: tuple[str | None, str | None] | None = None

    def __bool__(self) -> bool:
        return not self.differing

    def headline(self) -> str:
        """One line that says which of the two it is: every model file identical (the choice among near-tied
        candidates may differ: it follows timings), or a step that wrote different bytes (named)."""
        if self.differing:
            names = ", ".join(list(self.differing)[:4]) + (" ..." if len(self.differing) > 4 else "")
            return (
                f"replay check: a step wrote different bytes: {len(self.differing)} file(s) differ from the "
                f"recording ({names})"
            )
        text = f"replay check: all {len(self.identical)} model files identical to the recording"
        if self.choice is not None:
            text += (
                f"; a different choice among near-tied candidates (the replay chose {self.choice[1]}, the "
                f"recording {self.choice[0]}: the choice follows timings), not a step writing other bytes"
            )
        return text

    def __str__(self) -> str:
        lines = [
            f"model files identical to the recording: {len(self.identical)}"
            + (f", differing: {len(self.differing)}" if self.differing else "")
        ]
        if self.choice is not None:
            lines.append(
                f"  different choice: the replay chose {self.choice[1]}, the recording {self.choice[0]} "
                "(the choice follows timings; every model file both runs wrote is compared above)"
            )
        lines += [
            f"  differs: {name} (recorded {_short(old)}, replayed {_short(new)}): this step wrote other bytes"
            for name, (old, new) in self.differing.items()
        ]
        lines += [f"  not compared: {name} ({why})" for name, why in self.skipped.items()]
        return "\n".join(lines)


def check_outputs(recorded: Recipe, replayed: Recipe) -> OutputCheck:
    """Compare the files a replay wrote with those its recording wrote (same paths under each output_dir).

    Not compared: files that record measurements (summary.json, a Triton repository's README.md and
    provenance.json), and the Triton step's files when the replay chose another candidate than the recording
    (the choice follows timings): that is reported as a different choice, not as a step that wrote other bytes.
    """
    before, after = recorded.outputs(), replayed.outputs()
    skipped = {name: "holds measurements of the run" for name in before if Path(name).name in _NOT_COMPARED}
    old_choice, new_choice = (r.last("choose") for r in (recorded, replayed))
    old_name = old_choice.details.get("chosen") if old_choice else None
    new_name = new_choice.details.get("chosen") if new_choice else None
    choice = None
    if old_name != new_name:
        choice = (old_name, new_name)
        triton = recorded.last("export_triton")
        why = f"the replay chose {new_name}, the recording {old_name}: the choice follows timings"
        for name in triton.outputs if triton else ():
            skipped.setdefault(name, why)
    identical = tuple(name for name, digest in before.items() if name not in skipped and after.get(name) == digest)
    differing = {
        name: (digest, after.get(name))
        for name, digest in before.items()
        if name not in skipped and after.get(name) != digest
    }
    return OutputCheck(identical=identical, differing=differing, skipped=skipped, choice=choice)


def _raise_if_different(recorded: Recipe, check: OutputCheck) -> None:
    if check:
        return
    versions = recorded.version_differences()
    steps = {name: step.step for step in recorded.steps for name in step.outputs}
    raise RecipeError(
        "The replay wrote different files: "
        + "; ".join(
            f"{name} (step {steps.get(name, '?')}): recorded {_short(old)}, replayed {_short(new)}"
            for name, (old, new) in check.differing.items()
        )
        + (
            ". Library versions differ: " + ", ".join(f"{k} {v[0]} -> {v[1]}" for k, v in versions.items())
            if versions
            else "."
        ),
        fix="replay with the library versions the recipe records (`versions`)"
        if versions
        else "that step is not deterministic on this machine; compare the files' contents",
    )


def run_recipe(
    path_or_recipe: Recipe | str | os.PathLike[str],
    *,
    output_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    check_inputs: bool = True,
    check: bool = False,
    pipeline_class: type[Pipeline] = Pipeline,
) -> dict[str, Any]:
    """Replay a recipe headless and return the run's summary (summary.json and recipe.json are written).

    See :func:`replay` for the arguments; the recipe's steps run as they were recorded, then `write_summary()`
    if the recipe did not end with it.
    """
    pipeline = replay(
        path_or_recipe,
        output_dir=output_dir,
        progress=progress,
        check_inputs=check_inputs,
        check=check,
        save=False,
        pipeline_class=pipeline_class,
    )
    return finish(pipeline)


def finish(pipeline: RecordingPipeline) -> dict[str, Any]:
    """Write the summary (unless the last step did) and the pipeline's recipe.json; returns the summary."""
    if not pipeline.history or pipeline.history[-1].step != "write_summary":
        pipeline.write_summary()
    Recipe.from_pipeline(pipeline).save(pipeline.output_dir / RECIPE_FILE)
    return dict(pipeline.results["write_summary"])


def _short(digest: str | None) -> str:
    return "missing" if digest is None else digest[:12]


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "to_dict") and callable(value.to_dict):  # a config or plan passed as a step argument
        return _plain(value.to_dict())
    return value
