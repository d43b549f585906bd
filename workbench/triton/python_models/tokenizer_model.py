"""Triton Python-backend model: text in, the model's integer inputs out, padded by the served padding policy.

Written by the workbench's Triton export (`export_triton_ensemble`). The tokenizer is read from `tokenizer.json`
in this model's version folder (copied there at export time; nothing is downloaded). Texts are truncated to
`sequence_length`; with `padding` "fixed" every output is padded to it, so requests from different clients have
the same shape and Triton's dynamic batcher can merge any of them for the model that follows; with "buckets"
each request is padded to the smallest of `buckets` that holds its longest text (the batcher merges requests of
one bucket); with "longest" to its longest text (see workbench/triton/padding.py).

Config parameters (string values): `sequence_length`, `pad_id`, `pad_token`, `pad_type_id`, `padding_side`,
`truncation_side`, `tokenizer_file`, `padding` (default "fixed") and `buckets` (comma-separated). Input: `TEXT`
(TYPE_STRING, dims [1]). Outputs: any of `input_ids`, `attention_mask`, `token_type_ids`, with the data type the
config gives them. Optional: `max_text_bytes`.

What a request may hold: one or more texts, each UTF-8 bytes of at most `max_text_bytes` (default
MAX_TEXT_BYTES, 64 KiB; longer texts are refused rather than tokenized, since every text is truncated to
`sequence_length` tokens anyway). An empty text (or one of white space only) is refused: its encoding would
be the special tokens alone, and its "embedding" an answer that means nothing. A request with a text that is
empty, not UTF-8, too long, or not a string gets an error response naming the text's index; the other
requests of the same dynamic batch get their results.
Every error response has a TritonError of its own: responses that share one error object crash tritonserver's
Python backend.

Needs numpy and the `tokenizers` package in the server's Python environment.
"""

from __future__ import annotations

import json
import os

import numpy as np

TEXT_INPUT = "TEXT"
#: Output name -> attribute of a `tokenizers.Encoding`.
ENCODING_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}
#: The longest text a request may hold, in UTF-8 bytes, unless the config's `max_text_bytes` says otherwise.
MAX_TEXT_BYTES = 65536
_ERROR_CHARS = 300


PADDING_MODES = ("fixed", "buckets", "longest")


def padded_length(tokens, mode, max_length, buckets=()):
    """The length a group of texts is padded to when its longest text has `tokens` tokens (after truncation).

    "fixed": `max_length`; "longest": `tokens`; "buckets": the smallest of `buckets` (increasing, the last one
    `max_length`) that holds `tokens`.
    """
    tokens = max(1, min(int(tokens), int(max_length)))
    if mode == "fixed":
        return int(max_length)
    if mode == "longest":
        return tokens
    if mode != "buckets":
        raise ValueError(f"padding mode {mode!r} is not one of {PADDING_MODES}")
    return next((int(b) for b in buckets if int(b) >= tokens), int(max_length))


def parse_buckets(text):
    """ "16,32,64,128" -> (16, 32, 64, 128)."""
    return tuple(int(b) for b in str(text).split(",") if b.strip())


def load_tokenizer(
    path,
    *,
    sequence_length,
    pad_id,
    pad_token,
    pad_type_id=0,
    padding_side="right",
    truncation_side="right",
    padding="fixed",
):
    """A `tokenizers.Tokenizer` from tokenizer.json that truncates every text to `sequence_length` and, with
    padding "fixed", pads it to `sequence_length` (other modes pad per group: `encode(..., length=)`)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=int(sequence_length), direction=truncation_side)
    tokenizer.no_padding()
    if padding == "fixed":
        tokenizer.enable_padding(
            direction=padding_side,
            length=int(sequence_length),
            pad_id=int(pad_id),
            pad_type_id=int(pad_type_id),
            pad_token=pad_token,
        )
    return tokenizer


def encodings(tokenizer, texts):
    """`tokenizers.Encoding`s of `texts` (str or UTF-8 bytes; bytes that are not UTF-8 raise UnicodeDecodeError)."""
    decoded = [t.decode("utf-8") if isinstance(t, (bytes, bytearray)) else str(t) for t in texts]
    return tokenizer.encode_batch(decoded, add_special_tokens=True)


def stack(group, dtypes, length=None, pad=None):
    """Arrays [len(group), length], one per output name, from encodings padded to `length` with `pad`
    (Encoding.pad's keyword arguments: direction, pad_id, pad_type_id, pad_token); no padding with None."""
    if length is not None:
        for encoding in group:
            encoding.pad(int(length), **(pad or {}))
    return {
        name: np.array([getattr(e, ENCODING_FIELDS[name]) for e in group], dtype=dtype).reshape(len(group), -1)
        for name, dtype in dtypes.items()
    }


def encode(tokenizer, texts, dtypes, *, length=None, pad=None):
    """Tokenize `texts` (str or UTF-8 bytes) into arrays [len(texts), tokens], one per output name.

    Args:
        tokenizer: From `load_tokenizer`.
        texts: The texts.
        dtypes: Output name (a key of ENCODING_FIELDS) -> numpy dtype.
        length: Pad every text to this many tokens (for tokenizers loaded without fixed padding).
        pad: Encoding.pad's keyword arguments (direction, pad_id, pad_type_id, pad_token), with `length`.
    """
    return stack(encodings(tokenizer, texts), dtypes, length, pad)


def decode_text(value, index, max_text_bytes):
    """One text of a request as str, or raise ValueError saying what is wrong with it (ASCII only)."""
    if isinstance(value, str):
        value = value.encode("utf-8", errors="surrogatepass")
    if not isinstance(value, (bytes, bytearray, np.bytes_)):
        raise TypeError(f"text {index} is a {type(value).__name__}, not a string (send TYPE_STRING / BYTES)")
    if len(value) > max_text_bytes:
        raise ValueError(
            f"text {index} is {len(value)} bytes long; at most {max_text_bytes} bytes are accepted "
            "(texts are truncated to the model's sequence length anyway: send less)"
        )
    try:
        text = bytes(value).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"text {index} is not UTF-8: byte {exc.start} (0x{value[exc.start]:02x}) cannot be "
            "decoded; encode texts as UTF-8"
        ) from None
    if not text.strip():
        # "" or only spaces would be served as the embedding of the special tokens alone: an answer that means
        # nothing, which a client would take for a real one
        raise ValueError(f"text {index} is empty (or only white space): there is nothing to encode; send a text")
    return text


def error_text(what):
    """An error message that is safe to send: ASCII, one line, at most _ERROR_CHARS characters."""
    text = " ".join(str(what).split()).encode("ascii", errors="backslashreplace").decode("ascii")
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 3] + "..."


class TritonPythonModel:
    def initialize(self, args):
        import triton_python_backend_utils as pb_utils

        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(folder, parameters.get("tokenizer_file", "tokenizer.json"))
        if not os.path.isfile(path):
            raise pb_utils.TritonModelException(f"tokenizer file {path} is missing; export the model repository again")
        unknown = [o["name"] for o in config["output"] if o["name"] not in ENCODING_FIELDS]
        if unknown:
            raise pb_utils.TritonModelException(f"tokenizer outputs {unknown} are not among {sorted(ENCODING_FIELDS)}")
        self.dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]}
        self.padding = parameters.get("padding", "fixed")
        self.max_length = int(parameters["sequence_length"])
        self.buckets = parse_buckets(parameters.get("buckets", ""))
        self.pad = {
            "direction": parameters.get("padding_side", "right"),
            "pad_id": int(parameters["pad_id"]),
            "pad_type_id": int(parameters.get("pad_type_id", "0")),
            "pad_token": parameters["pad_token"],
        }
        self.tokenizer = load_tokenizer(
            path,
            sequence_length=parameters["sequence_length"],
            pad_id=parameters["pad_id"],
            pad_token=parameters["pad_token"],
            pad_type_id=parameters.get("pad_type_id", "0"),
            padding_side=parameters.get("padding_side", "right"),
            truncation_side=parameters.get("truncation_side", "right"),
            padding=self.padding,
        )
        self.max_text_bytes = int(parameters.get("max_text_bytes", MAX_TEXT_BYTES))
        if self.max_text_bytes < 1:
            raise pb_utils.TritonModelException(f"max_text_bytes must be positive, got {self.max_text_bytes}")

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        try:
            return self._execute(pb_utils, requests)
        except Exception as exc:  # noqa: BLE001 (never take the server down)
            return [
                pb_utils.InferenceResponse(
                    output_tensors=[],
                    error=pb_utils.TritonError(error_text(f"tokenizing failed: {type(exc).__name__}: {exc}")),
                )
                for _ in requests
            ]

    def _execute(self, pb_utils, requests):
        # Each request's texts are checked on their own; the good ones are tokenized together (the fast
        # tokenizer encodes a batch in parallel), split back per request and padded per request by the policy.
        texts, problems = [], []
        for request in requests:
            try:
                tensor = pb_utils.get_input_tensor_by_name(request, TEXT_INPUT)
                if tensor is None:
                    raise ValueError(f"the request has no {TEXT_INPUT} input")
                values = tensor.as_numpy().reshape(-1)
                if values.size == 0:
                    raise ValueError(f"the request's {TEXT_INPUT} holds no text")
                texts.append([decode_text(v, i, self.max_text_bytes) for i, v in enumerate(values.tolist())])
                problems.append(None)
            except Exception as exc:  # noqa: BLE001
                texts.append(None)
                problems.append(error_text(f"bad request: {exc}"))
        good = [i for i, problem in enumerate(problems) if problem is None]
        arrays_of = {}
        try:
            if not good:
                return self._responses(pb_utils, problems, arrays_of)
            encoded = encodings(self.tokenizer, [t for i in good for t in texts[i]])
            start = 0
            for i in good:
                arrays_of[i] = self._arrays(encoded[start : start + len(texts[i])])
                start += len(texts[i])
        except Exception:  # noqa: BLE001 (find the request, one at a time)
            for i in good:
                try:
                    arrays_of[i] = self._arrays(encodings(self.tokenizer, texts[i]))
                except Exception as exc:  # noqa: BLE001
                    problems[i] = error_text(f"tokenizing failed: {type(exc).__name__}: {exc}")
        return self._responses(pb_utils, problems, arrays_of)

    def _arrays(self, group):
        length = None
        if self.padding != "fixed":  # each request padded by the policy (one shape per request)
            length = padded_length(
                max((len(e.ids) for e in group), default=1), self.padding, self.max_length, self.buckets
            )
        return stack(group, self.dtypes, length, self.pad)

    @staticmethod
    def _responses(pb_utils, problems, arrays_of):
        responses = []
        for i, problem in enumerate(problems):
            if problem is not None:  # a TritonError of its own for every response
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(problem)))
            else:
                tensors = [pb_utils.Tensor(name, np.ascontiguousarray(array)) for name, array in arrays_of[i].items()]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
