"""Batch invariance: does a served model give a text the same embedding whatever it is batched with?

A production embedding service that returns a different vector for the same text depending on traffic is a
bug users report. FP32 models are invariant within float noise when padding is masked; dynamically quantized
(INT8) models are not: their activation scales are computed over the whole input tensor, so batch-mates and
padding change a text's result (measured on MiniLM with fixed padding: min cosine 0.961, batched vs alone).

`batch_invariance` measures it under the padding policy that is served (workbench.triton.padding): every text
alone (its own engine call, padded as the policy pads it alone) against the same text inside dynamic batches
of `batch_size` texts from a shuffled mix of all of them (split into engine calls as the policy splits them),
and reports the minimum and mean cosine of the sentence embeddings over the texts.
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench.engines.base import Candidate
from workbench.errors import ConfigError, DataError
from workbench.triton.padding import PaddingPolicy

#: The rule this module's numbers feed (see `is_batch_invariant`): below this minimum cosine, a candidate's
#: output depends visibly on its batch-mates.
BATCH_INVARIANCE_MIN = 0.999


@dataclass(frozen=True)
class InvarianceResult:
    """One candidate's batch invariance under one padding policy.

    Attributes:
        name: The candidate.
        path: Its ONNX file.
        policy: The padding policy it was measured under.
        batch_size: Texts per dynamic batch.
        cosine_min: The lowest cosine between a text's embedding alone and inside a batch.
        cosine_mean: Their mean over the texts.
        per_text: Each text's cosine, in the order the texts were given.
        worst_text: The text with the lowest cosine.
    """

    name: str
    path: Path
    policy: PaddingPolicy
    batch_size: int
    cosine_min: float
    cosine_mean: float
    per_text: tuple[float, ...]
    worst_text: str

    def is_invariant(self, minimum: float = BATCH_INVARIANCE_MIN) -> bool:
        return self.cosine_min >= minimum

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "policy": self.policy.to_dict(),
            "batch_size": self.batch_size,
            "cosine_min": self.cosine_min,
            "cosine_mean": self.cosine_mean,
            "worst_text": self.worst_text,
            "per_text": list(self.per_text),
        }

    def _repr_html_(self) -> str:
        return (
            f"<b>Batch invariance</b> of <code>{html.escape(self.name)}</code> "
            f"({html.escape(self.policy.describe())}, "
            f"batches of {self.batch_size}): min cosine {self.cosine_min:.6f}, mean {self.cosine_mean:.6f}; "
            f"worst: {html.escape(self.worst_text[:80])!r}"
        )


def is_batch_invariant(result: InvarianceResult, *, batching: bool, minimum: float = BATCH_INVARIANCE_MIN) -> bool:
    """The recommended choice rule: when the deployment batches (dynamic batching with max_batch_size > 1),
    a candidate whose batch-invariance minimum cosine is below `minimum` is not chosen; without batching every
    request is served alone and the figure does not apply."""
    return not batching or result.cosine_min >= minimum


def _embeddings(runner: Any, feed: Mapping[str, np.ndarray], output: str) -> np.ndarray:
    """One vector per text: token outputs (batch, tokens, width) mean-pooled where attention_mask is 1; per-text
    outputs (batch, width), such as a classifier's logits, as they are."""
    from workbench.stages.accuracy.compare import mean_pooled_embeddings

    values = np.asarray(runner.infer(feed)[output])
    if values.ndim == 2:
        return values.astype(np.float64)
    return mean_pooled_embeddings(values, feed["attention_mask"])


def batch_invariance(
    model_path: str | os.PathLike[str] | Candidate,
    tokenizer: Any,
    texts: Sequence[str],
    policy: PaddingPolicy,
    *,
    batch_size: int = 8,
    name: str | None = None,
    threads: int | None = None,
    embedding_output: str = "last_hidden_state",
    seed: int = 0,
) -> InvarianceResult:
    """Each text alone vs inside shuffled dynamic batches of `batch_size`, under `policy`: cosine of embeddings.

    Args:
        model_path: The candidate (a Candidate, run by its engine) or its model file (run by the engine that loads
            such files: ONNX Runtime for .onnx, OpenVINO for .xml), with an `attention_mask` input and a
            token-embedding output.
        tokenizer: The model's Hugging Face tokenizer.
        texts: The evaluation texts (at least 2, so that a batch has batch-mates).
        policy: The served padding policy (`TritonEnsembleResult.padding`, or the one to be exported).
        batch_size: Texts per dynamic batch (the served max_batch_size, for example).
        name: Name in reports; default the file's stem.
        threads: The engine's threads.
        embedding_output: The output compared: a token-embedding output (mean-pooled where attention_mask is 1),
            or a per-text output such as "logits" (compared as it is).
        seed: Seed of the shuffle that mixes texts of different lengths into batches.

    Raises:
        DataError: Fewer than 2 texts.
        ConfigError: batch_size below 2, or a policy that is not a PaddingPolicy.
    """
    from workbench.engines.base import engine_for_path, get_engine

    texts = [str(t) for t in texts]
    if len(texts) < 2:
        raise DataError(
            f"Batch invariance needs at least 2 texts, got {len(texts)}.", fix="pass the evaluation sentences"
        )
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 2:
        raise ConfigError(f"batch_size must be an integer >= 2 (a batch with batch-mates), got {batch_size!r}.")
    if not isinstance(policy, PaddingPolicy):
        raise ConfigError(
            f"policy must be a PaddingPolicy, not {type(policy).__name__}.",
            fix="pass the served policy, e.g. TritonEnsembleResult.padding or PaddingPolicy()",
        )
    engine = get_engine(model_path.engine) if isinstance(model_path, Candidate) else engine_for_path(model_path)
    path = Path(model_path.path if isinstance(model_path, Candidate) else model_path)
    order = np.random.default_rng(seed).permutation(len(texts))
    mixed = [texts[i] for i in order]  # arrival order: a mix of lengths
    runner: Any = engine.runner(path, name=name, threads=threads)
    with runner:
        inputs = list(runner.input_specs())
        if "attention_mask" not in inputs:
            raise ConfigError(
                f"{path} has no attention_mask input, so padding cannot be masked out of its sentence embeddings.",
                fix="measure a text encoder that takes attention_mask",
            )
        alone = np.concatenate(
            [
                _embeddings(runner, feed, embedding_output)
                for text in texts
                for feed in policy.encode(tokenizer, [text], 1, input_names=inputs)
            ]
        )
        batched = np.zeros_like(alone)
        calls = policy.batches(policy.token_lengths(tokenizer, mixed), batch_size)
        feeds = policy.encode(tokenizer, mixed, batch_size, input_names=inputs)
        for (indices, _length), feed in zip(calls, feeds):
            batched[[int(order[i]) for i in indices]] = _embeddings(runner, feed, embedding_output)
    cosines = np.sum(alone * batched, axis=1) / np.clip(
        np.linalg.norm(alone, axis=1) * np.linalg.norm(batched, axis=1), 1e-12, None
    )
    worst = int(np.argmin(cosines))
    return InvarianceResult(
        name=name or path.stem,
        path=path,
        policy=policy,
        batch_size=batch_size,
        cosine_min=float(cosines.min()),
        cosine_mean=float(cosines.mean()),
        per_text=tuple(float(c) for c in cosines),
        worst_text=texts[worst],
    )


def batch_invariance_all(
    candidates: Mapping[str, str | os.PathLike[str]],
    tokenizer: Any,
    texts: Sequence[str],
    policy: PaddingPolicy,
    *,
    batch_size: int = 8,
    threads: int | None = None,
    embedding_output: str = "last_hidden_state",
) -> dict[str, InvarianceResult]:
    """`batch_invariance` of every candidate (name -> ONNX file), with the same texts, policy and batches."""
    return {
        name: batch_invariance(
            path,
            tokenizer,
            texts,
            policy,
            batch_size=batch_size,
            name=name,
            threads=threads,
            embedding_output=embedding_output,
        )
        for name, path in candidates.items()
    }
