"""A Python-based Triton backend named `onnxruntime`: serves an ONNX model with onnxruntime on the CPU.

Triton's real onnxruntime backend is a C++ shared library that is not part of the server in the
`nvidia-pytriton` wheel. The workbench's `TritonServer` puts this file at `<backends>/onnxruntime/model.py`, so
Triton resolves `backend: "onnxruntime"` to it and an exported `config.pbtxt` is served unchanged, exactly as a
GPU deployment with the real backend would read it. Never part of an exported repository.

What it checks, like the real backend: the config's inputs are graph inputs, every required graph input is in
the config, the config's outputs are graph outputs, and their data types agree. It does not auto-complete a
missing config. It honours `default_model_filename` and the parameters `intra_op_thread_count` and
`inter_op_thread_count`; execution accelerators (TensorRT, OpenVINO) are ignored on the CPU.

Requests that the dynamic batcher hands over together run as one onnxruntime call when their shapes agree
beyond the batch dimension, as the real backend does. If that call fails, each request runs on its own, so a
bad request (ids outside the vocabulary, say) gets an error response of its own (a TritonError made for it
alone) and the others of the batch their results; execute() never raises.
"""

from __future__ import annotations

import json
import os

import numpy as np

#: Triton config data type -> onnxruntime type string.
TRITON_TO_ORT = {
    "TYPE_BOOL": "tensor(bool)",
    "TYPE_UINT8": "tensor(uint8)",
    "TYPE_UINT16": "tensor(uint16)",
    "TYPE_UINT32": "tensor(uint32)",
    "TYPE_UINT64": "tensor(uint64)",
    "TYPE_INT8": "tensor(int8)",
    "TYPE_INT16": "tensor(int16)",
    "TYPE_INT32": "tensor(int32)",
    "TYPE_INT64": "tensor(int64)",
    "TYPE_FP16": "tensor(float16)",
    "TYPE_FP32": "tensor(float)",
    "TYPE_FP64": "tensor(double)",
    "TYPE_STRING": "tensor(string)",
}


def check_io(config, session):
    """Problems between a Triton model config (as JSON) and an onnxruntime session's graph, as readable lines."""
    graph_inputs = {i.name: i for i in session.get_inputs()}
    graph_outputs = {o.name: o for o in session.get_outputs()}
    problems = []
    for kind, configured, graph in (
        ("input", config.get("input", []), graph_inputs),
        ("output", config.get("output", []), graph_outputs),
    ):
        for tensor in configured:
            name = tensor["name"]
            if name not in graph:
                problems.append(f"config {kind} {name!r} is not a graph {kind} (graph {kind}s: {sorted(graph)})")
                continue
            expected = TRITON_TO_ORT.get(tensor["data_type"])
            if expected != graph[name].type:
                problems.append(
                    f"config {kind} {name!r} has data_type {tensor['data_type']} but the graph has {graph[name].type}"
                )
    configured_inputs = {t["name"] for t in config.get("input", [])}
    missing = sorted(set(graph_inputs) - configured_inputs)
    if missing:
        problems.append(f"graph inputs {missing} are not in the config")
    return problems


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime

        config = json.loads(args["model_config"])
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        filename = config.get("default_model_filename") or "model.onnx"
        path = os.path.join(args["model_repository"], args["model_version"], filename)
        if not os.path.isfile(path):
            raise RuntimeError(f"model file {path} does not exist")
        options = onnxruntime.SessionOptions()
        if "intra_op_thread_count" in parameters:
            options.intra_op_num_threads = int(parameters["intra_op_thread_count"])
        if "inter_op_thread_count" in parameters:
            options.inter_op_num_threads = int(parameters["inter_op_thread_count"])
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        problems = check_io(config, self.session)
        if problems:
            raise RuntimeError(f"config.pbtxt does not match {filename}: " + "; ".join(problems))
        self.input_names = [t["name"] for t in config["input"]]
        self.output_names = [t["name"] for t in config["output"]]
        self.batched = int(config.get("max_batch_size", 0)) > 0

    def _run(self, feeds):
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

    def execute(self, requests):
        import triton_python_backend_utils as pb_utils

        try:
            return self._execute(pb_utils, requests)
        except Exception as exc:  # noqa: BLE001 (never take the server down)
            return [
                pb_utils.InferenceResponse(
                    output_tensors=[],
                    error=pb_utils.TritonError(_error_text(f"onnxruntime backend failed: {type(exc).__name__}: {exc}")),
                )
                for _ in requests
            ]

    def _feed(self, pb_utils, request):
        feed = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"the request has no input {name!r}")
            feed[name] = tensor.as_numpy()
        return feed

    def _execute(self, pb_utils, requests):
        feeds, results = [], []
        for request in requests:
            try:
                feeds.append(self._feed(pb_utils, request))
                results.append(None)
            except Exception as exc:  # noqa: BLE001
                feeds.append(None)
                results.append(_error_text(f"bad request: {exc}"))
        good = [i for i, f in enumerate(feeds) if f is not None]
        first = feeds[good[0]] if good else None
        same_shape = self.batched and all(
            feeds[i][name].shape[1:] == first[name].shape[1:] and feeds[i][name].dtype == first[name].dtype
            for i in good
            for name in self.input_names
        )
        joined_ok = False
        if len(good) > 1 and same_shape:  # one onnxruntime call for the whole dynamic batch
            try:
                joined = {n: np.concatenate([feeds[i][n] for i in good]) for n in self.input_names}
                outputs = self._run(joined)
                start = 0
                for i in good:
                    size = feeds[i][self.input_names[0]].shape[0]
                    results[i] = {n: v[start : start + size] for n, v in outputs.items()}
                    start += size
                joined_ok = True
            except Exception:  # noqa: BLE001 (find the request, one at a time)
                joined_ok = False
        if not joined_ok:
            for i in good:
                try:
                    results[i] = self._run(feeds[i])
                except Exception as exc:  # noqa: BLE001
                    results[i] = _error_text(f"onnxruntime failed: {type(exc).__name__}: {exc}")
        responses = []
        for result in results:
            if isinstance(result, str):  # a TritonError of its own for every error response
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(result)))
            else:
                responses.append(
                    pb_utils.InferenceResponse(
                        output_tensors=[pb_utils.Tensor(n, np.ascontiguousarray(v)) for n, v in result.items()]
                    )
                )
        return responses


def _error_text(what, limit=300):
    """An error message that is safe to send: ASCII, one line, at most `limit` characters."""
    text = " ".join(str(what).split()).encode("ascii", errors="backslashreplace").decode("ascii")
    return text if len(text) <= limit else text[: limit - 3] + "..."
