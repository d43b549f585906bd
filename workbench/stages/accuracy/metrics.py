"""Polygraphy's per-output statistics and pass/fail checks, summed up over evaluation batches."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from workbench.errors import ConfigError
from workbench.stages.accuracy.report import (
    ERROR_HISTOGRAM_EDGES,
    OutputCheck,
    OutputCheckResult,
)


def resolve_checks(output_checks: Mapping[str, Any] | None, available: list[str]) -> dict[str, OutputCheck]:
    """Output name -> its OutputCheck, for every reference output a check applies to."""
    if not output_checks:
        return {}
    checks = {}
    for key, check in output_checks.items():
        if isinstance(check, Mapping):
            check = OutputCheck.from_dict(dict(check))
        if not isinstance(check, OutputCheck):
            raise ConfigError(
                f"output_checks[{key!r}] is a {type(check).__name__}, not an OutputCheck.",
                fix="output_checks={'': OutputCheck('cosine', threshold=0.999)}",
            )
        if key != "" and key not in available:
            raise ConfigError(
                f"output_checks names {key!r}, which is not an output of the reference.",
                expected=f"'' (every output) or one of {available}",
            )
        checks[key] = check
    chosen = {o: checks.get(o, checks.get("")) for o in available}
    return {o: check for o, check in chosen.items() if check is not None}


def compare_funcs(comparator: Any, checks: dict[str, OutputCheck]) -> dict[str, Any]:
    """Kind -> a Polygraphy compare function: cosine and simple always, l2 and snr when some check asks for
    them; thresholds are permissive for the outputs no check of that kind applies to."""

    def of_kind(kind: str) -> dict[str, OutputCheck]:
        return {o: c for o, c in checks.items() if c.kind == kind}

    cosine = of_kind("cosine")
    simple = of_kind("simple")
    funcs = {
        "cosine": comparator.CosineSimilarityCompareFunc(
            cosine_similarity_threshold={"": -1.0, **{o: c.limit for o, c in cosine.items()}}
        ),
        "simple": comparator.SimpleCompareFunc(
            check_error_stat={"": "max", **{o: c.stat for o, c in simple.items()}},
            atol={"": math.inf, **{o: c.tolerances[0] for o, c in simple.items()}},
            rtol={"": math.inf, **{o: c.tolerances[1] for o, c in simple.items()}},
            error_quantile={"": 0.99, **{o: c.quantile for o, c in simple.items()}},
        ),
    }
    for kind, make, argument, permissive in (
        ("l2", comparator.L2CompareFunc, "l2_threshold", math.inf),
        ("snr", comparator.SnrCompareFunc, "snr_threshold", -math.inf),
    ):
        wanted = of_kind(kind)
        if wanted:  # computed for every output (cheap), checked only where a check applies
            funcs[kind] = make(**{argument: {"": permissive, **{o: c.limit for o, c in wanted.items()}}})
    return funcs


def _is_result(value: Any) -> bool:
    return value is not None and not isinstance(value, bool)


def output_statistics(
    per_batch: dict[str, list[Mapping[str, Any]]],
    reference_outputs: Sequence[Mapping[str, Any]],
    checks: Mapping[str, OutputCheck],
) -> tuple[dict[str, dict[str, float]], dict[str, str], list[str]]:
    """Output -> statistics over batches; output -> failure line for outputs that could not be compared (a
    different shape in some batch); outputs missing from the candidate."""
    outputs: dict[str, dict[str, float]] = {}
    trouble: dict[str, str] = {}
    missing: list[str] = []
    for output in reference_outputs[0].keys():
        cosines: list[Any] = [it.get(output) for it in per_batch["cosine"]]
        errors: list[Any] = [it.get(output) for it in per_batch["simple"]]
        if all(c is None for c in cosines):
            missing.append(output)
            continue
        if not all(_is_result(c) for c in cosines) or not all(_is_result(e) for e in errors):
            bad = sum(not _is_result(c) for c in cosines)
            trouble[output] = (
                f"output {output!r} could not be compared in {bad}/{len(cosines)} batches "
                "(missing from the candidate or of a different shape)"
            )
            continue
        stats = {
            "cosine_mean": float(np.mean([c.cosine_similarity for c in cosines])),
            "cosine_min": float(np.min([c.cosine_similarity for c in cosines])),
            "max_abs": float(np.max([e.max_absdiff for e in errors])),
            "mean_abs": float(np.mean([e.mean_absdiff for e in errors])),
            "max_rel": float(np.max([e.max_reldiff for e in errors])),
            "mean_rel": float(np.mean([e.mean_reldiff for e in errors])),
            "median_abs": float(np.mean([e.median_absdiff for e in errors])),
            "median_rel": float(np.mean([e.median_reldiff for e in errors])),
        }
        if all(e.quantile_absdiff is not None for e in errors):
            stats["quantile"] = float(checks[output].quantile)
            stats["quantile_abs"] = float(np.mean([e.quantile_absdiff for e in errors]))
            stats["quantile_rel"] = float(np.mean([e.quantile_reldiff for e in errors]))
        for kind, field_name, worst in (("l2", "l2_norm", ("l2_max", np.max)), ("snr", "snr", ("snr_min", np.min))):
            found = [it.get(output) for it in per_batch.get(kind, [])]
            if found and all(_is_result(r) for r in found):
                values = [float(getattr(r, field_name)) for r in found]
                stats[f"{kind}_mean"] = float(np.mean(values))
                stats[worst[0]] = float(worst[1](values))
        outputs[output] = stats
    return outputs, trouble, missing


def check_result(output: str, check: OutputCheck, per_batch: list[Mapping[str, Any]]) -> OutputCheckResult:
    """Polygraphy's per-batch verdicts of one check of one output, summed up in a readable line."""
    found = [it.get(output) for it in per_batch]
    results = [r for r in found if _is_result(r)]
    failed = sum(1 for r in found if not _is_result(r) or not bool(r))
    batches = len(found)
    if len(results) < batches:
        return OutputCheckResult(
            output,
            check,
            False,
            batches,
            failed,
            {},
            f"output {output!r} could not be compared in {batches - len(results)}/{batches} "
            f"batches (missing from the candidate or of a different shape), so its check "
            f"{check.describe()} fails",
        )
    if check.kind == "simple":
        quantile = check.stat == "quantile"
        values = {
            f"{check.stat}_absdiff": max(float(getattr(r, f"{check.stat}_absdiff")) for r in results),
            f"{check.stat}_reldiff": max(float(getattr(r, f"{check.stat}_reldiff")) for r in results),
        }
        atol, rtol = check.tolerances
        parts = []
        if check.atol is not None or check.rtol is None:
            parts.append((check._statistic("abs"), values[f"{check.stat}_absdiff"], "atol", atol))
        if check.rtol is not None or check.atol is None:
            parts.append((check._statistic("rel"), values[f"{check.stat}_reldiff"], "rtol", rtol))
        join = " and " if failed else " or "
        statement = join.join(
            f"{s} {v:.5g} {'<=' if v <= limit else '>'} {label} {limit:g}" for s, v, label, limit in parts
        )
        if quantile:
            values["quantile"] = check.quantile
    else:
        field_name, label, unit, higher = {
            "cosine": ("cosine_similarity", "cosine similarity", "", True),
            "l2": ("l2_norm", "L2 norm", "", False),
            "snr": ("snr", "SNR", " dB", True),
        }[check.kind]
        measured = [float(getattr(r, field_name)) for r in results]
        worst = min(measured) if higher else max(measured)
        values = {field_name: worst}
        comparison = ("<" if higher else ">") if failed else (">=" if higher else "<=")
        shown = f"{worst:.6f}" if check.kind == "cosine" else f"{worst:.6g}"
        statement = f"{label} {shown}{unit} {comparison} {check.limit:g}{unit}"
    where = f"(worst batch; {failed}/{batches} batches fail)" if failed else f"(all {batches} batches)"
    return OutputCheckResult(
        output, check, failed == 0, batches, failed, values, f"output {output!r} {statement} {where}"
    )


def error_histograms(
    reference_outputs: Sequence[Mapping[str, Any]],
    candidate_outputs: Sequence[Mapping[str, Any]],
    compared: Mapping[str, Any],
) -> dict[str, tuple[int, ...]]:
    edges = np.asarray(ERROR_HISTOGRAM_EDGES)
    histograms = {}
    for output in compared:
        counts = np.zeros(len(edges) + 1, dtype=np.int64)
        for ref_iter, cand_iter in zip(reference_outputs, candidate_outputs):
            ref, cand = np.asarray(ref_iter[output]), np.asarray(cand_iter[output])
            if ref.shape != cand.shape:
                continue
            diff = np.abs(cand.astype(np.float64) - ref.astype(np.float64)).ravel()
            counts += np.bincount(np.searchsorted(edges, diff, side="right"), minlength=len(edges) + 1)
        histograms[output] = tuple(int(n) for n in counts)
    return histograms
