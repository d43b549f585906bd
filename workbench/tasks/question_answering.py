"""Extractive question answering (`*ForQuestionAnswering`): the answer is a span of the context, from the
`start_logits` and `end_logits` outputs, decoded exactly as transformers' QuestionAnsweringPipeline decodes it.

Long contexts are split into windows as the pipeline splits them: the fast tokenizer encodes (question, context)
with `truncation="only_second"`, `max_length` = the sequence length (384 by default, the pipeline's), a stride of
`min(max_length // 2, 128)` overlapping tokens and `return_overflowing_tokens=True`; every window is one row of
a batch, and `Encoded.meta` says which example and window each row is. A window's row is padded as served, but
decoded on its real tokens only, so the arrays decoding sees are the pipeline's.

Decoding (:func:`decode_answer`) is pure numpy, ported from transformers 4.57's QuestionAnsweringPipeline
(`select_starts_ends`, `decode_spans`, `postprocess`, `get_indices`), which transformers 5 removed: per window the
start and end logits of non-context tokens are masked, softmaxed, and the best `top_k * 2 + 10` spans of at most
`max_answer_len` tokens are aligned to whole words of the context; spans whose answer texts are equal (ignoring
case) add up their scores, across windows; the best one is the answer (top_k=1, no impossible answer). The served
Python model (`workbench/triton/python_models/question_answering_model.py`) is a self-contained copy, checked
against this at export time.

A candidate is judged against the FP32 reference's answers, per example:

- `exact_match`: the fraction of examples whose answer has the reference's character span;
- `answer_f1`: the mean SQuAD token F1 between the candidate's and the reference's answer texts;
- the cosine of the start and end logits over each window's real tokens (`logits_cosine_mean` / `_min`: per
  example, the worst of its windows' start and end cosines).
"""

from __future__ import annotations

import collections
import json
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from workbench.errors import DataError, ModelSourceError
from workbench.tasks.base import (
    Budget,
    Encoded,
    FrontModel,
    Outputs,
    Samples,
    Task,
    TaskMetrics,
    TensorSpec,
    budget_field,
    cosine_rows,
    cosines_only,
    register_task,
)

START_LOGITS = "start_logits"
END_LOGITS = "end_logits"
CALIBRATION_FILE = "qa_calibration.jsonl"
EVALUATION_FILE = "qa_evaluation.jsonl"
#: transformers' QuestionAnsweringPipeline defaults.
MAX_SEQUENCE_LENGTH = 384
MAX_ANSWER_LENGTH = 15
_LONG_CONTEXT = " ".join(
    f"In year {1900 + i} the village of Lower Brook planted {i + 3} oak trees along the river path." for i in range(60)
)
#: Pairs the Triton export answers both ways (served code and library) before it writes anything; the long one
#: needs several windows at any sequence length the workbench serves.
CHECK_PAIRS = (
    ("Who wrote the first program?", "Ada Lovelace wrote the first program, for Charles Babbage's engine, in 1843."),
    ("Where is São Paulo?", "São Paulo, the largest city of Brazil, lies on a plateau near the Atlantic coast."),
    ("How many oak trees were planted in 1957?", _LONG_CONTEXT),
)


def doc_stride(sequence_length: int) -> int:
    """The pipeline's default overlap between windows: min(max_seq_len // 2, 128) tokens."""
    return min(sequence_length // 2, 128)


# ---------------------------------------------------------------------------------------------------------------
# samples


@dataclass(frozen=True)
class QAExample:
    """One (question, context) pair; `answer` / `answer_start` are the hand-written gold answer, if known."""

    question: str
    context: str
    id: str = ""
    answer: str | None = None
    answer_start: int | None = None


def as_example(sample: Any, where: str = "a sample") -> QAExample:
    """A QAExample from a QAExample, a (question, context) pair or a dict with "question" and "context"."""
    if isinstance(sample, QAExample):
        example = sample
    elif isinstance(sample, Mapping):
        missing = [k for k in ("question", "context") if not isinstance(sample.get(k), str)]
        if missing:
            raise DataError(
                f"{where} has no {' or '.join(missing)} text.", expected='{"question": "...", "context": "..."}'
            )
        example = QAExample(
            sample["question"],
            sample["context"],
            str(sample.get("id", "")),
            sample.get("answer"),
            sample.get("answer_start"),
        )
    elif isinstance(sample, (tuple, list)) and len(sample) == 2 and all(isinstance(s, str) for s in sample):
        example = QAExample(sample[0], sample[1])
    else:
        raise DataError(
            f"{where} is a {type(sample).__name__}, not a (question, context) pair.",
            expected="QAExample, (question, context) or {'question': ..., 'context': ...}",
        )
    if not example.question.strip() or not example.context.strip():
        raise DataError(f"{where} has an empty question or context.", fix="give both a question and a context")
    return example


def read_examples(path: str | Path, limit: int | None = None) -> list[QAExample]:
    """Read a JSON-lines file of {"id", "question", "context", "answer", "answer_start"} objects.

    Raises:
        DataError: The file is missing or empty, a line is not such an object, or an answer is not the context's
            text at its answer_start.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"Question-answering file {path} does not exist.",
            expected='one JSON object per line: {"id", "question", "context", "answer", "answer_start"}',
        )
    examples = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise DataError(f"{where} is not JSON: {exc}", fix="write one JSON object per line") from exc
        example = as_example(record, where)
        if example.answer is not None:
            start = example.answer_start
            if not isinstance(start, int) or example.context[start : start + len(example.answer)] != example.answer:
                raise DataError(
                    f"{where}: the answer {example.answer!r} is not the context's text at answer_start {start!r}.",
                    fix="set answer_start to context.find(answer)",
                )
        examples.append(example)
    if not examples:
        raise DataError(f"Question-answering file {path} holds no examples.")
    if limit is not None:
        if limit < 1:
            raise DataError(f"limit must be at least 1, got {limit}.")
        examples = examples[:limit]
    return examples


# ---------------------------------------------------------------------------------------------------------------
# windows


@dataclass(frozen=True)
class QAWindow:
    """One window of one example: what decoding it needs besides its logits (arrays over its real tokens).

    Attributes:
        example: The example's index among the encoded samples.
        window: The window's index within the example.
        row_start: The first real token's position in the padded row (left padding puts pads first).
        p_mask: 1 where a token cannot be in the answer (as the pipeline builds it).
        offsets: Character (start, end) of each token in its own text.
        word_ids: Word index of each token (-1: none).
        sequence_ids: 0 question / 1 context (for right padding; -1: special token).
    """

    example: int
    window: int
    row_start: int
    p_mask: np.ndarray
    offsets: np.ndarray
    word_ids: np.ndarray
    sequence_ids: np.ndarray

    @property
    def length(self) -> int:
        return len(self.p_mask)


@dataclass(frozen=True)
class QABatch:
    """`Encoded.meta` of one batch: its rows' windows, and the examples (shared by every batch)."""

    windows: tuple[QAWindow, ...]
    examples: tuple[QAExample, ...]
    context_sequence: int  # the sequence index of the context (1 when the question comes first)


def _none_as(values: Sequence[int | None]) -> np.ndarray:
    return np.array([-1 if v is None else v for v in values], dtype=np.int64)


def encode_windows(tokenizer: Any, example: QAExample, *, sequence_length: int, stride: int) -> Any:
    """The pipeline's tokenization of one example: a BatchEncoding with one row per window (unpadded)."""
    question_first = tokenizer.padding_side == "right"
    try:
        return tokenizer(
            text=example.question if question_first else example.context,
            text_pair=example.context if question_first else example.question,
            padding="do_not_pad",
            truncation="only_second" if question_first else "only_first",
            max_length=sequence_length,
            stride=stride,
            return_token_type_ids=True,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
    except Exception as exc:  # tokenizers refuses when the question leaves no room for the context
        raise DataError(
            f"Example {example.id or example.question[:40]!r} cannot be split into windows of {sequence_length} "
            f"tokens with a stride of {stride}: {type(exc).__name__}: {exc}",
            fix="shorten the question, or use a longer sequence length",
        ) from exc


def _p_mask(
    encoding: Any, window: int, input_ids: Sequence[int], question_first: bool, cls_token_id: int | None
) -> np.ndarray:
    # the pipeline: 1 for every token outside the context, except the CLS token (kept for unanswerable questions)
    mask = np.array([int(tok != 1) if question_first else 0 for tok in encoding.sequence_ids(window)], dtype=np.int64)
    if cls_token_id is not None:
        mask[np.asarray(input_ids) == cls_token_id] = 0
    return mask


# ---------------------------------------------------------------------------------------------------------------
# decoding (ported from transformers 4.57's QuestionAnsweringPipeline, which transformers 5 removed)


@dataclass(frozen=True)
class Answer:
    """The best answer span of one example, as transformers' QA pipeline returns it."""

    answer: str
    score: float
    start: int
    end: int

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "start": self.start, "end": self.end, "answer": self.answer}


def decode_spans(
    start: np.ndarray, end: np.ndarray, topk: int, max_answer_len: int, undesired_tokens: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The `topk` best (start, end) token spans of at most `max_answer_len` tokens, best first (the pipeline's
    `decode_spans`, kept operation for operation so that ties resolve the same way)."""
    if start.ndim == 1:
        start = start[None]
    if end.ndim == 1:
        end = end[None]
    outer = np.matmul(np.expand_dims(start, -1), np.expand_dims(end, 1))
    candidates = np.tril(np.triu(outer), max_answer_len - 1)
    scores_flat = candidates.flatten()
    if topk == 1:
        idx_sort = np.array([np.argmax(scores_flat)])
    elif len(scores_flat) < topk:
        idx_sort = np.argsort(-scores_flat)
    else:
        idx = np.argpartition(-scores_flat, topk)[0:topk]
        idx_sort = idx[np.argsort(-scores_flat[idx])]
    starts, ends = np.unravel_index(idx_sort, candidates.shape)[1:]
    # as the pipeline: nonzero() of the [1, n] mask is (rows, columns), so position 0 always counts as desired
    desired = np.isin(starts, undesired_tokens.nonzero()) & np.isin(ends, undesired_tokens.nonzero())
    starts, ends = starts[desired], ends[desired]
    return starts, ends, candidates[0, starts, ends]


def select_starts_ends(
    start: np.ndarray,
    end: np.ndarray,
    p_mask: np.ndarray,
    attention_mask: np.ndarray | None,
    top_k: int,
    max_answer_len: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mask non-context tokens, softmax, zero the first position, and take the best spans (the pipeline's
    `select_starts_ends` with handle_impossible_answer=False). Arrays are [1, tokens]."""
    undesired_tokens = np.abs(np.array(p_mask) - 1)
    if attention_mask is not None:
        undesired_tokens = undesired_tokens & attention_mask
    undesired_tokens_mask = undesired_tokens == 0.0
    start = np.where(undesired_tokens_mask, -10000.0, start)
    end = np.where(undesired_tokens_mask, -10000.0, end)
    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum()
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum()
    start[0, 0] = end[0, 0] = 0.0
    return decode_spans(start, end, top_k, max_answer_len, undesired_tokens)


def _word_chars(window: QAWindow, token: int, sequence: int) -> tuple[int, int]:
    """`Encoding.word_to_chars(Encoding.token_to_word(token), sequence)`; IndexError where either has none."""
    word = int(window.word_ids[token])
    if word < 0:
        raise IndexError("the token belongs to no word")
    tokens = np.flatnonzero((window.word_ids == word) & (window.sequence_ids == sequence))
    if not len(tokens):
        raise IndexError("the word is not in that sequence")
    return int(window.offsets[tokens[0]][0]), int(window.offsets[tokens[-1]][1])


def _char_span(window: QAWindow, s: int, e: int, sequence: int, align_to_words: bool) -> tuple[int, int]:
    """The pipeline's `get_indices`: the characters of the words holding tokens s and e (or the tokens')."""
    if align_to_words:
        try:
            return _word_chars(window, s, sequence)[0], _word_chars(window, e, sequence)[1]
        except IndexError:  # some tokenizers do not handle words: keep to the tokens' offsets
            pass
    return int(window.offsets[s][0]), int(window.offsets[e][1])


def decode_answer(
    context: str,
    windows: Sequence[tuple[QAWindow, np.ndarray, np.ndarray]],
    *,
    context_sequence: int = 1,
    max_answer_len: int = MAX_ANSWER_LENGTH,
    top_k: int = 1,
    align_to_words: bool = True,
) -> Answer:
    """The best answer of one example from its windows' logits, as transformers' QA pipeline (4.57) returns it.

    Args:
        context: The example's context.
        windows: (window, start logits, end logits) for each window, in window order; the logits are the
            window's real tokens only (length `window.length`).
        context_sequence: The context's sequence index (1 when the question comes first, right padding).
        max_answer_len: Longest answer in tokens.
        top_k: Answers considered (the best one is returned).
        align_to_words: Extend spans to whole words.
    """
    answers: list[dict[str, Any]] = []
    pre_topk = top_k * 2 + 10 if align_to_words else top_k  # some candidates merge when aligned to words
    for window, start_logits, end_logits in windows:
        start = np.asarray(start_logits)[None]
        end = np.asarray(end_logits)[None]
        ones = np.ones((1, window.length), dtype=np.int64)
        starts, ends, scores = select_starts_ends(start, end, window.p_mask[None], ones, pre_topk, max_answer_len)
        for s, e, score in zip(starts, ends, scores):
            start_index, end_index = _char_span(window, int(s), int(e), context_sequence, align_to_words)
            target = context[start_index:end_index]
            same = next((a for a in answers if a["answer"].lower() == target.lower()), None)
            if same is not None:
                same["score"] += score.item()
            else:
                answers.append({"score": score.item(), "start": start_index, "end": end_index, "answer": target})
    if not answers:
        raise DataError("No answer span could be decoded (the windows have no context tokens).")
    best = max(answers, key=lambda a: a["score"])  # the first of equal scores, as the pipeline's stable sort
    return Answer(best["answer"], float(best["score"]), int(best["start"]), int(best["end"]))


# ---------------------------------------------------------------------------------------------------------------
# metrics


def normalize_answer(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces (written out here:
    the official evaluation script's ten lines are not in a package the workbench depends on)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def answer_f1(reference: str, candidate: str) -> float:
    """SQuAD token F1 between two answer texts (1.0 when both normalise to nothing)."""
    ref_tokens = normalize_answer(reference).split()
    cand_tokens = normalize_answer(candidate).split()
    if not ref_tokens or not cand_tokens:
        return float(ref_tokens == cand_tokens)
    common = collections.Counter(ref_tokens) & collections.Counter(cand_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(cand_tokens), same / len(ref_tokens)
    return 2 * precision * recall / (precision + recall)


@dataclass(frozen=True)
class QuestionAnsweringBudget(Budget):
    """What an extractive question-answering candidate must meet against the FP32 reference.

    Attributes:
        exact_match_min: Minimum fraction of examples whose answer span is the reference's.
        answer_f1_min: Minimum mean SQuAD token F1 between the candidate's and the reference's answers.
        logits_cosine_mean: Optional minimum mean start/end logits cosine over examples.
        logits_cosine_min: Optional minimum worst-example start/end logits cosine.
        output_cosine_min: Optional minimum raw-output cosine per batch.
    """

    task: ClassVar[str] = "question-answering"
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "strict": {},
        "relaxed": {"exact_match_min": 0.95, "answer_f1_min": 0.97},
    }

    exact_match_min: float | None = budget_field(
        0.97, ">=", metric="exact_match", label="answer exact match", range=(0.0, 1.0)
    )
    answer_f1_min: float | None = budget_field(0.98, ">=", metric="answer_f1", label="answer F1", range=(0.0, 1.0))
    logits_cosine_mean: float | None = budget_field(
        None, ">=", metric="logits_cosine_mean", label="start/end logits cosine mean", range=(-1.0, 1.0)
    )
    logits_cosine_min: float | None = budget_field(
        None, ">=", metric="logits_cosine_min", label="start/end logits cosine min", range=(-1.0, 1.0)
    )
    output_cosine_min: float | None = budget_field(
        None, ">=", metric="output_cosine_min", label="output cosine min", range=(-1.0, 1.0)
    )


# ---------------------------------------------------------------------------------------------------------------
# the task


@register_task
class QuestionAnswering(Task):
    """Extractive question answering: the answer span of a context, windowed like transformers' pipeline.

    Metrics: answer exact match and token F1 against the reference's answers, start/end logits cosine.
    """

    name = "question-answering"
    title = "Extractive question answering"
    architectures = ("ForQuestionAnswering",)
    auto_model = "AutoModelForQuestionAnswering"
    outputs = (START_LOGITS, END_LOGITS)
    output_ranks = {START_LOGITS: 2, END_LOGITS: 2}  # [batch, sequence]
    budget_type = QuestionAnsweringBudget
    primary_cosine = ("logits_cosine_mean", "logits_cosine_min")
    metric_names = (
        "exact_match",
        "answer_f1",
        "logits_cosine_mean",
        "logits_cosine_min",
        "start_logits_cosine_mean",
        "end_logits_cosine_mean",
    )
    serving_output = "ANSWER"
    default_sequence_length = MAX_SEQUENCE_LENGTH
    served_by_front_model = True

    def check_tokenizer(self, tokenizer: Any, *, model_path: str) -> None:
        super().check_tokenizer(tokenizer, model_path=model_path)
        if not getattr(tokenizer, "is_fast", False):
            raise ModelSourceError(
                f"The tokenizer of {model_path} is a slow (Python) tokenizer, which gives no character offsets or "
                "overflowing windows, so answers could not be located in long contexts.",
                fix="save a fast tokenizer: AutoTokenizer.from_pretrained(MODEL_DIR, use_fast=True)"
                ".save_pretrained(MODEL_DIR) (it writes tokenizer.json)",
            )

    def load_samples(
        self, data_dir: str | None, *, max_calibration: int | None = None, max_eval: int | None = None
    ) -> Samples:
        """(question, context) pairs from qa_calibration.jsonl and qa_evaluation.jsonl in `data_dir` (None: the
        bundled ones, data/ in the repository)."""
        from workbench.data import default_data_dir

        folder = Path(data_dir) if data_dir is not None else default_data_dir()
        if not folder.is_dir():
            raise DataError(
                f"Data folder {folder} does not exist.",
                expected=f"a folder with {CALIBRATION_FILE} and {EVALUATION_FILE}",
                fix="pass data_dir= such a folder, or None for the bundled examples",
            )
        return Samples(
            tuple(read_examples(folder / CALIBRATION_FILE, max_calibration)),
            tuple(read_examples(folder / EVALUATION_FILE, max_eval)),
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
        """(question, context) pairs -> windows, `batch_size` windows per feed dict, padded as served ("max_length":
        to `sequence_length`; "longest": to the batch's longest window); `meta` is a :class:`QABatch` per batch."""
        if batch_size < 1 or sequence_length < 8:
            raise DataError(
                f"batch_size must be >= 1 and sequence_length >= 8, got {batch_size} and {sequence_length}."
            )
        if padding not in ("max_length", "longest"):
            raise DataError(f"padding {padding!r} is not one of ['max_length', 'longest'].")
        examples = tuple(as_example(s, f"sample {i}") for i, s in enumerate(samples))
        if not examples:
            raise DataError("No (question, context) pairs to encode.", fix="pass at least one pair")
        self.check_tokenizer(tokenizer, model_path=str(getattr(tokenizer, "name_or_path", "the model")))
        question_first = tokenizer.padding_side == "right"
        stride = doc_stride(sequence_length)
        pad_values = {
            "input_ids": tokenizer.pad_token_id,
            "attention_mask": 0,
            "token_type_ids": getattr(tokenizer, "pad_token_type_id", 0) or 0,
        }
        rows: list[tuple[dict[str, list[int]], QAWindow]] = []
        for index, example in enumerate(examples):
            encoded = encode_windows(tokenizer, example, sequence_length=sequence_length, stride=stride)
            for w in range(len(encoded["input_ids"])):
                ids = encoded["input_ids"][w]
                values = {n: list(encoded[n][w]) for n in pad_values if n in encoded}
                rows.append(
                    (
                        values,
                        QAWindow(
                            example=index,
                            window=w,
                            row_start=0,
                            p_mask=_p_mask(encoded, w, ids, question_first, tokenizer.cls_token_id),
                            offsets=np.asarray(encoded["offset_mapping"][w], dtype=np.int64).reshape(-1, 2),
                            word_ids=_none_as(encoded.word_ids(w)),
                            sequence_ids=_none_as(encoded.sequence_ids(w)),
                        ),
                    )
                )
        names = (
            list(input_names)
            if input_names is not None
            else [n for n in getattr(tokenizer, "model_input_names", pad_values) if n in rows[0][0]]
        )
        missing = [n for n in names if n not in rows[0][0]]
        if missing:
            raise DataError(
                f"The tokenizer does not produce the model inputs {missing}.",
                fix="use the tokenizer that belongs to this model",
            )
        feeds, meta = [], []
        left = tokenizer.padding_side == "left"
        for first in range(0, len(rows), batch_size):
            chunk = rows[first : first + batch_size]
            width = sequence_length if padding == "max_length" else max(w.length for _, w in chunk)
            feed = {n: np.full((len(chunk), width), pad_values[n], dtype=np.int64) for n in names}
            windows = []
            for r, (values, window) in enumerate(chunk):
                at = width - window.length if left else 0
                for n in names:
                    feed[n][r, at : at + window.length] = values[n]
                windows.append(
                    QAWindow(
                        window.example,
                        window.window,
                        at,
                        window.p_mask,
                        window.offsets,
                        window.word_ids,
                        window.sequence_ids,
                    )
                )
            feeds.append(feed)
            meta.append(QABatch(tuple(windows), examples, 1 if question_first else 0))
        return Encoded(feeds=feeds, meta=meta)

    def decode(
        self, outputs: Sequence[Outputs], meta: Sequence[QABatch], *, max_answer_len: int = MAX_ANSWER_LENGTH
    ) -> list[Answer]:
        """The best answer of every example, from the outputs of every batch of one encode() (in its order)."""
        per_example: dict[int, list[tuple[QAWindow, np.ndarray, np.ndarray]]] = {}
        for out, batch in zip(outputs, meta, strict=True):
            start, end = np.asarray(out[START_LOGITS]), np.asarray(out[END_LOGITS])
            for row, window in enumerate(batch.windows):
                span = slice(window.row_start, window.row_start + window.length)
                per_example.setdefault(window.example, []).append((window, start[row, span], end[row, span]))
        examples = meta[0].examples
        return [
            decode_answer(
                examples[i].context,
                per_example[i],
                context_sequence=meta[0].context_sequence,
                max_answer_len=max_answer_len,
            )
            for i in range(len(examples))
        ]

    def metrics(
        self,
        reference: Sequence[Outputs],
        candidate: Sequence[Outputs],
        feeds: Sequence[Outputs],
        meta: Sequence[Any] | None = None,
    ) -> TaskMetrics:
        """Every metric with `meta` (this task's encode()); without it, only the start/end logits cosines per
        row (what a layer diagnosis needs): the answer metrics are then absent, which a budget counts as a miss."""
        if meta is None or all(m is None for m in meta):
            return cosines_only(reference, candidate, feeds, (START_LOGITS, END_LOGITS))
        if len(meta) != len(reference) or not all(isinstance(m, QABatch) for m in meta):
            raise DataError(
                "Question-answering metrics need the windows of every batch (Encoded.meta from this task's "
                "encode()), to decode answers.",
                fix="encode the pairs with task.encode(tokenizer, pairs, ...) and pass its meta",
            )
        ref_answers = self.decode(reference, meta)
        cand_answers = self.decode(candidate, meta)
        same = [(r.start, r.end) == (c.start, c.end) for r, c in zip(ref_answers, cand_answers)]
        f1 = [answer_f1(r.answer, c.answer) for r, c in zip(ref_answers, cand_answers)]
        worst: dict[int, float] = {}
        start_cos: list[float] = []
        end_cos: list[float] = []
        for ref_out, cand_out, batch in zip(reference, candidate, meta):
            for row, window in enumerate(batch.windows):
                span = slice(window.row_start, window.row_start + window.length)
                cosines = []
                for name, store in ((START_LOGITS, start_cos), (END_LOGITS, end_cos)):
                    a = np.asarray(ref_out[name])[row, span][None]
                    b = np.asarray(cand_out[name])[row, span][None]
                    store.append(float(cosine_rows(a, b)[0]))
                    cosines.append(store[-1])
                worst[window.example] = min(worst.get(window.example, 1.0), *cosines)
        per_example = [worst[i] for i in range(len(ref_answers))]
        values = {
            "exact_match": float(np.mean(same)),
            "answer_f1": float(np.mean(f1)),
            "logits_cosine_mean": float(np.mean(per_example)),
            "logits_cosine_min": float(np.min(per_example)),
            "start_logits_cosine_mean": float(np.mean(start_cos)),
            "end_logits_cosine_mean": float(np.mean(end_cos)),
            "answer_disagreements": float(len(same) - sum(same)),
        }
        disagreeing = [i for i, s in enumerate(same) if not s]
        return TaskMetrics(
            values=values,
            per_sample=tuple(per_example),
            details={"disagreeing_samples": disagreeing, "windows": sum(len(b.windows) for b in meta)},
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
        """Question + context in, the answer text, score and character offsets out: windowing tokenizer -> model
        (BLS, window batches) -> decoding."""
        return FrontModel(
            source="question_answering_model.py",
            suffix="_qa",
            engine_outputs=(START_LOGITS, END_LOGITS),
            inputs=(TensorSpec("QUESTION", "TYPE_STRING", (1,)), TensorSpec("CONTEXT", "TYPE_STRING", (1,))),
            outputs=(
                TensorSpec("ANSWER", "TYPE_STRING", (1,)),
                TensorSpec("SCORE", "TYPE_FP64", (1,)),
                TensorSpec("START", "TYPE_INT64", (1,)),
                TensorSpec("END", "TYPE_INT64", (1,)),
            ),
            parameters={"max_answer_len": str(MAX_ANSWER_LENGTH), "stride": str(doc_stride(sequence_length))},
            check_samples=CHECK_PAIRS,
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
        """What the served model must return for each (question, context): the answer dict."""
        encoded = self.encode(
            tokenizer, samples, batch_size=8, sequence_length=sequence_length, input_names=input_names
        )
        outputs = [infer(feed) for feed in encoded.feeds]
        max_answer_len = int(parameters.get("max_answer_len", MAX_ANSWER_LENGTH))
        return [a.to_dict() for a in self.decode(outputs, encoded.meta, max_answer_len=max_answer_len)]
