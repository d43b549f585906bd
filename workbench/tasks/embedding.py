"""Sentence embeddings (feature extraction): a base encoder whose mean-pooled token vectors are the embedding."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from workbench.errors import DataError
from workbench.tasks.base import (
    Budget,
    Outputs,
    PostProcessing,
    Task,
    TaskMetrics,
    TensorSpec,
    budget_field,
    register_task,
)

HIDDEN_OUTPUT = "last_hidden_state"


def mean_pooled_embeddings(hidden: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Sentence embeddings: mean of token vectors where attention_mask is 1, then L2-normalised (float64)."""
    mask = np.asarray(attention_mask).astype(np.float64)[..., None]
    summed = (np.asarray(hidden).astype(np.float64) * mask).sum(axis=1)
    pooled = summed / np.clip(mask.sum(axis=1), 1e-9, None)
    return pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)


@dataclass(frozen=True)
class EmbeddingBudget(Budget):
    """What a sentence-embedding candidate must meet (the cosine of its embeddings with the reference's).

    Attributes:
        embedding_cosine_mean: Minimum mean sentence-embedding cosine vs the reference.
        embedding_cosine_min: Minimum worst-sentence embedding cosine vs the reference.
        output_cosine_min: Optional minimum Polygraphy cosine of each raw output, per batch (None: not checked).
            Absolute tolerances are deliberately not part of the budget: INT8 on MiniLM shows max abs errors of
            5-6 on outlier hidden dimensions even at 0.99 embedding cosine.
    """

    task: ClassVar[str] = "feature-extraction"
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "strict": {},
        "relaxed": {"embedding_cosine_mean": 0.99, "embedding_cosine_min": 0.95},
    }

    embedding_cosine_mean: float = budget_field(
        0.995, ">=", metric="embedding_cosine_mean", label="embedding cosine mean", range=(-1.0, 1.0)
    )
    embedding_cosine_min: float = budget_field(
        0.99, ">=", metric="embedding_cosine_min", label="embedding cosine min", range=(-1.0, 1.0)
    )
    output_cosine_min: float | None = budget_field(
        None, ">=", metric="output_cosine_min", label="output cosine min", range=(-1.0, 1.0)
    )


#: The embedding task's budget under the name the workbench first gave it (every task has its own Budget type).
AccuracyBudget = EmbeddingBudget


def _hidden_output(outputs: Mapping[str, np.ndarray]) -> str:
    """last_hidden_state, else the only [batch, sequence, hidden] output."""
    if HIDDEN_OUTPUT in outputs:
        return HIDDEN_OUTPUT
    return next(name for name, value in outputs.items() if np.ndim(value) == 3)


def _is_base_model(architecture: str) -> bool:
    # "BertModel", "MPNetModel": a bare encoder; "GPT2LMHeadModel" and "*For*" carry a head
    return architecture.endswith("Model") and "For" not in architecture and not architecture.endswith("HeadModel")


@register_task
class FeatureExtraction(Task):
    """Sentence embeddings: attention-mask-aware mean of `last_hidden_state`, L2-normalised.

    Metric: the cosine between a candidate's and the reference's sentence embeddings, per sentence.
    """

    name = "feature-extraction"
    title = "Sentence embeddings"
    architectures = ("Model",)
    auto_model = "AutoModel"
    outputs = (HIDDEN_OUTPUT,)
    output_ranks = {HIDDEN_OUTPUT: 3}
    budget_type = EmbeddingBudget
    primary_cosine = ("embedding_cosine_mean", "embedding_cosine_min")
    metric_names = ("embedding_cosine_mean", "embedding_cosine_min")
    serving_output = "EMBEDDING"

    def detect(self, config: Mapping[str, Any]) -> bool:
        architectures = config.get("architectures") or []
        return not architectures or all(_is_base_model(str(a)) for a in architectures)

    def check_feeds(self, feeds: Sequence[Outputs]) -> None:
        if "attention_mask" not in feeds[0]:
            raise DataError(
                "The sentence-embedding metric needs an 'attention_mask' input in the feeds (mean pooling leaves "
                "padding out).",
                fix="pass feeds from tokenize_batches() (or the task's encode()), which include the attention mask",
            )

    def accepts_outputs(self, outputs: Mapping[str, int | None]) -> bool:
        # last_hidden_state, or one token-level ([batch, sequence, hidden]) output and no classifier logits
        if HIDDEN_OUTPUT in outputs:
            return outputs[HIDDEN_OUTPUT] in (None, 3)
        return "logits" not in outputs and sum(1 for rank in outputs.values() if rank == 3) == 1

    def metrics(
        self,
        reference: Sequence[Outputs],
        candidate: Sequence[Outputs],
        feeds: Sequence[Outputs],
        meta: Sequence[Any] | None = None,
    ) -> TaskMetrics:
        per_sentence: list[float] = []
        hidden = _hidden_output(reference[0])
        for feed, ref, cand in zip(feeds, reference, candidate):
            mask = feed["attention_mask"]
            a = mean_pooled_embeddings(ref[hidden], mask)
            b = mean_pooled_embeddings(cand[hidden], mask)
            per_sentence += np.sum(a * b, axis=1).tolist()
        values = {
            "embedding_cosine_mean": float(np.mean(per_sentence)),
            "embedding_cosine_min": float(np.min(per_sentence)),
        }
        return TaskMetrics(values=values, per_sample=tuple(per_sentence))

    def postprocessing(
        self, *, output_names: Sequence[str], output_dims: Mapping[str, Sequence[int]], model_config: Mapping[str, Any]
    ) -> PostProcessing:
        hidden = (
            HIDDEN_OUTPUT
            if HIDDEN_OUTPUT in output_names
            else next((n for n in output_names if len(output_dims.get(n, ())) == 2), output_names[0])
        )
        width = int(output_dims[hidden][-1])
        return PostProcessing(
            source="pooling_model.py",
            suffix="_pooling",
            model_inputs=(hidden,),
            extra_inputs=("attention_mask",),
            outputs=(TensorSpec("EMBEDDING", "TYPE_FP32", (width,)),),
            parameters={"normalize": "true"},
        )
