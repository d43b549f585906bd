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
config gives them.

Needs numpy and the `tokenizers` package in the server's Python environment.
"""

from __future__ import annotations

import json
import os

import numpy as np

TEXT_INPUT = "TEXT"
#: Output name -> attribute of a `tokenizers.Encoding`.
ENCODING_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


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
    """"16,32,64,128" -> (16, 32, 64, 128)."""
    return tuple(int(b) for b in str(text).split(",") if b.strip())


def load_tokenizer(path, *, sequence_length, pad_id, pad_token, pad_type_id=0, padding_side="right",
                   truncation_side="right", padding="fixed"):
    """A `tokenizers.Tokenizer` from tokenizer.json that truncates every text to `sequence_length` and, with
    padding "fixed", pads it to `sequence_length` (other modes pad per group: `encode(..., length=)`)."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=int(sequence_length), direction=truncation_side)
    tokenizer.no_padding()
    if padding == "fixed":
        tokenizer.enable_padding(direction=padding_side, length=int(sequence_length), pad_id=int(pad_id),
                                 pad_type_id=int(pad_type_id), pad_token=pad_token)
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
    return {name: np.array([getattr(e, ENCODING_FIELDS[name]) for e in group], dtype=dtype).reshape(len(group), -1)
            for name, dtype in dtypes.items()}


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
            raise pb_utils.TritonModelException(
                f"tokenizer outputs {unknown} are not among {sorted(ENCODING_FIELDS)}")
        self.dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]}
        self.padding = parameters.get("padding", "fixed")
        self.max_length = int(parameters["sequence_length"])
        self.buckets = parse_buckets(parameters.get("buckets", ""))
        self.pad = {"direction": parameters.get("padding_side", "right"), "pad_id": int(parameters["pad_id"]),
                    "pad_type_id": int(parameters.get("pad_type_id", "0")), "pad_token": parameters["pad_token"]}
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

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        texts, counts = [], []
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, TEXT_INPUT).as_numpy().reshape(-1)
            texts.extend(values.tolist())
            counts.append(len(values))
        try:  # all requests in one call: the fast tokenizer encodes a batch in parallel
            encoded = encodings(self.tokenizer, texts)
        except Exception as exc:  # e.g. bytes that are not UTF-8: fail each request with the reason
            error = pb_utils.TritonError(f"tokenizing failed: {type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for count in counts:
            group = encoded[start:start + count]
            length = None
            if self.padding != "fixed":  # each request padded by the policy (one shape per request)
                length = padded_length(max((len(e.ids) for e in group), default=1), self.padding,
                                       self.max_length, self.buckets)
            arrays = stack(group, self.dtypes, length, self.pad)
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(array)) for name, array in arrays.items()]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += count
        return responses
