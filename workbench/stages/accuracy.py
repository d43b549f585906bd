"""Accuracy stage: compare candidates with the FP32 reference through Polygraphy's Comparator.

Per output: Polygraphy's cosine similarity and error statistics. On top, the task metric for embedding models:
the cosine between attention-mask-aware mean-pooled, L2-normalised sentence embeddings, per sentence.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from workbench._lazy import require
from workbench.config import StageConfig
from workbench.errors import ConfigError, DataError


@dataclass(frozen=True)
class AccuracyBudget(StageConfig):
    """What must hold for a candidate to be shippable.

    Attributes:
        embedding_cosine_mean: Minimum mean sentence-embedding cosine vs the reference.
        embedding_cosine_min: Minimum worst-sentence embedding cosine vs the reference.
        output_cosine_min: Optional minimum Polygraphy cosine of each raw output, per batch (None: not checked).
            Absolute tolerances are deliberately not part of the default budget: INT8 on MiniLM shows max
            abs errors of 5-6 on outlier hidden dimensions even at 0.99 embedding cosine.
    """

    embedding_cosine_mean: float = 0.995
    embedding_cosine_min: float = 0.99
    output_cosine_min: float | None = None

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "strict": {},
        "relaxed": {"embedding_cosine_mean": 0.99, "embedding_cosine_min": 0.95},
    }

    def __post_init__(self) -> None:
        for name in ("embedding_cosine_mean", "embedding_cosine_min", "output_cosine_min"):
            value = getattr(self, name)
            if value is not None and not -1.0 <= value <= 1.0:
                raise ConfigError(f"AccuracyBudget.{name} must be a cosine in [-1, 1], got {value}.")

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
        return tuple(found)


@dataclass(frozen=True)
class CandidateAccuracy:
    """One candidate's statistics against the reference. Truthy when it meets the budget."""

    name: str
    path: Path
    outputs: dict[str, dict[str, float]]
    embedding_cosine_mean: float | None
    embedding_cosine_min: float | None
    per_sentence_cosine: tuple[float, ...] = ()
    failures: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "path": str(self.path), "outputs": self.outputs,
                "embedding_cosine_mean": self.embedding_cosine_mean,
                "embedding_cosine_min": self.embedding_cosine_min,
                "meets_budget": bool(self), "failures": list(self.failures)}


@dataclass(frozen=True)
class ComparisonReport:
    """Every candidate's accuracy against the reference. Truthy when every candidate meets the budget."""

    reference: Path
    budget: AccuracyBudget
    candidates: tuple[CandidateAccuracy, ...]
    samples: int
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __bool__(self) -> bool:
        return all(self.candidates)

    def __getitem__(self, name: str) -> CandidateAccuracy:
        for candidate in self.candidates:
            if candidate.name == name:
                return candidate
        raise KeyError(f"no candidate {name!r}; have {[c.name for c in self.candidates]}")

    def to_dict(self) -> dict[str, Any]:
        return {"reference": str(self.reference), "budget": self.budget.to_dict(), "samples": self.samples,
                "candidates": [c.to_dict() for c in self.candidates]}

    def _repr_html_(self) -> str:
        rows = []
        for c in self.candidates:
            stats = next(iter(c.outputs.values()))
            emb = ("-" if c.embedding_cosine_mean is None
                   else f"{c.embedding_cosine_mean:.5f} / {c.embedding_cosine_min:.5f}")
            verdict = "meets budget" if c else "misses: " + "; ".join(c.failures)
            rows.append(f"<tr><td>{c.name}</td><td>{emb}</td><td>{stats['cosine_min']:.5f}</td>"
                        f"<td>{stats['max_abs']:.3g}</td><td>{verdict}</td></tr>")
        return (f"<b>Accuracy</b> vs <code>{self.reference.name}</code> on {self.samples} sentences "
                f"(budget: mean >= {self.budget.embedding_cosine_mean}, min >= {self.budget.embedding_cosine_min})"
                "<table><tr><th>candidate</th><th>embedding cosine mean / min</th><th>output cosine min</th>"
                f"<th>max abs</th><th></th></tr>{''.join(rows)}</table>")


def mean_pooled_embeddings(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Sentence embeddings: mean of token vectors where attention_mask is 1, then L2-normalised."""
    mask = attention_mask.astype(np.float64)[..., None]
    summed = (hidden.astype(np.float64) * mask).sum(axis=1)
    pooled = summed / np.clip(mask.sum(axis=1), 1e-9, None)
    return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


def compare_candidates(
    reference: str | os.PathLike[str],
    candidates: Mapping[str, str | os.PathLike[str]],
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    budget: AccuracyBudget = AccuracyBudget(),
    embedding_output: str | None = "last_hidden_state",
    threads: int | None = None,
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

    Returns:
        A report that is truthy when every candidate meets the budget.
    """
    if not feeds:
        raise DataError("No evaluation inputs were given.", fix="tokenize some evaluation sentences first")
    if not candidates:
        raise ConfigError("No candidates to compare.", fix="pass candidates={'name': 'path.onnx', ...}")
    comparator = require("polygraphy.comparator", purpose="Comparing models")
    logger = require("polygraphy.logger", purpose="Comparing models").G_LOGGER
    from workbench.backends.onnxrt import OnnxRuntimeRunner
    from workbench.backends.polygraphy_adapter import as_polygraphy_runner

    if embedding_output is not None and "attention_mask" not in feeds[0]:
        raise DataError(
            "The sentence-embedding metric needs an 'attention_mask' input in the feeds.",
            fix="pass feeds from tokenize_batches(), or embedding_output=None for other models",
        )
    reference_name = "reference"
    names = list(candidates)
    if reference_name in names:
        raise ConfigError("'reference' is reserved for the reference model; rename that candidate.")
    runners = [as_polygraphy_runner(OnnxRuntimeRunner(reference, name=reference_name, intra_op_threads=threads))]
    runners += [as_polygraphy_runner(OnnxRuntimeRunner(candidates[n], name=n, intra_op_threads=threads)) for n in names]

    previous = logger.module_severity
    logger.module_severity = logger.ERROR  # Polygraphy logs every comparison; the report says it all
    try:
        run_results = comparator.Comparator.run(runners, data_loader=[dict(f) for f in feeds])
        cosine_func = comparator.CosineSimilarityCompareFunc(
            cosine_similarity_threshold=budget.output_cosine_min if budget.output_cosine_min is not None else -1.0
        )
        error_func = comparator.SimpleCompareFunc(check_error_stat="max", atol=float("inf"), rtol=float("inf"))
        comparisons = [(0, i) for i in range(1, len(runners))]
        cosine_results, error_results = comparator.Comparator.compare_accuracy(
            run_results, comparisons=comparisons, compare_func=[cosine_func, error_func]
        )
    finally:
        logger.module_severity = previous

    reference_outputs = run_results[reference_name]
    results = []
    for name in names:
        pair = (reference_name, name)
        outputs: dict[str, dict[str, float]] = {}
        for output in cosine_results[pair][0]:
            cosines = [float(it[output].cosine_similarity) for it in cosine_results[pair]]
            max_abs = [float(it[output].max_absdiff) for it in error_results[pair]]
            mean_abs = [float(it[output].mean_absdiff) for it in error_results[pair]]
            outputs[output] = {"cosine_mean": float(np.mean(cosines)), "cosine_min": float(np.min(cosines)),
                               "max_abs": float(np.max(max_abs)), "mean_abs": float(np.mean(mean_abs))}
        per_sentence: list[float] = []
        if embedding_output is not None:
            for feed, ref_iter, cand_iter in zip(feeds, reference_outputs, run_results[name]):
                ref = mean_pooled_embeddings(ref_iter[embedding_output], feed["attention_mask"])
                cand = mean_pooled_embeddings(cand_iter[embedding_output], feed["attention_mask"])
                per_sentence += np.sum(ref * cand, axis=1).tolist()
        accuracy = CandidateAccuracy(
            name=name,
            path=Path(candidates[name]),
            outputs=outputs,
            embedding_cosine_mean=float(np.mean(per_sentence)) if per_sentence else None,
            embedding_cosine_min=float(np.min(per_sentence)) if per_sentence else None,
            per_sentence_cosine=tuple(per_sentence),
        )
        results.append(_with_failures(accuracy, budget))
    samples = sum(int(next(iter(f.values())).shape[0]) for f in feeds)
    return ComparisonReport(reference=Path(reference), budget=budget, candidates=tuple(results), samples=samples)


def _with_failures(candidate: CandidateAccuracy, budget: AccuracyBudget) -> CandidateAccuracy:
    from dataclasses import replace

    return replace(candidate, failures=budget.failures(candidate))
