"""Text generation (`*ForCausalLM`, `*LMHeadModel`): a causal LM that continues a prompt token by token.

Its metrics compare a candidate with the FP32 reference the way generation uses the model:

- teacher-forced next-token top-1 agreement: on the evaluation text, at every position, whether the candidate's
  most likely next token is the reference's;
- the perplexity ratio: the candidate's perplexity on the evaluation text over the reference's (1.0: the same);
- the cosine of the logits vectors, per position (the summary's primary cosine);
- greedy-continuation agreement (measured by `workbench.stages.generation.accuracy`, which runs the loop): the
  share of a greedy continuation's tokens before the first one that differs from the reference's.

The default budget gates the first two: they are what a reader of the output notices (a different word, a
less fluent text), and unlike the logits cosine they mean the same for every vocabulary size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from workbench.errors import DataError, ModelSourceError
from workbench.tasks.base import (
    Budget,
    Encoded,
    Outputs,
    Samples,
    Task,
    TaskMetrics,
    budget_field,
    cosine_rows,
    register_task,
)

LOGITS = "logits"
PROMPTS_FILE = "prompts.txt"
CAUSAL_LM_ARCHITECTURES = ("ForCausalLM", "LMHeadModel")


@dataclass(frozen=True)
class GenerationBudget(Budget):
    """What a text-generation candidate must meet against the FP32 reference.

    Attributes:
        next_token_agreement_min: Minimum share of evaluation-text positions where the candidate's top-1 next
            token is the reference's (teacher-forced).
        perplexity_ratio_max: Maximum candidate perplexity / reference perplexity on the evaluation text.
        logits_cosine_mean: Optional minimum mean cosine of the logits vectors, per position.
        greedy_agreement_min: Optional minimum share of greedy-continuation tokens before the first divergence
            from the reference's continuation (mean over prompts).
        output_cosine_min: Optional minimum raw-output cosine per batch.
    """

    task: ClassVar[str] = "text-generation"
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "strict": {},
        "relaxed": {"next_token_agreement_min": 0.90, "perplexity_ratio_max": 1.10},
        "with_greedy": {"greedy_agreement_min": 0.5},
    }

    next_token_agreement_min: float | None = budget_field(
        0.95, ">=", metric="next_token_agreement", label="next-token agreement", range=(0.0, 1.0)
    )
    perplexity_ratio_max: float | None = budget_field(
        1.05, "<=", metric="perplexity_ratio", label="perplexity ratio", range=(1.0, float("inf"))
    )
    logits_cosine_mean: float | None = budget_field(
        None, ">=", metric="logits_cosine_mean", label="logits cosine mean", range=(-1.0, 1.0)
    )
    greedy_agreement_min: float | None = budget_field(
        None, ">=", metric="greedy_agreement", label="greedy-continuation agreement", range=(0.0, 1.0)
    )
    output_cosine_min: float | None = budget_field(
        None, ">=", metric="output_cosine_min", label="output cosine min", range=(-1.0, 1.0)
    )


@dataclass
class TeacherForcedStats:
    """Teacher-forced statistics accumulated batch by batch (one batch of logits in memory at a time).

    For every position t whose token and next token are real (attention_mask 1 at t and t + 1), with the next
    token as the label: top-1 agreement, both models' negative log-likelihood, and the logits cosine.
    """

    positions: int = 0
    agreeing: int = 0
    reference_nll: float = 0.0
    candidate_nll: float = 0.0
    cosines: list[float] = field(default_factory=list)

    def add(
        self,
        reference_logits: np.ndarray,
        candidate_logits: np.ndarray,
        input_ids: np.ndarray,
        attention_mask: np.ndarray,
    ) -> None:
        mask = np.asarray(attention_mask).astype(bool)
        ids = np.asarray(input_ids)
        length = ids.shape[1]
        if mask.shape[1] != length:  # a cache was fed: the mask also covers past positions
            mask = mask[:, -length:]
        if reference_logits.shape[1] != length or candidate_logits.shape[1] != length:
            raise DataError(
                f"Teacher-forced metrics need the logits of every position ({length}), got "
                f"{reference_logits.shape[1]} and {candidate_logits.shape[1]}.",
                fix="encode the evaluation text with TextGeneration.encode (it asks for all positions' logits)",
            )
        valid = mask[:, :-1] & mask[:, 1:]
        if not valid.any():
            return
        rows, cols = np.nonzero(valid)
        labels = ids[rows, cols + 1]
        ref = np.asarray(reference_logits[rows, cols], dtype=np.float64)
        cand = np.asarray(candidate_logits[rows, cols], dtype=np.float64)
        self.positions += len(rows)
        self.agreeing += int(np.count_nonzero(np.argmax(ref, axis=-1) == np.argmax(cand, axis=-1)))
        self.reference_nll += float(np.sum(_nll(ref, labels)))
        self.candidate_nll += float(np.sum(_nll(cand, labels)))
        self.cosines += cosine_rows(ref, cand).tolist()

    def values(self) -> dict[str, float]:
        if not self.positions:
            raise DataError(
                "No evaluation position has a next token to predict (every text is one token long).",
                fix="evaluate on texts of at least two tokens (data/evaluation.txt)",
            )
        reference_ppl = float(np.exp(self.reference_nll / self.positions))
        candidate_ppl = float(np.exp(self.candidate_nll / self.positions))
        return {
            "next_token_agreement": self.agreeing / self.positions,
            "perplexity_ratio": float(np.exp((self.candidate_nll - self.reference_nll) / self.positions)),
            "reference_perplexity": reference_ppl,
            "candidate_perplexity": candidate_ppl,
            "logits_cosine_mean": float(np.mean(self.cosines)),
            "logits_cosine_min": float(np.min(self.cosines)),
            "positions": float(self.positions),
        }


def _nll(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    top = logits.max(axis=-1, keepdims=True)
    log_normalizer = np.log(np.exp(logits - top).sum(axis=-1)) + top[:, 0]
    return log_normalizer - logits[np.arange(len(labels)), labels]


def load_prompts(data_dir: str | None = None, *, limit: int | None = None) -> tuple[str, ...]:
    """The generation prompts of `data_dir` (default: the bundled data/prompts.txt), one per line."""
    from pathlib import Path

    from workbench.data import default_data_dir, read_sentences

    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    path = folder / PROMPTS_FILE
    if not path.is_file() and data_dir is not None:  # a user's data folder without prompts: the bundled ones
        path = default_data_dir() / PROMPTS_FILE
    return tuple(read_sentences(path, limit))


@register_task
class TextGeneration(Task):
    """Continue a prompt: a causal LM exported with its key/value cache (workbench.stages.generation).

    Metrics: teacher-forced next-token top-1 agreement with the reference, the perplexity ratio on the
    evaluation text, the cosine of the logits per position (mean and min), and, where the generation loop is
    run, greedy-continuation agreement.
    """

    name = "text-generation"
    title = "Text generation"
    architectures = CAUSAL_LM_ARCHITECTURES
    auto_model = "AutoModelForCausalLM"
    outputs = (LOGITS,)
    output_ranks = {LOGITS: 3}
    budget_type = GenerationBudget
    primary_cosine = ("logits_cosine_mean", "logits_cosine_min")
    metric_names = (
        "next_token_agreement",
        "perplexity_ratio",
        "logits_cosine_mean",
        "logits_cosine_min",
        "greedy_agreement",
        "reference_perplexity",
        "candidate_perplexity",
    )
    serving_output = "TEXT_OUTPUT"

    def check_tokenizer(self, tokenizer: Any, *, model_path: str) -> None:
        """A decoder's tokenizer needs a pad or an eos token (prompts of a batch are left-padded with it); its
        model_max_length does not matter (the model's positions bound a prompt and its continuation)."""
        if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is None:
            raise ModelSourceError(
                f"The tokenizer of {model_path} has neither a pad token nor an eos token, so prompts of different "
                "lengths cannot be batched and generation has no end token.",
                fix="set one and save the tokenizer again: tokenizer.eos_token = '</s>' (the model's end token); "
                "tokenizer.save_pretrained(MODEL_DIR)",
            )

    def accepts_outputs(self, outputs: Mapping[str, int | None]) -> bool:
        """A decoder exported with its cache: 3-D logits and `present.*` cache outputs (3-D logits alone could be
        a token classifier's)."""
        return super().accepts_outputs(outputs) and any(name.startswith("present.") for name in outputs)

    def check_feeds(self, feeds: Sequence[Outputs]) -> None:
        """Teacher-forced metrics read input_ids and attention_mask, and need every position's logits."""
        from workbench.decoding import LOGIT_POSITIONS

        for index, feed in enumerate(feeds):
            missing = [n for n in ("input_ids", "attention_mask") if n not in feed]
            if missing:
                raise DataError(
                    f"Evaluation feed {index} has no {missing}, which the text-generation metrics read.",
                    fix="encode the evaluation text with TextGeneration.encode(..., spec=spec)",
                )
            positions = feed.get(LOGIT_POSITIONS)
            length = np.asarray(feed["input_ids"]).shape[1]
            if positions is not None and not np.array_equal(np.asarray(positions), np.arange(length)):
                raise DataError(
                    f"Evaluation feed {index} asks for the logits of {np.asarray(positions).size} of its "
                    f"{length} positions; teacher-forced metrics need all of them.",
                    fix="encode the evaluation text with TextGeneration.encode (it asks for all)",
                )

    def load_samples(
        self, data_dir: str | None, *, max_calibration: int | None = None, max_eval: int | None = None
    ) -> Samples:
        """Calibration text (calibration.txt) and evaluation text (evaluation.txt) of `data_dir`."""
        return super().load_samples(data_dir, max_calibration=max_calibration, max_eval=max_eval)

    def encode(
        self,
        tokenizer: Any,
        samples: Sequence[Any],
        *,
        batch_size: int,
        sequence_length: int,
        input_names: Sequence[str] | None = None,
        padding: str = "longest",
        spec: Any = None,
    ) -> Encoded:
        """Texts -> teacher-forced feeds of a decoder: each text's tokens (special tokens added, truncated to
        `sequence_length` and the model's positions), `batch_size` texts per feed, left-padded, the logits of
        every position asked for, and an empty cache.

        Args:
            tokenizer: The model's tokenizer.
            samples: The texts.
            batch_size: Texts per feed dict. 1 (the default of the generation stages) measures a candidate as a
                server runs it, one request at a time: dynamically quantized models compute activation scales
                over padded positions too.
            sequence_length: The most tokens per text.
            input_names: Keep only these inputs (the model's).
            padding: Ignored: decoder feeds are always padded to the longest text of their batch.
            spec: The decoder's DecoderSpec (workbench.stages.generation.export.read_decoder_spec); needed for the
                cache inputs. Without it the feeds have no cache (for a decoder exported without one).

        Returns:
            The feeds, and per batch the token ids of its texts.
        """
        from workbench.decoding import DecoderSpec, prompt_feeds

        if not samples:
            raise DataError("No texts to encode.", fix="pass at least one text")
        if batch_size < 1 or sequence_length < 2:
            raise DataError(f"batch_size must be >= 1 and sequence_length >= 2, got {batch_size}, {sequence_length}.")
        limit = min(sequence_length, spec.max_positions) if spec is not None else sequence_length
        rows = [
            list(
                map(int, tokenizer(str(text), add_special_tokens=True, truncation=True, max_length=limit)["input_ids"])
            )
            for text in samples
        ]
        if spec is None:
            pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
            spec = DecoderSpec(
                num_layers=0,
                num_kv_heads=0,
                head_dim=0,
                vocab_size=len(tokenizer),
                max_positions=limit,
                eos_token_ids=(),
                pad_token_id=int(pad or 0),
            )
        feeds, meta = [], []
        for start in range(0, len(rows), batch_size):
            batch = [r for r in rows[start : start + batch_size]]
            empty = [i for i, r in enumerate(batch) if not r]
            if empty:
                raise DataError(f"Text {start + empty[0]} has no tokens.", fix="drop empty lines from the texts")
            fed = prompt_feeds(spec, batch, all_logits=True)
            if input_names is not None:
                missing = [n for n in input_names if n not in fed]
                if missing:
                    raise DataError(
                        f"The model takes {missing}, which decoder feeds built without the decoder's spec lack.",
                        fix="pass spec=read_decoder_spec(model_path)",
                    )
                fed = {n: fed[n] for n in input_names}
            feeds.append(fed)
            meta.append(batch)
        return Encoded(feeds=feeds, meta=meta)

    def metrics(
        self,
        reference: Sequence[Outputs],
        candidate: Sequence[Outputs],
        feeds: Sequence[Outputs],
        meta: Sequence[Any] | None = None,
    ) -> TaskMetrics:
        stats = TeacherForcedStats()
        for feed, ref, cand in zip(feeds, reference, candidate):
            stats.add(np.asarray(ref[LOGITS]), np.asarray(cand[LOGITS]), feed["input_ids"], feed["attention_mask"])
        return TaskMetrics(values=stats.values(), per_sample=tuple(stats.cosines))


def teacher_forced_values(
    reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray], feeds: Mapping[str, np.ndarray]
) -> dict[str, float]:
    """The teacher-forced metrics of one batch (see TeacherForcedStats)."""
    stats = TeacherForcedStats()
    stats.add(np.asarray(reference[LOGITS]), np.asarray(candidate[LOGITS]), feeds["input_ids"], feeds["attention_mask"])
    return stats.values()
