"""Triton Python-backend model: text in, the model's integer inputs out, padded to a fixed length.

Written by the workbench's Triton export (`export_triton_ensemble`). The tokenizer is read from `tokenizer.json`
in this model's version folder (copied there at export time; nothing is downloaded). Every output is padded and
truncated to the same `sequence_length`, so requests from different clients have the same shape and Triton's
dynamic batcher can merge them for the model that follows.

Config parameters (string values): `sequence_length`, `pad_id`, `pad_token`, `pad_type_id`, `padding_side`,
`truncation_side`, `tokenizer_file`. Input: `TEXT` (TYPE_STRING, dims [1]). Outputs: any of `input_ids`,
`attention_mask`, `token_type_ids`, with the data type the config gives them.

Needs numpy and the `tokenizers` package in the server's Python environment.
"""

from __future__ import annotations

import json
import os

import numpy as np

TEXT_INPUT = "TEXT"
#: Output name -> attribute of a `tokenizers.Encoding`.
ENCODING_FIELDS = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


def load_tokenizer(path, *, sequence_length, pad_id, pad_token, pad_type_id=0, padding_side="right",
                   truncation_side="right"):
    """A `tokenizers.Tokenizer` from tokenizer.json that truncates and pads every text to `sequence_length`."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.enable_truncation(max_length=int(sequence_length), direction=truncation_side)
    tokenizer.enable_padding(direction=padding_side, length=int(sequence_length), pad_id=int(pad_id),
                             pad_type_id=int(pad_type_id), pad_token=pad_token)
    return tokenizer


def encode(tokenizer, texts, dtypes):
    """Tokenize `texts` (str or UTF-8 bytes) into arrays [len(texts), sequence_length], one per output name.

    Args:
        tokenizer: From `load_tokenizer`.
        texts: The texts.
        dtypes: Output name (a key of ENCODING_FIELDS) -> numpy dtype.
    """
    decoded = [t.decode("utf-8") if isinstance(t, (bytes, bytearray)) else str(t) for t in texts]
    encodings = tokenizer.encode_batch(decoded, add_special_tokens=True)
    return {
        name: np.array([getattr(e, ENCODING_FIELDS[name]) for e in encodings], dtype=dtype).reshape(len(decoded), -1)
        for name, dtype in dtypes.items()
    }


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
        self.tokenizer = load_tokenizer(
            path,
            sequence_length=parameters["sequence_length"],
            pad_id=parameters["pad_id"],
            pad_token=parameters["pad_token"],
            pad_type_id=parameters.get("pad_type_id", "0"),
            padding_side=parameters.get("padding_side", "right"),
            truncation_side=parameters.get("truncation_side", "right"),
        )

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        texts, counts = [], []
        for request in requests:
            values = pb_utils.get_input_tensor_by_name(request, TEXT_INPUT).as_numpy().reshape(-1)
            texts.extend(values.tolist())
            counts.append(len(values))
        try:  # all requests in one call: the fast tokenizer encodes a batch in parallel
            arrays = encode(self.tokenizer, texts, self.dtypes)
        except Exception as exc:  # e.g. bytes that are not UTF-8: fail each request with the reason
            error = pb_utils.TritonError(f"tokenizing failed: {type(exc).__name__}: {exc}")
            return [pb_utils.InferenceResponse(output_tensors=[], error=error) for _ in requests]
        responses, start = [], 0
        for count in counts:
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(array[start:start + count]))
                       for name, array in arrays.items()]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            start += count
        return responses
