"""A real Triton server (the nvidia-pytriton wheel's tritonserver, on 127.0.0.1) serves the BLS front models.

The entities and answers that come back over HTTP must be the workbench's own decoding of the same ONNX model
(onnxruntime, the same tokenization and windows) for every evaluation input; a model that knows one answer must
find it when only the second window of a long context holds it; a malformed request gets its own error while the
requests batched with it get their answers.
"""

from __future__ import annotations

import importlib.util
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (the [triton] extra)")
if importlib.util.find_spec("pytriton") is None:
    pytest.skip("nvidia-pytriton is not installed (the [triton] extra)", allow_module_level=True)

from tritonclient import http

from tests.tasks.tiny_heads import build_keyword_qa, export_tiny_head
from workbench.data import load_sentence_splits
from workbench.engines.onnxruntime import OnnxRuntimeRunner
from workbench.tasks.base import get_task
from workbench.triton.bls import export_triton_bls
from workbench.triton.config import TritonConfig
from workbench.triton.server import TritonServer

pytestmark = pytest.mark.slow

NER, QA = "token-classification", "question-answering"
NER_LENGTH, QA_LENGTH = 64, 128
KEYWORD = "lighthouse"


def _filler(count: int) -> str:
    return " ".join(
        f"On day {i} the ferry crossed the bay twice, and the harbour master logged {i + 7} boats."
        for i in range(count)
    )


#: A context whose only "lighthouse" lies past the first window at QA_LENGTH tokens (checked in the test).
SECOND_WINDOW_CONTEXT = _filler(12) + " At dusk the old keeper climbed back to the lighthouse on the point."
SECOND_WINDOW_QUESTION = "Where did the old keeper go at dusk?"


@pytest.fixture(scope="module")
def served(tiny_head, tiny_head_onnx, tmp_path_factory):
    """One repository with a NER model (BERT and RoBERTa), a QA model and a keyword QA model, on one server."""
    repository = tmp_path_factory.mktemp("bls-served") / "repo"
    config = {"max_batch_size": 8, "max_queue_delay_us": 20_000}
    exported = {}
    for name, kind, task, length in (
        ("ner", "bert", NER, NER_LENGTH),
        ("ner_bpe", "roberta", NER, NER_LENGTH),
        ("qa", "bert", QA, QA_LENGTH),
    ):
        exported[name] = export_triton_bls(
            tiny_head_onnx(kind, task),
            repository,
            tiny_head(kind, task),
            TritonConfig(model_name=name, **config),
            task=task,
            sequence_length=length,
            overwrite=True,
        )
    keyword_dir = build_keyword_qa(tmp_path_factory.mktemp("keyword-qa"), KEYWORD)
    keyword_onnx = export_tiny_head(keyword_dir, QA, keyword_dir / "model.onnx")
    exported["keyword"] = export_triton_bls(
        keyword_onnx,
        repository,
        keyword_dir,
        TritonConfig(model_name="keyword", **config),
        task=QA,
        sequence_length=QA_LENGTH,
        overwrite=True,
    )
    models = [m for result in exported.values() for m in result.model_names]
    sources = {
        "ner": (tiny_head_onnx("bert", NER), tiny_head("bert", NER)),
        "ner_bpe": (tiny_head_onnx("roberta", NER), tiny_head("roberta", NER)),
        "qa": (tiny_head_onnx("bert", QA), tiny_head("bert", QA)),
        "keyword": (keyword_onnx, keyword_dir),
    }
    with TritonServer(repository, models=models) as server:
        yield server, exported, sources


def _library(sources, name: str, task_name: str, samples, length: int):
    """The workbench's own answers: the task's encode and decoding, onnxruntime on the same ONNX model."""
    import transformers

    onnx_path, folder = sources[name]
    task = get_task(task_name)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    config = json.loads((folder / "config.json").read_text())
    front = task.front_model(
        model_config=config,
        output_names=task.outputs,
        output_dims={"logits": (-1, len(config.get("id2label") or {}))},
        sequence_length=length,
    )
    with OnnxRuntimeRunner(onnx_path) as runner:
        return task.served_outputs(
            tokenizer,
            samples,
            runner.infer,
            sequence_length=length,
            input_names=list(runner.input_specs()),
            model_config=config,
            parameters=front.parameters,
        )


def _strings(values) -> np.ndarray:
    return np.array([[v if isinstance(v, bytes) else v.encode("utf-8")] for v in values], dtype=object)


def _ask_entities(client, model: str, texts):
    request = http.InferInput("TEXT", [len(texts), 1], "BYTES")
    request.set_data_from_numpy(_strings(texts))
    result = client.infer(model, [request])
    return [json.loads(v[0]) for v in result.as_numpy("ENTITIES")]


def _ask_answers(client, model: str, pairs):
    inputs = []
    for name, values in (("QUESTION", [q for q, _ in pairs]), ("CONTEXT", [c for _, c in pairs])):
        inputs.append(http.InferInput(name, [len(pairs), 1], "BYTES"))
        inputs[-1].set_data_from_numpy(_strings(values))
    result = client.infer(model, inputs)
    return [
        {"score": float(s[0]), "start": int(b[0]), "end": int(e[0]), "answer": a[0].decode("utf-8")}
        for a, s, b, e in zip(
            result.as_numpy("ANSWER"), result.as_numpy("SCORE"), result.as_numpy("START"), result.as_numpy("END")
        )
    ]


def _same(expected, served):
    from workbench.triton.bls import _differences

    return _differences(expected, served)


@pytest.mark.parametrize("name", ["ner", "ner_bpe"])
def test_served_entities_are_the_librarys_for_every_evaluation_sentence(served, name):
    server, exported, sources = served
    texts = list(load_sentence_splits().evaluation)
    expected = _library(sources, name, NER, texts, NER_LENGTH)
    got = []
    for first in range(0, len(texts), 5):  # requests of 5 texts, the last ones shorter
        got += _ask_entities(server.client, exported[name].front_name, texts[first : first + 5])
    assert _same(expected, got) == []
    assert sum(len(e) for e in got) > len(texts)


def test_served_answers_are_the_librarys_for_every_evaluation_pair(served):
    server, exported, sources = served
    pairs = [(e.question, e.context) for e in get_task(QA).load_samples(None).evaluation]
    expected = _library(sources, "qa", QA, pairs, QA_LENGTH)
    got = []
    for first in range(0, len(pairs), 4):
        got += _ask_answers(server.client, exported["qa"].front_name, pairs[first : first + 4])
    assert _same(expected, got) == []
    for answer, (_, context) in zip(got, pairs):
        assert context[answer["start"] : answer["end"]] == answer["answer"]


def test_an_answer_in_the_second_window_is_found(served, tiny_head):
    import transformers

    server, exported, sources = served
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(sources["keyword"][1]))
    encoded = get_task(QA).encode(
        tokenizer, [(SECOND_WINDOW_QUESTION, SECOND_WINDOW_CONTEXT)], batch_size=8, sequence_length=QA_LENGTH
    )
    where = SECOND_WINDOW_CONTEXT.index(KEYWORD)
    holders = [
        w.window
        for b in encoded.meta
        for w in b.windows
        if w.offsets[w.sequence_ids == 1][0][0] <= where < w.offsets[w.sequence_ids == 1][-1][1]
    ]
    assert 0 not in holders and holders  # only a later window holds the answer
    (answer,) = _ask_answers(
        server.client, exported["keyword"].front_name, [(SECOND_WINDOW_QUESTION, SECOND_WINDOW_CONTEXT)]
    )
    assert answer["answer"] == KEYWORD and answer["start"] == where and answer["end"] == where + len(KEYWORD)
    assert (
        _same(_library(sources, "keyword", QA, [(SECOND_WINDOW_QUESTION, SECOND_WINDOW_CONTEXT)], QA_LENGTH), [answer])
        == []
    )


def test_a_malformed_request_gets_its_own_error(served):
    server, exported, _ = served
    front = exported["qa"].front_name
    pair = ("Who wrote the first program?", "Ada Lovelace wrote the first program in 1843.")
    local = threading.local()

    def one(index: int):
        if not hasattr(local, "client"):  # tritonclient's HTTP client is not thread-safe: one per thread
            local.client = server.new_client()
        bad = index % 3 == 1
        try:
            return _ask_answers(local.client, front, [("   ", pair[1])] if bad else [pair])
        except Exception as exc:  # noqa: BLE001 - the error is what this request should get
            return exc

    (before,) = server.client.get_inference_statistics(front)["model_stats"]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(one, range(12)))
    for index, result in enumerate(results):
        if index % 3 == 1:
            assert isinstance(result, Exception) and "question is empty" in str(result), result
        else:
            assert isinstance(result, list) and result[0]["answer"], result
    (after,) = server.client.get_inference_statistics(front)["model_stats"]
    executions = int(after["execution_count"]) - int(before["execution_count"])
    assert executions < 12  # the requests were batched together, the bad ones among them
    with pytest.raises(Exception, match="not UTF-8"):
        _ask_entities(server.client, exported["ner"].front_name, [b"fine", b"\xff\xfe broken"])
    assert _ask_entities(server.client, exported["ner"].front_name, ["still fine"])  # and the server carries on
