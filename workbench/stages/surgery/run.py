"""Graph surgery stage: transformer fusion (more edits arrive with the graph-surgery issue)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench.engines.onnxruntime import max_abs_difference, run_model
from workbench.errors import WorkbenchError
from workbench.stages.fusion import _op_counts

# onnxruntime.transformers' model types for encoder models this workbench targets; the optimizer knows more.


# ----------------------------------------------------------------------------------------------------------
# Running in-memory models, checking edits, and the surgery plan runner
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GraphDiff:
    """What an edit changed: op counts, node count, size and (optionally) latency on the sample inputs."""

    op_counts_before: dict[str, int]
    op_counts_after: dict[str, int]
    size_mb_before: float
    size_mb_after: float
    latency_ms_before: float | None = None
    latency_ms_after: float | None = None

    @property
    def nodes_before(self) -> int:
        return sum(self.op_counts_before.values())

    @property
    def nodes_after(self) -> int:
        return sum(self.op_counts_after.values())

    @property
    def op_changes(self) -> dict[str, int]:
        """op type -> change in count, for op types whose count changed."""
        ops = set(self.op_counts_before) | set(self.op_counts_after)
        changes = {op: self.op_counts_after.get(op, 0) - self.op_counts_before.get(op, 0) for op in sorted(ops)}
        return {op: delta for op, delta in changes.items() if delta}

    def to_dict(self) -> dict[str, Any]:
        return {
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "op_changes": self.op_changes,
            "size_mb_before": self.size_mb_before,
            "size_mb_after": self.size_mb_after,
            "latency_ms_before": self.latency_ms_before,
            "latency_ms_after": self.latency_ms_after,
        }


@dataclass(frozen=True)
class EditCheck:
    """How the edited model compares with its input model on the sample inputs."""

    compared: tuple[tuple[str, str], ...]  # (tensor of the input model, output of the edited model)
    max_abs_diff: float
    atol: float
    enforced: bool  # False for edits allowed to change values (a lossy cast): reported, never raised

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.atol

    def to_dict(self) -> dict[str, Any]:
        return {
            "compared": [list(pair) for pair in self.compared],
            "max_abs_diff": self.max_abs_diff,
            "atol": self.atol,
            "enforced": self.enforced,
            "passed": self.passed,
        }


@dataclass(frozen=True)
class EditReport:
    """One edit: what it was, what it changed, how it checked out."""

    edit: Any
    diff: GraphDiff
    check: EditCheck | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "edit": self.edit.to_plan_entry(),
            "diff": self.diff.to_dict(),
            "check": self.check.to_dict() if self.check else None,
            "seconds": self.seconds,
        }

    def _repr_html_(self) -> str:
        return _reports_html([self])


def _model_size_mb(model: Any) -> float:
    return (
        float(sum(np.prod(t.dims, dtype=np.int64) * _bytes_per_element(t.data_type) for t in model.graph.initializer))
        / 1e6
    )


def _bytes_per_element(data_type: int) -> int:
    return {1: 4, 2: 1, 3: 1, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}.get(data_type, 4)


def check_edit(
    before: Any, after: Any, edit: Any, feeds: list[dict[str, np.ndarray]], atol: float = 1e-4, *, repeats: int = 0
) -> tuple[EditCheck, float | None, float | None]:
    """Run `before` and `after` on the same sample inputs and compare the tensors `edit` says must agree.

    Returns the check and, with `repeats`, the median latency of each model on the first feed dict (ms).
    """
    pairs = edit.compare_pairs(before, after)
    if not pairs:
        raise WorkbenchError(
            f"{edit.describe()} leaves no output to compare with the input model.",
            fix="keep at least one output, or check this edit by hand",
        )
    before_names = [b for b, _ in pairs]
    exposed = before
    if any(name not in {o.name for o in before.graph.output} for name in before_names):
        from workbench.stages.surgery.edits import AddOutputs

        exposed = AddOutputs(tuple(before_names)).apply(before)
    adapted = [edit.adapt_feeds(f, before) for f in feeds]
    reference_feeds = adapted if edit.reference_takes_adapted_feeds else feeds
    expected, latency_before = run_model(exposed, reference_feeds, before_names, repeats=repeats)
    actual, latency_after = run_model(after, adapted, [a for _, a in pairs], repeats=repeats)
    worst = 0.0
    for exp, act, feed in zip(expected, actual, reference_feeds):
        for b, a in pairs:
            if exp[b].shape != act[a].shape:
                raise WorkbenchError(
                    f"{edit.describe()}: output {a!r} has shape {act[a].shape}, "
                    f"but {b!r} had {exp[b].shape} before the edit."
                )
            worst = max(worst, max_abs_difference(exp[b], act[a], feed))
    enforced = edit.preserves_outputs and not getattr(edit, "lossy", False)
    return EditCheck(tuple(pairs), worst, atol, enforced), latency_before, latency_after


def apply_edit(
    model: Any,
    edit: Any,
    *,
    check_feeds: list[dict[str, np.ndarray]] | None = None,
    atol: float = 1e-4,
    latency_repeats: int = 0,
) -> tuple[Any, EditReport]:
    """Apply one edit to an in-memory model and check it; returns (edited model, report).

    Raises:
        WorkbenchError: The edit cannot apply, or (for an edit that must preserve outputs) the edited model's
            outputs differ from the input model's by more than `atol` on `check_feeds`.
    """
    started = time.perf_counter()
    edited = edit.apply(model)
    check = latency_before = latency_after = None
    if check_feeds:
        check, latency_before, latency_after = check_edit(
            model, edited, edit, check_feeds, atol, repeats=latency_repeats
        )
        if check.enforced and not check.passed:
            raise WorkbenchError(
                f"{edit.describe()} changed the model's outputs: max abs diff {check.max_abs_diff:.3e} > atol {atol:g} "
                f"(compared {[a for _, a in check.compared]}).",
                expected="an edit that preserves what the model computes",
                fix="inspect the edited graph; if the change is intended, raise atol for this step",
            )
    diff = GraphDiff(
        _op_counts(model),
        _op_counts(edited),
        _model_size_mb(model),
        _model_size_mb(edited),
        latency_before,
        latency_after,
    )
    return edited, EditReport(edit, diff, check, time.perf_counter() - started)


@dataclass(frozen=True)
class SurgeryResult:
    """The edited model on disk, the plan that made it, and one report per edit."""

    path: Path
    plan: Any
    reports: tuple[EditReport, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "plan": json.loads(self.plan.to_json()),
            "reports": [r.to_dict() for r in self.reports],
        }

    def _repr_html_(self) -> str:
        return f"<b>Surgery</b> -> <code>{self.path}</code>" + _reports_html(self.reports)


def _reports_html(reports: Any) -> str:
    rows = []
    for r in reports:
        changes = ", ".join(f"{op} {delta:+d}" for op, delta in r.diff.op_changes.items()) or "no op changes"
        if r.check is None:
            check = "not checked"
        else:
            check = (
                f"{'ok' if r.check.passed else ('FAIL' if r.check.enforced else 'differs (allowed)')} "
                f"max abs {r.check.max_abs_diff:.2e}"
            )
        latency = (
            ""
            if r.diff.latency_ms_before is None
            else f"{r.diff.latency_ms_before:.2f} -> {r.diff.latency_ms_after:.2f} ms"
        )
        rows.append(
            f"<tr><td><code>{r.edit.describe()}</code></td><td>{r.diff.nodes_before} -> {r.diff.nodes_after}"
            f"</td><td>{changes}</td><td>{check}</td><td>{latency}</td></tr>"
        )
    return (
        f"<table><tr><th>edit</th><th>nodes</th><th>ops</th><th>check</th><th>latency</th></tr>{''.join(rows)}</table>"
    )


def run_surgery(
    model_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    plan: Any,
    *,
    check_feeds: list[dict[str, np.ndarray]] | None = None,
    atol: float = 1e-4,
    latency_repeats: int = 0,
) -> SurgeryResult:
    """Apply every edit of `plan` in order, checking each; write the result only if all of them succeed.

    Raises:
        WorkbenchError: An edit failed or broke the model; nothing is written.
    """
    from workbench._files import check_output_file
    from workbench.onnx.io import load_onnx, save_onnx

    check_output_file(output_path, what="The edited model's path")
    model = load_onnx(model_path)
    feeds = check_feeds
    reports = []
    for edit in plan.edits:
        edited, report = apply_edit(model, edit, check_feeds=feeds, atol=atol, latency_repeats=latency_repeats)
        if feeds:
            feeds = [edit.adapt_feeds(f, model) for f in feeds]  # the next edit sees the edited interface
        model = edited
        reports.append(report)
    save_onnx(model, output_path)
    return SurgeryResult(Path(output_path), plan, tuple(reports))
