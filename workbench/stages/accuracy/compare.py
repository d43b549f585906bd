"""Accuracy stage: compare candidates with the FP32 reference through Polygraphy's Comparator.

Per output, always: Polygraphy's cosine similarity and error statistics (max / mean / median absolute and
relative differences), and a histogram of |candidate - reference| over fixed log-spaced bins (counts only, so
memory stays bounded). Optionally, per-output pass/fail checks (`OutputCheck`) run by Polygraphy's own compare
functions (cosine, simple tolerances, L2, SNR), which add the statistics they compute (quantiles, L2, SNR).

On top, a task metric: for embedding models the cosine between attention-mask-aware mean-pooled, L2-normalised
sentence embeddings, per sentence; for classifiers the argmax agreement and the largest |logit difference|; or
any function of the reference's and the candidate's outputs.

`save_polygraphy_data` writes the evaluation feeds and the reference's outputs in Polygraphy's own formats, so
that the same check runs from Polygraphy's command line (in CI, on another machine):

    polygraphy run candidate.onnx --onnxrt --load-inputs inputs.json --load-outputs outputs.json \\
        --atol 1e-4 --rtol 1e-4
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import numpy as np

from workbench._lazy import require
from workbench.config import StageConfig, check_choice
from workbench.errors import ConfigError, DataError, ModelSourceError

OUTPUT_CHECK_KINDS = ("cosine", "simple", "l2", "snr")
ERROR_STATS = ("max", "mean", "median", "quantile")
TASKS = ("auto", "embedding", "classification")

#: Polygraphy 0.53.6's defaults, used when an OutputCheck leaves its threshold (or both tolerances) unset.
DEFAULT_THRESHOLDS: dict[str, float] = {"cosine": 0.997, "l2": 1e-5, "snr": 20.0}
DEFAULT_TOLERANCE = 1e-5

#: Bin edges of the |candidate - reference| histograms: 4 bins per decade from 1e-8 to 1e2. Counts have
#: len(edges) + 1 entries: [0] counts differences below 1e-8 (exact zeros included), [i] counts
#: edges[i-1] <= d < edges[i], and [-1] counts d >= 1e2 (NaN included).
ERROR_HISTOGRAM_EDGES: tuple[float, ...] = tuple(float(10.0 ** e) for e in np.linspace(-8.0, 2.0, 41))

_REFERENCE = "reference"
_LOGITS = "logits"


@dataclass(frozen=True)
class AccuracyBudget(StageConfig):
    """What must hold for a candidate to be shippable.

    Attributes:
        embedding_cosine_mean: Minimum mean sentence-embedding cosine vs the reference.
        embedding_cosine_min: Minimum worst-sentence embedding cosine vs the reference.
        output_cosine_min: Optional minimum Polygraphy cosine of each raw output, per batch (None: not checked).
            Absolute tolerances are deliberately not part of the default budget: INT8 on MiniLM shows max
            abs errors of 5-6 on outlier hidden dimensions even at 0.99 embedding cosine.
        argmax_agreement_min: Classifiers: minimum fraction of samples whose predicted class (argmax of
            `logits`) matches the reference's (None: not checked).
        logit_max_abs: Classifiers: maximum |candidate - reference| over every logit (None: not checked).
    """

    embedding_cosine_mean: float = 0.995
    embedding_cosine_min: float = 0.99
    output_cosine_min: float | None = None
    argmax_agreement_min: float | None = None
    logit_max_abs: float | None = None

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "strict": {},
        "relaxed": {"embedding_cosine_mean": 0.99, "embedding_cosine_min": 0.95},
    }

    def __post_init__(self) -> None:
        for name in ("embedding_cosine_mean", "embedding_cosine_min", "output_cosine_min"):
            value = getattr(self, name)
            if value is not None and not -1.0 <= value <= 1.0:
                raise ConfigError(f"AccuracyBudget.{name} must be a cosine in [-1, 1], got {value}.")
        if self.argmax_agreement_min is not None and not 0.0 <= self.argmax_agreement_min <= 1.0:
            raise ConfigError(f"AccuracyBudget.argmax_agreement_min must be a fraction in [0, 1], "
                              f"got {self.argmax_agreement_min}.")
        if self.logit_max_abs is not None and not self.logit_max_abs >= 0.0:
            raise ConfigError(f"AccuracyBudget.logit_max_abs must be >= 0, got {self.logit_max_abs}.")

    def failures(self, candidate: CandidateAccuracy) -> tuple[str, ...]:
        """The statistics of `candidate` that miss this budget, as readable lines."""
        found = []
        if candidate.embedding_cosine_mean is not None:
            if candidate.embedding_cosine_mean < self.embedding_cosine_mean:
                found.append(f"embedding cosine mean {candidate.embedding_cosine_mean:.5f} < {self.embedding_cosine_mean}")
            if candidate.embedding_cosine_min < self.embedding_cosine_min:
                found.append(f"embedding cosine min {candidate.embedding_cosine_min:.5f} < {self.embedding_cosine_min}")
        if self.output_cosine_min is not None:
            for output, stats in candidate.outputs.items():
                if stats["cosine_min"] < self.output_cosine_min:
                    found.append(f"output {output!r} cosine min {stats['cosine_min']:.5f} < {self.output_cosine_min}")
        metrics = getattr(candidate, "task_metrics", None) or {}
        if self.argmax_agreement_min is not None:
            value = metrics.get("argmax_agreement")
            if value is None:
                found.append("argmax agreement was not measured (it needs task='classification' and a 'logits' "
                             f"output), but the budget asks for >= {self.argmax_agreement_min}")
            elif not value >= self.argmax_agreement_min:
                found.append(f"argmax agreement {value:.5f} < {self.argmax_agreement_min}")
        if self.logit_max_abs is not None:
            value = metrics.get("logit_max_abs")
            if value is None:
                found.append("logit max abs difference was not measured (it needs task='classification' and a "
                             f"'logits' output), but the budget asks for <= {self.logit_max_abs}")
            elif not value <= self.logit_max_abs:
                found.append(f"logit max abs difference {value:.5g} > {self.logit_max_abs}")
        return tuple(found)


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
                raise ConfigError("A 'simple' OutputCheck takes atol and/or rtol, not threshold.",
                                  fix="OutputCheck('simple', atol=1e-4, rtol=1e-4)")
            for name in ("atol", "rtol"):
                value = getattr(self, name)
                if value is not None and not value >= 0.0:
                    raise ConfigError(f"OutputCheck.{name} must be >= 0, got {value}.")
            return
        if self.atol is not None or self.rtol is not None:
            raise ConfigError(f"A {self.kind!r} OutputCheck takes threshold, not atol/rtol.",
                              fix=f"OutputCheck({self.kind!r}, threshold=...), or kind='simple' for tolerances")
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
        return (float(self.atol) if self.atol is not None else 0.0,
                float(self.rtol) if self.rtol is not None else 0.0)

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
        return {"output": self.output, "check": self.check.to_dict(), "passed": self.passed,
                "batches": self.batches, "batches_failed": self.batches_failed,
                "values": {k: _json_float(v) for k, v in self.values.items()}, "message": self.message}


@dataclass(frozen=True)
class CandidateAccuracy:
    """One candidate's statistics against the reference. Truthy when it meets the budget and passes its checks.

    Attributes:
        name: The candidate's name.
        path: Its ONNX file.
        outputs: Output name -> statistics over the evaluation batches: "cosine_mean" and "cosine_min"
            (Polygraphy's cosine similarity per batch), "max_abs" and "max_rel" (largest over batches),
            "mean_abs", "mean_rel", "median_abs", "median_rel" (the batches' values, averaged); where a check
            computed them: "quantile" with "quantile_abs" and "quantile_rel" (averaged), "l2_mean" and
            "l2_max", "snr_mean" and "snr_min" (dB; +inf when the outputs are identical).
        embedding_cosine_mean: Mean sentence-embedding cosine (task "embedding"; None otherwise).
        embedding_cosine_min: Worst sentence's embedding cosine (task "embedding"; None otherwise).
        per_sentence_cosine: Every sentence's embedding cosine, in feed order (task "embedding").
        failures: Why it misses: budget lines, then failed output checks and outputs that could not be compared.
        task_metrics: The task's metrics: "embedding_cosine_mean"/"_min"; "argmax_agreement", "logit_max_abs"
            and "argmax_disagreements" for classification; whatever a task function returned.
        checks: The result of every configured output check.
        error_histograms: Output name -> counts of |candidate - reference| per ERROR_HISTOGRAM_EDGES bin.
    """

    name: str
    path: Path
    outputs: dict[str, dict[str, float]]
    embedding_cosine_mean: float | None
    embedding_cosine_min: float | None
    per_sentence_cosine: tuple[float, ...] = ()
    failures: tuple[str, ...] = ()
    task_metrics: dict[str, float] = field(default_factory=dict)
    checks: tuple[OutputCheckResult, ...] = ()
    error_histograms: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path),
                "outputs": {o: {k: _json_float(v) for k, v in s.items()} for o, s in self.outputs.items()},
                "embedding_cosine_mean": self.embedding_cosine_mean,
                "embedding_cosine_min": self.embedding_cosine_min,
                "meets_budget": bool(self), "failures": list(self.failures),
                "task_metrics": {k: _json_float(v) for k, v in self.task_metrics.items()},
                "checks": [c.to_dict() for c in self.checks],
                "error_histograms": {o: list(c) for o, c in self.error_histograms.items()}}


@dataclass(frozen=True)
class ComparisonReport:
    """Every candidate's accuracy against the reference. Truthy when every candidate meets the budget.

    Attributes:
        reference: The reference model.
        budget: The budget each candidate was held to.
        candidates: Each candidate's accuracy, in the order given.
        samples: Evaluation samples (rows over every feed).
        notes: Things worth knowing that are not failures (e.g. an output a candidate lacks).
        task: The task metric computed: "embedding", "classification", "custom:<function name>" or None.
        output_checks: Output name -> the check applied to it (defaults resolved to each output).
    """

    reference: Path
    budget: AccuracyBudget
    candidates: tuple[CandidateAccuracy, ...]
    samples: int
    notes: tuple[str, ...] = field(default_factory=tuple)
    task: str | None = None
    output_checks: dict[str, OutputCheck] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return all(self.candidates)

    def __getitem__(self, name: str) -> CandidateAccuracy:
        for candidate in self.candidates:
            if candidate.name == name:
                return candidate
        raise KeyError(f"no candidate {name!r}; have {[c.name for c in self.candidates]}")

    def to_dict(self) -> dict[str, Any]:
        return {"reference": str(self.reference), "budget": self.budget.to_dict(), "samples": self.samples,
                "task": self.task, "output_checks": {o: c.to_dict() for o, c in self.output_checks.items()},
                "error_histogram_edges": list(ERROR_HISTOGRAM_EDGES), "notes": list(self.notes),
                "candidates": [c.to_dict() for c in self.candidates]}

    def metric_figure(self, kind: str = "box") -> Any:
        """Per-sentence embedding cosine vs the reference, per candidate, with the budget as lines (plotly).

        Args:
            kind: "box" (box with every sentence as a point, and the mean) or "violin".

        Raises:
            DataError: The comparison did not compute the embedding task metric.
        """
        if kind not in ("box", "violin"):
            raise ConfigError(f"metric_figure kind {kind!r} is not one of ['box', 'violin'].")
        go = require("plotly.graph_objects", purpose="Plotting accuracy")
        shown = [c for c in self.candidates if c.per_sentence_cosine]
        if not shown:
            raise DataError(
                "There are no per-sentence embedding cosines to plot: the comparison ran without the embedding "
                f"task (task: {self.task}).",
                fix="compare with task='embedding' (a last_hidden_state output and attention_mask feeds), or plot "
                "error_histogram_figure()",
            )
        figure = go.Figure()
        for candidate in shown:
            values = list(candidate.per_sentence_cosine)
            colour = "seagreen" if candidate else "indianred"
            common = {"y": values, "name": candidate.name, "customdata": list(range(len(values))),
                      "marker": {"color": colour}, "line": {"color": colour},
                      "hovertemplate": f"{html.escape(candidate.name)}<br>sentence %{{customdata}}: "
                                       "cosine %{y:.6f}<extra></extra>"}
            if kind == "violin":
                figure.add_trace(go.Violin(points="all", pointpos=0, jitter=0.3, box_visible=True,
                                           meanline_visible=True, **common))
            else:
                figure.add_trace(go.Box(boxpoints="all", pointpos=0, jitter=0.3, boxmean=True, **common))
        figure.add_hline(y=self.budget.embedding_cosine_mean, line_dash="dash", line_color="gray",
                         annotation_text=f"budget: mean >= {self.budget.embedding_cosine_mean}")
        figure.add_hline(y=self.budget.embedding_cosine_min, line_dash="dot", line_color="indianred",
                         annotation_text=f"budget: every sentence >= {self.budget.embedding_cosine_min}",
                         annotation_position="bottom right")
        figure.update_layout(title=f"Sentence-embedding cosine vs {self.reference.name} ({self.samples} sentences)",
                             xaxis_title="candidate", yaxis_title="cosine vs reference", showlegend=False)
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
        labels = ([f"< {edges[0]:.0e} (zeros included)"]
                  + [f"[{lo:.3g}, {hi:.3g})" for lo, hi in zip(edges[:-1], edges[1:])]
                  + [f">= {edges[-1]:g} (NaN included)"])
        figure = go.Figure()
        for candidate in self.candidates:
            if output not in candidate.error_histograms:
                continue
            counts = np.asarray(candidate.error_histograms[output], dtype=np.int64)
            fractions = counts / max(int(counts.sum()), 1)
            figure.add_scatter(
                x=[*lows.tolist(), float(top)], y=[*fractions.tolist(), float(fractions[-1])], mode="lines",
                line_shape="hv", name=candidate.name,
                customdata=[[label, int(n)] for label, n in zip(labels, counts)] + [[labels[-1], int(counts[-1])]],
                hovertemplate=(f"{html.escape(candidate.name)}<br>%{{customdata[0]}}: %{{customdata[1]}} elements "
                               "(%{y:.2%})<extra></extra>"))
        figure.update_layout(title=f"|candidate - reference| of output {output!r}", xaxis_type="log",
                             xaxis_title="absolute difference", yaxis_title="fraction of elements",
                             yaxis_tickformat=".0%")
        return figure

    def _repr_html_(self) -> str:
        rows = []
        for c in self.candidates:
            stats = next(iter(c.outputs.values()), None)
            cosine = "-" if stats is None else f"{stats['cosine_min']:.5f}"
            max_abs = "-" if stats is None else f"{stats['max_abs']:.3g}"
            verdict = "meets budget" if c else "misses: " + "; ".join(c.failures)
            rows.append(f"<tr><td>{html.escape(c.name)}</td><td>{html.escape(_task_cell(c))}</td><td>{cosine}</td>"
                        f"<td>{max_abs}</td><td>{html.escape(verdict)}</td></tr>")
        budget = []
        if self.task == "embedding" or any(c.embedding_cosine_mean is not None for c in self.candidates):
            budget.append(f"mean >= {self.budget.embedding_cosine_mean}, min >= {self.budget.embedding_cosine_min}")
        if self.budget.output_cosine_min is not None:
            budget.append(f"output cosine min >= {self.budget.output_cosine_min}")
        if self.budget.argmax_agreement_min is not None:
            budget.append(f"argmax agreement >= {self.budget.argmax_agreement_min}")
        if self.budget.logit_max_abs is not None:
            budget.append(f"logit max abs <= {self.budget.logit_max_abs}")
        budget += [f"{o!r} {c.describe()}" for o, c in self.output_checks.items()]
        return (f"<b>Accuracy</b> vs <code>{html.escape(self.reference.name)}</code> on {self.samples} samples, "
                f"task {html.escape(str(self.task))} (budget: {html.escape('; '.join(budget) or 'none')})"
                "<table><tr><th>candidate</th><th>task metric</th><th>output cosine min</th>"
                f"<th>max abs</th><th></th></tr>{''.join(rows)}</table>")


def mean_pooled_embeddings(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Sentence embeddings: mean of token vectors where attention_mask is 1, then L2-normalised."""
    mask = attention_mask.astype(np.float64)[..., None]
    summed = (hidden.astype(np.float64) * mask).sum(axis=1)
    pooled = summed / np.clip(mask.sum(axis=1), 1e-9, None)
    return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


TaskFunction = Callable[[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, np.ndarray]], Mapping[str, float]]


def compare_candidates(
    reference: str | os.PathLike[str],
    candidates: Mapping[str, str | os.PathLike[str]],
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    budget: AccuracyBudget = AccuracyBudget(),
    embedding_output: str | None = "last_hidden_state",
    threads: int | None = None,
    output_checks: Mapping[str, OutputCheck] | None = None,
    task: str | TaskFunction | None = "auto",
) -> ComparisonReport:
    """Run the reference and each candidate on `feeds` with Polygraphy's Comparator and compare them.

    Args:
        reference: The FP32 ONNX model.
        candidates: Name -> ONNX model path.
        feeds: Evaluation feed dicts (tokenized the way the model will be served, e.g. padded to a fixed length).
        budget: What each candidate must meet.
        embedding_output: The output holding token embeddings for the sentence-embedding metric (needs an
            `attention_mask` input); None for models that are not feature extractors.
        threads: onnxruntime intra-op threads for every session.
        output_checks: Output name -> OutputCheck, run by Polygraphy's compare function of that kind on every
            batch; the key "" is the default for every output not named. A failing check makes the candidate
            (and the report) falsy. Default: no checks (the statistics are recorded all the same).
        task: The task metric: "embedding" (sentence-embedding cosine of `embedding_output`), "classification"
            (argmax agreement and max |difference| of the `logits` output), a function
            `(reference_outputs, candidate_outputs, feeds) -> dict[str, float]` that gets every batch joined
            along axis 0 and whose metrics land in CandidateAccuracy.task_metrics, or None for raw outputs
            only. "auto": "embedding" when the reference has `embedding_output`, else "classification" when it
            has `logits`, else None.

    Returns:
        A report that is truthy when every candidate meets the budget and passes its output checks.
    """
    if not feeds:
        raise DataError("No evaluation inputs were given.", fix="tokenize some evaluation sentences first")
    if not candidates:
        raise ConfigError("No candidates to compare.", fix="pass candidates={'name': 'path.onnx', ...}")
    comparator = require("polygraphy.comparator", purpose="Comparing models")
    from workbench.engines.base import engine_for_path
    from workbench.engines.onnxruntime import OnnxRuntimeRunner
    from workbench.engines.polygraphy import as_polygraphy_runner

    names = list(candidates)
    if _REFERENCE in names:
        raise ConfigError("'reference' is reserved for the reference model; rename that candidate.")
    available = _output_names(reference)
    task_name = _resolve_task(task, embedding_output, available, feeds)
    checks = _resolve_checks(output_checks, available)

    runners = [as_polygraphy_runner(OnnxRuntimeRunner(reference, name=_REFERENCE, intra_op_threads=threads))]
    runners += [as_polygraphy_runner(engine_for_path(candidates[n]).runner(candidates[n], name=n, threads=threads))
                for n in names]
    funcs = _compare_funcs(comparator, checks)
    with _QuietPolygraphy():
        run_results = comparator.Comparator.run(runners, data_loader=[dict(f) for f in feeds])
        accuracy_results = comparator.Comparator.compare_accuracy(
            run_results, comparisons=[(0, i) for i in range(1, len(runners))], compare_func=list(funcs.values())
        )
    by_kind = dict(zip(funcs, accuracy_results))

    reference_outputs = run_results[_REFERENCE]
    joined_reference = _join(reference_outputs, "reference outputs") if callable(task) else None
    joined_feeds = _join(feeds, "feeds") if callable(task) else None
    results, notes = [], []
    for name in names:
        pair = (_REFERENCE, name)
        candidate_outputs = run_results[name]
        per_batch = {kind: result[pair] for kind, result in by_kind.items()}
        outputs, uncomparable, missing = _output_statistics(per_batch, reference_outputs, checks)
        notes += [f"candidate {name!r} has no output {o!r}; it was not compared" for o in missing]
        trouble = [line for o, line in uncomparable.items() if o not in checks]  # else its check says it
        check_results = tuple(_check_result(o, c, per_batch[c.kind]) for o, c in checks.items())
        task_metrics: dict[str, float] = {}
        per_sentence: list[float] = []
        if task_name == "embedding":
            assert embedding_output is not None
            if embedding_output in missing:
                trouble.append(f"the embedding output {embedding_output!r} is missing from the candidate")
            elif embedding_output in outputs:
                for feed, ref_iter, cand_iter in zip(feeds, reference_outputs, candidate_outputs):
                    ref = mean_pooled_embeddings(ref_iter[embedding_output], feed["attention_mask"])
                    cand = mean_pooled_embeddings(cand_iter[embedding_output], feed["attention_mask"])
                    per_sentence += np.sum(ref * cand, axis=1).tolist()
                task_metrics = {"embedding_cosine_mean": float(np.mean(per_sentence)),
                                "embedding_cosine_min": float(np.min(per_sentence))}
        elif task_name == "classification":
            if _LOGITS in outputs:
                task_metrics = _classification_metrics(feeds, reference_outputs, candidate_outputs)
            elif _LOGITS in missing:
                trouble.append(f"the output {_LOGITS!r} is missing from the candidate")
        elif callable(task):
            task_metrics = _custom_metrics(task, joined_reference, _join(candidate_outputs, "candidate outputs"),
                                           joined_feeds, name)
        candidate_accuracy = CandidateAccuracy(
            name=name,
            path=Path(candidates[name]),
            outputs=outputs,
            embedding_cosine_mean=task_metrics.get("embedding_cosine_mean") if task_name == "embedding" else None,
            embedding_cosine_min=task_metrics.get("embedding_cosine_min") if task_name == "embedding" else None,
            per_sentence_cosine=tuple(per_sentence),
            task_metrics=task_metrics,
            checks=check_results,
            error_histograms=_error_histograms(reference_outputs, candidate_outputs, outputs),
        )
        failures = (budget.failures(candidate_accuracy) + tuple(c.message for c in check_results if not c)
                    + tuple(trouble))
        results.append(replace(candidate_accuracy, failures=failures))
    samples = sum(int(next(iter(f.values())).shape[0]) for f in feeds)
    return ComparisonReport(reference=Path(reference), budget=budget, candidates=tuple(results), samples=samples,
                            notes=tuple(notes), task=task_name, output_checks=dict(checks))


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
    from workbench.engines.onnxruntime import OnnxRuntimeRunner
    from workbench.engines.polygraphy import as_polygraphy_runner

    comparator = require("polygraphy.comparator", purpose="Saving data for Polygraphy")
    pjson = require("polygraphy.json", purpose="Saving data for Polygraphy")
    inputs_path, outputs_path = Path(inputs_path), Path(outputs_path)
    if not feeds:
        raise DataError("No inputs were given to save.", fix="tokenize some evaluation sentences first")
    if inputs_path.resolve() == outputs_path.resolve():
        raise ConfigError(f"The inputs and the outputs would both be written to {inputs_path}.",
                          fix="pass two different paths")
    feed_list = []
    for index, feed in enumerate(feeds):
        if not isinstance(feed, Mapping) or not feed:
            raise DataError(f"Feed {index} is not a non-empty dict of input name -> array.")
        feed_list.append({str(k): np.asarray(v) for k, v in feed.items()})
    runner = as_polygraphy_runner(OnnxRuntimeRunner(reference, name=_REFERENCE, intra_op_threads=threads))
    with _QuietPolygraphy():
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
            with _QuietPolygraphy():
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


# ---------------------------------------------------------------------------------------------- internals


class _QuietPolygraphy:
    """Silence Polygraphy's logger (it logs every comparison and failing check; the report says it all)."""

    def __enter__(self) -> None:
        self.logger = require("polygraphy.logger", purpose="Comparing models").G_LOGGER
        self.previous = self.logger.module_severity
        self.logger.module_severity = self.logger.CRITICAL

    def __exit__(self, *exc: Any) -> None:
        self.logger.module_severity = self.previous


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _output_names(reference: str | os.PathLike[str]) -> list[str]:
    onnx = require("onnx", purpose="Reading the reference model's outputs")
    path = Path(reference)
    if not path.is_file():
        raise ModelSourceError(f"ONNX model {path} does not exist.", fix="export the model first")
    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


def _resolve_task(task: Any, embedding_output: str | None, available: list[str],
                  feeds: Sequence[Mapping[str, np.ndarray]]) -> str | None:
    if callable(task):
        return f"custom:{getattr(task, '__name__', type(task).__name__)}"
    if task is not None and task not in TASKS:
        raise ConfigError(f"task {task!r} is not one of {[*TASKS, None]} or a function.",
                          fix="task='embedding', 'classification', None, or f(reference, candidate, feeds) -> dict")
    if task == "auto":
        if embedding_output is not None and embedding_output in available:
            task = "embedding"
        elif embedding_output is not None and embedding_output != "last_hidden_state":
            raise DataError(f"The reference has no output {embedding_output!r} for the sentence-embedding metric.",
                            expected=f"one of {available}")
        elif _LOGITS in available:
            task = "classification"
        else:
            return None
    if task == "embedding":
        if embedding_output is None:
            raise ConfigError("task='embedding' needs embedding_output (the token-embedding output).")
        if embedding_output not in available:
            raise DataError(f"The reference has no output {embedding_output!r} for the sentence-embedding metric.",
                            expected=f"one of {available}")
        if "attention_mask" not in feeds[0]:
            raise DataError(
                "The sentence-embedding metric needs an 'attention_mask' input in the feeds.",
                fix="pass feeds from tokenize_batches(), or embedding_output=None / task=None for other models",
            )
    if task == "classification" and _LOGITS not in available:
        raise DataError(f"task='classification' needs a {_LOGITS!r} output.", expected=f"one of {available}")
    return task


def _resolve_checks(output_checks: Mapping[str, Any] | None, available: list[str]) -> dict[str, OutputCheck]:
    """Output name -> its OutputCheck, for every reference output a check applies to."""
    if not output_checks:
        return {}
    checks = {}
    for key, check in output_checks.items():
        if isinstance(check, Mapping):
            check = OutputCheck.from_dict(dict(check))
        if not isinstance(check, OutputCheck):
            raise ConfigError(f"output_checks[{key!r}] is a {type(check).__name__}, not an OutputCheck.",
                              fix="output_checks={'': OutputCheck('cosine', threshold=0.999)}")
        if key != "" and key not in available:
            raise ConfigError(f"output_checks names {key!r}, which is not an output of the reference.",
                              expected=f"'' (every output) or one of {available}")
        checks[key] = check
    return {o: checks.get(o, checks.get("")) for o in available if checks.get(o, checks.get("")) is not None}


def _compare_funcs(comparator: Any, checks: dict[str, OutputCheck]) -> dict[str, Any]:
    """Kind -> a Polygraphy compare function: cosine and simple always, l2 and snr when some check asks for
    them; thresholds are permissive for the outputs no check of that kind applies to."""

    def of_kind(kind: str) -> dict[str, OutputCheck]:
        return {o: c for o, c in checks.items() if c.kind == kind}

    cosine = of_kind("cosine")
    simple = of_kind("simple")
    funcs = {
        "cosine": comparator.CosineSimilarityCompareFunc(
            cosine_similarity_threshold={"": -1.0, **{o: c.limit for o, c in cosine.items()}}),
        "simple": comparator.SimpleCompareFunc(
            check_error_stat={"": "max", **{o: c.stat for o, c in simple.items()}},
            atol={"": math.inf, **{o: c.tolerances[0] for o, c in simple.items()}},
            rtol={"": math.inf, **{o: c.tolerances[1] for o, c in simple.items()}},
            error_quantile={"": 0.99, **{o: c.quantile for o, c in simple.items()}}),
    }
    for kind, make, argument, permissive in (("l2", comparator.L2CompareFunc, "l2_threshold", math.inf),
                                             ("snr", comparator.SnrCompareFunc, "snr_threshold", -math.inf)):
        wanted = of_kind(kind)
        if wanted:  # computed for every output (cheap), checked only where a check applies
            funcs[kind] = make(**{argument: {"": permissive, **{o: c.limit for o, c in wanted.items()}}})
    return funcs


def _is_result(value: Any) -> bool:
    return value is not None and not isinstance(value, bool)


def _output_statistics(
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
        cosines = [it.get(output) for it in per_batch["cosine"]]
        errors = [it.get(output) for it in per_batch["simple"]]
        if all(c is None for c in cosines):
            missing.append(output)
            continue
        if not all(_is_result(c) for c in cosines) or not all(_is_result(e) for e in errors):
            bad = sum(not _is_result(c) for c in cosines)
            trouble[output] = (f"output {output!r} could not be compared in {bad}/{len(cosines)} batches "
                               "(missing from the candidate or of a different shape)")
            continue
        stats = {"cosine_mean": float(np.mean([c.cosine_similarity for c in cosines])),
                 "cosine_min": float(np.min([c.cosine_similarity for c in cosines])),
                 "max_abs": float(np.max([e.max_absdiff for e in errors])),
                 "mean_abs": float(np.mean([e.mean_absdiff for e in errors])),
                 "max_rel": float(np.max([e.max_reldiff for e in errors])),
                 "mean_rel": float(np.mean([e.mean_reldiff for e in errors])),
                 "median_abs": float(np.mean([e.median_absdiff for e in errors])),
                 "median_rel": float(np.mean([e.median_reldiff for e in errors]))}
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


def _check_result(output: str, check: OutputCheck, per_batch: list[Mapping[str, Any]]) -> OutputCheckResult:
    """Polygraphy's per-batch verdicts of one check of one output, summed up in a readable line."""
    found = [it.get(output) for it in per_batch]
    results = [r for r in found if _is_result(r)]
    failed = sum(1 for r in found if not _is_result(r) or not bool(r))
    batches = len(found)
    if len(results) < batches:
        return OutputCheckResult(output, check, False, batches, failed, {},
                                 f"output {output!r} could not be compared in {batches - len(results)}/{batches} "
                                 f"batches (missing from the candidate or of a different shape), so its check "
                                 f"{check.describe()} fails")
    if check.kind == "simple":
        quantile = check.stat == "quantile"
        values = {f"{check.stat}_absdiff": max(float(getattr(r, f"{check.stat}_absdiff")) for r in results),
                  f"{check.stat}_reldiff": max(float(getattr(r, f"{check.stat}_reldiff")) for r in results)}
        atol, rtol = check.tolerances
        parts = []
        if check.atol is not None or check.rtol is None:
            parts.append((check._statistic("abs"), values[f"{check.stat}_absdiff"], "atol", atol))
        if check.rtol is not None or check.atol is None:
            parts.append((check._statistic("rel"), values[f"{check.stat}_reldiff"], "rtol", rtol))
        join = " and " if failed else " or "
        statement = join.join(f"{s} {v:.5g} {'<=' if v <= limit else '>'} {label} {limit:g}"
                              for s, v, label, limit in parts)
        if quantile:
            values["quantile"] = check.quantile
    else:
        field_name, label, unit, higher = {"cosine": ("cosine_similarity", "cosine similarity", "", True),
                                           "l2": ("l2_norm", "L2 norm", "", False),
                                           "snr": ("snr", "SNR", " dB", True)}[check.kind]
        measured = [float(getattr(r, field_name)) for r in results]
        worst = min(measured) if higher else max(measured)
        values = {field_name: worst}
        comparison = (("<" if higher else ">") if failed else (">=" if higher else "<="))
        shown = f"{worst:.6f}" if check.kind == "cosine" else f"{worst:.6g}"
        statement = f"{label} {shown}{unit} {comparison} {check.limit:g}{unit}"
    where = f"(worst batch; {failed}/{batches} batches fail)" if failed else f"(all {batches} batches)"
    return OutputCheckResult(output, check, failed == 0, batches, failed, values,
                             f"output {output!r} {statement} {where}")


def _error_histograms(reference_outputs: Sequence[Mapping[str, Any]], candidate_outputs: Sequence[Mapping[str, Any]],
                      compared: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
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


def _classification_metrics(feeds: Sequence[Mapping[str, np.ndarray]], reference_outputs: Sequence[Mapping[str, Any]],
                            candidate_outputs: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Argmax agreement over samples (positions where attention_mask is 1, for per-token logits) and the
    largest |logit difference|."""
    agree = total = 0
    largest = 0.0
    for feed, ref_iter, cand_iter in zip(feeds, reference_outputs, candidate_outputs):
        ref = np.asarray(ref_iter[_LOGITS], dtype=np.float64)
        cand = np.asarray(cand_iter[_LOGITS], dtype=np.float64)
        same = np.argmax(ref, axis=-1) == np.argmax(cand, axis=-1)
        mask = feed.get("attention_mask")
        if ref.ndim == 3 and mask is not None and np.shape(mask) == same.shape:
            same = same[np.asarray(mask).astype(bool)]
        agree += int(np.count_nonzero(same))
        total += int(same.size)
        if ref.size:
            largest = max(largest, float(np.max(np.abs(ref - cand))))
    return {"argmax_agreement": agree / total if total else 1.0, "logit_max_abs": largest,
            "argmax_disagreements": float(total - agree)}


def _join(batches: Sequence[Mapping[str, Any]], what: str) -> dict[str, np.ndarray]:
    """Every batch's arrays joined along axis 0, for a task function."""
    keys = list(batches[0].keys())
    joined = {}
    for key in keys:
        if any(key not in b for b in batches):
            raise DataError(f"{key!r} is missing from some batches of the {what}.")
        arrays = [np.asarray(b[key]) for b in batches]
        try:
            joined[key] = arrays[0] if len(arrays) == 1 else np.concatenate(arrays, axis=0)
        except ValueError as exc:
            raise DataError(
                f"A task function gets the {what} of every batch joined along axis 0, but {key!r} has shapes "
                f"{sorted({a.shape for a in arrays})} that do not join.",
                fix="tokenize with padding='max_length' so that every batch has one sequence length",
            ) from exc
    return joined


def _custom_metrics(task: Callable[..., Any], reference: Any, candidate: dict[str, np.ndarray], feeds: Any,
                    name: str) -> dict[str, float]:
    label = getattr(task, "__name__", type(task).__name__)
    try:
        returned = task(dict(reference), candidate, dict(feeds))
    except Exception as exc:
        exc.add_note(f"(raised by the task function {label} for candidate {name!r})")
        raise
    if not isinstance(returned, Mapping):
        raise ConfigError(f"The task function {label} returned a {type(returned).__name__}, not a dict of "
                          "metric name -> number.")
    metrics = {}
    for key, value in returned.items():
        try:
            metrics[str(key)] = float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"The task function {label} returned {key!r}: {value!r}, which is not a number.") from exc
    return metrics


def _task_cell(candidate: CandidateAccuracy) -> str:
    if candidate.embedding_cosine_mean is not None:
        return f"{candidate.embedding_cosine_mean:.5f} / {candidate.embedding_cosine_min:.5f}"
    metrics = candidate.task_metrics
    if "argmax_agreement" in metrics:
        return f"argmax agreement {metrics['argmax_agreement']:.4f}, max |logit diff| {metrics['logit_max_abs']:.3g}"
    return ", ".join(f"{k} {v:.5g}" for k, v in metrics.items()) or "-"
