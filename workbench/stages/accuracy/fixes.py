"""Fixing a candidate's accuracy by hand or automatically: evaluate one plan, and write the summary CI reads.

    conversion, accuracy = evaluate_plan(fused, plan.pin(["EmbedLayerNormalization_0"]), feeds,
                                         "runs/accuracy/manual.onnx", reference=export, budget=budget)
    write_accuracy_summary(report, autofix_result, "runs/accuracy/accuracy_summary.json")

`evaluate_plan` is the manual fix's one step (convert with the plan, then measure the result against the FP32
reference) that `workbench.stages.accuracy.autofix.autofix` repeats for every trial of its search.
"""

from __future__ import annotations

import html
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

__all__ = ["ACCURACY_SUMMARY_VERSION", "PlanEvaluation", "accuracy_summary", "evaluate_plan", "write_accuracy_summary"]

ACCURACY_SUMMARY_VERSION = 1


class PlanEvaluation(NamedTuple):
    """A plan's conversion and its accuracy; unpacks as `(conversion, accuracy)`.

    Attributes:
        conversion: The QuantizeResult of `plan.convert` (its `keep_fp32` lists the nodes left in FP32).
        accuracy: The CandidateAccuracy against the reference; truthy when it meets the budget.
    """

    conversion: Any
    accuracy: Any

    @property
    def path(self) -> Path:
        return Path(self.conversion.path)

    @property
    def meets_budget(self) -> bool:
        return bool(self.accuracy)

    def to_dict(self) -> dict[str, Any]:
        return {"conversion": self.conversion.to_dict(), "accuracy": self.accuracy.to_dict()}

    def _repr_html_(self) -> str:
        accuracy = self.accuracy
        if accuracy.cosine_mean is None:
            cosine = "no task metric"
        else:
            cosine = f"cosine mean {accuracy.cosine_mean:.5f}, min {accuracy.cosine_min:.5f}"
        verdict = "meets the budget" if accuracy else "misses the budget: " + html.escape("; ".join(accuracy.failures))
        kept = len(self.conversion.keep_fp32)
        return (
            f"<b>Plan evaluation</b>: {kept} node(s) kept in FP32 -> {cosine}; {verdict}<br>"
            f"{self.conversion._repr_html_()}"
        )


def evaluate_plan(
    model_path: str | os.PathLike[str],
    plan: Any,
    evaluation_feeds: Sequence[Mapping[str, np.ndarray]],
    output_path: str | os.PathLike[str],
    *,
    reference: str | os.PathLike[str] | None = None,
    budget: Any = None,
    task: Any = None,
    calibration_feeds: Any = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> PlanEvaluation:
    """Convert `model_path` with `plan` and compare the result with the FP32 reference.

    Args:
        model_path: The FP32 model the plan converts (node names are this model's, e.g. the fused graph).
        plan: The PrecisionPlan, with the nodes to keep in FP32 pinned.
        evaluation_feeds: Held-out feed dicts, shaped as served (padded to a fixed length).
        output_path: Where the converted model goes; its stem names the candidate in the accuracy.
        reference: The FP32 model accuracy is measured against; default `model_path`.
        budget: The task's Budget the candidate is judged by (default: the task's default budget).
        task: The task (workbench.tasks); None: found from the reference's outputs.
        calibration_feeds: For static INT8, SmoothQuant and FP16's overflow scan.
        cache_dir: Calibration cache folder (static INT8).

    Returns:
        `(conversion, accuracy)`: the QuantizeResult and the CandidateAccuracy (truthy when it meets the budget).

    Raises:
        QuantizationError: The conversion failed, e.g. the plan pins a node that is not in the graph (nothing is
            written then).
        DataError: No evaluation feeds.
    """
    from workbench.errors import DataError
    from workbench.stages.accuracy.compare import compare_candidates

    if not evaluation_feeds:
        raise DataError("No evaluation inputs to measure the plan on.", fix="pass feed dicts from tokenize_batches()")
    conversion = plan.convert(
        model_path, output_path, calibration_feeds=calibration_feeds, cache_dir=cache_dir, progress=False
    )
    name = Path(output_path).stem
    report = compare_candidates(
        reference if reference is not None else model_path,
        {name: conversion.path},
        evaluation_feeds,
        task=task,
        budget=budget,
    )
    return PlanEvaluation(conversion, report[name])


def accuracy_summary(
    report: Any, autofix_result: Any, *, model_path: str | os.PathLike[str] | None = None, diagnosis: Any = None
) -> dict[str, Any]:
    """What an accuracy-fix run found, as plain JSON-ready data.

    Args:
        report: A ComparisonReport against the FP32 reference, e.g. of the starting candidate and the fixed
            model. The row whose path is `autofix_result.path` gives the fixed model's accuracy, and the first
            other row the starting candidate's; what the report lacks comes from the search's own trials (its
            start and best).
        autofix_result: The AutofixResult of `autofix`.
        model_path: The FP32 model the search converted (autofix's `model_path`), to count the nodes the
            starting conversion quantized; default the search's diagnosis reference, when a diagnosis ran.
        diagnosis: A Diagnosis of the starting candidate made outside the search (`diagnose(...)`); default
            the search's own, when it ran one.

    Keys:
        version: ACCURACY_SUMMARY_VERSION.
        reference, samples, budget: From the report (budget: AccuracyBudget.to_dict()).
        start, fixed: cosine_mean, cosine_min, meets_budget, path and source ("comparison": a row of the
            report; "autofix": the search's start / best trial, measured against autofix's reference);
            fixed also has pins and pinned_parameters (weights kept in FP32).
        meets_budget: Whether the fixed model meets the budget.
        pins: The nodes the search chose to keep in FP32 (the best trial's pins).
        keep_fp32: Every node the fixed plan keeps in FP32 (the pins and any the starting plan had).
        trials: How many candidates the search converted and evaluated.
        quantized_nodes: How many nodes the starting conversion quantized (`diagnose.quantized_nodes`), or
            the ranked count when neither `model_path` nor a diagnosis says which model it converted.
        ranked_nodes: The quantized nodes the search ranked (0 when no diagnosis ran); the search spends about
            log2 of this many bisection trials.
        diagnosis_seconds: How long the layer-by-layer diagnosis took (`diagnosis`, else the search's; None
            when there was none).
        diagnosis: That diagnosis's source ("given" or "autofix"), seconds, samples (batches), nodes (compared),
            worst (the 5 nodes that add the most error) and most_sensitive (the 5 quantized nodes with the
            largest local error); None when there was none.
        autofix_seconds: The whole search.
        smoothed: Whether the fixed model uses SmoothQuant.
        trial_log: One row per trial: index, stage, pin_count, cosine_mean, cosine_min, meets_budget,
            latency_ms, pinned_parameters, smoothed.
        candidates: Every row of the report: name, path, cosine_mean, cosine_min, meets_budget, failures.
        notes: The search's notes.
    """
    best, start_trial = autofix_result.best, autofix_result.start
    fixed_path = _resolved(autofix_result.path)
    rows = list(report.candidates)
    fixed_row = next((c for c in rows if _resolved(c.path) == fixed_path), None)
    start_row = next((c for c in rows if c is not fixed_row), None) if fixed_row is not None else None
    if start_row is None and fixed_row is None and rows:
        start_row = rows[0]  # a report of the starting candidate alone

    def from_row(row: Any) -> dict[str, Any]:
        return {
            "cosine_mean": row.cosine_mean,
            "cosine_min": row.cosine_min,
            "meets_budget": bool(row),
            "path": str(row.path),
            "source": "comparison",
        }

    def from_trial(trial: Any) -> dict[str, Any]:
        return {
            "cosine_mean": trial.cosine_mean,
            "cosine_min": trial.cosine_min,
            "meets_budget": bool(trial.meets_budget),
            "path": str(trial.path),
            "source": "autofix",
        }

    start = from_row(start_row) if start_row is not None else from_trial(start_trial)
    fixed = from_row(fixed_row) if fixed_row is not None else from_trial(best)
    if fixed_row is None:
        fixed["path"] = str(autofix_result.path)
    fixed.update(pins=list(best.pins), pinned_parameters=int(best.pinned_parameters))
    source = "given" if diagnosis is not None else "autofix"
    diagnosis = diagnosis if diagnosis is not None else autofix_result.diagnosis
    return {
        "version": ACCURACY_SUMMARY_VERSION,
        "reference": str(report.reference),
        "samples": report.samples,
        "budget": report.budget.to_dict(),
        "start": start,
        "fixed": fixed,
        "meets_budget": fixed["meets_budget"],
        "pins": list(best.pins),
        "keep_fp32": list(autofix_result.plan.keep_fp32),
        "trials": len(autofix_result.trials),
        "quantized_nodes": _quantized_count(autofix_result, model_path),
        "ranked_nodes": len(autofix_result.ranking),
        "diagnosis_seconds": float(diagnosis.seconds) if diagnosis is not None else None,
        "diagnosis": None
        if diagnosis is None
        else {
            "source": source,
            "seconds": float(diagnosis.seconds),
            "samples": diagnosis.samples,
            "nodes": len(diagnosis.nodes),
            "worst": [n.name for n in diagnosis.worst(5)],
            "most_sensitive": [name for name, _ in diagnosis.sensitivity()[:5]],
        },
        "autofix_seconds": float(autofix_result.seconds),
        "smoothed": bool(best.smoothed),
        "trial_log": [
            {
                "index": t.index,
                "stage": t.stage,
                "pin_count": len(t.pins),
                "cosine_mean": t.cosine_mean,
                "cosine_min": t.cosine_min,
                "meets_budget": bool(t.meets_budget),
                "latency_ms": t.latency_ms,
                "pinned_parameters": int(t.pinned_parameters),
                "smoothed": bool(t.smoothed),
            }
            for t in autofix_result.trials
        ],
        "candidates": [
            {
                "name": c.name,
                "path": str(c.path),
                "cosine_mean": c.cosine_mean,
                "cosine_min": c.cosine_min,
                "meets_budget": bool(c),
                "failures": list(c.failures),
            }
            for c in rows
        ],
        "notes": list(autofix_result.notes),
    }


def write_accuracy_summary(
    report: Any,
    autofix_result: Any,
    path: str | os.PathLike[str],
    *,
    model_path: str | os.PathLike[str] | None = None,
    diagnosis: Any = None,
) -> dict[str, Any]:
    """Write `accuracy_summary(report, autofix_result, model_path=..., diagnosis=...)` as JSON to `path`
    (complete or not at all); return it."""
    from workbench._files import atomic_path

    summary = accuracy_summary(report, autofix_result, model_path=model_path, diagnosis=diagnosis)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _quantized_count(autofix_result: Any, model_path: Any) -> int:
    """Nodes of the FP32 model that the search's starting conversion quantized."""
    from workbench.stages.accuracy.diagnose import quantized_nodes

    diagnosis = autofix_result.diagnosis
    source = model_path if model_path is not None else (diagnosis.reference if diagnosis is not None else None)
    if source is None:
        return len(autofix_result.ranking)
    return len(quantized_nodes(source, autofix_result.start.path))


def _resolved(path: Any) -> Path:
    return Path(path).resolve()
