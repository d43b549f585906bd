"""Token classification (`*ForTokenClassification`, named-entity recognition): one label per token, from `logits`
of shape [batch, sequence, labels], decoded into entities exactly as transformers' TokenClassificationPipeline
decodes them.

Decoding (:func:`decode_entities`) is pure numpy plus the tokenizer's own vocabulary and decoder (the
`tokenizers` backend of a fast tokenizer): no torch. For every aggregation strategy the pipeline offers ("none",
"simple", "first", "average", "max") it returns the pipeline's entities: the same labels, character offsets and
words, and scores computed the same way (float32 softmax). The served Python model
(`workbench/triton/python_models/token_classification_model.py`) is a self-contained copy of it; the Triton
export proves on sample texts that both agree.

A candidate is judged against the FP32 reference on three things:

- `token_agreement`: the fraction of real tokens (attention mask 1 and, where the tokenizer marks words, only the
  first sub-word of each word: the tokens a NER evaluation scores) whose argmax label is the reference's;
- entity-level precision / recall / F1 of the candidate's decoded entities against the reference's, per
  aggregation strategy (`span_f1_simple`, ...), and `span_f1`, the worst strategy's F1;
- the cosine of the logits over each text's real tokens (`logits_cosine_mean` / `logits_cosine_min`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from workbench.errors import DataError, ModelSourceError
from workbench.tasks.base import (
    Budget,
    Encoded,
    FrontModel,
    Outputs,
    Task,
    TaskMetrics,
    TensorSpec,
    budget_field,
    cosine_rows,
    cosines_only,
    register_task,
)

LOGITS = "logits"
#: transformers' AggregationStrategy values, in its order.
AGGREGATION_STRATEGIES = ("none", "simple", "first", "average", "max")
#: The strategies the served model uses unless told otherwise (transformers' pipeline defaults to "none";
#: clients of a NER service want whole entities).
SERVED_STRATEGY = "simple"
DEFAULT_IGNORE_LABELS = ("O",)
#: Texts the Triton export decodes both ways (served code and library) before it writes anything.
CHECK_TEXTS = (
    "Ada Lovelace met Charles Babbage in London in 1833.",
    "",
    "Ünïcödé, São Paulo, naïve café — and émojis 🙂 keep their character offsets.",
    "Microsoft-Azure's CEO, Satya Nadella, visited New York on 12 May 2023 (see https://example.com).",
    " ".join(["A long text that is truncated at the sequence length, by Jane Doe of Acme Corp."] * 40),
)


# ---------------------------------------------------------------------------------------------------------------
# decoding


@dataclass(frozen=True)
class Piece:
    """One non-special token of a text, as the pipeline's `gather_pre_entities` sees it (everything but scores).

    Attributes:
        index: Token position in the model input.
        word: The token string (the text itself for an unknown token).
        start: Character start in the text.
        end: Character end in the text.
        is_subword: Whether it continues the previous token's word (word-aware tokenizers: by its length against
            its characters; others: no whitespace before it).
    """

    index: int
    word: str
    start: int
    end: int
    is_subword: bool


@dataclass(frozen=True)
class TokenizedText:
    """What decoding one text needs besides the logits (kept in `Encoded.meta`).

    Attributes:
        text: The text.
        pieces: Its non-special tokens.
        first_subwords: Token positions scored by `token_agreement` (first sub-word of each word, or every
            attended token where the tokenizer marks no words).
        length: Attended tokens (the attention mask's sum).
    """

    text: str
    pieces: tuple[Piece, ...]
    first_subwords: tuple[int, ...]
    length: int


@dataclass(frozen=True)
class Entity:
    """One entity (or, with strategy "none", one token) as transformers' pipeline reports it.

    Attributes:
        label: The label ("B-PER" per token with "none"; the group "PER" with the other strategies).
        score: Its probability (mean over the grouped tokens or words).
        start: Character start in the text.
        end: Character end in the text.
        word: The decoded tokens (the tokenizer's decoder; use text[start:end] for the exact characters).
        index: The token position (strategy "none" only).
    """

    label: str
    score: float
    start: int
    end: int
    word: str
    index: int | None = None

    def key(self) -> tuple[str, int, int]:
        """What makes two entities the same entity: label and character span."""
        return (self.label, self.start, self.end)

    def to_dict(self) -> dict[str, Any]:
        """The pipeline's dict: `entity` and `index` for strategy "none", `entity_group` for the others."""
        if self.index is not None:
            return {
                "entity": self.label,
                "score": self.score,
                "index": self.index,
                "word": self.word,
                "start": self.start,
                "end": self.end,
            }
        return {
            "entity_group": self.label,
            "score": self.score,
            "word": self.word,
            "start": self.start,
            "end": self.end,
        }


@dataclass(frozen=True)
class Vocabulary:
    """The parts of a fast tokenizer that decoding needs: id -> token, tokens -> text, unknown token, and whether
    the tokenizer marks continuing sub-words (a `continuing_subword_prefix`, as WordPiece's "##")."""

    id_to_token: Callable[[int], str]
    join_tokens: Callable[[list[str]], str]
    unk_token_id: int | None
    word_aware: bool

    @classmethod
    def of(cls, tokenizer: Any) -> Vocabulary:
        """From a transformers fast tokenizer, or a `tokenizers.Tokenizer`."""
        backend = getattr(tokenizer, "backend_tokenizer", None) or tokenizer
        decoder = backend.decoder
        unk = getattr(tokenizer, "unk_token_id", None) if backend is not tokenizer else _unk_id(backend)
        return cls(
            id_to_token=lambda i: backend.id_to_token(int(i)),
            join_tokens=(lambda tokens: decoder.decode(tokens)) if decoder is not None else " ".join,
            unk_token_id=unk,
            word_aware=bool(getattr(backend.model, "continuing_subword_prefix", None)),
        )


def _unk_id(backend: Any) -> int | None:
    token = getattr(backend.model, "unk_token", None)
    return backend.token_to_id(token) if token else None


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis in the logits' own precision (float32), as the pipeline computes its scores."""
    x = np.asarray(logits)
    if x.dtype in (np.float16,):
        x = x.astype(np.float32)
    maxes = np.max(x, axis=-1, keepdims=True)
    shifted = np.exp(x - maxes)
    return shifted / shifted.sum(axis=-1, keepdims=True)


def token_pieces(
    text: str,
    input_ids: Sequence[int],
    offsets: Sequence[Sequence[int]],
    special_tokens_mask: Sequence[int],
    vocabulary: Vocabulary,
) -> tuple[Piece, ...]:
    """The pipeline's pre-entities of one text without their scores (`gather_pre_entities`)."""
    pieces = []
    for index, token_id in enumerate(input_ids):
        if special_tokens_mask[index]:
            continue
        word = vocabulary.id_to_token(int(token_id))
        start, end = int(offsets[index][0]), int(offsets[index][1])
        word_ref = text[start:end]
        if vocabulary.word_aware:
            is_subword = len(word) != len(word_ref)
        else:  # the pipeline's fallback heuristic for tokenizers that do not mark sub-words
            is_subword = start > 0 and " " not in text[start - 1 : start + 1]
        if vocabulary.unk_token_id is not None and int(token_id) == vocabulary.unk_token_id:
            word, is_subword = word_ref, False
        pieces.append(Piece(index, word, start, end, is_subword))
    return tuple(pieces)


def _label(id2label: Mapping[int, str], index: int) -> str:
    return id2label[int(index)]


def _aggregate_word(
    group: list[tuple[Piece, np.ndarray]], strategy: str, id2label: Mapping[int, str], vocabulary: Vocabulary
) -> tuple[str, Any, str, int, int]:
    word = vocabulary.join_tokens([piece.word for piece, _ in group])
    if strategy == "first":
        scores = group[0][1]
        idx = scores.argmax()
        score = scores[idx]
    elif strategy == "max":
        scores = max(group, key=lambda item: item[1].max())[1]
        idx = scores.argmax()
        score = scores[idx]
    elif strategy == "average":
        scores = np.nanmean(np.stack([s for _, s in group]), axis=0)
        idx = scores.argmax()
        score = scores[idx]
    else:
        raise ValueError(f"strategy {strategy!r} does not aggregate words")
    return _label(id2label, int(idx)), score, word, group[0][0].start, group[-1][0].end


def _tag(label: str) -> tuple[str, str]:
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label  # not in B-/I- form: a continuation, as the pipeline reads it


def _group(entities: list[tuple[str, Any, str, int, int]], vocabulary: Vocabulary) -> list[Entity]:
    """The pipeline's `group_entities`: adjacent entities with the same tag merge unless the next one is a B-."""

    def close(run: list[tuple[str, Any, str, int, int]]) -> Entity:
        score = np.mean(np.nanmean([e[1] for e in run]))
        return Entity(
            run[0][0].split("-", 1)[-1],
            float(score),
            run[0][3],
            run[-1][4],
            vocabulary.join_tokens([e[2] for e in run]),
        )

    groups: list[Entity] = []
    run: list[tuple[str, Any, str, int, int]] = []
    for entity in entities:
        if not run:
            run.append(entity)
            continue
        bi, tag = _tag(entity[0])
        _, last_tag = _tag(run[-1][0])
        if tag == last_tag and bi != "B":
            run.append(entity)
        else:
            groups.append(close(run))
            run = [entity]
    if run:
        groups.append(close(run))
    return groups


def decode_entities(
    logits: np.ndarray,
    pieces: Sequence[Piece],
    *,
    id2label: Mapping[int, str],
    strategy: str,
    vocabulary: Vocabulary,
    ignore_labels: Sequence[str] = DEFAULT_IGNORE_LABELS,
) -> list[Entity]:
    """One text's entities from its logits [sequence, labels], as transformers' TokenClassificationPipeline
    (`postprocess` with `aggregation_strategy=strategy`, `ignore_labels`) returns them.

    Args:
        logits: The text's row of the model's `logits` (padded positions are never read).
        pieces: Its non-special tokens (:func:`token_pieces`).
        id2label: Label index -> name (the checkpoint's config).
        strategy: One of AGGREGATION_STRATEGIES.
        vocabulary: The tokenizer's id -> token and decoder.
        ignore_labels: Labels (or groups) left out of the result.
    """
    if strategy not in AGGREGATION_STRATEGIES:
        raise DataError(f"aggregation strategy {strategy!r} is not one of {list(AGGREGATION_STRATEGIES)}.")
    scores = softmax(logits)
    if strategy in ("none", "simple"):
        tokens = []
        for piece in pieces:
            row = scores[piece.index]
            idx = row.argmax()
            tokens.append((_label(id2label, idx), row[idx], piece.word, piece.start, piece.end, piece.index))
        if strategy == "none":
            found = [
                Entity(label, float(score), start, end, word, index) for label, score, word, start, end, index in tokens
            ]
        else:
            found = _group([t[:5] for t in tokens], vocabulary)
    else:
        words: list[tuple[str, Any, str, int, int]] = []
        group: list[tuple[Piece, np.ndarray]] = []
        for piece in pieces:
            if group and not piece.is_subword:
                words.append(_aggregate_word(group, strategy, id2label, vocabulary))
                group = []
            group.append((piece, scores[piece.index]))
        if group:
            words.append(_aggregate_word(group, strategy, id2label, vocabulary))
        found = _group(words, vocabulary)
    ignored = set(ignore_labels)
    return [e for e in found if e.label not in ignored]


# ---------------------------------------------------------------------------------------------------------------
# metrics


def span_scores(reference: Sequence[Sequence[Entity]], candidate: Sequence[Sequence[Entity]]) -> dict[str, float]:
    """Entity-level precision, recall and F1 of `candidate` against `reference` (one entity list per text): an
    entity counts when a text's reference has one with the same label and character span. With no entities on
    either side everything is 1; with entities on one side only, everything is 0 (as seqeval scores it)."""
    true_positives = predicted = expected = 0
    for ref, cand in zip(reference, candidate, strict=True):
        ref_keys = {e.key() for e in ref}
        cand_keys = {e.key() for e in cand}
        true_positives += len(ref_keys & cand_keys)
        predicted += len(cand_keys)
        expected += len(ref_keys)
    precision = true_positives / predicted if predicted else (1.0 if not expected else 0.0)
    recall = true_positives / expected if expected else (1.0 if not predicted else 0.0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


@dataclass(frozen=True)
class TokenClassificationBudget(Budget):
    """What a token-classification candidate must meet against the FP32 reference.

    Attributes:
        token_agreement_min: Minimum fraction of scored tokens (first sub-words) whose argmax label is the
            reference's.
        span_f1_min: Minimum entity-level F1 against the reference's entities, for the worst aggregation strategy.
        logits_cosine_mean: Optional minimum mean logits cosine over texts.
        logits_cosine_min: Optional minimum worst-text logits cosine.
        output_cosine_min: Optional minimum raw-output cosine per batch.
    """

    task: ClassVar[str] = "token-classification"
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "strict": {},
        "relaxed": {"token_agreement_min": 0.98, "span_f1_min": 0.95},
    }

    token_agreement_min: float | None = budget_field(
        0.99, ">=", metric="token_agreement", label="token agreement", range=(0.0, 1.0)
    )
    span_f1_min: float | None = budget_field(0.98, ">=", metric="span_f1", label="entity span F1", range=(0.0, 1.0))
    logits_cosine_mean: float | None = budget_field(
        None, ">=", metric="logits_cosine_mean", label="logits cosine mean", range=(-1.0, 1.0)
    )
    logits_cosine_min: float | None = budget_field(
        None, ">=", metric="logits_cosine_min", label="logits cosine min", range=(-1.0, 1.0)
    )
    output_cosine_min: float | None = budget_field(
        None, ">=", metric="output_cosine_min", label="output cosine min", range=(-1.0, 1.0)
    )


@dataclass(frozen=True)
class TokenBatch:
    """`Encoded.meta` of one batch: each row's text and tokens, and the label names."""

    texts: tuple[TokenizedText, ...]
    id2label: Mapping[int, str] | None
    vocabulary: Vocabulary = field(compare=False, repr=False)


def _id2label(model_config: Mapping[str, Any] | None, width: int) -> dict[int, str]:
    raw = (model_config or {}).get("id2label") or {}
    return {i: str(raw.get(str(i), raw.get(i, f"LABEL_{i}"))) for i in range(width)}


def _config_beside(tokenizer: Any) -> dict[str, Any] | None:
    """The config.json of the folder the tokenizer was loaded from, when there is one (a Hugging Face folder)."""
    folder = getattr(tokenizer, "name_or_path", None)
    path = Path(str(folder)) / "config.json" if folder else None
    if path is not None and path.is_file():
        try:
            return dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            return None
    return None


@register_task
class TokenClassification(Task):
    """One label per token (named-entity recognition, part-of-speech tagging...), decoded into entities.

    Metrics: token agreement, entity precision / recall / F1 per aggregation strategy, logits cosine.
    """

    name = "token-classification"
    title = "Token classification"
    architectures = ("ForTokenClassification",)
    auto_model = "AutoModelForTokenClassification"
    outputs = (LOGITS,)
    output_ranks = {LOGITS: 3}  # [batch, sequence, labels]: a text classifier's are 2-D
    budget_type = TokenClassificationBudget
    primary_cosine = ("logits_cosine_mean", "logits_cosine_min")
    metric_names = (
        "token_agreement",
        "span_f1",
        *(f"span_{kind}_{s}" for s in AGGREGATION_STRATEGIES for kind in ("precision", "recall", "f1")),
        "logits_cosine_mean",
        "logits_cosine_min",
    )
    serving_output = "ENTITIES"
    served_by_front_model = True

    def accepts_outputs(self, outputs: Mapping[str, int | None]) -> bool:
        """3-D logits without a key/value cache (a decoder's 3-D logits come with `present.*` outputs)."""
        return super().accepts_outputs(outputs) and not any(name.startswith("present.") for name in outputs)

    def check_tokenizer(self, tokenizer: Any, *, model_path: str) -> None:
        super().check_tokenizer(tokenizer, model_path=model_path)
        if not getattr(tokenizer, "is_fast", False):
            raise ModelSourceError(
                f"The tokenizer of {model_path} is a slow (Python) tokenizer, which gives no character offsets, so "
                "entities could not be located in the text.",
                fix="save a fast tokenizer: AutoTokenizer.from_pretrained(MODEL_DIR, use_fast=True)"
                ".save_pretrained(MODEL_DIR) (it writes tokenizer.json)",
            )

    def encode(
        self,
        tokenizer: Any,
        samples: Sequence[Any],
        *,
        batch_size: int,
        sequence_length: int,
        input_names: Sequence[str] | None = None,
        padding: str = "max_length",
        model_config: Mapping[str, Any] | None = None,
    ) -> Encoded:
        """Texts -> feeds, with each text's tokens, offsets and word marks in `meta` (:class:`TokenBatch`).

        Args:
            model_config: The checkpoint's config.json (for `id2label`); default: the config.json beside the
                tokenizer's folder, if any, else labels are named LABEL_i.
        """
        texts = [str(s) for s in samples]
        if not texts:
            raise DataError("No texts to tokenize.", fix="pass at least one text")
        if batch_size < 1 or sequence_length < 2:
            raise DataError(
                f"batch_size must be >= 1 and sequence_length >= 2, got {batch_size} and {sequence_length}."
            )
        self.check_tokenizer(tokenizer, model_path=str(getattr(tokenizer, "name_or_path", "the model")))
        config = model_config if model_config is not None else _config_beside(tokenizer)
        raw_labels = (config or {}).get("id2label")
        id2label = {int(k): str(v) for k, v in raw_labels.items()} if raw_labels else None
        vocabulary = Vocabulary.of(tokenizer)
        feeds, meta = [], []
        for first in range(0, len(texts), batch_size):
            chunk = texts[first : first + batch_size]
            encoded = tokenizer(
                chunk,
                padding=padding,
                truncation=True,
                max_length=sequence_length,
                return_offsets_mapping=True,
                return_special_tokens_mask=True,
                return_tensors="np",
            )
            names = (
                list(input_names)
                if input_names is not None
                else [n for n in encoded if n not in ("offset_mapping", "special_tokens_mask")]
            )
            missing = [n for n in names if n not in encoded]
            if missing:
                raise DataError(
                    f"The tokenizer does not produce the model inputs {missing}.",
                    fix="use the tokenizer that belongs to this model",
                )
            feeds.append({n: np.ascontiguousarray(encoded[n], dtype=np.int64) for n in names})
            rows = []
            for row, text in enumerate(chunk):
                mask = encoded["attention_mask"][row]
                pieces = token_pieces(
                    text,
                    encoded["input_ids"][row],
                    encoded["offset_mapping"][row],
                    encoded["special_tokens_mask"][row],
                    vocabulary,
                )
                rows.append(
                    TokenizedText(text, pieces, _first_subwords(encoded.word_ids(row), mask), int(np.sum(mask)))
                )
            meta.append(TokenBatch(tuple(rows), id2label, vocabulary))
        return Encoded(feeds=feeds, meta=meta)

    def decode(
        self,
        outputs: Outputs,
        meta: TokenBatch,
        *,
        strategy: str = SERVED_STRATEGY,
        ignore_labels: Sequence[str] = DEFAULT_IGNORE_LABELS,
    ) -> list[list[Entity]]:
        """The entities of every text of one batch (its outputs and its `Encoded.meta` entry)."""
        logits = np.asarray(outputs[LOGITS])
        id2label = meta.id2label or _id2label(None, logits.shape[-1])
        return [
            decode_entities(
                logits[row],
                text.pieces,
                id2label=id2label,
                strategy=strategy,
                vocabulary=meta.vocabulary,
                ignore_labels=ignore_labels,
            )
            for row, text in enumerate(meta.texts)
        ]

    def metrics(
        self,
        reference: Sequence[Outputs],
        candidate: Sequence[Outputs],
        feeds: Sequence[Outputs],
        meta: Sequence[Any] | None = None,
    ) -> TaskMetrics:
        """Every metric with `meta` (this task's encode()); without it, only the logits cosines (what a layer
        diagnosis needs): the decoded metrics are then absent, which a budget counts as a miss."""
        if meta is None or all(m is None for m in meta):
            return cosines_only(reference, candidate, feeds, (LOGITS,))
        if len(meta) != len(reference) or not all(isinstance(m, TokenBatch) for m in meta):
            raise DataError(
                "Token-classification metrics need the tokens of every batch (Encoded.meta from this task's "
                "encode()), to decode entities.",
                fix="encode the texts with task.encode(tokenizer, texts, ...) and pass its meta",
            )
        agree = total = 0
        cosines: list[float] = []
        decoded: dict[str, tuple[list[list[Entity]], list[list[Entity]]]] = {
            s: ([], []) for s in AGGREGATION_STRATEGIES
        }
        for feed, ref_out, cand_out, batch in zip(feeds, reference, candidate, meta, strict=True):
            ref = np.asarray(ref_out[LOGITS])
            cand = np.asarray(cand_out[LOGITS])
            mask = np.asarray(feed["attention_mask"]).astype(bool)
            for row, text in enumerate(batch.texts):
                scored = list(text.first_subwords)
                same = np.argmax(ref[row, scored], axis=-1) == np.argmax(cand[row, scored], axis=-1)
                agree += int(np.count_nonzero(same))
                total += len(scored)
                cosines.append(float(cosine_rows(ref[row][mask[row]][None], cand[row][mask[row]][None])[0]))
            for strategy in AGGREGATION_STRATEGIES:
                decoded[strategy][0].extend(self.decode(ref_out, batch, strategy=strategy))
                decoded[strategy][1].extend(self.decode(cand_out, batch, strategy=strategy))
        values: dict[str, float] = {"token_agreement": agree / total if total else 1.0}
        disagreeing: dict[str, list[int]] = {}
        for strategy, (ref_entities, cand_entities) in decoded.items():
            scores = span_scores(ref_entities, cand_entities)
            for kind, value in scores.items():
                values[f"span_{kind}_{strategy}"] = value
            disagreeing[strategy] = [
                i
                for i, (r, c) in enumerate(zip(ref_entities, cand_entities))
                if {e.key() for e in r} != {e.key() for e in c}
            ]
        values["span_f1"] = min(values[f"span_f1_{s}"] for s in AGGREGATION_STRATEGIES)
        values["logits_cosine_mean"] = float(np.mean(cosines))
        values["logits_cosine_min"] = float(np.min(cosines))
        values["token_disagreements"] = float(total - agree)
        return TaskMetrics(
            values=values,
            per_sample=tuple(cosines),
            details={"disagreeing_samples": disagreeing, "scored_tokens": total},
        )

    # -- serving ---------------------------------------------------------------------------------------------

    def front_model(
        self,
        *,
        model_config: Mapping[str, Any],
        output_names: Sequence[str],
        output_dims: Mapping[str, Sequence[int]],
        sequence_length: int,
    ) -> FrontModel:
        """Text in, entities out (JSON, one string per text): tokenizer with offsets -> model (BLS) -> decoding."""
        width = int(output_dims[LOGITS][-1]) if LOGITS in output_dims else len(model_config.get("id2label") or {})
        labels = [_id2label(model_config, width)[i] for i in range(width)]
        return FrontModel(
            source="token_classification_model.py",
            suffix="_ner",
            engine_outputs=(LOGITS,),
            inputs=(TensorSpec("TEXT", "TYPE_STRING", (1,)),),
            outputs=(TensorSpec("ENTITIES", "TYPE_STRING", (1,)),),
            parameters={
                "labels": json.dumps(labels),
                "aggregation_strategy": SERVED_STRATEGY,
                "ignore_labels": json.dumps(list(DEFAULT_IGNORE_LABELS)),
            },
            check_samples=CHECK_TEXTS,
        )

    def served_outputs(
        self,
        tokenizer: Any,
        samples: Sequence[Any],
        infer: Callable[[dict[str, np.ndarray]], Outputs],
        *,
        sequence_length: int,
        input_names: Sequence[str],
        model_config: Mapping[str, Any],
        parameters: Mapping[str, str],
    ) -> list[Any]:
        """What the served model must return for `samples`, computed by the library (one JSON-ready list of
        entity dicts per text)."""
        strategy = parameters.get("aggregation_strategy", SERVED_STRATEGY)
        ignore = tuple(json.loads(parameters.get("ignore_labels", json.dumps(list(DEFAULT_IGNORE_LABELS)))))
        encoded = self.encode(
            tokenizer,
            samples,
            batch_size=8,
            sequence_length=sequence_length,
            input_names=input_names,
            model_config=model_config,
        )
        found: list[Any] = []
        for feed, batch in zip(encoded.feeds, encoded.meta):
            for entities in self.decode(infer(feed), batch, strategy=strategy, ignore_labels=ignore):
                found.append([e.to_dict() for e in entities])
        return found


def _first_subwords(word_ids: Sequence[int | None] | None, mask: np.ndarray) -> tuple[int, ...]:
    """Token positions `token_agreement` scores: the first token of every word where the tokenizer marks words,
    else every attended token."""
    attended = [i for i, m in enumerate(mask) if m]
    if word_ids is None or all(w is None for w in word_ids):
        return tuple(attended)
    chosen, previous = [], None
    for i in attended:
        word = word_ids[i]
        if word is not None and word != previous:
            chosen.append(i)
        previous = word
    return tuple(chosen)
