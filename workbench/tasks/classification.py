"""Sequence classification (`*ForSequenceClassification`): one label per text, from the `logits` output."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from workbench.tasks.base import (
    Budget,
    Outputs,
    PostProcessing,
    Task,
    TaskMetrics,
    TensorSpec,
    budget_field,
    cosine_rows,
    register_task,
)

LOGITS = "logits"


def probabilities(logits: np.ndarray, problem_type: str = "single_label_classification") -> np.ndarray:
    """Class probabilities from logits, as transformers' text-classification pipeline computes them: softmax for
    single-label models, sigmoid for multi-label ones, the raw score for regression (float64)."""
    x = np.asarray(logits, dtype=np.float64)
    if problem_type == "multi_label_classification":
        return 1.0 / (1.0 + np.exp(-x))
    if problem_type == "regression" or x.shape[-1] == 1:
        return x
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@dataclass(frozen=True)
class ClassificationBudget(Budget):
    """What a text-classification candidate must meet against the FP32 reference.

    Attributes:
        argmax_agreement_min: Minimum fraction of texts whose predicted class matches the reference's.
        logits_cosine_mean: Minimum mean cosine of the logits vectors, per text.
        logits_cosine_min: Minimum worst-text logits cosine.
        top_probability_change_max: Optional maximum change of the probability of the reference's top class.
        logit_max_abs: Optional maximum |candidate - reference| over every logit.
        output_cosine_min: Optional minimum raw-output cosine per batch.
    """

    task: ClassVar[str] = "text-classification"
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "strict": {},
        "relaxed": {"argmax_agreement_min": 0.98, "logits_cosine_mean": 0.99, "logits_cosine_min": 0.95},
    }

    argmax_agreement_min: float = budget_field(
        0.99, ">=", metric="argmax_agreement", label="argmax agreement", range=(0.0, 1.0)
    )
    logits_cosine_mean: float = budget_field(
        0.995, ">=", metric="logits_cosine_mean", label="logits cosine mean", range=(-1.0, 1.0)
    )
    logits_cosine_min: float = budget_field(
        0.98, ">=", metric="logits_cosine_min", label="logits cosine min", range=(-1.0, 1.0)
    )
    top_probability_change_max: float | None = budget_field(
        None, "<=", metric="top_probability_change_max", label="top-class probability change", range=(0.0, 1.0)
    )
    logit_max_abs: float | None = budget_field(
        None, "<=", metric="logit_max_abs", label="logit max abs difference", range=(0.0, float("inf"))
    )
    output_cosine_min: float | None = budget_field(
        None, ">=", metric="output_cosine_min", label="output cosine min", range=(-1.0, 1.0)
    )


@register_task
class TextClassification(Task):
    """One label per text: the argmax of `logits`, named by the checkpoint's id2label.

    Metrics: argmax agreement with the reference, the cosine of the logits vectors (mean and min over texts),
    the largest change of the reference's top-class probability, and the largest |logit difference|.
    """

    name = "text-classification"
    title = "Text classification"
    architectures = ("ForSequenceClassification",)
    auto_model = "AutoModelForSequenceClassification"
    outputs = (LOGITS,)
    output_ranks = {LOGITS: 2}
    budget_type = ClassificationBudget
    primary_cosine = ("logits_cosine_mean", "logits_cosine_min")
    metric_names = (
        "argmax_agreement",
        "logits_cosine_mean",
        "logits_cosine_min",
        "top_probability_change_max",
        "logit_max_abs",
    )
    serving_output = "LABEL"

    def metrics(
        self,
        reference: Sequence[Outputs],
        candidate: Sequence[Outputs],
        feeds: Sequence[Outputs],
        meta: Sequence[Any] | None = None,
    ) -> TaskMetrics:
        ref = np.concatenate([np.asarray(r[LOGITS], dtype=np.float64) for r in reference])
        cand = np.concatenate([np.asarray(c[LOGITS], dtype=np.float64) for c in candidate])
        ref2, cand2 = ref.reshape(len(ref), -1), cand.reshape(len(cand), -1)
        same = np.argmax(ref2, axis=-1) == np.argmax(cand2, axis=-1)
        cosines = cosine_rows(ref2, cand2)
        top = np.argmax(ref2, axis=-1)
        rows = np.arange(len(ref2))
        change = np.abs(probabilities(ref2)[rows, top] - probabilities(cand2)[rows, top])
        values = {
            "argmax_agreement": float(np.mean(same)) if len(same) else 1.0,
            "logits_cosine_mean": float(np.mean(cosines)),
            "logits_cosine_min": float(np.min(cosines)),
            "top_probability_change_max": float(np.max(change, initial=0.0)),
            "logit_max_abs": float(np.max(np.abs(ref2 - cand2), initial=0.0)),
            "argmax_disagreements": float(np.count_nonzero(~same)),
        }
        return TaskMetrics(
            values=values,
            per_sample=tuple(float(c) for c in cosines),
            details={"disagreeing_samples": [int(i) for i in np.flatnonzero(~same)]},
        )

    def postprocessing(
        self, *, output_names: Sequence[str], output_dims: Mapping[str, Sequence[int]], model_config: Mapping[str, Any]
    ) -> PostProcessing:
        width = int(output_dims[LOGITS][-1])
        id2label = model_config.get("id2label") or {}
        labels = [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(width)]
        problem_type = str(model_config.get("problem_type") or "single_label_classification")
        return PostProcessing(
            source="labels_model.py",
            suffix="_labels",
            model_inputs=(LOGITS,),
            extra_inputs=(),
            outputs=(TensorSpec("LABEL", "TYPE_STRING", (1,)), TensorSpec("PROBABILITIES", "TYPE_FP32", (width,))),
            parameters={"labels": json.dumps(labels), "problem_type": problem_type},
        )
