"""Choice stage: join accuracy with speed and pick the candidate to ship (with the reason), plus the candidates
table and its Pareto chart."""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from workbench.config import StageConfig, check_choice
from workbench.errors import ConfigError, WorkbenchError
from workbench.stages.benchmark.latency import BenchmarkResult, BenchmarkRow, Shape

OBJECTIVES = ("latency", "throughput")
# The latency a ceiling is held against: p90 is a tail that stays stable over a few dozen interleaved runs
# (p99 of 20 runs is their maximum, one hiccup of a shared machine).
CEILING_STATISTIC = "p90_ms"


# --------------------------------------------------------------------------------------------------------------
# Choosing: accuracy joined with speed


@dataclass(frozen=True)
class ChoiceConfig(StageConfig):
    """What the chosen candidate must do best, and the limits it must stay within.

    Attributes:
        objective: "latency" (lowest p50 at the batch size: online serving) or "throughput" (most samples/s at
            the batch size: batched or offline serving).
        batch: Batch size the choice is made at; None: 1 for latency, the largest benchmarked for throughput.
        seq: Sequence length; None: the first one benchmarked.
        latency_ceiling_ms: Candidates whose p90 latency at (batch, seq) is above this are out; None: no ceiling.
    """

    objective: str = "latency"
    batch: int | None = None
    seq: int | None = None
    latency_ceiling_ms: float | None = None

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "online": {"objective": "latency", "batch": 1},
        "batch": {"objective": "throughput"},
    }

    def __post_init__(self) -> None:
        check_choice(self, "objective", OBJECTIVES)
        for name in ("batch", "seq"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"ChoiceConfig.{name} must be a whole number >= 1 or None, got {value!r}.")
        ceiling = self.latency_ceiling_ms
        if ceiling is not None and (
            not isinstance(ceiling, (int, float)) or isinstance(ceiling, bool) or not ceiling > 0 or math.isinf(ceiling)
        ):
            raise ConfigError(
                f"ChoiceConfig.latency_ceiling_ms must be a positive number of ms or None, got {ceiling!r}.",
                fix="leave it empty (None) for no ceiling",
            )

    def resolve(self, timings: BenchmarkResult) -> Shape:
        """The (batch, seq) this choice is made at, defaults filled in from what `timings` measured."""
        batch = self.batch
        if batch is None:
            batch = max(timings.config.batch_sizes) if self.objective == "throughput" else 1
        return batch, self.seq or timings.config.sequence_lengths[0]


@dataclass(frozen=True)
class Choice:
    """The candidate to ship and why.

    Attributes:
        name: The chosen candidate.
        reason: Why, in one paragraph: the objective, its value, the accuracy, the faster candidates rejected.
        batch, seq: The shape the choice was made at.
        objective: "latency" or "throughput".
        constraints: The limits every candidate was held to: "accuracy_budget" (the comparison's budget, or
            None), "latency_ceiling_ms" and "latency_ceiling_statistic" ("p90").
        p50_ms, throughput: The chosen candidate's p50 latency and samples/s at (batch, seq).
        rejected: Candidates better on the objective that were ruled out, each with why.
    """

    name: str
    reason: str
    batch: int
    seq: int
    objective: str = "latency"
    constraints: dict[str, Any] = field(default_factory=dict)
    p50_ms: float | None = None
    throughput: float | None = None
    rejected: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        values = dict(self.__dict__)
        values["rejected"] = list(self.rejected)
        return values

    def _repr_html_(self) -> str:
        return f"<b>Chosen:</b> {html.escape(self.name)} (objective: {self.objective}). {html.escape(self.reason)}"


class CandidatesTable(list):
    """The rows of :func:`candidates_table` (plain dicts): a list that also renders itself as an HTML table."""

    batch: int = 1
    seq: int = 0
    latency_ceiling_ms: float | None = None
    #: Engines that could not be candidates on this machine, with the reason (e.g. TensorRT without a GPU).
    unavailable: dict[str, str] = {}
    #: The accuracy budget's gates in words ("" when the comparison had no budget): what "meets budget" judged.
    gated: str = ""

    def _repr_html_(self) -> str:
        def number(value: Any, digits: int) -> str:
            return "-" if value is None else f"{value:.{digits}f}"

        def verdict(value: Any) -> str:
            return {True: "yes", False: "no", None: "-"}[value]

        body = "".join(
            f"<tr><td>{html.escape(r['name'])}</td><td>{number(r['p50_ms'], 2)}</td><td>{number(r['p90_ms'], 2)}</td>"
            f"<td>{number(r['throughput'], 1)}</td><td>{number(r['speedup'], 2)}</td>"
            f"<td>{number(r['cosine_mean'], 5)}</td><td>{number(r['cosine_min'], 5)}</td>"
            f"<td>{verdict(r['meets_budget'])}</td><td>{verdict(r['meets_ceiling'])}</td>"
            f"<td>{'yes' if r['pareto'] else ''}</td></tr>"
            for r in self
        )
        ceiling = f"; latency ceiling {self.latency_ceiling_ms:g} ms p90" if self.latency_ceiling_ms is not None else ""
        missing = "".join(
            f"<br><i>{html.escape(engine)}: not available ({html.escape(reason)})</i>"
            for engine, reason in self.unavailable.items()
        )
        # every figure beside a verdict says what it is and whether it was gated
        judged = (
            f"'meets budget' judges the gated metrics: {html.escape(self.gated)}"
            if self.gated
            else "'meets budget': the comparison's verdict"
        )
        note = (
            f"<br><small>cos mean, cos min: the task's primary cosine vs FP32 (shown, gated only through the "
            f"budget's own metrics); {judged}.</small>"
        )
        return (
            f"<b>Candidates</b> at batch {self.batch}, seq {self.seq}{ceiling}<table><tr><th>candidate</th>"
            "<th>p50 ms</th><th>p90 ms</th><th>samples/s</th><th>vs pytorch</th><th>cos mean</th>"
            "<th>cos min</th><th>meets budget</th><th>under ceiling</th><th>Pareto</th></tr>"
            f"{body}</table>{note}{missing}"
        )


def _cosines(candidate: Any) -> tuple[float | None, float | None]:
    """(mean, min) cosine of a candidate: its task's primary cosine, else its first output's cosine."""
    mean = getattr(candidate, "cosine_mean", None)
    low = getattr(candidate, "cosine_min", None)
    if mean is None:
        outputs = getattr(candidate, "outputs", None) or {}
        stats = next(iter(outputs.values()), None) if isinstance(outputs, Mapping) else None
        if stats:
            mean, low = stats.get("cosine_mean"), stats.get("cosine_min")
    return mean, low


def _pareto_flags(points: Sequence[tuple[float | None, float | None]]) -> list[bool]:
    """For (latency, accuracy) points: True where no other point is at least as fast and as accurate and
    strictly better on one of them. Points missing either value are never on the front."""
    flags = []
    for i, (latency, accuracy) in enumerate(points):
        if latency is None or accuracy is None or (isinstance(accuracy, float) and math.isnan(accuracy)):
            flags.append(False)
            continue
        dominated = any(
            j != i
            and other_latency is not None
            and other_accuracy is not None
            and other_latency <= latency
            and other_accuracy >= accuracy
            and (other_latency < latency or other_accuracy > accuracy)
            for j, (other_latency, other_accuracy) in enumerate(points)
        )
        flags.append(not dominated)
    return flags


def candidates_table(
    accuracy: Any,
    timings: BenchmarkResult,
    batch: int = 1,
    seq: int | None = None,
    *,
    latency_ceiling_ms: float | None = None,
    baseline: str = "pytorch",
    unavailable: Mapping[str, str] | None = None,
) -> CandidatesTable:
    """Accuracy and speed of every compared candidate at (batch, seq), one dict per candidate.

    Keys: name, engine, p50_ms, p90_ms, throughput (samples/s), speedup (baseline p50 / p50; None without a
    baseline row), cosine_mean, cosine_min (the task's primary cosine: sentence-embedding cosine, logits cosine,
    ...; the first output's cosine for objects without one), meets_budget (the accuracy budget), failures, meets_ceiling
    (p90 <= latency_ceiling_ms; True without a ceiling, None when not timed), batch_invariance_min (the lowest
    cosine of a text alone vs in a batch under the served padding policy; None when not measured), pareto (no
    other candidate is at least as fast at p50 and at least as accurate by mean cosine, and better on one of them).

    Args:
        accuracy: A ComparisonReport, or anything with `.candidates` whose items have `name`, `failures`,
            `cosine_mean`/`_min` and are truthy when they meet the budget.
        timings: The benchmark of the same candidates (its other rows, such as PyTorch's, are not candidates).
        batch, seq: The shape; seq None: the first benchmarked.
        latency_ceiling_ms: p90 limit for `meets_ceiling`.
        baseline: The row `speedup` is relative to.
        unavailable: Engines that could not be candidates here, with the reason (shown under the table; the
            choice never probes the hardware itself).
    """
    seq = seq or timings.config.sequence_lengths[0]
    base = timings.p50(baseline, batch, seq)
    invariance = getattr(accuracy, "batch_invariance", None) or {}
    table = CandidatesTable()
    table.batch, table.seq, table.latency_ceiling_ms = batch, seq, latency_ceiling_ms
    for candidate in accuracy.candidates:
        try:
            row: BenchmarkRow | None = timings.row(candidate.name, batch, seq)
        except KeyError:
            row = None
        mean, low = _cosines(candidate)
        p90 = row.p90_ms if row else None
        table.append(
            {
                "name": candidate.name,
                "engine": getattr(candidate, "engine", None),
                "p50_ms": row.p50_ms if row else None,
                "p90_ms": p90,
                "throughput": row.throughput if row else None,
                "speedup": base / row.p50_ms if row and base else None,
                "cosine_mean": mean,
                "cosine_min": low,
                "meets_budget": bool(candidate),
                "failures": list(getattr(candidate, "failures", ())),
                "meets_ceiling": None if p90 is None else (latency_ceiling_ms is None or p90 <= latency_ceiling_ms),
                "batch_invariance_min": invariance[candidate.name].cosine_min if candidate.name in invariance else None,
                "pareto": False,
            }
        )
    for row_dict, flag in zip(table, _pareto_flags([(r["p50_ms"], r["cosine_mean"]) for r in table])):
        row_dict["pareto"] = flag
    table.unavailable = dict(unavailable or {})
    describe = getattr(getattr(accuracy, "budget", None), "describe", None)
    table.gated = describe() if callable(describe) else ""
    return table


def pareto_figure(
    accuracy: Any,
    timings: BenchmarkResult,
    batch: int = 1,
    seq: int | None = None,
    *,
    latency_ceiling_ms: float | None = None,
) -> Any:
    """Plotly scatter: p50 latency vs mean cosine of every candidate, the Pareto front as a line, the accuracy
    budget (when the report has one) and the latency ceiling (when given) as dashed lines."""
    import plotly.graph_objects as go

    table = candidates_table(accuracy, timings, batch, seq, latency_ceiling_ms=latency_ceiling_ms)
    plotted = [r for r in table if r["p50_ms"] is not None and r["cosine_mean"] is not None]
    figure = go.Figure()
    for meets, colour, label in ((True, "seagreen", "meets budget"), (False, "indianred", "misses budget")):
        rows = [r for r in plotted if r["meets_budget"] == meets]
        figure.add_scatter(
            x=[r["p50_ms"] for r in rows],
            y=[r["cosine_mean"] for r in rows],
            mode="markers+text",
            text=[r["name"] for r in rows],
            textposition="top center",
            name=label,
            marker={"color": colour, "size": 11, "symbol": ["star" if r["pareto"] else "circle" for r in rows]},
            customdata=[[r["p90_ms"], r["cosine_min"] if r["cosine_min"] is not None else float("nan")] for r in rows],
            hovertemplate="%{text}: p50 %{x:.2f} ms (p90 %{customdata[0]:.2f}), cosine mean %{y:.5f}, "
            "min %{customdata[1]:.5f}<extra></extra>",
        )
    front = sorted((r for r in plotted if r["pareto"]), key=lambda r: r["p50_ms"])
    figure.add_scatter(
        x=[r["p50_ms"] for r in front],
        y=[r["cosine_mean"] for r in front],
        mode="lines",
        line={"dash": "dot", "color": "gray"},
        name="Pareto front",
        hoverinfo="skip",
    )
    gates = getattr(getattr(accuracy, "budget", None), "gates", lambda: ())()
    primary = (getattr(accuracy, "primary", None) or ("",))[0] or next(
        (g.metric for g in gates if g.op == ">="), ""
    )  # the first minimum, for objects that name no primary
    for gate in gates:
        if gate.metric == primary:
            figure.add_hline(
                y=gate.limit, line_dash="dash", line_color="gray", annotation_text=f"budget: mean >= {gate.limit:g}"
            )
    if latency_ceiling_ms is not None:
        figure.add_vline(
            x=latency_ceiling_ms,
            line_dash="dash",
            line_color="indianred",
            annotation_text=f"ceiling {latency_ceiling_ms:g} ms (p90)",
        )
    figure.update_layout(
        title=f"Latency vs accuracy at batch {table.batch}, seq {table.seq}",
        xaxis_title="p50 latency (ms)",
        yaxis_title="mean cosine vs reference",
    )
    return figure


def choose_candidate(
    accuracy: Any,
    timings: BenchmarkResult,
    *,
    batch: int | None = None,
    seq: int | None = None,
    objective: str = "latency",
    latency_ceiling_ms: float | None = None,
    batch_invariance_min: float | None = None,
) -> Choice:
    """Pick the best candidate on `objective` at (batch, seq) among those that meet the accuracy budget and stay
    under the latency ceiling (and, for a deployment that batches, are batch-invariant).

    Args:
        accuracy: A ComparisonReport (its candidates are truthy when they meet the budget).
        timings: The benchmark of the same candidates.
        batch: Batch size the choice optimises for; None: 1 (online latency) for objective "latency", the
            largest benchmarked batch size for "throughput".
        seq: Sequence length; default the first one benchmarked.
        objective: "latency" (lowest p50) or "throughput" (most samples/s).
        latency_ceiling_ms: Rule out candidates whose p90 at (batch, seq) is above it; None: no ceiling.
        batch_invariance_min: Rule out candidates whose batch-invariance minimum cosine (the report's
            `batch_invariance`, measured under the served padding policy) is below it: pass it when the
            deployment batches requests (a text's result must not depend on its batch-mates). None: no rule;
            candidates the report has no figure for are not ruled out by it.

    Raises:
        ConfigError: A bad objective, batch, seq or ceiling.
        WorkbenchError: Nothing was benchmarked at (batch, seq), no candidate meets the accuracy budget (the
            message names every candidate's failures), or none of those that do stays under the ceiling.
    """
    config = ChoiceConfig(objective=objective, batch=batch, seq=seq, latency_ceiling_ms=latency_ceiling_ms)
    batch, seq = config.resolve(timings)
    table = candidates_table(accuracy, timings, batch, seq, latency_ceiling_ms=latency_ceiling_ms)
    measured = [r for r in table if r["p50_ms"] is not None]
    if not measured:
        raise WorkbenchError(
            f"No candidate was benchmarked at batch {batch}, seq {seq}.",
            fix="benchmark the candidates at the shape you choose for",
        )
    accurate = [r for r in measured if r["meets_budget"]]
    if not accurate:
        untimed = [r["name"] for r in table if r["p50_ms"] is None and r["meets_budget"]]
        raise WorkbenchError(
            "No candidate meets the accuracy budget: "
            + "; ".join(f"{r['name']}: {', '.join(r['failures'])}" for r in table if not r["meets_budget"])
            + (
                f". Meeting it but not benchmarked at batch {batch}, seq {seq}: {', '.join(untimed)}" if untimed else ""
            ),
            fix="relax the budget, or keep the failing nodes in FP32 (the accuracy stage's fixes)"
            + (", or benchmark the candidates that meet it at this shape" if untimed else ""),
        )

    def invariant(row: dict[str, Any]) -> bool:
        figure = row["batch_invariance_min"]
        return batch_invariance_min is None or figure is None or figure >= batch_invariance_min

    if not any(invariant(r) for r in accurate):
        raise WorkbenchError(
            f"No candidate that meets the accuracy budget is batch-invariant (min cosine >= {batch_invariance_min:g}, "
            "a text alone vs inside a batch): "
            + "; ".join(f"{r['name']}: {r['batch_invariance_min']:.6f}" for r in accurate),
            fix="serve without dynamic batching (then the rule does not apply), or add a candidate whose outputs do "
            "not depend on batch-mates (FP32, or INT8 with static, calibrated scales)",
        )
    accurate = [r for r in accurate if invariant(r)]
    passing = [r for r in accurate if r["meets_ceiling"]]
    if not passing:
        raise WorkbenchError(
            f"No candidate that meets the accuracy budget stays under the latency ceiling of {latency_ceiling_ms:g} "
            f"ms (p90) at batch {batch}, seq {seq}: "
            + "; ".join(f"{r['name']}: p90 {r['p90_ms']:.2f} ms" for r in accurate),
            fix="raise latency_ceiling_ms, choose for a smaller batch size, or make a faster candidate meet the "
            "budget (INT8 with the failing nodes kept in FP32)",
        )

    def score(row: dict[str, Any]) -> float:  # lower is better
        return row["p50_ms"] if config.objective == "latency" else -row["throughput"]

    best = min(passing, key=score)
    if config.objective == "latency":
        reason = (
            f"fastest candidate that meets the accuracy budget at batch {batch}, seq {seq}: {best['p50_ms']:.2f} ms p50"
        )
    else:
        reason = (
            f"highest-throughput candidate that meets the accuracy budget at batch {batch}, seq {seq}: "
            f"{best['throughput']:.1f} samples/s ({best['p50_ms']:.2f} ms p50)"
        )
    if latency_ceiling_ms is not None:
        reason += f", p90 {best['p90_ms']:.2f} ms under the ceiling of {latency_ceiling_ms:g} ms"
    if best["cosine_mean"] is not None:
        primary = (getattr(accuracy, "primary", None) or ("",))[0]
        kind = primary.removesuffix("_mean").replace("_", " ") or "output cosine"
        reason += f", {kind} mean {best['cosine_mean']:.4f} / min {best['cosine_min']:.4f}"

    def value(row: dict[str, Any]) -> str:
        return f"{row['p50_ms']:.1f} ms" if config.objective == "latency" else f"{row['throughput']:.1f} samples/s"

    rejected = []
    for r in measured:
        if r is best or score(r) >= score(best):
            continue
        if not r["meets_budget"]:
            rejected.append(f"{r['name']} ({value(r)}) misses the budget: {', '.join(r['failures'])}")
        elif not invariant(r):
            rejected.append(
                f"{r['name']} ({value(r)}) is not batch-invariant: a text alone vs in a batch has min "
                f"cosine {r['batch_invariance_min']:.6f} < {batch_invariance_min:g}, and the deployment "
                "batches"
            )
        elif not r["meets_ceiling"]:
            rejected.append(
                f"{r['name']} ({value(r)}) exceeds the latency ceiling: p90 {r['p90_ms']:.2f} ms > "
                f"{latency_ceiling_ms:g} ms"
            )
    if rejected:
        reason += (
            ". Faster but rejected: " if config.objective == "latency" else ". Higher throughput but rejected: "
        ) + "; ".join(rejected)
    budget = getattr(accuracy, "budget", None)
    constraints = {
        "accuracy_budget": budget.to_dict() if budget is not None and hasattr(budget, "to_dict") else None,
        "latency_ceiling_ms": latency_ceiling_ms,
        "latency_ceiling_statistic": CEILING_STATISTIC.removesuffix("_ms"),
        "batch_invariance_min": batch_invariance_min,
    }
    return Choice(
        name=best["name"],
        reason=reason,
        batch=batch,
        seq=seq,
        objective=config.objective,
        constraints=constraints,
        p50_ms=best["p50_ms"],
        throughput=best["throughput"],
        rejected=tuple(rejected),
    )
