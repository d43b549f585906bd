"""Triton Python-backend model: token embeddings + attention mask -> sentence embeddings (numpy only).

Written by the workbench's Triton export (`export_triton_ensemble`). The embedding of a sentence is the mean of
its token vectors where `attention_mask` is 1 (padding is ignored), L2-normalised when the config parameter
`normalize` is "true", computed in float64 and returned in the output's configured data type. This is the
workbench's own `mean_pooled_embeddings`.

Config parameters (string values): `normalize` ("true" or "false"). Inputs: the token embeddings (the first
input in the config, [sequence, hidden]) and `attention_mask` ([sequence]). Output: the first output in the
config ([hidden]).

Each request is answered on its own: one whose shapes disagree gets an error response of its own (a TritonError
made for it alone) and the other requests of the batch their embeddings; execute() never raises.

`postprocess` is the same computation as a plain function, which the BLS model (bls_model.py) runs in its own
process instead of calling this model through Triton.
"""

from __future__ import annotations

import json

import numpy as np

MASK_INPUT = "attention_mask"


def mean_pool(hidden, attention_mask, normalize=True):
    """[batch, sequence, hidden] and [batch, sequence] -> [batch, hidden] float64, masked mean (L2-normalised)."""
    mask = np.asarray(attention_mask).astype(np.float64)[..., None]
    summed = (np.asarray(hidden).astype(np.float64) * mask).sum(axis=1)
    pooled = summed / np.clip(mask.sum(axis=1), 1e-9, None)
    if normalize:
        pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
    return pooled


def postprocess(inputs, parameters, output_names):
    """The model's work as a function: {hidden name: [batch, sequence, hidden], "attention_mask": [batch,
    sequence]} and the config's string parameters -> {first output name: [batch, hidden] float64}."""
    hidden_name = next(name for name in inputs if name != MASK_INPUT)
    normalize = str(parameters.get("normalize", "true")).lower() == "true"
    return {output_names[0]: mean_pool(inputs[hidden_name], inputs[MASK_INPUT], normalize)}


class TritonPythonModel:
    def initialize(self, args):
        import triton_python_backend_utils as pb_utils

        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.normalize = parameters.get("normalize", "true").lower() == "true"
        names = [i["name"] for i in config["input"]]
        if MASK_INPUT not in names or len(names) != 2:
            raise pb_utils.TritonModelException(
                f"the pooling model needs two inputs, the token embeddings and {MASK_INPUT!r}; its config has {names}"
            )
        self.hidden_name = next(n for n in names if n != MASK_INPUT)
        output = config["output"][0]
        self.output_name = output["name"]
        self.output_dtype = pb_utils.triton_string_to_numpy(output["data_type"])

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:  # requests may differ in sequence length when called directly: pool each
            try:
                hidden = _input(pb_utils, request, self.hidden_name)
                mask = _input(pb_utils, request, MASK_INPUT)
                if hidden.ndim != 3 or mask.ndim != 2 or hidden.shape[:2] != mask.shape:
                    raise ValueError(
                        f"{self.hidden_name} has shape {list(hidden.shape)} but {MASK_INPUT} has "
                        f"{list(mask.shape)}; expected [batch, sequence, hidden] and [batch, sequence]"
                    )
                pooled = mean_pool(hidden, mask, self.normalize).astype(self.output_dtype)
                responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, pooled)]))
            except Exception as exc:  # noqa: BLE001 (one bad request fails alone)
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(_error_text(f"pooling failed: {exc}"))
                    )
                )
        return responses


def _input(pb_utils, request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise ValueError(f"the request has no input {name!r}")
    return tensor.as_numpy()


def _error_text(what, limit=300):
    """An error message that is safe to send: ASCII, one line, at most `limit` characters."""
    text = " ".join(str(what).split()).encode("ascii", errors="backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."
