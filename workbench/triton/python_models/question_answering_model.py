"""Triton Python-backend model: question + context in, the answer span out, for an extractive question-answering
engine model (numpy and `tokenizers` only).

Written by the workbench's Triton export (`workbench.triton.bls.export_triton_bls`). For every (question, context)
it splits the context into windows as transformers' QuestionAnsweringPipeline does (`truncation="only_second"`,
`max_length` = `sequence_length`, `stride` overlapping tokens, overflowing windows kept), runs the engine model
named by `engine_model` on the windows through BLS (`pb_utils.InferenceRequest(...).exec()`, padded to
`sequence_length`, at most `engine_max_batch` windows per call), and decodes the best answer as the pipeline does
(top-1, at most `max_answer_len` tokens, aligned to words, equal answers across windows adding up, no impossible
answer). This is the workbench's own `workbench.tasks.question_answering.decode_answer`; the export checks on
sample pairs that both agree.

Outputs per pair: `ANSWER` (TYPE_STRING, [1]: the answer text, `context[START:END]`), `SCORE` (TYPE_FP64, [1]),
`START` and `END` (TYPE_INT64, [1]: character offsets into the context).

Config parameters (string values): `tokenizer_file`, `sequence_length`, `stride`, `pad_id`, `pad_type_id`,
`padding_side`, `truncation_side`, `cls_token_id`, `engine_model`, `engine_inputs` (JSON [[name, data type], ...]),
`engine_max_batch`, `max_answer_len`. Inputs: `QUESTION` and `CONTEXT` (TYPE_STRING, [1]). Each request is answered
on its own: a malformed one (an empty question, bytes that are not UTF-8...) gets its own error response.
"""

from __future__ import annotations

import json
import os

import numpy as np

QUESTION_INPUT = "QUESTION"
CONTEXT_INPUT = "CONTEXT"
START_LOGITS = "start_logits"
END_LOGITS = "end_logits"
ENCODING_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


def load_tokenizer(path, *, sequence_length, stride, padding_side="right", truncation_side="right"):
    """A `tokenizers.Tokenizer` that splits (question, context) into overlapping windows, unpadded."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    question_first = padding_side == "right"
    tokenizer.enable_truncation(
        max_length=int(sequence_length),
        stride=int(stride),
        strategy="only_second" if question_first else "only_first",
        direction=truncation_side,
    )
    tokenizer.no_padding()
    return tokenizer


def tokenizer_from(path, parameters):
    """`load_tokenizer` with the settings of the config's string parameters."""
    return load_tokenizer(
        path,
        sequence_length=parameters["sequence_length"],
        stride=parameters["stride"],
        padding_side=parameters.get("padding_side", "right"),
        truncation_side=parameters.get("truncation_side", "right"),
    )


def windows_of(tokenizer, question, context, padding_side="right"):
    """The windows of one pair (`tokenizers.Encoding`s), as transformers returns them with overflowing tokens."""
    if not question.strip():
        raise ValueError("the question is empty")
    if not context.strip():
        raise ValueError("the context is empty")
    question_first = padding_side == "right"
    first, second = (question, context) if question_first else (context, question)
    encoding = tokenizer.encode(first, second, add_special_tokens=True)
    return [encoding, *encoding.overflowing]


def _p_mask(encoding, question_first, cls_token_id):
    mask = np.array([int(s != 1) if question_first else 0 for s in encoding.sequence_ids], dtype=np.int64)
    if cls_token_id is not None:
        mask[np.asarray(encoding.ids) == cls_token_id] = 0
    return mask


def _decode_spans(start, end, topk, max_answer_len, undesired_tokens):
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
    desired = np.isin(starts, undesired_tokens.nonzero()) & np.isin(ends, undesired_tokens.nonzero())
    starts, ends = starts[desired], ends[desired]
    return starts, ends, candidates[0, starts, ends]


def _best_spans(start, end, p_mask, topk, max_answer_len):
    undesired_tokens = np.abs(np.array(p_mask) - 1) & np.ones_like(p_mask)
    masked = undesired_tokens == 0.0
    start = np.where(masked, -10000.0, start)
    end = np.where(masked, -10000.0, end)
    start = np.exp(start - start.max(axis=-1, keepdims=True))
    start = start / start.sum()
    end = np.exp(end - end.max(axis=-1, keepdims=True))
    end = end / end.sum()
    start[0, 0] = end[0, 0] = 0.0
    return _decode_spans(start, end, topk, max_answer_len, undesired_tokens)


def _word_chars(encoding, token, sequence):
    word = encoding.word_ids[token]
    if word is None:
        raise IndexError("the token belongs to no word")
    tokens = [
        i for i, (w, s) in enumerate(zip(encoding.word_ids, encoding.sequence_ids)) if w == word and s == sequence
    ]
    if not tokens:
        raise IndexError("the word is not in that sequence")
    return encoding.offsets[tokens[0]][0], encoding.offsets[tokens[-1]][1]


def best_answer(context, windows, logits, *, question_first=True, cls_token_id=None, max_answer_len=15):
    """The pipeline's answer dict {"score", "start", "end", "answer"} from the windows' (start, end) logits, each
    over the window's tokens only."""
    answers = []
    sequence = 1 if question_first else 0
    for encoding, (start_logits, end_logits) in zip(windows, logits):
        p_mask = _p_mask(encoding, question_first, cls_token_id)[None]
        starts, ends, scores = _best_spans(
            np.asarray(start_logits)[None], np.asarray(end_logits)[None], p_mask, 12, max_answer_len
        )
        for s, e, score in zip(starts, ends, scores):
            s, e = int(s), int(e)
            try:
                first, last = _word_chars(encoding, s, sequence)[0], _word_chars(encoding, e, sequence)[1]
            except IndexError:
                first, last = encoding.offsets[s][0], encoding.offsets[e][1]
            target = context[first:last]
            same = next((a for a in answers if a["answer"].lower() == target.lower()), None)
            if same is not None:
                same["score"] += score.item()
            else:
                answers.append({"score": score.item(), "start": int(first), "end": int(last), "answer": target})
    if not answers:
        raise ValueError("no answer span could be decoded")
    return max(answers, key=lambda a: a["score"])  # the first of equal scores, as the pipeline's stable sort


def _text(value):
    if isinstance(value, (bytes, bytearray)):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError(f"a text is not UTF-8: {exc}") from exc
    return str(value)


def run(tokenizer, rows, infer, parameters):
    """(question, context) pairs -> one answer dict each: windows, `infer(feeds)` on padded window batches, decode.

    Args:
        tokenizer: From `load_tokenizer`.
        rows: (question, context) pairs.
        infer: Runs the engine model on one feed dict (at most `engine_max_batch` windows).
        parameters: The config's string parameters.
    """
    length = int(parameters["sequence_length"])
    padding_side = parameters.get("padding_side", "right")
    question_first = padding_side == "right"
    cls_token_id = int(parameters["cls_token_id"]) if parameters.get("cls_token_id", "") != "" else None
    pad = {
        "input_ids": int(parameters["pad_id"]),
        "attention_mask": 0,
        "token_type_ids": int(parameters.get("pad_type_id", "0")),
    }
    names = [name for name, _ in json.loads(parameters["engine_inputs"])]
    step = int(parameters.get("engine_max_batch", 8))
    pairs = [(_text(q), _text(c)) for q, c in rows]
    windows = [windows_of(tokenizer, q, c, padding_side) for q, c in pairs]
    flat = [(i, w) for i, ws in enumerate(windows) for w in ws]
    logits = {i: [] for i in range(len(pairs))}
    for first in range(0, len(flat), step):
        chunk = flat[first : first + step]
        feeds = {n: np.full((len(chunk), length), pad[n], dtype=np.int64) for n in names}
        for r, (_, w) in enumerate(chunk):
            at = length - len(w.ids) if not question_first else 0
            for n in names:
                feeds[n][r, at : at + len(w.ids)] = getattr(w, ENCODING_FIELDS[n])
        out = infer(feeds)
        start, end = np.asarray(out[START_LOGITS]), np.asarray(out[END_LOGITS])
        for r, (i, w) in enumerate(chunk):
            at = length - len(w.ids) if not question_first else 0
            logits[i].append((start[r, at : at + len(w.ids)], end[r, at : at + len(w.ids)]))
    return [
        best_answer(
            c,
            windows[i],
            logits[i],
            question_first=question_first,
            cls_token_id=cls_token_id,
            max_answer_len=int(parameters.get("max_answer_len", "15")),
        )
        for i, (_, c) in enumerate(pairs)
    ]


class TritonPythonModel:
    def initialize(self, args):
        import triton_python_backend_utils as pb_utils

        config = json.loads(args["model_config"])
        self.parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        p = self.parameters
        path = os.path.join(args["model_repository"], args["model_version"], p.get("tokenizer_file", "tokenizer.json"))
        if not os.path.isfile(path):
            raise pb_utils.TritonModelException(f"tokenizer file {path} is missing; export the model repository again")
        self.tokenizer = tokenizer_from(path, p)
        self.engine_model = p["engine_model"]
        self.engine_inputs = [
            (name, pb_utils.triton_string_to_numpy(dtype)) for name, dtype in json.loads(p["engine_inputs"])
        ]

    def _infer(self, feeds):
        import triton_python_backend_utils as pb_utils

        inputs = [
            pb_utils.Tensor(name, np.ascontiguousarray(feeds[name].astype(dtype))) for name, dtype in self.engine_inputs
        ]
        options = {}
        if hasattr(pb_utils, "PreferredMemory"):  # engine outputs on the host, even from a GPU model
            options["preferred_memory"] = pb_utils.PreferredMemory(pb_utils.TRITONSERVER_MEMORY_CPU, 0)
        request = pb_utils.InferenceRequest(
            model_name=self.engine_model, inputs=inputs, requested_output_names=[START_LOGITS, END_LOGITS], **options
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"engine model {self.engine_model!r} failed: {response.error().message()}")
        return {
            name: pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in (START_LOGITS, END_LOGITS)
        }

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:  # each request on its own: one bad request does not fail the others
            try:
                questions = pb_utils.get_input_tensor_by_name(request, QUESTION_INPUT).as_numpy().reshape(-1).tolist()
                contexts = pb_utils.get_input_tensor_by_name(request, CONTEXT_INPUT).as_numpy().reshape(-1).tolist()
                if len(questions) != len(contexts):
                    raise ValueError(f"{len(questions)} questions but {len(contexts)} contexts")
                found = run(self.tokenizer, list(zip(questions, contexts)), self._infer, self.parameters)
                tensors = [
                    pb_utils.Tensor(
                        "ANSWER", np.array([[a["answer"].encode("utf-8")] for a in found], dtype=np.object_)
                    ),
                    pb_utils.Tensor("SCORE", np.array([[a["score"]] for a in found], dtype=np.float64)),
                    pb_utils.Tensor("START", np.array([[a["start"]] for a in found], dtype=np.int64)),
                    pb_utils.Tensor("END", np.array([[a["end"]] for a in found], dtype=np.int64)),
                ]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # noqa: BLE001 - a bad request gets its own error, the others their answers
                error = pb_utils.TritonError(f"question answering failed: {type(exc).__name__}: {exc}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
        return responses
