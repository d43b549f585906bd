"""The accuracy stage's report: per-output checks, one candidate's statistics, and the comparison of all of them."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from workbench._lazy import require
from workbench.config import StageConfig, check_choice
from workbench.errors import ConfigError, DataError
from workbench.tasks.base import Budget

OUTPUT_CHECK_KINDS = ("cosine", "simple", "l2", "snr")
ERROR_STATS = ("max", "mean", "median", "quantile")


#: Polygraphy 0.53.6's defaults, used when an OutputCheck leaves its threshold (or both tolerances) unset.
DEFAULT_THRESHOLDS: dict[str, float] = {"cosine": 0.997, "l2": 1e-5, "snr": 20.0}
DEFAULT_TOLERANCE = 1e-5

#: Bin edges of the |candidate - reference| histograms: 4 bins per decade from 1e-8 to 1e2. Counts have
#: len(edges) + 1 entries: [0] counts differences below 1e-8 (exact zeros included), [i] counts
#: edges[i-1] <= d < edges[i], and [-1] counts d >= 1e2 (NaN included).
ERROR_HISTOGRAM_EDGES: tuple[float, ...] = tuple(float(10.0**e) for e in np.linspace(-8.0, 2.0, 41))


@dataclass(frozen=True)
class OutputCheck(StageConfig):
    """A pass/fail check of one output, run by Polygraphy's compare function of its kind on every batch.

    A check fails when any batch fails it: Polygraphy's per-iteration verdict, as `polygraphy run` gives it.

    Attributes:
        kind: Which Polygraphy compare function:
            "cosine": CosineSimilarityCompareFunc, cosine similarity of the batch's output >= `threshold`;
            "simple": SimpleCompareFunc, the `stat` of the absolute difference <= `atol` or the `stat` of the
            relative difference (|candidate - reference| / |candidate|, Polygraphy's definition) <= `rtol`;
            "l2": L2CompareFunc, L2 norm of the difference <= `threshold`;
            "snr": SnrCompareFunc, signal-to-noise ratio 10 log10(P(reference) / P(difference)) >= `threshold` dB.
        threshold: For cosine, l2 and snr. None: Polygraphy's default (0.997, 1e-5, 20 dB).
        atol: For simple. A tolerance left None admits nothing by itself, so give only `atol` for a purely
            absolute check; with both None, Polygraphy's defaults (1e-5 each) apply.
        rtol: For simple, as `atol`.
        stat: For simple: the error statistic over the batch's elements: "max", "mean", "median" or "quantile".
        quantile: For simple with stat="quantile": which quantile, in [0, 1].
    """

    kind: str = "cosine"
    threshold: float | None = None
    atol: float | None = None
    rtol: float | None = None
    stat: str = "max"
    quantile: float = 0.99

    def __post_init__(self) -> None:
        check_choice(self, "kind", OUTPUT_CHECK_KINDS)
        check_choice(self, "stat", ERROR_STATS)
        if not 0.0 <= self.quantile <= 1.0:
            raise ConfigError(f"OutputCheck.quantile must be in [0, 1], got {self.quantile}.")
        if self.kind == "simple":
            if self.threshold is not None:
                raise ConfigError(
                    "A 'simple' OutputCheck takes atol and/or rtol, not threshold.",
                    fix="OutputCheck('simple', atol=1e-4, rtol=1e-4)",
                )
            for name in ("atol", "rtol"):
                value = getattr(self, name)
                if value is not None and not value >= 0.0:
                    raise ConfigError(f"OutputCheck.{name} must be >= 0, got {value}.")
            return
        if self.atol is not None or self.rtol is not None:
            raise ConfigError(
                f"A {self.kind!r} OutputCheck takes threshold, not atol/rtol.",
                fix=f"OutputCheck({self.kind!r}, threshold=...), or kind='simple' for tolerances",
            )
        if self.kind == "cosine" and self.threshold is not None and not -1.0 <= self.threshold <= 1.0:
            raise ConfigError(f"A cosine OutputCheck threshold must be in [-1, 1], got {self.threshold}.")
        if self.kind == "l2" and self.threshold is not None and not self.threshold >= 0.0:
            raise ConfigError(f"An l2 OutputCheck threshold must be >= 0, got {self.threshold}.")

    @property
    def limit(self) -> float:
        """The threshold a cosine, l2 or snr check applies (Polygraphy's default when `threshold` is None)."""
        if self.kind == "simple":
            raise ConfigError("A 'simple' OutputCheck has tolerances, not a threshold: see .tolerances.")
        return float(self.threshold) if self.threshold is not None else DEFAULT_THRESHOLDS[self.kind]

    @property
    def tolerances(self) -> tuple[float, float]:
        """(atol, rtol) as Polygraphy applies them: an unset one is 0, both unset are Polygraphy's defaults."""
        if self.atol is None and self.rtol is None:
            return DEFAULT_TOLERANCE, DEFAULT_TOLERANCE
        return (float(self.atol) if self.atol is not None else 0.0, float(self.rtol) if self.rtol is not None else 0.0)

    def _statistic(self, which: str) -> str:
        """Readable name of the simple check's statistic, e.g. 'max abs diff' or '0.99-quantile rel diff'."""
        head = f"{self.quantile:g}-quantile" if self.stat == "quantile" else self.stat
        return f"{head} {which} diff"

    def describe(self) -> str:
        """The criterion in words, e.g. "cosine similarity >= 0.997" or "max abs diff <= 0.0001"."""
        if self.kind == "cosine":
            return f"cosine similarity >= {self.limit:g}"
        if self.kind == "l2":
            return f"L2 norm <= {self.limit:g}"
        if self.kind == "snr":
            return f"SNR >= {self.limit:g} dB"
        atol, rtol = self.tolerances
        parts = []
        if self.atol is not None or self.rtol is None:
            parts.append(f"{self._statistic('abs')} <= {atol:g}")
        if self.rtol is not None or self.atol is None:
            parts.append(f"{self._statistic('rel')} <= {rtol:g}")
        return " or ".join(parts)


@dataclass(frozen=True)
class OutputCheckResult:
    """One OutputCheck of one output of one candidate. Truthy when every batch passed.

    Attributes:
        output: The output checked.
        check: The check.
        passed: Whether Polygraphy passed the output in every batch (False when it is missing from the candidate).
        batches: How many batches were compared.
        batches_failed: How many of them failed (missing outputs count as failed).
        values: The worst value over the batches of each statistic the check looks at, by Polygraphy's field
            name (e.g. "cosine_similarity", "max_absdiff", "l2_norm", "snr").
        message: A readable line naming the output, the statistic, its value and the threshold.
    """

    output: str
    check: OutputCheck
    passed: bool
    batches: int
    batches_failed: int
    values: dict[str, float]
    message: str

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "check": self.check.to_dict(),
            "passed": self.passed,
            "batches": self.batches,
            "batches_failed": self.batches_failed,
            "values": {k: _json_float(v) for k, v in self.values.items()},
            "message": self.message,
        }


@dataclass(frozen=True)
class CandidateAccuracy:
    """One candidate's statistics against the reference. Truthy when it meets the budget and passes its checks.

    Attributes:
        name: The candidate's name.
        path: Its model file.
        outputs: Output name -> statistics over the evaluation batches: "cosine_mean" and "cosine_min"
            (Polygraphy's cosine similarity per batch), "max_abs" and "max_rel" (largest over batches),
            "mean_abs", "mean_rel", "median_abs", "median_rel" (the batches' values, averaged); where a check
            computed them: "quantile" with "quantile_abs" and "quantile_rel" (averaged), "l2_mean" and
            "l2_max", "snr_mean" and "snr_min" (dB; +inf when the outputs are identical).
        task_metrics: The task's metrics (workbench.tasks: "embedding_cosine_mean"/"_min" for embeddings;
            "argmax_agreement", "logits_cosine_mean"/"_min", ... for classifiers), plus "output_cosine_min" (the
            worst raw-output cosine of any batch).
        cosine_mean: The task's primary cosine, mean over samples (embedding cosine, logits cosine, ...).
        cosine_min: The task's primary cosine, worst sample.
        per_sample_cosine: Every sample's primary cosine, in feed order.
        failures: Why it misses: budget lines, then failed output checks and outputs that could not be compared.
        checks: The result of every configured output check.
        error_histograms: Output name -> counts of |candidate - reference| per ERROR_HISTOGRAM_EDGES bin.
        engine: The engine that ran it.
    """

    name: str
    path: Path
    outputs: dict[str, dict[str, float]]
    task_metrics: dict[str, float] = field(default_factory=dict)
    cosine_mean: float | None = None
    cosine_min: float | None = None
    per_sample_cosine: tuple[float, ...] = ()
    failures: tuple[str, ...] = ()
    checks: tuple[OutputCheckResult, ...] = ()
    error_histograms: dict[str, tuple[int, ...]] = field(default_factory=dict)
    engine: str = "onnxruntime"

    def __bool__(self) -> bool:
        return not self.failures

    @property
    def embedding_cosine_mean(self) -> float | None:
        """The sentence-embedding cosine, mean over sentences (embedding models; None for other tasks)."""
        return self.task_metrics.get("embedding_cosine_mean")

    @property
    def embedding_cosine_min(self) -> float | None:
        return self.task_metrics.get("embedding_cosine_min")

    @property
    def per_sentence_cosine(self) -> tuple[float, ...]:
        return self.per_sample_cosine

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "engine": self.engine,
            "outputs": {o: {k: _json_float(v) for k, v in s.items()} for o, s in self.outputs.items()},
            "cosine_mean": self.cosine_mean,
            "cosine_min": self.cosine_min,
            "embedding_cosine_mean": self.embedding_cosine_mean,
            "embedding_cosine_min": self.embedding_cosine_min,
            "meets_budget": bool(self),
            "failures": list(self.failures),
            "task_metrics": {k: _json_float(v) for k, v in self.task_metrics.items()},
            "checks": [c.to_dict() for c in self.checks],
            "error_histograms": {o: list(c) for o, c in self.error_histograms.items()},
        }


@dataclass(frozen=True)
class ComparisonReport:
    """Every candidate's accuracy against the reference. Truthy when every candidate meets the budget.

    Attributes:
        reference: The reference model.
        budget: The budget each candidate was held to (the task's Budget type; never one that gates nothing).
        candidates: Each candidate's accuracy, in the order given.
        samples: Evaluation samples (rows over every feed).
        notes: Things worth knowing that are not failures (e.g. an output a candidate lacks).
        task: The task's name ("feature-extraction", "text-classification", ...).
        primary: The task metrics that fill each candidate's cosine_mean / cosine_min.
        output_checks: Output name -> the check applied to it (defaults resolved to each output).
        batch_invariance: Candidate name -> its batch invariance under the served padding policy
            (workbench.stages.accuracy.invariance.InvarianceResult); empty where it was not measured.
    """

    reference: Path
    budget: Budget
    candidates: tuple[CandidateAccuracy, ...]
    samples: int
    notes: tuple[str, ...] = field(default_factory=tuple)
    task: str = ""
    primary: tuple[str, str] = ("", "")
    output_checks: dict[str, OutputCheck] = field(default_factory=dict)
    batch_invariance: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return all(self.candidates)

    def __getitem__(self, name: str) -> CandidateAccuracy:
        for candidate in self.candidates:
            if candidate.name == name:
                return candidate
        raise KeyError(f"no candidate {name!r}; have {[c.name for c in self.candidates]}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.candidates)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": str(self.reference),
            "budget": self.budget.to_dict(),
            "samples": self.samples,
            "task": self.task,
            "primary_metrics": list(self.primary),
            "output_checks": {o: c.to_dict() for o, c in self.output_checks.items()},
            "error_histogram_edges": list(ERROR_HISTOGRAM_EDGES),
            "notes": list(self.notes),
            "candidates": [c.to_dict() for c in self.candidates],
            "batch_invariance": {
                n: {k: v for k, v in r.to_dict().items() if k != "per_text"} for n, r in self.batch_invariance.items()
            },
        }

    def metric_figure(self, kind: str = "box") -> Any:
        """Per-sample primary cosine vs the reference, per candidate, with the budget's gates on it (plotly).

        Args:
            kind: "box" (box with every sample as a point, and the mean) or "violin".

        Raises:
            DataError: The task computed no per-sample cosine.
        """
        if kind not in ("box", "violin"):
            raise ConfigError(f"metric_figure kind {kind!r} is not one of ['box', 'violin'].")
        go = require("plotly.graph_objects", purpose="Plotting accuracy")
        shown = [c for c in self.candidates if c.per_sample_cosine]
        if not shown:
            raise DataError(
                f"There are no per-sample cosines to plot: task {self.task!r} computed none.",
                fix="plot error_histogram_figure() instead",
            )
        label = self.primary[0].removesuffix("_mean").replace("_", " ") or "cosine"
        figure = go.Figure()
        for candidate in shown:
            values = list(candidate.per_sample_cosine)
            colour = "seagreen" if candidate else "indianred"
            common = {
                "y": values,
                "name": candidate.name,
                "customdata": list(range(len(values))),
                "marker": {"color": colour},
                "line": {"color": colour},
                "hovertemplate": f"{html.escape(candidate.name)}<br>sample %{{customdata}}: %{{y:.6f}}<extra></extra>",
            }
            if kind == "violin":
                figure.add_trace(
                    go.Violin(points="all", pointpos=0, jitter=0.3, box_visible=True, meanline_visible=True, **common)
                )
            else:
                figure.add_trace(go.Box(boxpoints="all", pointpos=0, jitter=0.3, boxmean=True, **common))
        for gate in self.budget.gates():
            if gate.metric == self.primary[0]:
                figure.add_hline(
                    y=gate.limit, line_dash="dash", line_color="gray", annotation_text=f"budget: mean >= {gate.limit:g}"
                )
            elif gate.metric == self.primary[1]:
                figure.add_hline(
                    y=gate.limit,
                    line_dash="dot",
                    line_color="indianred",
                    annotation_text=f"budget: every sample >= {gate.limit:g}",
                    annotation_position="bottom right",
                )
        figure.update_layout(
            title=f"{label} vs {self.reference.name} ({self.samples} samples)",
            xaxis_title="candidate",
            yaxis_title=f"{label} vs reference",
            showlegend=False,
        )
        return figure

    def error_histogram_figure(self, output: str | None = None) -> Any:
        """Per candidate, the distribution of |candidate - reference| over one output's elements (plotly).

        Log-spaced bins (ERROR_HISTOGRAM_EDGES) on a log axis; the leftmost step holds differences below 1e-8,
        exact zeros included, and the rightmost those of 1e2 and above (and NaN).

        Args:
            output: The output; default the first one compared.
        """
        go = require("plotly.graph_objects", purpose="Plotting accuracy")
        available = list(dict.fromkeys(o for c in self.candidates for o in c.error_histograms))
        if not available:
            raise DataError("There are no error histograms to plot: no output could be compared.")
        output = available[0] if output is None else output
        if output not in available:
            raise DataError(f"There is no error histogram for output {output!r}.", expected=f"one of {available}")
        edges = np.asarray(ERROR_HISTOGRAM_EDGES)
        lows = np.concatenate([[edges[0] / 10.0], edges])
        top = edges[-1] * 10.0
        labels = (
            [f"< {edges[0]:.0e} (zeros included)"]
            + [f"[{lo:.3g}, {hi:.3g})" for lo, hi in zip(edges[:-1], edges[1:])]
            + [f">= {edges[-1]:g} (NaN included)"]
        )
        figure = go.Figure()
        for candidate in self.candidates:
            if output not in candidate.error_histograms:
                continue
            counts = np.asarray(candidate.error_histograms[output], dtype=np.int64)
            fractions = counts / max(int(counts.sum()), 1)
            figure.add_scatter(
                x=[*lows.tolist(), float(top)],
                y=[*fractions.tolist(), float(fractions[-1])],
                mode="lines",
                line_shape="hv",
                name=candidate.name,
                customdata=[[label, int(n)] for label, n in zip(labels, counts)] + [[labels[-1], int(counts[-1])]],
                hovertemplate=(
                    f"{html.escape(candidate.name)}<br>%{{customdata[0]}}: %{{customdata[1]}} elements "
                    "(%{y:.2%})<extra></extra>"
                ),
            )
        figure.update_layout(
            title=f"|candidate - reference| of output {output!r}",
            xaxis_type="log",
            xaxis_title="absolute difference",
            yaxis_title="fraction of elements",
            yaxis_tickformat=".0%",
        )
        return figure

    def _repr_html_(self) -> str:
        metric_names = [
            m for m in dict.fromkeys(k for c in self.candidates for k in c.task_metrics) if m != "output_cosine_min"
        ][:4]
        rows = []
        for c in self.candidates:
            cells = "".join(f"<td>{_format(c.task_metrics.get(m))}</td>" for m in metric_names)
            verdict = "meets budget" if c else "misses: " + "; ".join(c.failures)
            invariance = self.batch_invariance.get(c.name)
            cells += f"<td>{_format(invariance.cosine_min if invariance is not None else None)}</td>"
            rows.append(f"<tr><td>{html.escape(c.name)}</td>{cells}<td>{html.escape(verdict)}</td></tr>")
        gates = [g.describe() for g in self.budget.gates()]
        gates += [f"{o!r} {c.describe()}" for o, c in self.output_checks.items()]
        gated = {g.metric: g for g in self.budget.gates()}

        def heading(metric: str) -> str:  # what the figure is, and whether the budget gates it
            gate = gated.get(metric)
            note = f"gated: {gate.op} {gate.limit:g}" if gate is not None else "not gated"
            return f"<th>{html.escape(metric.replace('_', ' '))}<br><small>{html.escape(note)}</small></th>"

        header = "".join(heading(m) for m in metric_names)
        header += "<th>batch invariance min<br><small>gated by the choice when the deployment batches</small></th>"
        return (
            f"<b>Accuracy</b> vs <code>{html.escape(self.reference.name)}</code> on {self.samples} samples, "
            f"task {html.escape(self.task)}; gated: {html.escape('; '.join(gates))}"
            f"<table><tr><th>candidate</th>{header}<th>verdict</th></tr>{''.join(rows)}</table>"
        )


def _format(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.5f}" if abs(value) < 1e4 else f"{value:.4g}"


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None
