"""Triton Python-backend model: text in, the task's outputs out, batching texts of any length together (BLS).

Written by the workbench's Triton export (`export_triton_ensemble` with `PaddingPolicy(batching="bls")`) as the
model clients call. Triton's dynamic batcher hands it every queued request; it tokenizes all their texts in one
call, groups the texts by padded length (`padding` "buckets": one group per bucket; "longest": one group padded
to the longest text; "fixed": one group padded to `sequence_length`), and for each group calls the engine model
once and then the post-processing model once through business-logic scripting (BLS), and returns each request
its rows. The engine so computes roughly the tokens of the texts, not of their padding, while still batching
texts from different clients. A request that cannot be tokenized (bytes that are not UTF-8, a wrong input) gets
its own error response; the others of its batch are answered.

Config parameters (string values): those of the tokenizer model (`sequence_length`, `pad_id`, `pad_token`,
`pad_type_id`, `padding_side`, `truncation_side`, `tokenizer_file`, `padding`, `buckets`), and
`engine_model` (the engine's name), `engine_inputs` (JSON: input name -> Triton data type, what the tokenizer
produces for it), `engine_outputs` (JSON list: outputs to fetch), `postprocess_model` (name, or "" to return the
engine's outputs), `postprocess_inputs` (JSON list: the post-processing model's inputs, each an engine output or
a tokenizer output of the same name), and `postprocess_inline` ("true": no post-processing model is called;
the module `postprocess_model.py` next to this file, a copy of the post-processing model's source, provides
`postprocess(inputs, parameters, output_names)`, run in this process with `postprocess_parameters`, JSON). Input:
`TEXT` (TYPE_STRING, dims [1]). Outputs: as the config lists them (the post-processing model's outputs); they
must have no sequence axis, since texts of one request may be padded differently.

Needs numpy and the `tokenizers` package; `tokenizer_model.py` is copied next to this file by the export.
"""

from __future__ import annotations

import json
import os

import numpy as np

try:  # inside the workbench package (export-time checks import it)
    from .tokenizer_model import (
        ENCODING_FIELDS,
        MAX_TEXT_BYTES,
        TEXT_INPUT,
        decode_text,
        encodings,
        load_tokenizer,
        padded_length,
        parse_buckets,
        stack,
    )
except ImportError:  # inside Triton: the Python backend puts this model's version folder on sys.path
    from tokenizer_model import (
        ENCODING_FIELDS,
        MAX_TEXT_BYTES,
        TEXT_INPUT,
        decode_text,
        encodings,
        load_tokenizer,
        padded_length,
        parse_buckets,
        stack,
    )


def group_rows(lengths, mode, max_length, buckets):
    """Padded length -> indices of the texts padded to it (one engine call each), in order of first appearance.

    Args:
        lengths: Tokens of each text after truncation.
        mode, max_length, buckets: The padding policy (see `tokenizer_model.padded_length`).
    """
    if not lengths:
        return {}
    if mode != "buckets":  # one call for all: "fixed" pads to max_length, "longest" to the longest text
        return {padded_length(max(lengths), mode, max_length, buckets): list(range(len(lengths)))}
    groups = {}
    for index, tokens in enumerate(lengths):
        groups.setdefault(padded_length(tokens, mode, max_length, buckets), []).append(index)
    return groups


class TritonPythonModel:
    def initialize(self, args):
        import triton_python_backend_utils as pb_utils

        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        path = os.path.join(folder, parameters.get("tokenizer_file", "tokenizer.json"))
        if not os.path.isfile(path):
            raise pb_utils.TritonModelException(f"tokenizer file {path} is missing; export the model repository again")
        self.engine = parameters["engine_model"]
        self.engine_inputs = {
            name: pb_utils.triton_string_to_numpy(data_type)
            for name, data_type in json.loads(parameters["engine_inputs"]).items()
        }
        self.engine_outputs = list(json.loads(parameters["engine_outputs"]))
        self.postprocess = parameters.get("postprocess_model", "")
        self.postprocess_inputs = list(json.loads(parameters.get("postprocess_inputs", "[]")))
        unknown = [n for n in self.engine_inputs if n not in ENCODING_FIELDS]
        if unknown:
            raise pb_utils.TritonModelException(f"engine inputs {unknown} are not among {sorted(ENCODING_FIELDS)}")
        # what the tokenizer must produce: the engine's inputs and what post-processing reads from it
        self.dtypes = dict(self.engine_inputs)
        for name in self.postprocess_inputs:
            if name in ENCODING_FIELDS and name not in self.dtypes:
                self.dtypes[name] = np.int64
        self.output_names = [o["name"] for o in config["output"]]
        self.output_dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"]) for o in config["output"]}
        self.inline = None  # the post-processing function, when it runs in this process
        if parameters.get("postprocess_inline", "false") == "true":
            import importlib

            self.inline = importlib.import_module("postprocess_model").postprocess
            self.inline_parameters = json.loads(parameters.get("postprocess_parameters", "{}"))
        self.max_text_bytes = int(parameters.get("max_text_bytes", MAX_TEXT_BYTES))
        if self.max_text_bytes < 1:
            raise pb_utils.TritonModelException(f"max_text_bytes must be positive, got {self.max_text_bytes}")
        self.padding = parameters.get("padding", "buckets")
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
            sequence_length=self.max_length,
            pad_id=parameters["pad_id"],
            pad_token=parameters["pad_token"],
            pad_type_id=parameters.get("pad_type_id", "0"),
            padding_side=self.pad["direction"],
            truncation_side=parameters.get("truncation_side", "right"),
            padding="none",
        )
        # BLS calls do not make Triton load the models they call: under explicit model control, load them here.
        for name in (self.engine, self.postprocess):
            if name and not pb_utils.is_model_ready(name):
                try:
                    pb_utils.load_model(model_name=name)
                except Exception as exc:  # noqa: BLE001 - not explicit model control: the server loads them all
                    pb_utils.Logger.log_info(f"{name} is not loaded yet and could not be loaded from here: {exc}")

    def _call(self, model, tensors, outputs):
        """One BLS call; the named outputs as numpy arrays (raises with Triton's message on an error)."""
        import triton_python_backend_utils as pb_utils

        request = pb_utils.InferenceRequest(
            model_name=model,
            inputs=[pb_utils.Tensor(n, np.ascontiguousarray(a)) for n, a in tensors.items()],
            requested_output_names=list(outputs),
        )
        response = request.exec()
        if response.has_error():
            raise RuntimeError(f"{model}: {response.error().message()}")
        return {n: pb_utils.get_output_tensor_by_name(response, n).as_numpy() for n in outputs}

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        errors = [None] * len(requests)
        owners, texts = [], []  # owners[i]: (request index, row) of texts[i]
        for index, request in enumerate(requests):
            tensor = pb_utils.get_input_tensor_by_name(request, TEXT_INPUT)
            if tensor is None:
                errors[index] = f"the request has no input {TEXT_INPUT!r}"
                continue
            values = tensor.as_numpy().reshape(-1).tolist()
            try:  # decode here, request by request: one bad request must not fail its batch-mates
                if not values:
                    raise ValueError(f"the request's {TEXT_INPUT} holds no text")
                decoded = [decode_text(v, i, self.max_text_bytes) for i, v in enumerate(values)]
            except (TypeError, ValueError) as exc:  # empty, not UTF-8, too long or not a string: the same checks
                errors[index] = f"bad request: {exc}"  # as the ensemble's tokenizer model
                continue
            owners += [(index, row) for row in range(len(decoded))]
            texts += decoded
        rows = [{} for _ in requests]  # request index -> {row: {output name: array}}
        if texts:
            try:
                encoded = encodings(self.tokenizer, texts)
            except Exception as exc:  # noqa: BLE001 - every request gets the reason as its error
                encoded = None
                for index, _row in owners:
                    errors[index] = f"tokenizing failed: {type(exc).__name__}: {exc}"
            groups = (
                {}
                if encoded is None
                else group_rows([len(e.ids) for e in encoded], self.padding, self.max_length, self.buckets)
            )
            for length, members in groups.items():
                try:
                    arrays = stack([encoded[i] for i in members], self.dtypes, length, self.pad)
                    outputs = self._call(self.engine, {n: arrays[n] for n in self.engine_inputs}, self.engine_outputs)
                    if self.postprocess or self.inline is not None:
                        feeds = {n: outputs[n] if n in outputs else arrays[n] for n in self.postprocess_inputs}
                        if self.inline is not None:
                            outputs = self.inline(feeds, self.inline_parameters, self.output_names)
                            outputs = {n: np.asarray(v).astype(self.output_dtypes[n]) for n, v in outputs.items()}
                        else:
                            outputs = self._call(self.postprocess, feeds, self.output_names)
                except Exception as exc:  # noqa: BLE001 - this group's requests fail, the others are answered
                    for i in members:
                        errors[owners[i][0]] = f"{type(exc).__name__}: {exc}"
                    continue
                for position, i in enumerate(members):
                    index, row = owners[i]
                    rows[index][row] = {n: outputs[n][position] for n in self.output_names}
        responses = []
        for index in range(len(requests)):
            mine = [rows[index][row] for row in sorted(rows[index])]
            if errors[index] is None and not mine:
                errors[index] = f"the request has no texts in {TEXT_INPUT!r}"
            if errors[index] is not None:
                responses.append(
                    pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(errors[index]))
                )
                continue
            tensors = [
                pb_utils.Tensor(n, np.ascontiguousarray(np.stack([r[n] for r in mine]))) for n in self.output_names
            ]
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses
