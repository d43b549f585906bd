"""Triton Python-backend model: text in, entities out (JSON), for a token-classification engine model (numpy and
`tokenizers` only).

Written by the workbench's Triton export (`workbench.triton.bls.export_triton_bls`). For every text it tokenizes
with offsets (truncated and padded to `sequence_length`, exactly as the workbench measured accuracy), runs the
engine model named by `engine_model` through BLS (`pb_utils.InferenceRequest(...).exec()`, in batches of at most
`engine_max_batch` texts), and decodes the `logits` into entities as transformers' TokenClassificationPipeline does
for the configured `aggregation_strategy`. This is the workbench's own
`workbench.tasks.token_classification.decode_entities`; the export checks on sample texts that both agree.

Output `ENTITIES` (TYPE_STRING, [1]) per text: a JSON list of the pipeline's dicts, `{"entity_group", "score",
"word", "start", "end"}` (strategy "none": `{"entity", "score", "index", "word", "start", "end"}`), with character
offsets into the text.

Config parameters (string values): `tokenizer_file`, `sequence_length`, `pad_id`, `pad_token`, `pad_type_id`,
`padding_side`, `truncation_side`, `engine_model`, `engine_inputs` (JSON [[name, data type], ...]),
`engine_max_batch`, `labels` (JSON list), `aggregation_strategy`, `ignore_labels` (JSON list). Input: `TEXT`
(TYPE_STRING, [1]). Each request is answered on its own: a malformed one gets its own error response.
"""

from __future__ import annotations

import json
import os

import numpy as np

TEXT_INPUT = "TEXT"
OUTPUT = "ENTITIES"
LOGITS = "logits"
STRATEGIES = ("none", "simple", "first", "average", "max")
#: engine input name -> attribute of a `tokenizers.Encoding`
ENCODING_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


def load_tokenizer(
    path, *, sequence_length, pad_id, pad_token, pad_type_id=0, padding_side="right", truncation_side="right"
):
    """A `tokenizers.Tokenizer` that truncates and pads every text to `sequence_length`, as the workbench does."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=int(sequence_length), direction=truncation_side)
    tokenizer.enable_padding(
        direction=padding_side,
        length=int(sequence_length),
        pad_id=int(pad_id),
        pad_type_id=int(pad_type_id),
        pad_token=pad_token,
    )
    return tokenizer


def tokenizer_from(path, parameters):
    """`load_tokenizer` with the settings of the config's string parameters."""
    return load_tokenizer(
        path,
        sequence_length=parameters["sequence_length"],
        pad_id=parameters["pad_id"],
        pad_token=parameters["pad_token"],
        pad_type_id=parameters.get("pad_type_id", "0"),
        padding_side=parameters.get("padding_side", "right"),
        truncation_side=parameters.get("truncation_side", "right"),
    )


def _softmax(logits):
    x = np.asarray(logits)
    if x.dtype == np.float16:
        x = x.astype(np.float32)
    shifted = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def _join(tokenizer, tokens):
    decoder = tokenizer.decoder
    return decoder.decode(tokens) if decoder is not None else " ".join(tokens)


def pieces_of(tokenizer, text, encoding):
    """The non-special tokens of one text: (index, word, start, end, is_subword), as the pipeline gathers them."""
    word_aware = bool(getattr(tokenizer.model, "continuing_subword_prefix", None))
    unk_token = getattr(tokenizer.model, "unk_token", None)
    unk_id = tokenizer.token_to_id(unk_token) if unk_token else None
    pieces = []
    for index, token_id in enumerate(encoding.ids):
        if encoding.special_tokens_mask[index]:
            continue
        word = tokenizer.id_to_token(int(token_id))
        start, end = encoding.offsets[index]
        word_ref = text[start:end]
        if word_aware:
            is_subword = len(word) != len(word_ref)
        else:
            is_subword = start > 0 and " " not in text[start - 1 : start + 1]
        if unk_id is not None and int(token_id) == unk_id:
            word, is_subword = word_ref, False
        pieces.append((index, word, int(start), int(end), is_subword))
    return pieces


def _tag(label):
    if label.startswith("B-"):
        return "B", label[2:]
    if label.startswith("I-"):
        return "I", label[2:]
    return "I", label


def _group(tokenizer, items):
    """Adjacent (label, score, word, start, end) items with the same tag merge unless the next is a B-."""

    def close(run):
        score = np.mean(np.nanmean([r[1] for r in run]))
        return {
            "entity_group": run[0][0].split("-", 1)[-1],
            "score": float(score),
            "word": _join(tokenizer, [r[2] for r in run]),
            "start": run[0][3],
            "end": run[-1][4],
        }

    groups, run = [], []
    for item in items:
        if run:
            bi, tag = _tag(item[0])
            if not (tag == _tag(run[-1][0])[1] and bi != "B"):
                groups.append(close(run))
                run = []
        run.append(item)
    if run:
        groups.append(close(run))
    return groups


def _word(tokenizer, group, strategy, labels):
    word = _join(tokenizer, [piece[1] for piece, _ in group])
    if strategy == "first":
        scores = group[0][1]
    elif strategy == "max":
        scores = max(group, key=lambda item: item[1].max())[1]
    else:  # average
        scores = np.nanmean(np.stack([s for _, s in group]), axis=0)
    idx = scores.argmax()
    return labels[int(idx)], scores[idx], word, group[0][0][2], group[-1][0][3]


def entities(tokenizer, text, encoding, logits, labels, strategy="simple", ignore_labels=("O",)):
    """One text's entities (the pipeline's dicts) from its logits [sequence, labels]."""
    if strategy not in STRATEGIES:
        raise ValueError(f"aggregation_strategy {strategy!r} is not one of {list(STRATEGIES)}")
    scores = _softmax(logits)
    pieces = pieces_of(tokenizer, text, encoding)
    if strategy in ("none", "simple"):
        items = []
        for index, word, start, end, _ in pieces:
            idx = scores[index].argmax()
            items.append((labels[int(idx)], scores[index][idx], word, start, end, index))
        if strategy == "none":
            found = [
                {"entity": label, "score": float(score), "index": index, "word": word, "start": start, "end": end}
                for label, score, word, start, end, index in items
            ]
        else:
            found = _group(tokenizer, [item[:5] for item in items])
    else:
        words, group = [], []
        for piece in pieces:
            if group and not piece[4]:
                words.append(_word(tokenizer, group, strategy, labels))
                group = []
            group.append((piece, scores[piece[0]]))
        if group:
            words.append(_word(tokenizer, group, strategy, labels))
        found = _group(tokenizer, words)
    ignored = set(ignore_labels)
    return [e for e in found if e.get("entity", e.get("entity_group")) not in ignored]


def texts_of(values):
    """Request values (bytes or str) -> texts; raises ValueError for bytes that are not UTF-8 or an empty text
    (one of white space only has no tokens to label: refused, as the embedding models refuse it)."""
    texts = []
    for index, value in enumerate(values):
        if isinstance(value, (bytes, bytearray)):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ValueError(f"text {index} is not UTF-8: {exc}") from exc
        if not str(value).strip():
            raise ValueError(f"text {index} is empty (or only white space): there is nothing to label; send a text")
        texts.append(str(value))
    return texts


def encode(tokenizer, texts, input_names):
    """Texts -> (encodings, feeds: input name -> int64 [len(texts), sequence_length])."""
    encodings = tokenizer.encode_batch(list(texts), add_special_tokens=True)
    feeds = {
        name: np.array([getattr(e, ENCODING_FIELDS[name]) for e in encodings], dtype=np.int64).reshape(
            len(encodings), -1
        )
        for name in input_names
    }
    return encodings, feeds


def run(tokenizer, rows, infer, parameters):
    """Texts -> one JSON-ready entity list per text: tokenize, `infer(feeds) -> {"logits": ...}`, decode.

    Args:
        tokenizer: From `load_tokenizer`.
        rows: The texts.
        infer: Runs the engine model on one feed dict (at most `engine_max_batch` rows).
        parameters: The config's string parameters (labels, aggregation_strategy, ignore_labels,
            engine_inputs, engine_max_batch).
    """
    labels = json.loads(parameters["labels"])
    strategy = parameters.get("aggregation_strategy", "simple")
    ignore = json.loads(parameters.get("ignore_labels", '["O"]'))
    names = [name for name, _ in json.loads(parameters["engine_inputs"])]
    step = int(parameters.get("engine_max_batch", 8))
    texts = list(rows)
    found = []
    for first in range(0, len(texts), step):
        chunk = texts[first : first + step]
        encodings, feeds = encode(tokenizer, chunk, names)
        logits = np.asarray(infer(feeds)[LOGITS])
        for row, text in enumerate(chunk):
            found.append(entities(tokenizer, text, encodings[row], logits[row], labels, strategy, ignore))
    return found


class TritonPythonModel:
    def initialize(self, args):
        import triton_python_backend_utils as pb_utils

        config = json.loads(args["model_config"])
        self.parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        p = self.parameters
        path = os.path.join(args["model_repository"], args["model_version"], p.get("tokenizer_file", "tokenizer.json"))
        if not os.path.isfile(path):
            raise pb_utils.TritonModelException(f"tokenizer file {path} is missing; export the model repository again")
        if p.get("aggregation_strategy", "simple") not in STRATEGIES:
            raise pb_utils.TritonModelException(
                f"aggregation_strategy {p['aggregation_strategy']!r} is not one of {list(STRATEGIES)}"
            )
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
            model_name=self.engine_model, requested_output_names=[LOGITS], inputs=inputs, **options
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"engine model {self.engine_model!r} failed: {response.error().message()}")
        return {LOGITS: pb_utils.get_output_tensor_by_name(response, LOGITS).as_numpy()}

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:  # each request on its own: one bad request does not fail the others
            try:
                values = pb_utils.get_input_tensor_by_name(request, TEXT_INPUT).as_numpy().reshape(-1).tolist()
                found = run(self.tokenizer, texts_of(values), self._infer, self.parameters)
                out = np.array([[json.dumps(e, ensure_ascii=False).encode("utf-8")] for e in found], dtype=np.object_)
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(OUTPUT, out)]))
            except Exception as exc:  # noqa: BLE001 - a bad request gets its own error, the others their answers
                error = pb_utils.TritonError(f"token classification failed: {type(exc).__name__}: {exc}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
        return responses
