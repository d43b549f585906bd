"""The run summary: a stable JSON contract for CI, derived from the step registry, and a short table for people.

Stable keys (CI reads them): model, task, reference, candidates[{name, path, engine, precision, latency_ms_p50,
cosine_mean, cosine_min, meets_budget, failures, metrics}], pytorch_latency_ms_p50, chosen, triton_repository.
For every task, `cosine_mean` / `cosine_min` hold the task's primary cosine (sentence-embedding cosine for
embeddings, logits cosine for classifiers, ...) and `metrics` the task's own metrics under stable names
(workbench.tasks: each task's `metric_names`). Each step adds its own keys (Step.summary) and its fields of each
candidate's row (Step.candidate_summary); `skipped_steps` names the skippable steps run_all skipped here and why;
everything else is informative. Also stable: each candidate's `batch_invariance_min` / `batch_invariance_mean`
(a text alone vs inside a batch under the served padding policy; None where not measured) with the top-level
`batch_invariance` {padding, batch_size, rule_min, measured}, and, from ServingPipeline's serving step, `serving`
(workbench.stages.serving.summary).
"""

from __future__ import annotations

from typing import Any

from workbench.machine import library_versions

__all__ = ["SUMMARY_FILE", "SUMMARY_VERSION", "build_summary", "format_summary", "library_versions"]

SUMMARY_FILE = "summary.json"
#: 2: task, engine and precision per candidate, the task's metrics, budgets with their task.
SUMMARY_VERSION = 2


def build_summary(pipeline: Any) -> dict[str, Any]:
    """The summary.json contents for a pipeline that has run some of its steps."""
    task = pipeline.task
    rows = []
    for name, candidate in pipeline.candidate_models.items():
        row: dict[str, Any] = {
            "name": name,
            "path": str(candidate.path),
            "engine": candidate.engine,
            "precision": candidate.precision,
            "float_precision": candidate.float_precision,
            "latency_ms_p50": None,
            "latency_ms_p50_by_batch": {},
            "cosine_mean": None,
            "cosine_min": None,
            "meets_budget": None,
            "failures": [],
            "metrics": {metric: None for metric in task.metric_names},
        }
        for declared in pipeline.steps:
            if declared.candidate_summary is not None and declared.name in pipeline.results:
                contribution = dict(declared.candidate_summary(pipeline, pipeline.results[declared.name], name))
                row["metrics"].update(contribution.pop("metrics", {}))
                row.update(contribution)
        rows.append(row)
    summary: dict[str, Any] = {
        "summary_version": SUMMARY_VERSION,
        "model": str(getattr(pipeline.source, "path", pipeline.source.name)),
        "task": task.name,
        "reference": str(pipeline.candidates["reference"].path) if "reference" in pipeline.candidates else None,
        "candidates": rows,
        "pytorch_latency_ms_p50": None,
        "chosen": None,
        "chosen_reason": None,
        "triton_repository": None,
        "triton_model": None,
        "budget": pipeline.budget.to_dict(),
        "primary_metrics": list(task.primary_cosine),
        "warnings": list(getattr(pipeline.source, "warnings", ())),
        "steps": [record.step for record in pipeline.history],
        # optional steps run_all skipped here (e.g. the OpenVINO candidates without the openvino extra), with why
        "skipped_steps": dict(getattr(pipeline, "skipped", {})),
        "parameters": pipeline.parameters.to_dict(),
        "export_max_abs_error": None,
        "benchmark": None,
        "machine": None,
        "versions": library_versions(),
    }
    for declared in pipeline.steps:
        if declared.summary is not None and declared.name in pipeline.results:
            summary.update(declared.summary(pipeline, pipeline.results[declared.name]))
    summary.update(pipeline.extra_summary())
    return summary


def format_summary(summary: dict[str, Any]) -> str:
    """A short plain-text table of a summary.json, as `make demo` prints it."""
    seq = (summary.get("benchmark") or {}).get("seq", "?")
    pytorch = summary.get("pytorch_latency_ms_p50")
    primary = (summary.get("primary_metrics") or ["embedding_cosine_mean"])[0]
    what = primary.removesuffix("_mean").replace("_", " ")
    lines = [
        f"model: {summary['model']} (task: {summary.get('task', 'feature-extraction')})",
        f"latency: batch 1, sequence {seq}; cos: {what} vs ONNX FP32",
        "",
    ]
    for warning in summary.get("warnings") or ():
        lines.insert(1, f"warning: {warning}")
    for warning in (summary.get("benchmark") or {}).get("busy_warnings") or ():
        lines.insert(1, f"timing warning: {warning}")
    header = f"{'candidate':<28}{'engine':<13}{'p50 ms':>9}{'vs torch':>10}{'cos mean':>10}{'cos min':>9}  budget"
    lines += [header, "-" * len(header)]
    if pytorch is not None:
        lines.append(f"{'pytorch (baseline)':<28}{'pytorch':<13}{pytorch:>9.2f}{'1.00x':>10}{'':>10}{'':>9}")
    for c in summary["candidates"]:
        p50 = c.get("latency_ms_p50")
        speedup = f"{pytorch / p50:.2f}x" if pytorch and p50 else "-"
        cos_mean = f"{c['cosine_mean']:.4f}" if c.get("cosine_mean") is not None else "-"
        cos_min = f"{c['cosine_min']:.4f}" if c.get("cosine_min") is not None else "-"
        verdict = {True: "meets", False: "misses", None: "-"}[c.get("meets_budget")]
        marker = " <- chosen" if c["name"] == summary.get("chosen") else ""
        p50_text = f"{p50:.2f}" if p50 is not None else "-"
        lines.append(
            f"{c['name']:<28}{c.get('engine', ''):<13}{p50_text:>9}{speedup:>10}{cos_mean:>10}{cos_min:>9}"
            f"  {verdict}{marker}"
        )
    lines += [
        "",
        f"chosen: {summary.get('chosen')} ({summary.get('chosen_reason')})",
        f"triton repository: {summary.get('triton_repository')}",
    ]
    return "\n".join(lines)
