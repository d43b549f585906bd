"""The whole workflow as one object whose steps come from one registry.

Each step is a Pipeline method declared once with :func:`step`: its name, what it needs and reads, the configs
and parameters it reads, its arguments, and what it adds to summary.json. From that one declaration come

- `Pipeline.run_all()` (every step in registry order),
- recording and replay (every call is logged with its configs, as a `StepRecord`: workbench.recipe turns the
  log into a replayable Recipe),
- the guided Workbench's panels and their enablement (workbench.ui.workbench), and
- the summary (each step contributes its keys and its per-candidate fields).

A notebook calls the methods one per cell; a script calls `run_all()`. Every file goes under
`parameters.output_dir`, and `write_summary()` writes the `summary.json` that CI jobs read. Adding a step is one
decorated method (in a subclass, with `after=` to place it), with nothing else to touch.
"""

from __future__ import annotations

import inspect
import json
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from workbench._files import OutputFolder
from workbench.config import StageConfig, check_positive
from workbench.engines.base import Candidate
from workbench.errors import ConfigError, WorkbenchError
from workbench.models import HFModelSource, ModelSource, OnnxSource, load_model
from workbench.progress import ProgressCallback
from workbench.stages.export import ExportConfig, check_sequence_length
from workbench.stages.precision.quantize import DynamicQuantConfig
from workbench.stages.serving.load import ServingConfig
from workbench.summary import SUMMARY_FILE
from workbench.tasks.base import Budget, Encoded, Samples, Task
from workbench.triton.padding import PaddingPolicy

F = TypeVar("F", bound=Callable[..., Any])
#: The PrecisionPlan preset the openvino_int8 step quantizes with (NNCF's defaults for transformers).
OPENVINO_INT8_PLAN = "cpu_int8_nncf"


@dataclass(frozen=True)
class PipelineParameters(StageConfig):
    """The quickstart's parameters; the notebook's `parameters` cell maps onto these one to one.

    Attributes:
        model_path: None for the bundled all-MiniLM-L6-v2; a local Hugging Face directory; or an .onnx file.
        task: The task to treat the model as (workbench.tasks: "feature-extraction", "text-classification", ...);
            None: from the checkpoint's config.json (or, for an .onnx file, from its outputs).
        data_dir: Folder with the task's calibration and evaluation data; None for the bundled data.
        output_dir: Where every file of the run goes.
        sequence_length: Padded length for evaluation and timing (how a batching server feeds the model).
        max_calibration_samples: Calibration samples to use (static INT8 and SmoothQuant calibrate on them).
        max_eval_samples: Held-out samples the candidates are compared on.
        eval_batch_size: Samples per evaluation batch.
        benchmark_batch_sizes: Batch sizes to time.
        benchmark_iterations: Timed runs per candidate and shape.
        threads: Threads for every engine; None: all cores.
        triton_model_name: Name of the model in the Triton repository; None: derived from the model's name.
        overwrite: Replace an existing Triton repository model folder from an earlier run.
    """

    model_path: str | None = None
    task: str | None = None
    data_dir: str | None = None
    output_dir: str = "runs/quickstart"
    sequence_length: int = 128
    max_calibration_samples: int = 64
    max_eval_samples: int = 64
    eval_batch_size: int = 8
    benchmark_batch_sizes: tuple[int, ...] = (1, 8)
    benchmark_iterations: int = 30
    threads: int | None = None
    triton_model_name: str | None = None
    overwrite: bool = False

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "ci": {
            "max_calibration_samples": 16,
            "max_eval_samples": 16,
            "benchmark_batch_sizes": (1,),
            "benchmark_iterations": 5,
            "sequence_length": 64,
        },
        "demo": {},
    }

    def __post_init__(self) -> None:
        check_positive(
            self,
            "sequence_length",
            "max_calibration_samples",
            "max_eval_samples",
            "eval_batch_size",
            "benchmark_batch_sizes",
            "benchmark_iterations",
        )
        if self.sequence_length < 8:
            raise ConfigError(f"sequence_length must be at least 8 tokens, got {self.sequence_length}.")


# ---------------------------------------------------------------------------------------------------------------
# the step registry


@dataclass(frozen=True)
class Step:
    """One pipeline step, declared once.

    Attributes:
        name: The Pipeline method that runs it, and its key in results, recipes, the Workbench and the summary.
        title: For people (the Workbench panel's heading).
        short: A one- or two-word label (the Workbench's overview).
        blurb: One sentence on what it does, for the Workbench.
        needs: Steps that must have run before it can (its Run button is disabled until then).
        reads: Steps whose results it uses when they exist (re-running one of them makes it stale).
        configs: Pipeline attributes (configs) it reads; a recipe records them and replay sets them back.
        parameters: PipelineParameters fields it reads (the Workbench shows them in its panel).
        args: Keyword arguments of the method (a recipe records them).
        makes_candidates: It adds candidates (the steps that compare and time candidates read it).
        reads_candidates: It uses every candidate made so far.
        optional: Run on request only (it takes a user's plan or candidate): `run_all` leaves it out.
        skippable: `run_all` runs it where it can and skips it, with the reason, where a MissingDependency or
            DeviceUnavailable says what it needs is missing here (an engine's candidates without its extra), or a
            StepNotApplicable says it does not apply to this model.
        summary: (pipeline, result) -> summary.json keys it contributes.
        candidate_summary: (pipeline, result, candidate name) -> fields it contributes to that candidate's row.
        details: result -> what a recipe records about it beside its files (e.g. the chosen name).
    """

    name: str
    title: str
    short: str = ""
    blurb: str = ""
    needs: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    configs: tuple[str, ...] = ()
    parameters: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    makes_candidates: bool = False
    reads_candidates: bool = False
    optional: bool = False
    skippable: bool = False
    summary: Callable[[Any, Any], Mapping[str, Any]] | None = None
    candidate_summary: Callable[[Any, Any, str], Mapping[str, Any]] | None = None
    details: Callable[[Any], Mapping[str, Any]] | None = None


class StepRegistry(Sequence[Step]):
    """The steps of a Pipeline class, in the order `run_all` runs them."""

    def __init__(self, steps: Sequence[Step] = ()) -> None:
        self._steps = tuple(steps)
        names = [s.name for s in self._steps]
        if len(set(names)) != len(names):
            raise ValueError(f"step names must be unique, got {names}")
        known = set(names)
        for s in self._steps:
            unknown = [n for n in (*s.needs, *s.reads) if n not in known]
            if unknown:
                raise ValueError(f"step {s.name!r} needs or reads unknown step(s) {unknown}")

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, str):
            for s in self._steps:
                if s.name == index:
                    return s
            raise KeyError(f"no step {index!r}; steps: {list(self.names)}")
        return self._steps[index]

    def __len__(self) -> int:
        return len(self._steps)

    def __iter__(self) -> Iterator[Step]:
        return iter(self._steps)

    def __contains__(self, name: object) -> bool:
        return any(s.name == name for s in self._steps)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self._steps)

    def inputs(self, name: str) -> tuple[str, ...]:
        """The steps whose results `name` uses: what it needs and reads, and every candidate maker when it reads
        candidates."""
        s = self[name]
        found = list(dict.fromkeys((*s.needs, *s.reads)))
        if s.reads_candidates:
            found += [o.name for o in self._steps if o.makes_candidates and o.name not in found and o.name != name]
        return tuple(found)

    def downstream(self, name: str) -> tuple[str, ...]:
        """Every step that uses `name`'s results, directly or not, in step order."""
        found: set[str] = set()
        frontier = {name}
        while frontier:
            frontier = {s.name for s in self._steps if frontier & set(self.inputs(s.name))} - found
            found |= frontier
        return tuple(s.name for s in self._steps if s.name in found)

    def inserted(self, new: Step, *, after: str | None = None) -> StepRegistry:
        """A registry with `new` after step `after` (default: before write_summary, else at the end)."""
        steps = [s for s in self._steps if s.name != new.name]
        names = [s.name for s in steps]
        if after is not None:
            if after not in names:
                raise ValueError(f"no step {after!r} to put {new.name!r} after; steps: {names}")
            position = names.index(after) + 1
        else:
            position = names.index("write_summary") if "write_summary" in names else len(steps)
        steps.insert(position, new)
        return StepRegistry(steps)


def step(
    name: str | None = None,
    *,
    title: str,
    short: str = "",
    blurb: str = "",
    needs: Sequence[str] = (),
    reads: Sequence[str] = (),
    configs: Sequence[str] = (),
    parameters: Sequence[str] = (),
    args: Sequence[str] = (),
    makes_candidates: bool = False,
    reads_candidates: bool = False,
    optional: bool = False,
    skippable: bool = False,
    after: str | None = None,
    summary: Callable[[Any, Any], Mapping[str, Any]] | None = None,
    candidate_summary: Callable[[Any, Any, str], Mapping[str, Any]] | None = None,
    details: Callable[[Any], Mapping[str, Any]] | None = None,
) -> Callable[[F], F]:
    """Declare a Pipeline method as a step (see :class:`Step`); the class's registry picks it up.

    The method is wrapped so that every call checks `needs`, runs, and is recorded (configs, parameter changes,
    arguments, files written, seconds) in `pipeline.history`, its result stored in `pipeline.results[name]`.
    `after` places a step a subclass adds (default: before write_summary).
    """

    def decorate(method: F) -> F:
        declared = Step(
            name=name or method.__name__,
            title=title,
            short=short or title,
            blurb=blurb,
            needs=tuple(needs),
            reads=tuple(reads),
            configs=tuple(configs),
            parameters=tuple(parameters),
            args=tuple(args),
            makes_candidates=makes_candidates,
            reads_candidates=reads_candidates,
            optional=optional,
            skippable=skippable,
            summary=summary,
            candidate_summary=candidate_summary,
            details=details,
        )

        def run(self: Pipeline, *call_args: Any, **kwargs: Any) -> Any:
            return self._run_step(declared, method, *call_args, **kwargs)

        run.__name__, run.__qualname__, run.__doc__ = method.__name__, method.__qualname__, method.__doc__
        run.__wrapped__ = method  # type: ignore[attr-defined]
        run._step = declared  # type: ignore[attr-defined]
        run._step_after = after  # type: ignore[attr-defined]
        return run  # type: ignore[return-value]

    return decorate


@dataclass(frozen=True)
class StepRecord:
    """One step call as it ran: what a recipe records.

    Attributes:
        step: The step's name.
        configs: The configs it read, by Pipeline attribute name, as they were at the call.
        parameters: PipelineParameters fields whose value differed from the pipeline's initial parameters.
        args: The call's keyword arguments.
        outputs: Files the step wrote -> sha256 (paths relative to output_dir when inside it).
        details: What it decided (step-specific; e.g. the chosen candidate).
        seconds: How long it took.
        log: What the libraries said while it ran (warnings, log records, stderr), captured instead of printed.
    """

    step: str
    configs: Mapping[str, Any] = field(default_factory=dict)
    parameters: Mapping[str, Any] = field(default_factory=dict)
    args: Mapping[str, Any] = field(default_factory=dict)
    outputs: Mapping[str, str] = field(default_factory=dict)
    details: Mapping[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    log: str = ""


class RunState(Mapping[str, Any]):
    """Step name -> the typed result of its last successful call (read-only: only a step's run sets it)."""

    def __init__(self) -> None:
        self._results: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        return self._results[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._results)

    def __len__(self) -> int:
        return len(self._results)

    def _set(self, name: str, result: Any) -> None:
        self._results[name] = result

    def _clear(self) -> None:
        self._results.clear()

    def __repr__(self) -> str:
        return f"RunState({', '.join(self._results)})"


class Summary(dict):  # type: ignore[type-arg]
    """summary.json's contents (a dict, as CI reads it) and where it was written."""

    def __init__(self, data: Mapping[str, Any], path: Path) -> None:
        super().__init__(data)
        self.path = path

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.path,)


# ---------------------------------------------------------------------------------------------------------------
# summary contributions (each step's own keys)


def _export_summary(pipeline: Pipeline, result: Any) -> dict[str, Any]:
    return {"export_max_abs_error": result.max_abs_error if result.checks else None}


def _compare_summary(pipeline: Pipeline, report: Any) -> dict[str, Any]:
    measured = next(iter(report.batch_invariance.values()), None)
    return {
        "budget": report.budget.to_dict(),
        "task": report.task,
        "primary_metrics": list(report.primary),
        "batch_invariance": {
            "padding": measured.policy.to_dict() if measured else pipeline.padding.to_dict(),
            "batch_size": measured.batch_size if measured else None,
            "rule_min": pipeline.batch_invariance_min,
            "measured": measured is not None,
        },
    }


def _compare_candidate(pipeline: Pipeline, report: Any, name: str) -> dict[str, Any]:
    if name not in report.names:
        return {}
    accuracy = report[name]
    return {
        "cosine_mean": accuracy.cosine_mean,
        "cosine_min": accuracy.cosine_min,
        "meets_budget": bool(accuracy),
        "failures": list(accuracy.failures),
        "metrics": {k: v for k, v in accuracy.task_metrics.items()},
        **_invariance_fields(report.batch_invariance.get(name)),
    }


def _invariance_fields(result: Any) -> dict[str, Any]:
    """A candidate's batch-invariance figures (None when not measured): stable summary.json keys."""
    return {
        "batch_invariance_min": result.cosine_min if result is not None else None,
        "batch_invariance_mean": result.cosine_mean if result is not None else None,
    }


def _benchmark_summary(pipeline: Pipeline, timings: Any) -> dict[str, Any]:
    seq = pipeline.parameters.sequence_length
    timed = timings.to_dict()
    return {
        "pytorch_latency_ms_p50": timings.p50("pytorch", 1, seq) if "pytorch" in timings.names else None,
        "benchmark": {
            "batch": 1,
            "seq": seq,
            "threads": timings.config.effective_threads,
            "iterations": timings.config.iterations,
            # why these numbers may be off (contention, spread, order, load): a script or CI job reads them here
            "busy_warnings": timed["warnings"],
            "load_average": timed["load_average"],
            "contention": timed["contention"],
        },
        "machine": timings.machine,
    }


def _benchmark_candidate(pipeline: Pipeline, timings: Any, name: str) -> dict[str, Any]:
    seq = pipeline.parameters.sequence_length
    if name not in timings.names:
        return {}
    return {
        "latency_ms_p50": timings.p50(name, 1, seq) if 1 in timings.config.batch_sizes else None,
        "latency_ms_p50_by_batch": {str(b): timings.p50(name, b, seq) for b in timings.config.batch_sizes},
    }


def _choose_summary(pipeline: Pipeline, choice: Any) -> dict[str, Any]:
    return {"chosen": choice.name, "chosen_reason": choice.reason}


def _triton_summary(pipeline: Pipeline, result: Any) -> dict[str, Any]:
    return {"triton_repository": str(result.repository), "triton_model": result.model_name}


def _triton_details(result: Any) -> dict[str, Any]:
    details: dict[str, Any] = {"model_name": getattr(result, "model_name", None)}
    if getattr(result, "model_names", None):
        details["models"] = list(result.model_names)
    if getattr(result, "config_text", None):
        details["config_pbtxt"] = result.config_text
    return details


# ---------------------------------------------------------------------------------------------------------------
# the pipeline


class Pipeline:
    """Export, fuse, quantize, compare, benchmark, choose and export to Triton, one method per registered step.

    Args:
        parameters: The run's parameters.
        source: A model source to use instead of `parameters.model_path` (e.g. a ModuleSource).
        export_config: How to export and check the export.
        quant_config: The INT8 candidates' dynamic quantization.
        budget: The accuracy budget candidates must meet to be chosen; None: the task's default budget.
        padding: How the deployment pads and batches texts (workbench.triton.padding.PaddingPolicy): what the
            batch invariance is measured under and the Triton export serves; None: the default (length buckets)
            at `parameters.sequence_length`.

    Attributes:
        steps: The class's StepRegistry (class attribute).
        results: Step name -> the result of its last successful call (a read-only RunState).
        history: Every successful step call, in order (StepRecords: what a recipe records).
        candidates: Name -> Candidate (model file, engine, precision); "reference" is the FP32 export.
        plans: Candidate name -> the PrecisionPlan it was converted with (what the autofix step starts from).
        task: The Task the model is treated as.
        progress: Called with a workbench.progress.ProgressEvent after each unit of work of the long steps
            (benchmark rounds, calibration batches, fix trials); it may raise Stopped to end the step there.
            None: the stages' own defaults (calibration's tqdm.auto bar).
        logs: Step name -> what the libraries said during its last call (warnings, log records, stderr).
        skipped: Skippable step name -> why `run_all` / `run_if_available` skipped it here (e.g. the OpenVINO steps
            without the openvino extra: the reason names the extra); summary.json's `skipped_steps`.
        batch_invariance_min: The choice's batch-invariance rule: when the deployment batches, candidates whose
            batch-invariance minimum cosine is below it are not chosen; None turns the rule off.
    """

    steps: ClassVar[StepRegistry] = StepRegistry()
    #: Parameters a Pipeline reads once, when it is built or on first use: a step cannot change them.
    FIXED_PARAMETERS: ClassVar[tuple[str, ...]] = (
        "model_path",
        "task",
        "data_dir",
        "output_dir",
        "max_calibration_samples",
        "max_eval_samples",
    )
    #: Pipeline attribute -> its config type (recipes read them back with the type's from_dict).
    config_types: ClassVar[dict[str, type[StageConfig]]] = {
        "export_config": ExportConfig,
        "quant_config": DynamicQuantConfig,
        "budget": Budget,
    }

    def __init__(
        self,
        parameters: PipelineParameters = PipelineParameters(),
        *,
        source: ModelSource | None = None,
        export_config: ExportConfig = ExportConfig(),
        quant_config: DynamicQuantConfig = DynamicQuantConfig(),
        budget: Budget | None = None,
        padding: PaddingPolicy | None = None,
    ) -> None:
        if not isinstance(parameters, PipelineParameters):
            raise ConfigError(
                f"Pipeline takes PipelineParameters, got {type(parameters).__name__}.",
                fix="use Pipeline.from_parameters(**values)",
            )
        self.parameters = parameters
        self.initial_parameters = parameters
        self.export_config = export_config
        self.quant_config = quant_config
        self.output_dir = Path(parameters.output_dir).resolve()  # summary.json records absolute paths
        self.source = source if source is not None else load_model(parameters.model_path, task=parameters.task)
        self._task: Task | None = None
        self._budget: Budget | None = budget
        self._padding: PaddingPolicy | None = None
        if padding is not None:
            self.padding = padding
        from workbench.stages.accuracy.invariance import BATCH_INVARIANCE_MIN

        self.batch_invariance_min: float | None = BATCH_INVARIANCE_MIN
        if isinstance(self.source, HFModelSource) or budget is not None:
            self.task.check_budget(self.budget)  # a checkpoint's task (and a budget of another task) fail at load
        self.results = RunState()
        self.history: list[StepRecord] = []
        self.candidates: dict[str, Candidate] = {}
        self.plans: dict[str, Any] = {}
        self.progress: ProgressCallback | None = None
        self.logs: dict[str, str] = {}
        self._tokenizer: Any = None
        if isinstance(self.source, HFModelSource):
            self._tokenizer = self.source.load_tokenizer()  # tokenizer problems are found at load, with the fix
        self._samples: Samples | None = None
        self.unavailable_engines: dict[str, str] = {}
        self.skipped: dict[str, str] = {}
        check_sequence_length(self.source, parameters.sequence_length)  # before the output folder is claimed
        # one run per output folder, claimed once the inputs checked out: a lock, an earlier run refused up front
        # without overwrite, a killed run's leftovers cleaned
        self.output_folder = OutputFolder(self.output_dir).claim(overwrite=parameters.overwrite)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.steps = _collect_steps(cls, cls.__mro__[1].steps if hasattr(cls.__mro__[1], "steps") else StepRegistry())

    @classmethod
    def from_parameters(cls, **parameters: Any) -> Pipeline:
        """Build from keyword parameters (as papermill passes them); unknown names are an error.

        Called on Pipeline itself, it builds the pipeline class registered for the model's task (causal LMs
        take the generation path: workbench.pipeline_generation); called on a subclass, that subclass.
        """
        values = PipelineParameters.from_dict(parameters)
        return (pipeline_class_for(values) if cls is Pipeline else cls)(values)

    def extra_summary(self) -> dict[str, Any]:
        """Sections a pipeline class adds to summary.json beside its steps' keys (none here)."""
        return {}

    @property
    def task(self) -> Task:
        """The Task the model is treated as: the checkpoint's (config.json), `parameters.task`, or the one whose
        outputs an .onnx model (or a module's output names) has."""
        if self._task is None:
            self._task = self._resolve_task()
        return self._task

    @property
    def budget(self) -> Budget:
        """The accuracy budget candidates must meet: the one given, else the task's default budget."""
        if self._budget is None:
            self._budget = self.task.default_budget()
        return self._budget

    @budget.setter
    def budget(self, value: Budget) -> None:
        self.task.check_budget(value)
        self._budget = value

    @property
    def padding(self) -> PaddingPolicy:
        """How the deployment pads and batches texts: the policy given, else the default (length buckets) at the
        sequence length. Batch invariance is measured under it and the Triton export serves it."""
        if self._padding is not None:
            return self._padding
        return PaddingPolicy(max_length=self.parameters.sequence_length)

    @padding.setter
    def padding(self, value: PaddingPolicy) -> None:
        if not isinstance(value, PaddingPolicy):
            raise ConfigError(
                f"padding must be a PaddingPolicy, not {type(value).__name__}.",
                fix="pass PaddingPolicy(max_length=...) or PaddingPolicy.preset('fixed', max_length=...)",
            )
        self._padding = value

    @property
    def served_max_batch_size(self) -> int:
        """The max_batch_size the Triton export serves with (dynamic batching merges up to this many texts)."""
        return max(8, *self.parameters.benchmark_batch_sizes)

    def _resolve_task(self) -> Task:
        from workbench.tasks.base import get_task

        if isinstance(self.source, HFModelSource):
            return self.source.task
        if self.parameters.task is not None:
            return get_task(self.parameters.task)
        if isinstance(self.source, OnnxSource):
            from workbench.stages.accuracy.compare import _output_ranks, resolve_task

            return resolve_task(None, _output_ranks(self.source.path))
        outputs = {name: None for name in getattr(self.source, "output_names", ())}
        from workbench.tasks.base import task_for_outputs

        return task_for_outputs(outputs)

    # inputs ---------------------------------------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            self._tokenizer = self.source.load_tokenizer()
        return self._tokenizer

    @property
    def sentences(self) -> Samples:
        """The task's calibration and evaluation samples (sentences for text tasks)."""
        if self._samples is None:
            self._samples = self.task.load_samples(
                self.parameters.data_dir,
                max_calibration=self.parameters.max_calibration_samples,
                max_eval=self.parameters.max_eval_samples,
            )
        return self._samples

    @property
    def input_names(self) -> tuple[str, ...]:
        from workbench.engines.onnxruntime import OnnxRuntimeRunner

        runner = OnnxRuntimeRunner(self._require_reference())
        with runner:
            return tuple(runner.input_specs())

    @property
    def candidate_models(self) -> dict[str, Candidate]:
        """Candidate name -> Candidate, the reference left out (it is what candidates are compared with)."""
        return {name: c for name, c in self.candidates.items() if name != "reference"}

    def pytorch_module(self) -> Any:
        """The source's torch module (the latency baseline), or None for an .onnx source."""
        return None if isinstance(self.source, OnnxSource) else self.source.load_module()

    def evaluation_batches(self) -> Encoded:
        """Evaluation samples encoded as a batching server feeds them (padded to the sequence length), with what
        the task's metrics need beside the feeds."""
        return self.task.encode(
            self.tokenizer,
            self.sentences.evaluation,
            batch_size=self.parameters.eval_batch_size,
            sequence_length=self.parameters.sequence_length,
            input_names=self.input_names,
        )

    def evaluation_feeds(self) -> list[dict[str, Any]]:
        """Evaluation feed dicts, padded to the sequence length."""
        return self.evaluation_batches().feeds

    def calibration_feeds(self) -> list[dict[str, Any]]:
        """Calibration feed dicts, padded to the sequence length."""
        return self.task.encode(
            self.tokenizer,
            self.sentences.calibration,
            batch_size=self.parameters.eval_batch_size,
            sequence_length=self.parameters.sequence_length,
            input_names=self.input_names,
        ).feeds

    def _feeds_for(self, batch: int, seq: int) -> dict[str, Any]:
        samples = self.sentences.evaluation
        chosen = [samples[i % len(samples)] for i in range(batch)]
        return self.task.encode(
            self.tokenizer, chosen, batch_size=batch, sequence_length=seq, input_names=self.input_names
        ).feeds[0]

    def _require_reference(self) -> Candidate:
        if "reference" not in self.candidates:
            raise WorkbenchError("There is no reference ONNX model yet.", fix="run export() first")
        return self.candidates["reference"]

    def _base_model(self) -> Candidate:
        return self.candidates.get("fp32_fused", self._require_reference())

    # running and recording ------------------------------------------------------------------------------------
    def run_step(self, name: str, /, **kwargs: Any) -> Any:
        """Run the step registered as `name` (what a recipe replay and the Workbench call)."""
        if name not in self.steps:
            raise ConfigError(f"There is no step {name!r}.", expected=f"one of {list(self.steps.names)}")
        return getattr(self, name)(**kwargs)

    def missing_inputs(self, name: str) -> list[str]:
        """The steps that must run before `name` can (empty when its inputs exist)."""
        return [n for n in self.steps[name].needs if n not in self.results]

    def _run_step(self, declared: Step, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        missing = self.missing_inputs(declared.name)
        if missing:
            titles = ", ".join(self.steps[m].title for m in missing)
            raise WorkbenchError(
                f"{declared.title} needs {titles} first.", fix=" then ".join(f"run {m}()" for m in missing) + " first"
            )
        moved = [
            name
            for name in self.FIXED_PARAMETERS
            if getattr(self.parameters, name) != getattr(self.initial_parameters, name)
        ]
        if moved:
            raise WorkbenchError(
                f"The pipeline's {', '.join(moved)} changed after it was built; it read them once, "
                "so this step would not use them.",
                fix="build a new pipeline with the new parameters",
            )
        configs = {name: getattr(self, name) for name in declared.configs}
        started = time.perf_counter()
        from workbench._capture import captured_output

        with captured_output() as log:  # the libraries' warnings go to the step's log, not to stderr
            try:
                result = method(self, *args, **kwargs)
            finally:
                self.logs[declared.name] = log.text
        seconds = time.perf_counter() - started
        self.results._set(declared.name, result)
        bound = inspect.signature(method).bind(self, *args, **kwargs)
        bound.apply_defaults()  # a recipe records what the call ran with, defaults included
        call_args = {name: bound.arguments[name] for name in declared.args if name in bound.arguments}
        self.history.append(
            StepRecord(
                step=declared.name,
                configs=configs,
                parameters=_parameter_changes(self.initial_parameters, self.parameters),
                args=call_args,
                outputs=_output_hashes(result, self.output_dir),
                details=dict(declared.details(result)) if declared.details and result is not None else {},
                seconds=seconds,
                log=log.text,
            )
        )
        return result

    def run_all(self) -> Summary:
        """Every registered step in order, returns the summary. Optional steps (run on request: a plan of edits,
        a precision plan, the auto-fix) are left out; skippable ones (an engine's candidates) are skipped, with the
        reason, where what they need is not installed here."""
        for declared in self.steps:
            if declared.name == "write_summary" or declared.optional:
                continue
            if declared.skippable:
                self.run_if_available(declared.name)
            else:
                self.run_step(declared.name)
        return self.write_summary()

    def run_if_available(self, name: str, **kwargs: Any) -> Any:
        """Run a skippable step, or skip it where what it needs is not installed or not present here.

        A skipped step raised MissingDependency or DeviceUnavailable before writing anything; its reason (which
        names the extra to install) goes to `skipped` and summary.json's `skipped_steps`, and the step is not in
        the history (a recipe replays only what ran). A step that is not skippable is run as `run_step` runs it.

        Returns:
            The step's result, or None when it was skipped.
        """
        from workbench.errors import DeviceUnavailable, MissingDependency, StepNotApplicable

        if not self.steps[name].skippable:
            return self.run_step(name, **kwargs)
        try:
            result = self.run_step(name, **kwargs)
        except (MissingDependency, DeviceUnavailable, StepNotApplicable) as exc:
            self.skipped[name] = str(exc)
            return None
        self.skipped.pop(name, None)
        return result

    # steps ----------------------------------------------------------------------------------------------------
    @step(
        title="Export to ONNX",
        short="Export",
        configs=("export_config",),
        summary=_export_summary,
        blurb="torch.onnx export with dynamic batch and sequence axes, checked against PyTorch on real samples.",
    )
    def export(self) -> Any:
        """Export to ONNX and check it against PyTorch (an .onnx source is checked and used as it is)."""
        from workbench.stages.export import ExportResult, export_onnx

        if isinstance(self.source, OnnxSource):
            path = self.source.path
            result = ExportResult(
                path=path,
                config=self.export_config,
                input_names=(),
                output_names=(),
                checks=(),
                seconds=0.0,
                source_name=self.source.name,
                notes=("an .onnx model is used as it is: there is no PyTorch model to check it against",),
            )
        else:
            texts = [s for s in self.sentences.evaluation if isinstance(s, str)] or None
            result = export_onnx(self.source, self.output_dir / "model.onnx", self.export_config, check_texts=texts)
        self.candidates["reference"] = Candidate("reference", result.path)
        self.candidates["fp32"] = Candidate("fp32", result.path)
        return result

    @step(
        title="Graph surgery: fuse transformer subgraphs",
        short="Graph surgery",
        needs=("export",),
        makes_candidates=True,
        blurb="onnxruntime's transformer optimizer fuses Attention, LayerNorm and GELU; checked against the "
        "unfused graph. Precision starts from the fused graph when there is one, else from the export.",
    )
    def fuse(self) -> Any:
        """Fuse transformer subgraphs (Attention, LayerNorm, GELU) with onnxruntime's optimizer."""
        from workbench.stages.fusion import FusionConfig, fuse_transformer

        config = FusionConfig.for_source(self.source)
        result = fuse_transformer(
            self._require_reference(),
            self.output_dir / "model_fused.onnx",
            config,
            check_feeds=self.evaluation_feeds()[:1],
        )
        self.candidates["fp32_fused"] = Candidate("fp32_fused", result.path)
        return result

    @step(
        title="Graph surgery: a plan of edits",
        short="Surgery plan",
        needs=("export",),
        reads=("fuse",),
        args=("plan",),
        makes_candidates=True,
        optional=True,
        blurb="Edits you choose (fold constants, clean up, remove or replace nodes, ...) applied to the fused graph "
        "(else the export), each checked on an evaluation batch; the edited graph becomes an FP32 candidate.",
    )
    def surgery(self, plan: Any = None) -> Any:
        """Apply a SurgeryPlan (a plan, its JSON list of edits, or None: fold constants then clean up)."""
        from workbench.stages.surgery.edits import Cleanup, FoldConstants, SurgeryPlan
        from workbench.stages.surgery.run import run_surgery

        if plan is None:
            plan = SurgeryPlan((FoldConstants(), Cleanup()))
        elif not isinstance(plan, SurgeryPlan):
            plan = SurgeryPlan.from_json(plan if isinstance(plan, str) else json.dumps(list(plan)))
        result = run_surgery(
            self._base_model(), self.output_dir / "model_edited.onnx", plan, check_feeds=self.evaluation_feeds()[:1]
        )
        self.candidates["fp32_edited"] = Candidate("fp32_edited", result.path)
        return result

    @step(
        title="Precision: dynamic INT8",
        short="Precision",
        needs=("export",),
        reads=("fuse",),
        configs=("quant_config",),
        makes_candidates=True,
        blurb="Weights quantized to INT8 offline, activation scales computed per run (no calibration data).",
    )
    def quantize(self) -> Any:
        """Dynamic INT8 (per-channel weights by default) on the fused graph when there is one."""
        from workbench.stages.precision.quantize import quantize_dynamic

        name = "int8_dynamic_per_channel" if self.quant_config.per_channel else "int8_dynamic_per_tensor"
        from workbench.stages.precision.plan import PrecisionPlan

        result = quantize_dynamic(self._base_model(), self.output_dir / f"model_{name}.onnx", self.quant_config)
        self.candidates[name] = Candidate(name, result.path, precision="int8_dynamic")
        self.plans[name] = PrecisionPlan("int8_dynamic", self.quant_config)
        return result

    @step(
        title="Precision: dynamic INT8 after SmoothQuant",
        short="SmoothQuant",
        needs=("export",),
        reads=("fuse",),
        configs=("quant_config",),
        makes_candidates=True,
        blurb="Activation outliers moved into the per-channel-quantized weights first (calibrated on the "
        "calibration samples), then dynamic INT8.",
    )
    def quantize_smoothquant(self) -> Any:
        """Dynamic INT8 after SmoothQuant: activation outliers moved into the weights first.

        Smoothing is calibrated on the calibration samples (padded to the sequence length). On MiniLM it takes
        dynamic INT8 from mean/min embedding cosine 0.992/0.971 to 0.997/0.991 at the same speed.
        """
        from dataclasses import replace

        from workbench.stages.precision.plan import PrecisionPlan
        from workbench.stages.precision.smooth import SmoothingConfig

        plan = replace(PrecisionPlan("int8_dynamic", self.quant_config), smoothing=SmoothingConfig())
        name = "int8_dynamic_smoothquant"
        result = plan.convert(
            self._base_model(), self.output_dir / f"model_{name}.onnx", calibration_feeds=self.calibration_feeds()
        )
        self.candidates[name] = Candidate(name, result.path, precision="int8_dynamic")
        self.plans[name] = plan
        return result

    @step(
        title="Precision: a plan of your choice",
        short="Precision plan",
        needs=("export",),
        reads=("fuse",),
        args=("plan", "name"),
        makes_candidates=True,
        optional=True,
        blurb="Any PrecisionPlan method the library offers (dynamic or static INT8 with its calibration method, "
        "SmoothQuant, FP16, an engine's own such as OpenVINO NNCF), calibrated on the calibration samples.",
    )
    def convert(self, plan: Any = "cpu_int8_static", name: str | None = None) -> Any:
        """Convert the fused graph (else the export) with a PrecisionPlan: a preset name, a plan or its dict.

        The candidate is named after the plan (workbench.stages.precision.choices.candidate_name) unless `name`
        is given; it runs on the engine that offers the plan's method.
        """
        from workbench.engines.base import engine_for_path, engines
        from workbench.stages.precision.choices import as_plan, candidate_name

        plan = as_plan(plan)
        name = name or candidate_name(plan)
        offering = [e for e in engines().values() if plan.method in e.precisions and e.suffixes]
        suffix = offering[0].suffixes[0] if offering else ".onnx"
        result = plan.convert(
            self._base_model(),
            self.output_dir / f"model_{name}{suffix}",
            calibration_feeds=self.calibration_feeds(),
            progress=self.progress if self.progress is not None else True,
        )
        self.candidates[name] = Candidate(
            name, result.path, engine=engine_for_path(result.path).name, precision=plan.method
        )
        self.plans[name] = plan
        return result

    @step(
        title="OpenVINO FP32",
        short="OpenVINO FP32",
        needs=("export",),
        makes_candidates=True,
        skippable=True,
        blurb="The plain ONNX export converted to OpenVINO IR (model.xml + model.bin, FP32 weights; OpenVINO "
        "fuses the graph itself). Needs the openvino extra: run_all skips it, with the reason, without.",
    )
    def openvino_fp32(self) -> Any:
        """The ONNX export as an OpenVINO IR, a candidate run by the OpenVINO engine.

        Raises:
            MissingDependency: The openvino extra is not installed (run_all then skips the step and says why).
        """
        from workbench.engines.base import get_engine
        from workbench.engines.openvino import convert_to_openvino

        get_engine("openvino").require()  # before any file: names the extra to install
        name = "openvino_fp32"
        result = convert_to_openvino(self._require_reference(), self.output_dir / f"model_{name}.xml")
        self.candidates[name] = Candidate(name, result.path, engine="openvino", precision="fp32")
        return result

    @step(
        title="Precision: OpenVINO INT8 (NNCF)",
        short="OpenVINO INT8",
        needs=("export",),
        makes_candidates=True,
        skippable=True,
        details=lambda result: {"plan": OPENVINO_INT8_PLAN},
        blurb="Static INT8 of the plain export by NNCF (PrecisionPlan preset cpu_int8_nncf: model_type "
        "TRANSFORMER, SmoothQuant alpha 0.95), calibrated on the calibration samples. Needs the openvino "
        "extra: run_all skips it, with the reason, without.",
    )
    def openvino_int8(self) -> Any:
        """OpenVINO INT8 quantized by NNCF from the plain export, calibrated on the calibration samples.

        Raises:
            MissingDependency: The openvino extra (openvino, nncf) is not installed (run_all then skips the step).
        """
        from workbench.engines.base import get_engine
        from workbench.stages.precision.plan import PrecisionPlan

        get_engine("openvino").require()  # before calibrating: names the extra to install
        plan = PrecisionPlan.preset(OPENVINO_INT8_PLAN)
        name = "openvino_int8_nncf"
        result = plan.convert(
            self._require_reference(), self.output_dir / f"model_{name}.xml", calibration_feeds=self.calibration_feeds()
        )
        self.candidates[name] = Candidate(name, result.path, engine="openvino", precision="int8_nncf")
        return result

    @step(
        title="Accuracy against the FP32 reference",
        short="Accuracy",
        needs=("export",),
        configs=("budget",),
        reads_candidates=True,
        summary=_compare_summary,
        candidate_summary=_compare_candidate,
        blurb="Every candidate against the ONNX FP32 export on the held-out samples, padded as served, judged "
        "by the task's metrics; a candidate meets the budget or says why not. Each candidate's batch "
        "invariance (a text alone vs in a batch of mixed-length texts, padded as served) is measured too.",
    )
    def compare(self) -> Any:
        """Compare every candidate with the FP32 reference on the held-out samples (Polygraphy + the task), and
        measure each candidate's batch invariance under the served padding policy (`self.padding`)."""
        from workbench.stages.accuracy.compare import compare_candidates

        report = compare_candidates(
            self._require_reference(),
            self.candidate_models,
            self.evaluation_batches(),
            task=self.task,
            budget=self.budget,
            threads=self.parameters.threads,
        )
        return self._with_batch_invariance(report)

    def _with_batch_invariance(self, report: Any) -> Any:
        """`report` with every candidate's batch invariance (run by its engine) under the served policy, in batches
        of the served max_batch_size (the texts are the evaluation samples when they are texts)."""
        from dataclasses import replace

        from workbench.stages.accuracy.invariance import batch_invariance

        texts = [s for s in self.sentences.evaluation if isinstance(s, str)]
        output = next(iter(self.task.outputs), None)
        if len(texts) < 2 or output is None:
            return replace(
                report,
                notes=(
                    *report.notes,
                    "batch invariance was not measured: it needs at least 2 "
                    "evaluation texts and a task output to compare",
                ),
            )
        measured = {}
        for name, candidate in self.candidate_models.items():
            measured[name] = batch_invariance(
                candidate,
                self.tokenizer,
                texts,
                self.padding,
                batch_size=self.served_max_batch_size,
                name=name,
                threads=self.parameters.threads,
                embedding_output=output,
            )
        return replace(report, batch_invariance=measured)

    @step(
        title="Accuracy fix: keep the layers that lose accuracy in FP32",
        short="Auto-fix",
        needs=("export",),
        reads=("fuse",),
        args=("candidate",),
        makes_candidates=True,
        optional=True,
        blurb="For a candidate that misses the budget: SmoothQuant first, then the fewest nodes kept in FP32 that "
        "meet it (a bisection over the layer-by-layer diagnosis); the fixed model becomes a candidate.",
    )
    def autofix(self, candidate: str | None = None) -> Any:
        """Search the fewest FP32 pins (after trying SmoothQuant) that bring `candidate` inside the budget.

        `candidate`: one made from a precision plan (quantize, quantize_smoothquant, convert); None: the first
        of them that misses the budget in the last accuracy comparison. Trials are written in a temporary folder
        that becomes output_dir/autofix_<candidate> only when the search ends.
        """
        from workbench._files import atomic_directory
        from workbench.stages.accuracy.autofix import AutofixConfig, autofix, moved

        report = self.results.get("compare")
        if candidate is None:
            ran = report is not None  # (a report is falsy when a candidate misses: test for None)
            missing = (
                [c.name for c in report.candidates if not c and c.name in self.plans] if report is not None else []
            )
            if not missing:
                raise WorkbenchError(
                    "There is no candidate to fix: "
                    + (
                        "every candidate made from a precision plan meets the budget."
                        if ran
                        else "no accuracy comparison ran yet."
                    ),
                    fix="name one: autofix(candidate=...) among " + ", ".join(sorted(self.plans))
                    if self.plans
                    else "run a precision step first",
                )
            candidate = missing[0]
        if candidate not in self.plans:
            raise ConfigError(
                f"{candidate!r} was not made from a precision plan in this run, so there is no plan to fix.",
                expected=f"one of {sorted(self.plans)}",
                fix="run a precision step first",
            )
        folder = self.output_dir / f"autofix_{candidate}"
        with atomic_directory(folder, overwrite=True) as staging:
            result = autofix(
                self._base_model().path,
                self.plans[candidate],
                self.evaluation_batches(),
                staging,
                budget=self.budget,
                task=self.task,
                reference=self._require_reference().path,
                calibration_feeds=self.calibration_feeds(),
                config=AutofixConfig(threads=self.parameters.threads),
                progress=self.progress,
            )
        result = moved(result, staging, folder)
        name = f"{candidate}_autofix"
        self.candidates[name] = Candidate(name, result.path, precision=result.plan.method)
        self.plans[name] = result.plan
        return result

    @step(
        title="Benchmark",
        short="Benchmark",
        needs=("export",),
        reads_candidates=True,
        parameters=("benchmark_batch_sizes", "benchmark_iterations"),
        summary=_benchmark_summary,
        candidate_summary=_benchmark_candidate,
        blurb="PyTorch eager (the baseline) and every candidate, interleaved run by run, at these batch sizes "
        "and the sequence length.",
    )
    def benchmark(self) -> Any:
        """Time PyTorch and every candidate, interleaved, at batch sizes x the sequence length."""
        from workbench.engines.base import engines, get_engine
        from workbench.stages.benchmark.latency import BenchmarkConfig, benchmark

        config = BenchmarkConfig(
            batch_sizes=self.parameters.benchmark_batch_sizes,
            sequence_lengths=(self.parameters.sequence_length,),
            iterations=self.parameters.benchmark_iterations,
            threads=self.parameters.threads,
        )
        runners: list[Any] = []
        module = self.pytorch_module()
        if module is not None:
            runners.append(
                get_engine("pytorch").runner(  # type: ignore[call-arg]
                    module,
                    name="pytorch",
                    threads=config.effective_threads,
                    output_names=getattr(self.source, "output_names", None),
                )
            )
        runners += [c.runner(threads=config.effective_threads) for c in self.candidate_models.values()]
        # the benchmark is where engines are asked whether they run here (choosing never probes the hardware)
        self.unavailable_engines = {
            e.title: e.availability().reason
            for e in engines().values()
            if e.name not in {c.engine for c in self.candidates.values()}
            and e.name != "pytorch"
            and not e.availability()
        }
        return benchmark(runners, self._feeds_for, config, progress=self.progress)

    @step(
        title="Choose the candidate to ship",
        short="Choice",
        needs=("compare", "benchmark"),
        args=("batch",),
        summary=_choose_summary,
        details=lambda choice: {"chosen": choice.name},
        blurb="The fastest candidate at this batch size that meets the accuracy budget, with the reason.",
    )
    def choose(self, batch: int = 1) -> Any:
        """The fastest candidate at `batch` that meets the accuracy budget."""
        from workbench.stages.choose import choose_candidate

        # the Triton export batches (dynamic batching up to served_max_batch_size), so the batch-invariance rule
        # applies: a text's served vector must not depend on its batch-mates
        batching = self.served_max_batch_size > 1
        return choose_candidate(
            self.results["compare"],
            self.results["benchmark"],
            batch=batch,
            seq=self.parameters.sequence_length,
            batch_invariance_min=self.batch_invariance_min if batching else None,
        )

    @step(
        title="Deploy: Triton model repository",
        short="Deploy",
        needs=("choose",),
        parameters=("triton_model_name", "overwrite"),
        summary=_triton_summary,
        details=_triton_details,
        blurb="The chosen candidate as a Triton repository that serves raw text (tokenizer, model, the task's "
        "post-processing, an ensemble), every config.pbtxt checked strictly before anything is written.",
    )
    def export_triton(self) -> Any:
        """Write the chosen model as a Triton model repository under output_dir/triton_repository.

        With a tokenizer (Hugging Face and .onnx sources), the repository serves raw text: a tokenizer model, the
        chosen model with dynamic batching, the task's post-processing (mean pooling for embeddings, labels and
        probabilities for classifiers), and an ensemble wiring them; plus a README and provenance.json. Tasks that
        decode in a front model (token classification: entities; question answering: (question, context) in, the
        answer out, long contexts windowed) get the chosen model and that BLS front model instead. A
        ModuleSource gets the model alone.
        """
        from workbench.triton.config import TritonConfig
        from workbench.triton.ensemble import export_triton_ensemble
        from workbench.triton.model import export_triton

        choice = self.results["choose"]
        name = self.parameters.triton_model_name or _triton_name(self.source.name)
        candidate = self.candidates[choice.name]
        repository = self.output_dir / "triton_repository"
        config = TritonConfig(
            model_name=name,
            max_batch_size=self.served_max_batch_size,
            warmup=True,
            warmup_sequence_length=self.parameters.sequence_length,
        )
        tokenizer_dir = None
        if isinstance(self.source, HFModelSource):
            tokenizer_dir = self.source.path
        elif isinstance(self.source, OnnxSource):
            tokenizer_dir = self.source.tokenizer_path or self.source.path.parent
        if tokenizer_dir is None:
            return export_triton(candidate, repository, config, overwrite=self.parameters.overwrite)
        report, timings = self.results.get("compare"), self.results.get("benchmark")
        accuracy = report[choice.name].to_dict() if report is not None else None
        invariance = report.batch_invariance.get(choice.name) if report is not None else None
        speed = (
            {
                "p50_ms": {f"batch {r.batch}, seq {r.seq}": r.p50_ms for r in timings.rows if r.name == choice.name},
                "machine": timings.machine,
            }
            if timings is not None
            else None
        )
        provenance = {
            "source_model": str(getattr(self.source, "path", self.source.name)),
            "chosen": choice.name,
            "chosen_reason": choice.reason,
            "accuracy": accuracy,
            "speed": speed,
            "quantization": self.quant_config.to_dict(),
        }
        model_config = getattr(self.source, "config", None) or {}
        if self.task.served_by_front_model:  # the task decodes in a BLS front model (entities, answers as JSON)
            from workbench.triton.bls import export_triton_bls

            return export_triton_bls(
                candidate.path,
                repository,
                tokenizer_dir,
                config,
                task=self.task,  # records it
                sequence_length=self.parameters.sequence_length,
                model_config=model_config,
                provenance=provenance,
                overwrite=self.parameters.overwrite,
            )
        return export_triton_ensemble(
            candidate,
            repository,
            tokenizer_dir,
            config,
            sequence_length=self.parameters.sequence_length,
            task=self.task,
            model_config=model_config,
            provenance={**provenance, "task": self.task.name, "batch_invariance": _invariance_fields(invariance)},
            padding=self.padding,
            overwrite=self.parameters.overwrite,
        )

    @step(
        title="Summary",
        short="Summary",
        needs=("export",),
        reads=("export", "compare", "benchmark", "choose", "export_triton"),
        reads_candidates=True,
        blurb="Writes summary.json (the contract CI reads) and shows its table.",
    )
    def write_summary(self) -> Summary:
        """Write output_dir/summary.json (the contract CI reads) and return it."""
        from workbench._files import atomic_path
        from workbench.summary import build_summary

        data = build_summary(self)
        path = self.output_dir / SUMMARY_FILE
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data, indent=2) + "\n")
        self.output_folder.release()  # the run is complete: the folder is free for the next one
        return Summary(data, path)


def _collect_steps(cls: type, inherited: StepRegistry) -> StepRegistry:
    """The registry of `cls`: its parent's steps, then the steps its own body declares (placed by `after`)."""
    registry = inherited
    for value in vars(cls).values():
        declared = getattr(value, "_step", None)
        if isinstance(declared, Step):
            after = getattr(value, "_step_after", None)
            if declared.name in registry and after is None:
                registry = StepRegistry([declared if s.name == declared.name else s for s in registry])
            else:
                registry = registry.inserted(declared, after=after)
    return registry


Pipeline.steps = _collect_steps(Pipeline, StepRegistry())

# task name -> the Pipeline class that runs it (tasks without one run the Pipeline's own steps)
_TASK_PIPELINES: dict[str, type[Pipeline]] = {}
BUILTIN_PIPELINE_MODULES = ("workbench.pipeline_generation",)
P = TypeVar("P", bound=type[Pipeline])


def pipeline_for_task(task: str) -> Callable[[P], P]:
    """Class decorator: the Pipeline subclass that runs models of `task` (same step names, its own steps)."""

    def register(cls: P) -> P:
        _TASK_PIPELINES[task] = cls
        return cls

    return register


def pipeline_class_for(parameters: PipelineParameters) -> type[Pipeline]:
    """The Pipeline class for these parameters' model: the one registered for its task, else Pipeline."""
    import importlib

    for module in BUILTIN_PIPELINE_MODULES:
        importlib.import_module(module)
    source = load_model(parameters.model_path, task=parameters.task)
    task = getattr(source, "task", None)
    name = task.name if task is not None else parameters.task
    return _TASK_PIPELINES.get(name or "", Pipeline)


#: The built-in steps, in order.
STEPS = Pipeline.steps
#: Steps that record measurements (timings, machine), so their files differ from run to run by design.
MEASURED_OUTPUTS = ("README.md", "provenance.json")


def _parameter_changes(base: PipelineParameters, parameters: PipelineParameters) -> dict[str, Any]:
    reference, values = base.to_dict(), parameters.to_dict()
    return {k: v for k, v in values.items() if reference.get(k) != v}


def _output_hashes(result: Any, output_dir: Path) -> dict[str, str]:
    """The files a step's result names (`.files`, else `.path`) -> sha256, relative to output_dir when inside it."""
    from workbench._files import file_sha256

    files = getattr(result, "files", None)
    if files is None:
        path = getattr(result, "path", None)
        files = (path,) if path is not None else ()
    hashes = {}
    for path in map(Path, files):
        if path.is_file():
            resolved = path.resolve()
            name = resolved.relative_to(output_dir).as_posix() if resolved.is_relative_to(output_dir) else str(resolved)
            hashes[name] = file_sha256(path)
    return hashes


def _triton_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "model"
    return cleaned.lower()


# ---------------------------------------------------------------------------------------------------------------
# the optional serving step: a subclass, so that Pipeline.run_all (and the guided Workbench) stay as fast as before


def _serving_summary(pipeline: Pipeline, result: Any) -> dict[str, Any]:
    from workbench.stages.serving.summary import serving_summary

    return {"serving": serving_summary(result)}


class ServingPipeline(Pipeline):
    """A Pipeline with the serving step after the deploy step: the chosen engine under load on real servers on
    loopback (Triton length-aware and fixed padding over HTTP and gRPC, FastAPI + PyTorch, FastAPI + ONNX
    Runtime), which fills summary.json's `serving` section (workbench.stages.serving.summary).

    Its `run_all()` runs it; `serving_config` (a ServingConfig, default the "quick" preset: seconds per level)
    and `serving_servers` say how long and against what.
    """

    config_types: ClassVar[dict[str, type[StageConfig]]] = {**Pipeline.config_types, "serving_config": ServingConfig}

    def __init__(self, parameters: PipelineParameters = PipelineParameters(), **kwargs: Any) -> None:
        from workbench.stages.serving.run import SERVERS

        super().__init__(parameters, **kwargs)
        self.serving_config = ServingConfig.preset("quick")
        self.serving_servers: tuple[str, ...] = SERVERS

    @step(
        title="Serving under load",
        short="Serving",
        needs=("export_triton",),
        reads=("choose",),
        configs=("serving_config",),
        after="export_triton",
        summary=_serving_summary,
        blurb="The chosen engine served on loopback: the length-aware and the fixed-padding Triton repository "
        "(HTTP and gRPC) and FastAPI baselines, closed-loop clients per concurrency level, side by side.",
    )
    def serve(self) -> Any:
        """Load the chosen engine on every server with the evaluation texts (workbench.stages.serving)."""
        from workbench.stages.serving.run import benchmark_serving
        from workbench.triton.config import TritonConfig

        choice = self.results["choose"]
        tokenizer_dir = getattr(self.source, "tokenizer_path", None) or (
            self.source.path if isinstance(self.source, HFModelSource) else None
        )
        if tokenizer_dir is None and isinstance(self.source, OnnxSource):
            tokenizer_dir = self.source.path.parent
        if tokenizer_dir is None:
            raise WorkbenchError(
                "The serving step serves raw text, so it needs the model's tokenizer.",
                fix="use a Hugging Face model folder or an .onnx file with its tokenizer",
            )
        texts = [s for s in self.sentences.evaluation if isinstance(s, str)]
        return benchmark_serving(
            self.candidates[choice.name].path,
            tokenizer_dir,
            texts,
            self.serving_config,
            triton_config=TritonConfig(model_name="served", max_batch_size=self.served_max_batch_size),
            padding=self.padding,
            pytorch_model=self.source.path if isinstance(self.source, HFModelSource) else None,
            servers=self.serving_servers,
            progress=False,
        )
