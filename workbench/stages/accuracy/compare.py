"""Accuracy stage: compare candidates with the FP32 reference through Polygraphy's Comparator, judged by the task.

Per output, always: Polygraphy's cosine similarity and error statistics (max / mean / median absolute and
relative differences), and a histogram of |candidate - reference| over fixed log-spaced bins (counts only, so
memory stays bounded). Optionally, per-output pass/fail checks (`OutputCheck`) run by Polygraphy's own compare
functions (cosine, simple tolerances, L2, SNR), which add the statistics they compute (quantiles, L2, SNR).

On top, the task's own metrics (workbench.tasks): for embedding models the cosine between mask-aware mean-pooled
sentence embeddings; for classifiers argmax agreement, the logits cosine and the change of the top-class
probability; every task fills each candidate's `cosine_mean` / `cosine_min` with its primary cosine. A
candidate is judged by the task's Budget (its default one unless another is given); a budget always gates
something, and a metric that was not measured is a miss, never a pass.

Every model runs through the runner its engine gives (workbench.engines), wrapped for Polygraphy, so ONNX
Runtime, OpenVINO or TensorRT candidates are compared the same way.

`save_polygraphy_data` writes the evaluation feeds and the reference's outputs in Polygraphy's own formats, so
that the same check runs from Polygraphy's command line (in CI, on another machine):

    polygraphy run candidate.onnx --onnxrt --load-inputs inputs.json --load-outputs outputs.json \\
        --atol 1e-4 --rtol 1e-4
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from workbench._lazy import require
from workbench.engines.base import Candidate, Runner, engine_for_path
from workbench.engines.polygraphy import as_polygraphy_runner, quiet_polygraphy
from workbench.errors import ConfigError, DataError, ModelSourceError
from workbench.stages.accuracy.metrics import (
    check_result,
    compare_funcs,
    error_histograms,
    output_statistics,
    resolve_checks,
)
from workbench.stages.accuracy.report import (
    DEFAULT_THRESHOLDS,
    DEFAULT_TOLERANCE,
    ERROR_HISTOGRAM_EDGES,
    ERROR_STATS,
    OUTPUT_CHECK_KINDS,
    CandidateAccuracy,
    ComparisonReport,
    OutputCheck,
    OutputCheckResult,
)
from workbench.tasks.base import Budget, Encoded, Task, get_task, task_for_outputs
from workbench.tasks.embedding import AccuracyBudget, mean_pooled_embeddings

__all__ = [
    "DEFAULT_THRESHOLDS",
    "DEFAULT_TOLERANCE",
    "ERROR_HISTOGRAM_EDGES",
    "ERROR_STATS",
    "OUTPUT_CHECK_KINDS",
    "AccuracyBudget",
    "CandidateAccuracy",
    "ComparisonReport",
    "OutputCheck",
    "OutputCheckResult",
    "PolygraphyFiles",
    "compare_candidates",
    "load_polygraphy_inputs",
    "mean_pooled_embeddings",
    "resolve_task",
    "save_polygraphy_data",
    "task_and_budget",
]

_REFERENCE = "reference"
Model = str | os.PathLike[str] | Candidate


def compare_candidates(
    reference: Model,
    candidates: Mapping[str, Model],
    feeds: Sequence[Mapping[str, np.ndarray]] | Encoded,
    *,
    task: Task | str | None = None,
    budget: Budget | None = None,
    threads: int | None = None,
    output_checks: Mapping[str, OutputCheck] | None = None,
) -> ComparisonReport:
    """Run the reference and each candidate on `feeds` with Polygraphy's Comparator and judge them by the task.

    Args:
        reference: The FP32 model (an .onnx path, or a Candidate).
        candidates: Name -> model file or Candidate; each runs on its engine's runner (by file type for paths).
        feeds: Evaluation feed dicts (tokenized the way the model will be served, e.g. padded to a fixed length),
            or the task's `Encoded` batches (feeds plus what its decoding needs).
        task: The task (a Task or its registered name); None: found from the reference's outputs
            (last_hidden_state: sentence embeddings; 2-D logits: text classification; ...).
        budget: What each candidate must meet, a Budget of the task's type; None: the task's default budget.
        threads: Intra-op threads for every runner.
        output_checks: Output name -> OutputCheck, run by Polygraphy's compare function of that kind on every
            batch; the key "" is the default for every output not named. A failing check makes the candidate
            (and the report) falsy. Default: no checks (the statistics are recorded all the same).

    Returns:
        A report that is truthy when every candidate meets the budget and passes its output checks.

    Raises:
        ConfigError: No candidates, a reserved name, or a budget of another task's type.
        DataError: No feeds, or the reference lacks the task's outputs.
    """
    encoded = feeds if isinstance(feeds, Encoded) else Encoded(feeds=[dict(f) for f in feeds], meta=[None] * len(feeds))
    if not encoded.feeds:
        raise DataError("No evaluation inputs were given.", fix="tokenize some evaluation sentences first")
    if not candidates:
        raise ConfigError("No candidates to compare.", fix="pass candidates={'name': 'path.onnx', ...}")
    names = list(candidates)
    if _REFERENCE in names:
        raise ConfigError("'reference' is reserved for the reference model; rename that candidate.")
    reference_path = reference.path if isinstance(reference, Candidate) else Path(reference)
    resolved, budget = task_and_budget(reference_path, task, budget)
    resolved.check_feeds(encoded.feeds)
    checks = resolve_checks(output_checks, list(_output_ranks(reference_path)))
    comparator = require("polygraphy.comparator", purpose="Comparing models")

    runners = [as_polygraphy_runner(_runner(reference, _REFERENCE, threads))]
    runners += [as_polygraphy_runner(_runner(candidates[n], n, threads)) for n in names]
    funcs = compare_funcs(comparator, checks)
    with quiet_polygraphy():
        run_results = comparator.Comparator.run(runners, data_loader=[dict(f) for f in encoded.feeds])
        accuracy_results = comparator.Comparator.compare_accuracy(
            run_results, comparisons=[(0, i) for i in range(1, len(runners))], compare_func=list(funcs.values())
        )
    by_kind = dict(zip(funcs, accuracy_results))

    reference_outputs = [dict(it) for it in run_results[_REFERENCE]]
    results, notes = [], []
    for name in names:
        pair = (_REFERENCE, name)
        candidate_outputs = [dict(it) for it in run_results[name]]
        per_batch = {kind: result[pair] for kind, result in by_kind.items()}
        outputs, uncomparable, missing = output_statistics(per_batch, reference_outputs, checks)
        notes += [f"candidate {name!r} has no output {o!r}; it was not compared" for o in missing]
        trouble = [line for o, line in uncomparable.items() if o not in checks]  # else its check says it
        check_results = tuple(check_result(o, c, per_batch[c.kind]) for o, c in checks.items())
        task_metrics: dict[str, float] = {}
        per_sample: tuple[float, ...] = ()
        absent = [o for o in reference_outputs[0] if o in resolved.outputs and (o in missing or o in uncomparable)]
        if absent:
            trouble.append(
                f"the task's output(s) {absent} are missing from the candidate or of another shape, so "
                f"its {resolved.title.lower()} metrics could not be computed"
            )
        else:
            measured = resolved.metrics(reference_outputs, candidate_outputs, encoded.feeds, encoded.meta)
            task_metrics = {str(k): float(v) for k, v in measured.values.items()}
            per_sample = tuple(measured.per_sample)
        if outputs:
            task_metrics["output_cosine_min"] = min(s["cosine_min"] for s in outputs.values())
        failures = (
            _budget_failures(budget, task_metrics, outputs)
            + tuple(c.message for c in check_results if not c)
            + tuple(trouble)
        )
        given = candidates[name]
        engine = given.engine if isinstance(given, Candidate) else engine_for_path(given).name
        results.append(
            CandidateAccuracy(
                name=name,
                path=Path(given.path if isinstance(given, Candidate) else given),
                outputs=outputs,
                task_metrics=task_metrics,
                cosine_mean=task_metrics.get(resolved.primary_cosine[0]),
                cosine_min=task_metrics.get(resolved.primary_cosine[1]),
                per_sample_cosine=per_sample,
                failures=failures,
                checks=check_results,
                error_histograms=error_histograms(reference_outputs, candidate_outputs, outputs),
                engine=engine,
            )
        )
    samples = sum(int(next(iter(f.values())).shape[0]) for f in encoded.feeds)
    return ComparisonReport(
        reference=reference_path,
        budget=budget,
        candidates=tuple(results),
        samples=samples,
        notes=tuple(notes),
        task=resolved.name,
        primary=resolved.primary_cosine,
        output_checks=dict(checks),
    )


def _budget_failures(
    budget: Budget, metrics: Mapping[str, float], outputs: Mapping[str, Mapping[str, float]]
) -> tuple[str, ...]:
    """The budget's misses; a missed raw-output cosine gate names each output that misses it."""
    lines = []
    for line in budget.failures(metrics):
        if line.startswith("output cosine min ") and outputs:
            limit = next(g.limit for g in budget.gates() if g.metric == "output_cosine_min")
            lines += [
                f"output {o!r} cosine min {s['cosine_min']:.5f} < {limit:g}"
                for o, s in outputs.items()
                if not s["cosine_min"] >= limit
            ]
        else:
            lines.append(line)
    return tuple(lines)


def task_and_budget(
    reference: str | os.PathLike[str], task: Task | str | None = None, budget: Budget | None = None
) -> tuple[Task, Budget]:
    """The task a comparison against `reference` judges by, and its budget (the task's default when None).

    Raises:
        ConfigError: No task fits, or `budget` is another task's type.
        DataError: The reference lacks the task's outputs.
    """
    reference = Path(reference)
    available = _output_ranks(reference)
    resolved = resolve_task(task, available)
    if not resolved.accepts_outputs(available):
        raise DataError(
            f"The reference {reference.name} has outputs {sorted(available)}, which are not what task "
            f"{resolved.name!r} reads.",
            expected=f"outputs {list(resolved.outputs)}",
            fix="pass the task the model was made for (task=...)",
        )
    budget = budget if budget is not None else resolved.default_budget()
    resolved.check_budget(budget)
    return resolved, budget


def resolve_task(task: Task | str | None, outputs: Mapping[str, int | None]) -> Task:
    """`task` as a Task: itself, the registered task of that name, or (None) the task whose outputs the model has.

    Raises:
        ConfigError: No registered task of that name, or none matches the outputs (the message lists them).
    """
    if isinstance(task, Task):
        return task
    if isinstance(task, str):
        return get_task(task)
    if task is not None:
        raise ConfigError(
            f"task must be a Task or a task name, not {type(task).__name__}.",
            fix="pass task='feature-extraction', 'text-classification', ... (workbench.tasks.tasks())",
        )
    return task_for_outputs(outputs)


def _runner(model: Model, name: str, threads: int | None) -> Runner:
    if isinstance(model, Candidate):
        return (
            model.runner(threads=threads)
            if model.name == name
            else dataclasses.replace(model, name=name).runner(threads=threads)
        )
    return engine_for_path(model).runner(Path(model), name=name, threads=threads)


def _output_ranks(reference: Path) -> dict[str, int | None]:
    """Output name -> rank (None where the graph does not say) of an ONNX reference."""
    onnx = require("onnx", purpose="Reading the reference model's outputs")
    if not reference.is_file():
        raise ModelSourceError(f"Model {reference} does not exist.", fix="export the model first")
    if reference.suffix.lower() != ".onnx":
        raise ConfigError(
            f"The reference must be the FP32 ONNX model, not {reference.name}.",
            fix="pass the exported model.onnx as the reference",
        )
    graph = onnx.load(str(reference), load_external_data=False).graph
    return {
        o.name: (len(o.type.tensor_type.shape.dim) if o.type.tensor_type.HasField("shape") else None)
        for o in graph.output
    }


class PolygraphyFiles(NamedTuple):
    """What save_polygraphy_data wrote: Polygraphy inputs JSON and RunResults JSON."""

    inputs: Path
    outputs: Path


def save_polygraphy_data(
    reference: str | os.PathLike[str],
    feeds: Sequence[Mapping[str, np.ndarray]],
    inputs_path: str | os.PathLike[str],
    outputs_path: str | os.PathLike[str],
    *,
    threads: int | None = None,
) -> PolygraphyFiles:
    """Run `reference` once on `feeds` and save both in Polygraphy's own formats, for `polygraphy run`.

    The feeds go to `inputs_path` as Polygraphy's inputs JSON (a list of feed dicts: `--load-inputs`), the
    reference's outputs to `outputs_path` as Polygraphy RunResults JSON (runner "reference": `--load-outputs`),
    so that on any machine with Polygraphy:

        polygraphy run candidate.onnx --onnxrt --load-inputs inputs.json --load-outputs outputs.json \\
            --atol 1e-4 --rtol 1e-4

    exits 0 when every output of every batch of the candidate is within tolerance of the reference. Both
    files appear only if everything succeeded.

    Args:
        reference: The FP32 ONNX model.
        feeds: Evaluation feed dicts (numpy arrays).
        inputs_path: Where to write the inputs (a .json file).
        outputs_path: Where to write the reference's outputs (a .json file).
        threads: onnxruntime intra-op threads.
    """
    from workbench._files import atomic_path

    comparator = require("polygraphy.comparator", purpose="Saving data for Polygraphy")
    pjson = require("polygraphy.json", purpose="Saving data for Polygraphy")
    inputs_path, outputs_path = Path(inputs_path), Path(outputs_path)
    if not feeds:
        raise DataError("No inputs were given to save.", fix="tokenize some evaluation sentences first")
    if inputs_path.resolve() == outputs_path.resolve():
        raise ConfigError(
            f"The inputs and the outputs would both be written to {inputs_path}.", fix="pass two different paths"
        )
    feed_list = []
    for index, feed in enumerate(feeds):
        if not isinstance(feed, Mapping) or not feed:
            raise DataError(f"Feed {index} is not a non-empty dict of input name -> array.")
        feed_list.append({str(k): np.asarray(v) for k, v in feed.items()})
    runner = as_polygraphy_runner(_runner(reference, _REFERENCE, threads))
    with quiet_polygraphy():
        run_results = comparator.Comparator.run([runner], data_loader=feed_list)
        with atomic_path(inputs_path) as inputs_tmp, atomic_path(outputs_path) as outputs_tmp:
            pjson.save_json(feed_list, str(inputs_tmp), description="inference inputs")
            run_results.save(str(outputs_tmp))
    return PolygraphyFiles(inputs_path, outputs_path)


def load_polygraphy_inputs(path: str | os.PathLike[str]) -> list[dict[str, np.ndarray]]:
    """Read Polygraphy inputs (`--save-inputs`, save_polygraphy_data) back as a list of feed dicts.

    Args:
        path: A JSON file holding a list of feed dicts (or one feed dict), or a directory of per-iteration
            JSON files, as Polygraphy writes them.
    """
    pjson = require("polygraphy.json", purpose="Reading Polygraphy inputs")
    path = Path(path)
    if not path.exists():
        raise DataError(f"Polygraphy inputs {path} do not exist.", fix="write them with save_polygraphy_data()")
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    feeds: list[dict[str, np.ndarray]] = []
    for file in files:
        try:
            with quiet_polygraphy():
                loaded = pjson.load_json(str(file), description="inference inputs")
        except Exception as exc:  # json.JSONDecodeError, or Polygraphy's own for unknown encoded types
            raise DataError(f"Could not read {file} as Polygraphy JSON: {type(exc).__name__}: {exc}") from exc
        for item in loaded if isinstance(loaded, list) else [loaded]:
            if not isinstance(item, Mapping) or not all(isinstance(v, np.ndarray) for v in item.values()):
                raise DataError(
                    f"{file} is not Polygraphy inputs JSON: it holds a {type(item).__name__}, not feed dicts "
                    "(input name -> array).",
                    fix="pass the inputs file (--load-inputs), not the outputs (RunResults) file",
                )
            feeds.append({str(k): v for k, v in item.items()})
    if not feeds:
        raise DataError(f"{path} holds no inputs.")
    return feeds
