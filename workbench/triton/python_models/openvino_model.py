"""A Python-based Triton backend named `openvino`: serves an OpenVINO IR with the openvino package on the CPU.

Triton's real openvino backend is a C++ shared library that is not part of the server in the `nvidia-pytriton`
wheel. The workbench's `TritonServer` puts this file at `<backends>/openvino/model.py`, so Triton resolves
`backend: "openvino"` to it and an exported `config.pbtxt` is served unchanged, as a deployment with the real
backend reads it. Never part of an exported repository.

What it checks, like the real backend: the config names every model input and no other, the config's outputs are
model outputs, and their data types agree. It does not auto-complete a missing config (neither does the real
backend). It reads `<version>/<default_model_filename or model.xml>` (the weights: the .bin beside it) and honours
the real backend's parameters INFERENCE_NUM_THREADS, NUM_STREAMS, PERFORMANCE_HINT and
INFERENCE_PRECISION_HINT.

Every request of a batch the dynamic batcher hands over is answered on its own (one inference per request).
"""

from __future__ import annotations

import json
import os

import numpy as np

#: Triton config data type -> OpenVINO element type name.
TRITON_TO_OPENVINO = {
    "TYPE_BOOL": "boolean",
    "TYPE_UINT8": "u8",
    "TYPE_UINT16": "u16",
    "TYPE_UINT32": "u32",
    "TYPE_UINT64": "u64",
    "TYPE_INT8": "i8",
    "TYPE_INT16": "i16",
    "TYPE_INT32": "i32",
    "TYPE_INT64": "i64",
    "TYPE_FP16": "f16",
    "TYPE_FP32": "f32",
    "TYPE_FP64": "f64",
}
#: The real backend's parameters this stand-in honours; OpenVINO takes their string values as they are.
PARAMETERS = ("INFERENCE_NUM_THREADS", "NUM_STREAMS", "PERFORMANCE_HINT", "INFERENCE_PRECISION_HINT")


def check_io(config, model):
    """Problems between a Triton model config (as JSON) and an openvino Model's ports, as readable lines."""
    ports = {
        "input": {p.get_any_name(): p for p in model.inputs},
        "output": {p.get_any_name(): p for p in model.outputs},
    }
    problems = []
    for kind in ("input", "output"):
        for tensor in config.get(kind, []):
            name = tensor["name"]
            port = ports[kind].get(name)
            if port is None:
                problems.append(f"config {kind} {name!r} is not a model {kind} (model {kind}s: {sorted(ports[kind])})")
                continue
            element = port.get_element_type().get_type_name()
            if TRITON_TO_OPENVINO.get(tensor["data_type"]) != element:
                problems.append(
                    f"config {kind} {name!r} has data_type {tensor['data_type']} but the model has {element}"
                )
    missing = sorted(set(ports["input"]) - {t["name"] for t in config.get("input", [])})
    if missing:
        problems.append(f"model inputs {missing} are not in the config")
    return problems


def compile_properties(parameters):
    """OpenVINO compile properties from the config's parameters (name -> string value)."""
    return {key: parameters[key] for key in PARAMETERS if key in parameters}


class TritonPythonModel:
    def initialize(self, args):
        import openvino

        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        filename = config.get("default_model_filename") or "model.xml"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        if not os.path.isfile(path):
            raise RuntimeError(f"model file {path} does not exist")
        core = openvino.Core()
        model = core.read_model(path)
        problems = check_io(config, model)
        if problems:
            raise RuntimeError(f"config.pbtxt does not match {filename}: " + "; ".join(problems))
        self.compiled = core.compile_model(model, "CPU", compile_properties(parameters))
        self.request = self.compiled.create_infer_request()
        self.input_names = [t["name"] for t in config["input"]]
        self.outputs = [(t["name"], self.compiled.output(t["name"])) for t in config["output"]]

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        responses = []
        for request in requests:
            feeds = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_names}
            try:
                results = self.request.infer(feeds)
                # the request's output buffers are reused by the next inference: copy before answering
                tensors = [
                    pb_utils.Tensor(name, np.ascontiguousarray(np.array(results[port], copy=True)))
                    for name, port in self.outputs
                ]
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except Exception as exc:  # noqa: BLE001 - any failure becomes this request's error response
                error = pb_utils.TritonError(f"openvino failed: {type(exc).__name__}: {exc}")
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=error))
        return responses
