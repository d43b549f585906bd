"""The Triton generation repository: written all or nothing with a strict config, and served by a real Triton
server (nvidia-pytriton's tritonserver on 127.0.0.1) to tritonclient's streaming gRPC client.

The streamed tokens must be the library's greedy loop's, two concurrent streams must not mix their caches, and
bad requests (a prompt longer than the model's positions, MAX_NEW_TOKENS 0 or negative) must get clear error
responses while the server keeps serving the others.
"""

from __future__ import annotations

import importlib.util
import queue
import threading
import time
from functools import partial

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc")
pytest.importorskip("onnxruntime")

from workbench.errors import ModelSourceError, TritonExportError
from workbench.models import load_model
from workbench.triton.config import parse_model_config
from workbench.triton.generation import (
    GenerationServingConfig,
    export_triton_generation,
)

MODEL = "generator"


@pytest.fixture(scope="module")
def repository(fused_decoder, tiny_decoder_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("generation-repository")
    result = export_triton_generation(
        fused_decoder("gpt2").path,
        folder,
        tiny_decoder_dir("gpt2"),
        GenerationServingConfig(model_name=MODEL, max_new_tokens_limit=64, workers=4, intra_op_threads=1),
    )
    return result


def test_the_repository_is_complete_and_its_config_parses_strictly(repository):
    files = {p.relative_to(repository.model.model_dir).as_posix() for p in repository.model.files}
    assert {"config.pbtxt", "1/model.py", "1/decoding.py", "1/decoder.onnx", "1/tokenizer.json"} <= files
    cfg = parse_model_config(repository.model.config_path.read_text())
    assert cfg.backend == "python" and cfg.max_batch_size == 0
    assert cfg.model_transaction_policy.decoupled
    inputs = {t.name: t.optional for t in cfg.input}
    assert inputs == {
        "TEXT": False,
        "MAX_NEW_TOKENS": True,
        "DO_SAMPLE": True,
        "TEMPERATURE": True,
        "TOP_K": True,
        "TOP_P": True,
        "SEED": True,
    }
    assert [t.name for t in cfg.output] == ["TEXT_OUTPUT", "TOKEN_ID", "FINISH_REASON"]
    assert repository.readme.is_file() and repository.provenance.is_file()


def test_a_model_without_a_decoder_spec_writes_nothing(tiny_bert_onnx, tiny_decoder_dir, tmp_path):
    with pytest.raises(ModelSourceError, match="decoder spec"):
        export_triton_generation(tiny_bert_onnx, tmp_path / "repo", tiny_decoder_dir("gpt2"))
    assert not (tmp_path / "repo").exists()


def test_an_existing_model_is_not_replaced_without_overwrite(repository, fused_decoder, tiny_decoder_dir):
    before = repository.model.config_path.read_text()
    with pytest.raises(TritonExportError, match="already exist"):
        export_triton_generation(
            fused_decoder("gpt2").path,
            repository.repository,
            tiny_decoder_dir("gpt2"),
            GenerationServingConfig(model_name=MODEL),
        )
    assert repository.model.config_path.read_text() == before


def test_a_served_tokenizer_that_disagrees_is_refused(tiny_decoder_dir):
    from tokenizers import Tokenizer, processors

    from workbench.triton.generation import check_served_tokenizer

    folder = tiny_decoder_dir("gpt2")
    served = Tokenizer.from_file(str(folder / "tokenizer.json"))
    served.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", pair="<|endoftext|> $A $B", special_tokens=[("<|endoftext|>", 0)]
    )
    check_served_tokenizer(folder, (folder / "tokenizer.json").read_text())  # the saved one agrees
    with pytest.raises(TritonExportError, match="disagrees"):
        check_served_tokenizer(folder, served.to_str())  # one that adds a token in front of every prompt


# ------------------------------------------------------------------------------------------------- the server

needs_server = pytest.mark.skipif(
    importlib.util.find_spec("pytriton") is None, reason="nvidia-pytriton is not installed (the [triton] extra)"
)


class Stream:
    """One gRPC stream: requests go out, responses are collected per request until the final one."""

    def __init__(self, url: str) -> None:
        import tritonclient.grpc as grpcclient

        self.grpc = grpcclient
        self.client = grpcclient.InferenceServerClient(url)
        self.responses: queue.Queue = queue.Queue()
        self.client.start_stream(callback=partial(self._callback))

    def _callback(self, result, error) -> None:
        self.responses.put((time.perf_counter(), result, error))

    def send(self, text: str, request_id: str, **inputs) -> None:
        grpc = self.grpc
        tensors = [grpc.InferInput("TEXT", [1], "BYTES")]
        tensors[0].set_data_from_numpy(np.array([text.encode("utf-8")], dtype=object))
        types = {
            "MAX_NEW_TOKENS": ("INT32", np.int32),
            "DO_SAMPLE": ("BOOL", np.bool_),
            "TEMPERATURE": ("FP32", np.float32),
            "TOP_K": ("INT32", np.int32),
            "TOP_P": ("FP32", np.float32),
            "SEED": ("INT64", np.int64),
        }
        for name, value in inputs.items():
            kind, dtype = types[name]
            tensor = grpc.InferInput(name, [1], kind)
            tensor.set_data_from_numpy(np.array([value], dtype=dtype))
            tensors.append(tensor)
        self.client.async_stream_infer(MODEL, tensors, request_id=request_id, enable_empty_final_response=True)

    def collect(self, expected_requests: int, timeout: float = 120.0) -> tuple[dict, list]:
        """Per request id: [(time, token, text, reason)] until its final response; and the errors."""
        streams: dict[str, list] = {}
        finished: set[str] = set()
        errors: list[str] = []
        deadline = time.monotonic() + timeout
        while len(finished) + len(errors) < expected_requests:
            stamp, result, error = self.responses.get(timeout=max(0.1, deadline - time.monotonic()))
            if error is not None:
                errors.append(str(error))
                continue
            response = result.get_response()
            if response.parameters["triton_final_response"].bool_param:
                finished.add(response.id)
                streams.setdefault(response.id, [])
                continue
            streams.setdefault(response.id, []).append(
                (
                    stamp,
                    int(result.as_numpy("TOKEN_ID")[0]),
                    result.as_numpy("TEXT_OUTPUT")[0].decode("utf-8"),
                    result.as_numpy("FINISH_REASON")[0].decode("utf-8"),
                )
            )
        return streams, errors

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


@pytest.fixture(scope="module")
def server(repository):
    from workbench.triton.server import TritonServer

    with TritonServer(repository.repository, models=[MODEL], onnxruntime_backend=False) as running:
        yield running


@pytest.fixture(scope="module")
def library(exported_decoder, fused_decoder, tiny_decoder_dir):
    """The library's own generation with the same decoder file, for comparison."""
    from workbench.engines.onnxruntime import OnnxRuntimeRunner
    from workbench.stages.generation.generate import GenerationConfig, generate

    tokenizer = load_model(tiny_decoder_dir("gpt2")).load_tokenizer()
    runner = OnnxRuntimeRunner(fused_decoder("gpt2").path, intra_op_threads=1)
    runner.activate()

    def run(prompt: str, **settings):
        return generate(runner, exported_decoder("gpt2").spec, tokenizer, [prompt], GenerationConfig(**settings))

    yield run
    runner.deactivate()


PROMPT_A = "Once upon a time, in a small village by the sea,"
PROMPT_B = "SELECT name, price FROM products WHERE"


@pytest.mark.slow
@needs_server
def test_the_server_streams_the_library_greedy_tokens(server, library):
    stream = Stream(server.grpc_url)
    try:
        stream.send(PROMPT_A, "a", MAX_NEW_TOKENS=24)
        streams, errors = stream.collect(1)
    finally:
        stream.close()
    expected = library(PROMPT_A, max_new_tokens=24)
    assert errors == []
    served = streams["a"]
    assert [token for _, token, _, _ in served] == list(expected.tokens[0])
    assert "".join(text for _, _, text, _ in served) == expected.texts[0]
    assert [reason for *_, reason in served][-1] == expected.finish_reasons[0]
    assert all(reason == "" for *_, reason in served[:-1])


@pytest.mark.slow
@needs_server
def test_two_concurrent_streams_do_not_mix_their_caches(server, library):
    first, second = Stream(server.grpc_url), Stream(server.grpc_url)
    results: dict[str, tuple] = {}

    def run(stream: Stream, prompt: str, key: str) -> None:
        stream.send(prompt, key, MAX_NEW_TOKENS=40)
        results[key] = stream.collect(1)

    try:
        threads = [
            threading.Thread(target=run, args=(first, PROMPT_A, "a")),
            threading.Thread(target=run, args=(second, PROMPT_B, "b")),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=180)
    finally:
        first.close()
        second.close()
    a, b = results["a"][0]["a"], results["b"][0]["b"]
    assert [t for _, t, _, _ in a] == list(library(PROMPT_A, max_new_tokens=40).tokens[0])
    assert [t for _, t, _, _ in b] == list(library(PROMPT_B, max_new_tokens=40).tokens[0])
    # the two streams were generated at the same time, not one after the other
    assert a[0][0] < b[-1][0] and b[0][0] < a[-1][0]


@pytest.mark.slow
@needs_server
def test_seeded_sampling_on_the_server_is_the_library_sampling(server, library):
    stream = Stream(server.grpc_url)
    settings = {"MAX_NEW_TOKENS": 16, "DO_SAMPLE": True, "TEMPERATURE": 0.8, "TOP_P": 0.9, "SEED": 11}
    try:
        stream.send(PROMPT_B, "s", **settings)
        streams, errors = stream.collect(1)
    finally:
        stream.close()
    expected = library(PROMPT_B, max_new_tokens=16, do_sample=True, temperature=0.8, top_p=0.9, seed=11)
    assert errors == [] and [t for _, t, _, _ in streams["s"]] == list(expected.tokens[0])


@pytest.mark.slow
@needs_server
def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(server, library, exported_decoder):
    positions = exported_decoder("gpt2").spec.max_positions
    stream = Stream(server.grpc_url)
    try:
        stream.send(" ".join(["word"] * (2 * positions)), "long")
        stream.send(PROMPT_A, "zero", MAX_NEW_TOKENS=0)
        stream.send(PROMPT_A, "negative", MAX_NEW_TOKENS=-5)
        stream.send(PROMPT_A, "too_many", MAX_NEW_TOKENS=65)
        stream.send(PROMPT_A, "cold", DO_SAMPLE=True, TEMPERATURE=0.0)
        stream.send(PROMPT_B, "good", MAX_NEW_TOKENS=6)  # in the same stream, right behind the bad ones
        streams, errors = stream.collect(6)
    finally:
        stream.close()
    assert len(errors) == 5
    text = "\n".join(errors)
    assert f"but the model has only {positions} positions" in text
    assert text.count("MAX_NEW_TOKENS: max_new_tokens must be an integer >= 1") == 2
    assert "above this model's limit of 64" in text and "temperature must be > 0" in text
    assert [t for _, t, _, _ in streams["good"]] == list(library(PROMPT_B, max_new_tokens=6).tokens[0])
    assert server.running and server.client.is_model_ready(MODEL)
