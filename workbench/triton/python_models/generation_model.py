"""Triton Python-backend model (decoupled): text in, generated text streamed back token by token.

Written by the workbench's generation export (`workbench.triton.generation.export_triton_generation`) into a
model version folder beside `decoding.py` (a copy of the workbench's own loop), the exported decoder
(`decoder.onnx`, its spec in its metadata) and `tokenizer.json`. Nothing is downloaded.

The loop runs here, with onnxruntime called directly inside this model (not through BLS): the key/value cache
of a stream then stays in this process's memory from step to step, where a BLS call per step would copy the
whole cache out of and back into the server for every token (2 x layers x heads x length x head size floats,
twice per step), and it would need a second model in the repository. Each request is generated on a worker
thread of its own with its own cache, so concurrent streams overlap and never share a cache.

Request inputs (all [1], only TEXT required): TEXT (TYPE_STRING), MAX_NEW_TOKENS (TYPE_INT32), DO_SAMPLE
(TYPE_BOOL), TEMPERATURE (TYPE_FP32), TOP_K (TYPE_INT32), TOP_P (TYPE_FP32), SEED (TYPE_INT64). Responses, one
per generated token: TEXT_OUTPUT (the text that token completes, possibly empty), TOKEN_ID (TYPE_INT64), and
FINISH_REASON ("" until the last token: "stop", "length" or "max_positions"); then an empty response flagged
final. A request that is invalid (max new tokens < 1 or above the limit, a prompt longer than the model's
positions, bad sampling settings) gets one error response, and only that request: the others, and the server,
go on.

Config parameters (string values): `model_file`, `tokenizer_file`, `max_new_tokens_default`,
`max_new_tokens_limit`, `workers` (requests generated at once), `intra_op_thread_count`.

Needs numpy, onnxruntime and `tokenizers` in the server's Python environment.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

INPUT_TEXT = "TEXT"
OPTIONAL_INPUTS = {
    "MAX_NEW_TOKENS": "max_new_tokens",
    "DO_SAMPLE": "do_sample",
    "TEMPERATURE": "temperature",
    "TOP_K": "top_k",
    "TOP_P": "top_p",
    "SEED": "seed",
}
OUTPUT_TEXT, OUTPUT_TOKEN, OUTPUT_REASON = "TEXT_OUTPUT", "TOKEN_ID", "FINISH_REASON"


def load_decoding(folder):
    """The `decoding.py` copied beside this model (imported by path: the version folder is not a package)."""
    path = os.path.join(folder, "decoding.py")
    name = f"workbench_decoding_{abs(hash(folder))}"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


class RequestError(ValueError):
    """A request the model refuses, with the reason the client reads."""


def read_request(values, *, decoding, spec, encode, default_max_new_tokens, max_new_tokens_limit):
    """Check one request's inputs (a name -> value dict) and return (prompt ids, max_new_tokens, Sampling).

    Raises:
        RequestError: With the reason, before any work.
    """
    text = values.get("text")
    if text is None:
        raise RequestError("the request has no TEXT input")
    text = text.decode("utf-8", errors="strict") if isinstance(text, (bytes, bytearray)) else str(text)
    max_new_tokens = values.get("max_new_tokens", default_max_new_tokens)
    problem = decoding.max_new_tokens_problem(max_new_tokens)
    if problem:
        raise RequestError(f"MAX_NEW_TOKENS: {problem}")
    if max_new_tokens > max_new_tokens_limit:
        raise RequestError(f"MAX_NEW_TOKENS is {max_new_tokens}, above this model's limit of {max_new_tokens_limit}")
    sampling = decoding.Sampling(
        do_sample=bool(values.get("do_sample", False)),
        temperature=float(values.get("temperature", 1.0)),
        top_k=int(values.get("top_k", 0)),
        top_p=float(values.get("top_p", 1.0)),
        seed=int(values.get("seed", 0)),
    )
    problems = sampling.problems()
    if problems:
        raise RequestError("; ".join(problems))
    prompt = encode(text)
    problem = decoding.prompt_problem(len(prompt), spec.max_positions)
    if problem:
        raise RequestError(problem)
    return prompt, int(max_new_tokens), sampling


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime
        import triton_python_backend_utils as pb_utils
        from tokenizers import Tokenizer

        config = json.loads(args["model_config"])
        if not pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException(
                "the generation model streams: its config needs model_transaction_policy { decoupled: true }"
            )
        parameters = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = os.path.join(args["model_repository"], args["model_version"])
        self.decoding = load_decoding(folder)
        options = onnxruntime.SessionOptions()
        threads = int(parameters.get("intra_op_thread_count", "0"))
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        # several streams share the cores: idle pool threads must not spin on them
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        path = os.path.join(folder, parameters.get("model_file", "decoder.onnx"))
        self.session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        metadata = self.session.get_modelmeta().custom_metadata_map
        if self.decoding.SPEC_METADATA_KEY not in metadata:
            raise pb_utils.TritonModelException(f"{path} has no decoder spec in its metadata; export it again")
        self.spec = self.decoding.DecoderSpec.from_json(metadata[self.decoding.SPEC_METADATA_KEY])
        self.output_names = self.spec.output_names()
        self.tokenizer = Tokenizer.from_file(os.path.join(folder, parameters.get("tokenizer_file", "tokenizer.json")))
        self.default_max_new_tokens = int(parameters.get("max_new_tokens_default", "64"))
        self.max_new_tokens_limit = int(parameters.get("max_new_tokens_limit", "512"))
        self.executor = ThreadPoolExecutor(
            max_workers=int(parameters.get("workers", "4")), thread_name_prefix="generation"
        )
        self.pb_utils = pb_utils
        self.active = 0
        self.lock = threading.Lock()

    # -- helpers shared with the checks the workbench runs at export time --------------------------------------

    def encode(self, text):
        return self.tokenizer.encode(text, add_special_tokens=True).ids

    def decode(self, ids):
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def forward(self, feeds):
        return dict(zip(self.output_names, self.session.run(self.output_names, feeds)))

    # -- serving -----------------------------------------------------------------------------------------------

    def _values(self, request):
        values = {}
        text = self.pb_utils.get_input_tensor_by_name(request, INPUT_TEXT)
        if text is not None:
            values["text"] = text.as_numpy().reshape(-1)[0]
        for name, key in OPTIONAL_INPUTS.items():
            tensor = self.pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                array = tensor.as_numpy().reshape(-1)
                if array.size != 1:
                    raise RequestError(f"{name} must hold one value, got {array.size}")
                values[key] = array[0].item()
        return values

    def _error(self, sender, message):
        error = self.pb_utils.TritonError(message)
        sender.send(
            self.pb_utils.InferenceResponse(output_tensors=[], error=error),
            flags=self.pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL,
        )

    def execute(self, requests):
        # each request is checked and answered on its own: one bad request never fails the others
        for request in requests:
            sender = request.get_response_sender()
            try:
                prompt, max_new_tokens, sampling = read_request(
                    self._values(request),
                    decoding=self.decoding,
                    spec=self.spec,
                    encode=self.encode,
                    default_max_new_tokens=self.default_max_new_tokens,
                    max_new_tokens_limit=self.max_new_tokens_limit,
                )
            except (RequestError, UnicodeDecodeError, ValueError, TypeError) as exc:
                self._error(sender, f"invalid generation request: {exc}")
                continue
            self.executor.submit(self._generate, request, sender, prompt, max_new_tokens, sampling)

    def _generate(self, request, sender, prompt, max_new_tokens, sampling):
        pb_utils = self.pb_utils
        try:
            with self.lock:
                self.active += 1
            state = self.decoding.DecodeState(self.spec, [prompt], max_new_tokens, self.spec.eos_token_ids, sampling)
            pieces = self.decoding.TextStream(self.decode)
            for emitted in self.decoding.run(state, self.forward):
                token, reason = emitted[0], state.finish_reasons[0]
                text = pieces.push(token) + (pieces.flush() if reason is not None else "")
                sender.send(
                    pb_utils.InferenceResponse(
                        output_tensors=[
                            pb_utils.Tensor(OUTPUT_TEXT, np.array([text.encode("utf-8")], dtype=np.object_)),
                            pb_utils.Tensor(OUTPUT_TOKEN, np.array([token], dtype=np.int64)),
                            pb_utils.Tensor(
                                OUTPUT_REASON, np.array([(reason or "").encode("utf-8")], dtype=np.object_)
                            ),
                        ]
                    )
                )
                if reason is None and request.is_cancelled():
                    break
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
        except Exception as exc:  # noqa: BLE001  (the stream ends with the reason; the others go on)
            self._error(sender, f"generation failed: {type(exc).__name__}: {exc}")
        finally:
            with self.lock:
                self.active -= 1

    def finalize(self):
        self.executor.shutdown(wait=True)
