"""Tasks: what a model's head computes, declared once per task (compare optimum's TasksManager and OnnxConfig).

A :class:`Task` owns everything that depends on what the model is for:

- detection from a checkpoint's ``config.json`` (``architectures``, ``model_type``) and the transformers class
  that loads it with its head;
- the outputs the ONNX export must produce;
- the evaluation metrics that say whether a candidate still computes the same thing as the FP32 reference, and
  the default :class:`Budget` over them (never empty: a budget that gates nothing is an error);
- the post-processing model of the served Triton ensemble;
- the summary's metric fields (every task fills `cosine_mean` / `cosine_min` with its primary cosine).

The pipeline asks the task; it never branches on a task's name. A new task is one registered subclass::

    @register_task
    class MyTask(Task):
        name = "my-task"
        architectures = ("ForMyTask",)
        outputs = ("logits",)
        budget_type = MyBudget
        ...
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np

from workbench.config import StageConfig
from workbench.errors import ConfigError, ModelSourceError

Outputs = Mapping[str, np.ndarray]

# ---------------------------------------------------------------------------------------------------------------
# budgets


def gate(op: str, metric: str | None = None, label: str | None = None) -> dict[str, Any]:
    """Field metadata that makes a Budget field a gate: `op` is ">=" (a minimum) or "<=" (a maximum) on the task
    metric `metric` (default: the field name without a trailing "_min"/"_max")."""
    if op not in (">=", "<="):
        raise ValueError(f"gate op must be '>=' or '<=', got {op!r}")
    return {"gate": op, "metric": metric, "label": label}


@dataclass(frozen=True)
class Gate:
    """One limit of a budget: `metric op limit` must hold."""

    field: str
    metric: str
    op: str
    limit: float
    label: str

    def holds(self, value: float | None) -> bool:
        if value is None or not math.isfinite(value):
            return False
        return value >= self.limit if self.op == ">=" else value <= self.limit

    def describe(self) -> str:
        return f"{self.label} {self.op} {self.limit:g}"


_BUDGET_TYPES: dict[str, type[Budget]] = {}
B = TypeVar("B", bound="Budget")


@dataclass(frozen=True)
class Budget(StageConfig):
    """What must hold for a candidate to ship: a frozen config whose fields are gates on a task's metrics.

    Subclasses are dataclasses whose float fields carry ``metadata=gate(">=")`` (a minimum) or ``gate("<=")``
    (a maximum); None switches a gate off. A budget with no gate on is refused at construction: a budget that
    checks nothing would pass every candidate.

    Every budget may also gate `output_cosine_min`: the minimum Polygraphy cosine of each raw output, per batch.

    Attributes:
        output_cosine_min: Optional minimum raw-output cosine (None: not checked).
    """

    task: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.task:
            _BUDGET_TYPES[cls.task] = cls

    def __post_init__(self) -> None:
        hints = {f.name: f for f in dataclasses.fields(self)}
        for name, f in hints.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
                raise ConfigError(f"{type(self).__name__}.{name} must be a finite number or None, got {value!r}.")
            bounds = f.metadata.get("range")
            if bounds is not None and not bounds[0] <= float(value) <= bounds[1]:
                raise ConfigError(f"{type(self).__name__}.{name} must be in [{bounds[0]}, {bounds[1]}], got {value}.")
        if not self.gates():
            raise ConfigError(
                f"{type(self).__name__} gates nothing: every limit is None, so every candidate would pass.",
                expected=f"at least one of {[f.name for f in dataclasses.fields(self) if 'gate' in f.metadata]}",
                fix=f"start from {type(self).__name__}() (the task's default budget) and change one limit",
            )

    def gates(self) -> tuple[Gate, ...]:
        """The limits that are on (not None), in field order."""
        found = []
        for f in dataclasses.fields(self):
            op = f.metadata.get("gate")
            value = getattr(self, f.name)
            if op is None or value is None:
                continue
            metric = f.metadata.get("metric") or f.name.removesuffix("_min").removesuffix("_max")
            label = f.metadata.get("label") or metric.replace("_", " ")
            found.append(Gate(f.name, metric, op, float(value), label))
        return tuple(found)

    def failures(self, metrics: Mapping[str, float]) -> tuple[str, ...]:
        """The gates `metrics` miss, as readable lines (a metric that was not measured is a miss, never a pass)."""
        lines = []
        for g in self.gates():
            value = metrics.get(g.metric)
            if value is None:
                lines.append(f"{g.label} was not measured, but the budget asks for {g.op} {g.limit:g}")
            elif not g.holds(value):
                shown = f"{value:.5f}" if abs(value) < 1e4 else f"{value:.4g}"
                lines.append(f"{g.label} {shown} {'<' if g.op == '>=' else '>'} {g.limit:g}")
        return tuple(lines)

    def to_dict(self) -> dict[str, Any]:
        return {"task": self.task, **super().to_dict()}

    @classmethod
    def from_dict(cls: type[B], values: Mapping[str, Any]) -> B:
        """Build from a dict; a "task" key selects the task's budget type (how recipes store budgets)."""
        values = dict(values)
        task = values.pop("task", None)
        tasks()  # the built-in tasks register their budget types on import
        target: type[Budget] = cls
        if task is not None:
            if cls.task and task != cls.task:
                raise ConfigError(f"This is a budget for task {task!r}, not {cls.task!r} ({cls.__name__}).")
            if not cls.task:
                if task not in _BUDGET_TYPES:
                    raise ConfigError(
                        f"There is no budget type for task {task!r}.", expected=f"one of {sorted(_BUDGET_TYPES)}"
                    )
                target = _BUDGET_TYPES[task]
        elif not cls.task:
            raise ConfigError(
                "A budget dict needs a 'task' key to say which task's budget it is.",
                expected=f"task among {sorted(_BUDGET_TYPES)}",
            )
        return super(Budget, target).from_dict.__func__(target, values)  # type: ignore[attr-defined,no-any-return]

    def describe(self) -> str:
        """The gates in words, e.g. "embedding cosine mean >= 0.995; embedding cosine min >= 0.99"."""
        return "; ".join(g.describe() for g in self.gates())


def budget_field(
    default: float | None,
    op: str,
    *,
    metric: str | None = None,
    label: str | None = None,
    range: tuple[float, float] | None = None,
) -> Any:
    """A Budget dataclass field that is a gate (see :func:`gate`), optionally range-checked."""
    metadata = gate(op, metric, label)
    if range is not None:
        metadata["range"] = range
    return field(default=default, metadata=metadata)


def budget_type(task: str) -> type[Budget]:
    """The budget class of a task (by task name)."""
    get_task(task)  # loads the built-in tasks
    return _BUDGET_TYPES[task]


# ---------------------------------------------------------------------------------------------------------------
# metrics


@dataclass(frozen=True)
class TaskMetrics:
    """One candidate's task metrics against the reference.

    Attributes:
        values: Metric name -> value (what budgets gate and summary.json records).
        per_sample: The primary cosine of every sample, in feed order (for box plots); may be empty.
        details: Anything else worth keeping (e.g. the indices of disagreeing samples).
    """

    values: Mapping[str, float]
    per_sample: tuple[float, ...] = ()
    details: Mapping[str, Any] = field(default_factory=dict)


def cosine_rows(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row (axis 0) of two arrays, flattened per row, in float64."""
    a = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    b = np.asarray(candidate, dtype=np.float64).reshape(len(candidate), -1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    dots = np.sum(a * b, axis=1)
    # two zero vectors are the same vector; one zero vector is as far from the other as can be
    both_zero = norms == 0
    safe = np.where(both_zero, 1.0, norms)
    cos = dots / safe
    return np.where(both_zero, np.where(np.all(a == b, axis=1), 1.0, 0.0), cos)


def cosines_only(
    reference: Sequence[Outputs], candidate: Sequence[Outputs], feeds: Sequence[Outputs], outputs: Sequence[str]
) -> TaskMetrics:
    """`logits_cosine_mean` / `_min`: per row, the worst of `outputs`' cosines over its attended tokens
    (attention_mask 1), mean and min over rows. What token-level tasks report when metrics() is called without
    the meta their decoding needs (a layer diagnosis ranks nodes by it)."""
    per_row: list[float] = []
    for feed, ref_out, cand_out in zip(feeds, reference, candidate, strict=True):
        mask = np.asarray(feed["attention_mask"]).astype(bool)
        for row in range(len(mask)):
            per_row.append(
                min(
                    float(
                        cosine_rows(
                            np.asarray(ref_out[o])[row][mask[row]][None], np.asarray(cand_out[o])[row][mask[row]][None]
                        )[0]
                    )
                    for o in outputs
                )
            )
    return TaskMetrics(
        values={"logits_cosine_mean": float(np.mean(per_row)), "logits_cosine_min": float(np.min(per_row))},
        per_sample=tuple(per_row),
        details={"note": "no Encoded.meta: only the logits cosines were computed"},
    )


@dataclass(frozen=True)
class Samples:
    """A task's calibration and evaluation samples (sentences, (question, context) pairs, prompts...)."""

    calibration: tuple[Any, ...]
    evaluation: tuple[Any, ...]


@dataclass(frozen=True)
class Encoded:
    """Samples tokenized into model feeds, batch by batch.

    Attributes:
        feeds: One feed dict per batch (model inputs only: these go to the engines).
        meta: One entry per batch with what decoding needs besides the model outputs (offsets, word ids, which
            sample a window belongs to...); None entries where the task needs nothing.
    """

    feeds: list[dict[str, np.ndarray]]
    meta: list[Any]


# ---------------------------------------------------------------------------------------------------------------
# post-processing in the served ensemble


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a Python post-processing model: name, Triton data type, dims (no batch dim)."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class PostProcessing:
    """The Python-backend model that turns the engine's outputs into what a client wants.

    Attributes:
        source: The model.py source (a file of workbench/triton/python_models/).
        suffix: The model's name suffix in the repository ("_pooling", "_labels", ...).
        model_inputs: The engine outputs it reads, in order (matched to the engine's output names).
        extra_inputs: Tensors it reads from the tokenizer model (e.g. attention_mask, offsets).
        outputs: What the ensemble returns to the client.
        parameters: config.pbtxt string parameters (e.g. the labels, whether to normalise).
        files: Extra files to copy into the version folder: name -> bytes.
    """

    source: str
    suffix: str
    model_inputs: tuple[str, ...]
    extra_inputs: tuple[str, ...]
    outputs: tuple[TensorSpec, ...]
    parameters: Mapping[str, str] = field(default_factory=dict)
    files: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class FrontModel:
    """The Python-backend model clients call when a task needs more than a post-processing step: it tokenizes
    (with windows where the task needs them), calls the engine model through Triton's business-logic scripting
    (BLS: `pb_utils.InferenceRequest(...).exec()`), and decodes, all in one `model.py`
    (workbench/triton/bls.py writes it next to the engine model).

    Attributes:
        source: The model.py source (a file of workbench/triton/python_models/), self-contained (numpy and
            `tokenizers` only); it must define `tokenizer_from(path, parameters)` and
            `run(tokenizer, rows, infer, parameters)`, the pure functions its TritonPythonModel uses and the
            export checks against the task's :meth:`Task.served_outputs`.
        suffix: The front model's name suffix in the repository ("_ner", "_qa", ...).
        engine_outputs: The engine outputs it requests.
        inputs: What clients send (no batch dim).
        outputs: What clients get back (no batch dim).
        parameters: config.pbtxt string parameters of the task's decoding (labels, strategy, lengths...).
        check_samples: Inputs the export runs through both the served code and the library before it writes
            anything (texts, (question, context) pairs...).
    """

    source: str
    suffix: str
    engine_outputs: tuple[str, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parameters: Mapping[str, str] = field(default_factory=dict)
    check_samples: tuple[Any, ...] = ()


# ---------------------------------------------------------------------------------------------------------------
# the task


class Task:
    """What a model is for, and everything the workbench does differently because of it.

    Class attributes (declared by each task):
        name: Registry key, as Hugging Face names the task ("feature-extraction", "text-classification", ...).
        title: For people.
        architectures: Class-name suffixes of the checkpoints it handles (``config.json`` ``architectures``),
            e.g. ("ForSequenceClassification",). The base-model task handles bare encoders ("BertModel").
        auto_model: The transformers Auto class that loads the checkpoint with this head.
        outputs: The outputs the ONNX export produces, in order.
        output_ranks: Output name -> rank, to tell tasks with the same output names apart (2-D logits: one label
            per text; 3-D logits: one per token) when a task is found from an ONNX model's outputs.
        detect_from_outputs: Whether a model's outputs alone may select this task (False: only by name).
        budget_type: Its Budget subclass; `budget_type()` is the default budget.
        primary_cosine: (mean metric, min metric) that fill summary.json's `cosine_mean` / `cosine_min`.
        metric_names: The task metrics every candidate carries in summary.json, in order.
        serving_output: The ensemble's main output for clients, as the README names it.
        default_sequence_length: The sequence length this task is usually served at (None: the pipeline's own
            default); question answering windows contexts at 384 tokens, as transformers' pipeline does.
        served_by_front_model: Whether Triton serves it through a BLS front model (:meth:`front_model`,
            workbench.triton.bls) rather than an ensemble with a post-processing step (:meth:`postprocessing`).
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    architectures: ClassVar[tuple[str, ...]] = ()
    auto_model: ClassVar[str] = "AutoModel"
    outputs: ClassVar[tuple[str, ...]] = ()
    budget_type: ClassVar[type[Budget]]
    output_ranks: ClassVar[Mapping[str, int]] = {}
    detect_from_outputs: ClassVar[bool] = True
    primary_cosine: ClassVar[tuple[str, str]] = ("", "")
    metric_names: ClassVar[tuple[str, ...]] = ()
    serving_output: ClassVar[str] = ""
    default_sequence_length: ClassVar[int | None] = None
    served_by_front_model: ClassVar[bool] = False

    # -- detection -------------------------------------------------------------------------------------------

    def detect(self, config: Mapping[str, Any]) -> bool:
        """Whether a checkpoint with this config.json is this task's (by its `architectures`)."""
        architectures = config.get("architectures") or []
        return any(str(a).endswith(self.architectures) for a in architectures) if self.architectures else False

    def check_tokenizer(self, tokenizer: Any, *, model_path: str) -> None:
        """Raise ModelSourceError (with the fix) when `tokenizer` cannot feed this task's model padded batches."""
        if getattr(tokenizer, "pad_token", None) is None:
            raise ModelSourceError(
                f"The tokenizer of {model_path} has no pad token, so sentences cannot be batched to one length.",
                fix="set one and save the tokenizer again: tokenizer.pad_token = tokenizer.eos_token (or add a "
                "[PAD] token); tokenizer.save_pretrained(MODEL_DIR)",
            )
        limit = getattr(tokenizer, "model_max_length", None)
        if limit is None or limit > 1_000_000:
            raise ModelSourceError(
                f"The tokenizer of {model_path} has no model_max_length (it reads {limit}), so long texts would "
                "not be truncated to what the model's positions allow.",
                fix="set tokenizer.model_max_length to the model's max_position_embeddings and save it again "
                "(tokenizer.save_pretrained(MODEL_DIR))",
            )

    # -- export and evaluation -------------------------------------------------------------------------------

    def default_budget(self) -> Budget:
        return self.budget_type()

    def check_feeds(self, feeds: Sequence[Outputs]) -> None:
        """Raise DataError when evaluation feeds lack what the task's metrics read (before anything runs)."""

    def accepts_outputs(self, outputs: Mapping[str, int | None]) -> bool:
        """Whether a model with these outputs (name -> rank, None: unknown) is this task's: it has the task's
        outputs, of the task's ranks where both are known."""
        if not self.outputs or any(o not in outputs for o in self.outputs):
            return False
        ranks = [(self.output_ranks.get(o), outputs[o]) for o in self.outputs]
        return all(want is None or have is None or want == have for want, have in ranks)

    def output_names_for(self, available: Sequence[str]) -> tuple[str, ...]:
        """The task's outputs among a model's outputs (an ONNX model may have more)."""
        return tuple(o for o in self.outputs if o in available)

    def load_samples(
        self, data_dir: str | None, *, max_calibration: int | None = None, max_eval: int | None = None
    ) -> Samples:
        """The calibration and evaluation samples in `data_dir` (None: the bundled data). Default: sentences
        from calibration.txt and evaluation.txt."""
        from workbench.data import load_sentence_splits

        splits = load_sentence_splits(data_dir, max_calibration=max_calibration, max_eval=max_eval)
        return Samples(splits.calibration, splits.evaluation)

    def encode(
        self,
        tokenizer: Any,
        samples: Sequence[Any],
        *,
        batch_size: int,
        sequence_length: int,
        input_names: Sequence[str] | None = None,
        padding: str = "max_length",
    ) -> Encoded:
        """Samples -> model feeds, batch by batch, padded as they will be served. Default: texts, one per row."""
        from workbench.data import tokenize_batches

        feeds = tokenize_batches(
            tokenizer,
            list(samples),
            batch_size=batch_size,
            sequence_length=sequence_length,
            padding=padding,
            input_names=input_names,
        )
        return Encoded(feeds=feeds, meta=[None] * len(feeds))

    def metrics(
        self,
        reference: Sequence[Outputs],
        candidate: Sequence[Outputs],
        feeds: Sequence[Outputs],
        meta: Sequence[Any] | None = None,
    ) -> TaskMetrics:
        """The task metrics of `candidate` against `reference` over evaluation batches (one dict per batch;
        `meta` is what :meth:`encode` returned beside the feeds)."""
        raise NotImplementedError

    def check_budget(self, budget: Budget) -> None:
        """Raise ConfigError unless `budget` gates this task's metrics."""
        if not isinstance(budget, self.budget_type):
            raise ConfigError(
                f"{type(budget).__name__} is a budget for task {budget.task!r}, but the model is a "
                f"{self.name!r} model, so its gates would check metrics this task does not compute.",
                fix=f"pass a {self.budget_type.__name__} (its default: {self.budget_type().describe()})",
            )

    # -- serving ---------------------------------------------------------------------------------------------

    def postprocessing(
        self, *, output_names: Sequence[str], output_dims: Mapping[str, Sequence[int]], model_config: Mapping[str, Any]
    ) -> PostProcessing | None:
        """The Triton post-processing model of this task's ensemble; None: the ensemble returns raw outputs."""
        return None

    def front_model(
        self,
        *,
        model_config: Mapping[str, Any],
        output_names: Sequence[str],
        output_dims: Mapping[str, Sequence[int]],
        sequence_length: int,
    ) -> FrontModel | None:
        """The BLS front model that serves this task (workbench.triton.bls.export_triton_bls writes it); None: the
        task is served as an ensemble (:meth:`postprocessing`)."""
        return None

    def served_outputs(
        self,
        tokenizer: Any,
        samples: Sequence[Any],
        infer: Any,
        *,
        sequence_length: int,
        input_names: Sequence[str],
        model_config: Mapping[str, Any],
        parameters: Mapping[str, str],
    ) -> list[Any]:
        """What the front model must answer for each of `samples`, computed by the library (its encode and
        decoding, `infer` running the engine on one feed dict): the Triton export compares it with the served
        code's answers before it writes anything."""
        raise NotImplementedError(f"task {self.name!r} has no front model")

    def __repr__(self) -> str:
        return f"<task {self.name}>"


# ---------------------------------------------------------------------------------------------------------------
# the registry

T = TypeVar("T", bound=type[Task])
_TASKS: dict[str, Task] = {}
BUILTIN_TASK_MODULES = (
    "workbench.tasks.embedding",
    "workbench.tasks.classification",
    "workbench.tasks.generation",
    "workbench.tasks.token_classification",
    "workbench.tasks.question_answering",
)


def register_task(cls: T) -> T:
    """Class decorator: register one instance of a Task subclass under its `name`."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no `name`.")
    if cls.__module__ not in BUILTIN_TASK_MODULES:
        _load_builtins()  # the built-in tasks come first: detection tries tasks in registration order
    existing = _TASKS.get(cls.name)
    if existing is not None and type(existing).__qualname__ != cls.__qualname__:
        raise ValueError(f"A task named {cls.name!r} is already registered ({type(existing).__name__}).")
    _TASKS[cls.name] = cls()
    return cls


def unregister_task(name: str) -> None:
    """Remove a task (tests register toy tasks and remove them again)."""
    _TASKS.pop(name, None)


@contextmanager
def registered_task(cls: type[Task]) -> Iterator[Task]:
    """Register `cls` for the length of a block (for tests and experiments), then remove it."""
    register_task(cls)
    try:
        yield _TASKS[cls.name]
    finally:
        unregister_task(cls.name)


def _load_builtins() -> None:
    import importlib

    for module in BUILTIN_TASK_MODULES:
        importlib.import_module(module)


def tasks() -> dict[str, Task]:
    """Every registered task by name, in registration order."""
    _load_builtins()
    return dict(_TASKS)


def get_task(name: str) -> Task:
    """The task registered as `name`.

    Raises:
        ConfigError: No such task (the message lists the registered ones).
    """
    found = tasks().get(name)
    if found is None:
        raise ConfigError(f"There is no task {name!r}.", expected=f"one of {sorted(tasks())}")
    return found


def task_for_outputs(outputs: Mapping[str, int | None]) -> Task:
    """The registered task whose outputs (and their ranks, where both say) an ONNX model has.

    Raises:
        ConfigError: No task, or more than one, matches (the message lists the outputs and the tasks).
    """
    found = [task for task in tasks().values() if task.detect_from_outputs and task.accepts_outputs(outputs)]
    if len(found) != 1:
        described = ", ".join(f"{n} (rank {r})" for n, r in outputs.items())
        raise ConfigError(
            f"The model's outputs {described} match {'no' if not found else 'more than one'} registered task"
            f"{'' if not found else ': ' + ', '.join(t.name for t in found)}.",
            expected="; ".join(f"{t.name}: {list(t.outputs)}" for t in tasks().values()),
            fix="pass task= the task the model was made for",
        )
    return found[0]


def detect_task(config: Mapping[str, Any], *, where: str = "the model") -> Task:
    """The task of a checkpoint, from its config.json.

    Raises:
        ModelSourceError: No registered task handles its architecture (the message names it and the tasks).
    """
    registered = tasks()
    for task in registered.values():
        if task.detect(config):
            return task
    architectures = config.get("architectures") or ["(none listed)"]
    supported = ", ".join(
        f"{t.name} ({', '.join('*' + a for a in t.architectures) or 'base models'})" for t in registered.values()
    )
    raise ModelSourceError(
        f"{where} is a {', '.join(map(str, architectures))} (model_type {config.get('model_type')!r}), whose head "
        "no registered task supports; exporting it would silently drop the head.",
        expected=f"a checkpoint of a supported task: {supported}",
        fix="pick a checkpoint of a supported task, or pass task='feature-extraction' to export its base model "
        "without the head (the summary then says so)",
    )
