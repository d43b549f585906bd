"""Triton Python-backend model: classifier logits -> the predicted label and the class probabilities (numpy only).

Written by the workbench's Triton export for text-classification models. Probabilities are computed as
transformers' text-classification pipeline computes them: softmax for single-label models, sigmoid for
multi-label ones, the raw score for regression; the label is the checkpoint's `id2label` name of the argmax.
This is the workbench's own `workbench.tasks.classification.probabilities`.

Config parameters (string values): `labels` (a JSON list, index -> name) and `problem_type`. Input: the logits
(the first input in the config, [labels]). Outputs: `LABEL` (TYPE_STRING, [1]) and `PROBABILITIES` ([labels]).
Each request is answered on its own: a malformed one gets its own error response and the others their results.
"""

from __future__ import annotations

import json

import numpy as np


def probabilities(logits, problem_type="single_label_classification"):
    """Class probabilities from logits (float64), as the workbench computes them."""
    x = np.asarray(logits, dtype=np.float64)
    if problem_type == "multi_label_classification":
        return 1.0 / (1.0 + np.exp(-x))
    if problem_type == "regression" or x.shape[-1] == 1:
        return x
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.labels = json.loads(parameters.get("labels", "[]"))
        self.problem_type = parameters.get("problem_type", "single_label_classification")
        self.logits_name = config["input"][0]["name"]

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            try:
                tensor = pb_utils.get_input_tensor_by_name(request, self.logits_name)
                if tensor is None:
                    raise ValueError(f"the request has no input {self.logits_name!r}")
                logits = tensor.as_numpy()
                logits = logits.reshape(len(logits), -1)
                if logits.shape[-1] != len(self.labels):
                    raise ValueError(
                        f"{self.logits_name} has {logits.shape[-1]} classes, the config names {len(self.labels)} labels"
                    )
                probs = probabilities(logits, self.problem_type)
                names = np.array(
                    [[self.labels[i].encode("utf-8")] for i in np.argmax(logits, axis=-1)], dtype=np.object_
                )
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            pb_utils.Tensor("LABEL", names),
                            pb_utils.Tensor("PROBABILITIES", probs.astype(np.float32)),
                        ]
                    )
                )
            except Exception as exc:  # noqa: BLE001 (one bad request fails alone)
                text = " ".join(str(exc).split()).encode("ascii", errors="backslashreplace").decode("ascii")[:300]
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(text)))
        return responses
