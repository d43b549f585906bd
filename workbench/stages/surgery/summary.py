"""surgery_summary: the JSON record of a surgery run (what the graph-surgery notebook writes)."""

from __future__ import annotations

import json
import os
from typing import Any

from workbench._lazy import require
from workbench.stages.fusion import FUSED_OP_TYPES, _op_counts
from workbench.stages.surgery.run import SurgeryResult, _model_size_mb

# ----------------------------------------------------------------------------------------------------------
# The summary a CI job reads after a surgery run
# ----------------------------------------------------------------------------------------------------------

SURGERY_SUMMARY_VERSION = 1


def surgery_summary(result: SurgeryResult) -> dict[str, Any]:
    """What a surgery run did, as plain JSON-ready data (the contract a notebook's CI job reads).

    Keys:
        version: SURGERY_SUMMARY_VERSION.
        output: The edited model's path.
        plan: The plan's entries ({"kind": ..., **fields}), in order.
        edits: One entry per edit: kind, nodes_before, nodes_after, op_changes, max_abs_diff (None when not
            checked), passed (None when not checked), enforced, seconds.
        nodes_before, nodes_after: Nodes of the input model and of the edited model.
        op_counts_before, op_counts_after: op type -> nodes, for both.
        fused_ops: For each of FUSED_OP_TYPES, how many nodes of it the edited model holds.
        max_check_diff: The largest difference any edit's check measured; None when nothing was checked.
        all_checks_passed: Whether every checked edit stayed within atol (lossy edits are allowed to differ, so
            this can be False for a plan that ran); None when nothing was checked.
        size_mb_before, size_mb_after: Weights of the input and of the edited model.
        latency_ms_before, latency_ms_after: Median latency of the input model (first edit's check) and of the
            edited model (last edit's check) on the first check feed; None without check feeds or repeats.
        seconds: Time spent applying and checking the edits.

    For an empty plan the op counts are read from the output file (it is the input, copied).
    """
    reports = result.reports
    if reports:
        first, last = reports[0].diff, reports[-1].diff
        counts_before, counts_after = dict(first.op_counts_before), dict(last.op_counts_after)
        size_before, size_after = first.size_mb_before, last.size_mb_after
        latency_before, latency_after = first.latency_ms_before, last.latency_ms_after
    else:
        onnx = require("onnx", purpose="Reading an ONNX model")
        model = onnx.load(str(result.path), load_external_data=False)
        counts_before = counts_after = _op_counts(model)
        size_before = size_after = float(_model_size_mb(model))
        latency_before = latency_after = None
    checks = [r.check for r in reports if r.check is not None]
    return {
        "version": SURGERY_SUMMARY_VERSION,
        "output": str(result.path),
        "plan": [edit.to_plan_entry() for edit in result.plan.edits],
        "edits": [
            {
                "kind": r.edit.kind,
                "nodes_before": r.diff.nodes_before,
                "nodes_after": r.diff.nodes_after,
                "op_changes": r.diff.op_changes,
                "max_abs_diff": None if r.check is None else r.check.max_abs_diff,
                "passed": None if r.check is None else r.check.passed,
                "enforced": None if r.check is None else r.check.enforced,
                "seconds": r.seconds,
            }
            for r in reports
        ],
        "nodes_before": sum(counts_before.values()),
        "nodes_after": sum(counts_after.values()),
        "op_counts_before": counts_before,
        "op_counts_after": counts_after,
        "fused_ops": {op: int(counts_after.get(op, 0)) for op in FUSED_OP_TYPES},
        "max_check_diff": max((c.max_abs_diff for c in checks), default=None),
        "all_checks_passed": all(c.passed for c in checks) if checks else None,
        "size_mb_before": float(size_before),
        "size_mb_after": float(size_after),
        "latency_ms_before": latency_before,
        "latency_ms_after": latency_after,
        "seconds": sum(r.seconds for r in reports),
    }


def write_surgery_summary(result: SurgeryResult, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Write `surgery_summary(result)` as JSON to `path` (complete or not at all) and return it."""
    from workbench._files import atomic_path

    summary = surgery_summary(result)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary
