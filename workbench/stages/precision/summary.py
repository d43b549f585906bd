"""The summary a CI job reads after a precision run: each converted candidate with its accuracy.

write_precision_summary({"int8_dynamic": result, ...}, report, "runs/precision/precision_summary.json")
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

PRECISION_SUMMARY_VERSION = 1


def precision_summary(results: Mapping[str, Any], report: Any) -> dict[str, Any]:
    """Converted candidates and their accuracy, as plain JSON-ready data.

    Args:
        results: Candidate name -> QuantizeResult (from PrecisionPlan.convert or the precision stage).
        report: The ComparisonReport of compare_candidates over (at least) those names.

    Keys:
        version: PRECISION_SUMMARY_VERSION.
        reference: The model the candidates were compared with.
        samples: Sentences compared.
        budget: The accuracy budget (AccuracyBudget.to_dict()).
        candidates: One row per entry of `results`, in order: name, path, method, size_mb, keep_fp32_count
            (nodes left in FP32), cosine_mean, cosine_min (sentence-embedding cosine vs the reference),
            meets_budget, failures. A candidate the report does not hold has None for cosine_mean,
            cosine_min and meets_budget, and no failures.
    """
    compared = {candidate.name: candidate for candidate in report.candidates}
    rows = []
    for name, result in results.items():
        accuracy = compared.get(name)
        rows.append(
            {
                "name": name,
                "path": str(result.path),
                "method": result.method,
                "size_mb": float(result.size_mb),
                "keep_fp32_count": len(result.keep_fp32),
                "cosine_mean": accuracy.cosine_mean if accuracy is not None else None,
                "cosine_min": accuracy.cosine_min if accuracy is not None else None,
                "meets_budget": bool(accuracy) if accuracy is not None else None,
                "failures": list(accuracy.failures) if accuracy is not None else [],
            }
        )
    return {
        "version": PRECISION_SUMMARY_VERSION,
        "reference": str(report.reference),
        "samples": report.samples,
        "budget": report.budget.to_dict(),
        "candidates": rows,
    }


def write_precision_summary(results: Mapping[str, Any], report: Any, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Write `precision_summary(results, report)` as JSON to `path` (complete or not at all) and return it."""
    from workbench._files import atomic_path

    summary = precision_summary(results, report)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
    return summary
