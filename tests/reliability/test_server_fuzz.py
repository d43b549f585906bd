"""Load and fuzz the exported ensemble on a real tritonserver (127.0.0.1): bad requests never crash it.

More than a thousand requests, good and bad mixed, from concurrent clients, so that Triton's dynamic batcher puts
bad texts into the same batches as good ones. Afterwards the server must still run, every good request must have
got the workbench's own embedding, and every bad one an error that says what was wrong. Every loop is bounded in
count and time.
"""

from __future__ import annotations

import importlib.util
import json
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from tests.reliability.conftest import SEQUENCE_LENGTH

pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (the [triton] extra)")
if importlib.util.find_spec("pytriton") is None:
    pytest.skip("nvidia-pytriton is not installed (the [triton] extra)", allow_module_level=True)

from tritonclient import http
from tritonclient.utils import InferenceServerException

from workbench.triton.python_models.tokenizer_model import MAX_TEXT_BYTES
from workbench.triton.server import TritonServer

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

REQUESTS = 1200
CLIENTS = 8
DEADLINE_S = 90.0  # the requests take about 5 s on a quiet machine; a bound, not a timing
GOOD_TEXTS = (
    "A man is playing a guitar.",
    "The new movie is awesome!",
    "Ünïcödé, ŝpéçïäl çhäràctérs and émojis 🙂",
    "a",
    "short",
    "   leading and trailing spaces   ",
    "tabs\tand\nnewlines",
    "数字 12345.678 和标点！",
    " ".join(["A sentence longer than the sequence length is truncated."] * 20),
    "x" * 5000,
)


def workbench_embeddings(onnx_path, tokenizer_dir, texts):
    """The workbench's own embeddings, one text at a time: tokenize_batches + onnxruntime + mean pooling."""
    from workbench.data import tokenize_batches
    from workbench.engines.onnxruntime import OnnxRuntimeRunner
    from workbench.models import load_model
    from workbench.stages.accuracy.compare import mean_pooled_embeddings

    tokenizer = load_model(tokenizer_dir).load_tokenizer()
    with OnnxRuntimeRunner(onnx_path) as runner:
        feeds = tokenize_batches(
            tokenizer,
            list(texts),
            batch_size=1,
            sequence_length=SEQUENCE_LENGTH,
            input_names=list(runner.input_specs()),
        )
        return np.concatenate(
            [mean_pooled_embeddings(runner.infer(f)["last_hidden_state"], f["attention_mask"]) for f in feeds]
        )


def text_input(values, datatype="BYTES", name="TEXT"):
    array = np.array(values, dtype=object if datatype == "BYTES" else np.int32)
    request = http.InferInput(name, list(array.shape), datatype)
    request.set_data_from_numpy(array)
    return request


def plan_requests(rng):
    """(kind, payload, expectation) for every request: mostly good, the rest of every bad kind."""
    plan = []
    for _ in range(REQUESTS):
        roll = rng.random()
        if roll < 0.52:
            picks = rng.integers(0, len(GOOD_TEXTS), size=int(rng.integers(1, 4)))
            plan.append(("good", [int(p) for p in picks], None))
        elif roll < 0.55:  # empty or white space only: nothing to embed
            plan.append(("empty_text", [b"" if rng.random() < 0.5 else b" \t "], "is empty"))
        elif roll < 0.70:
            junk = b"\xff" + bytes(rng.integers(0x80, 0x100, size=int(rng.integers(1, 40)), dtype=np.uint8))
            plan.append(("non_utf8", [junk], "not UTF-8"))
        elif roll < 0.78:  # good texts and one bad text in one request: the whole request is refused
            plan.append(("mixed", [GOOD_TEXTS[0].encode(), b"ok \xc3\x28 broken"], "text 1 is not UTF-8"))
        elif roll < 0.84:
            plan.append(("oversized", [b"y" * (MAX_TEXT_BYTES + int(rng.integers(1, 5000)))], "bytes long"))
        elif roll < 0.88:
            plan.append(("wrong_type", None, "BYTES"))
        elif roll < 0.91:
            plan.append(("wrong_shape", None, "shape"))
        elif roll < 0.94:
            plan.append(("too_big_batch", None, "batch-size must be <= 8"))
        elif roll < 0.97:
            plan.append(("bad_json", None, "failed to parse the request JSON"))
        elif roll < 0.985:
            plan.append(("unknown_model", None, "unknown model"))
        else:
            plan.append(("empty_batch", None, "got 0"))
    return plan


@pytest.fixture(scope="module")
def served(tiny_ensemble):
    with TritonServer(tiny_ensemble.repository, models=[tiny_ensemble.ensemble_name]) as server:
        yield server


def test_a_thousand_mixed_concurrent_requests_leave_the_server_answering_correctly(
    served, tiny_ensemble, tiny_bert_onnx, tiny_model_dir
):
    name = tiny_ensemble.ensemble_name
    reference = workbench_embeddings(tiny_bert_onnx, tiny_model_dir("bert"), GOOD_TEXTS)
    plan = plan_requests(np.random.default_rng(12))
    local = threading.local()
    started = time.monotonic()

    def send(index):
        kind, payload, _ = plan[index]
        if time.monotonic() - started > DEADLINE_S:
            return ("skipped", None)
        if not hasattr(local, "client"):  # tritonclient's HTTP client is not thread-safe: one per thread
            local.client = served.new_client()
        client = local.client
        try:
            if kind == "good":
                texts = [[GOOD_TEXTS[p].encode()] for p in payload]
                result = client.infer(name, [text_input(texts)], outputs=[http.InferRequestedOutput("EMBEDDING")])
                return ("ok", result.as_numpy("EMBEDDING"))
            if kind in ("non_utf8", "mixed", "oversized", "empty_text"):
                client.infer(name, [text_input([[t] for t in payload])])
            elif kind == "wrong_type":
                client.infer(name, [text_input([[1]], datatype="INT32")])
            elif kind == "wrong_shape":
                client.infer(name, [text_input([[b"a", b"b"]])])
            elif kind == "too_big_batch":
                client.infer(name, [text_input([[b"a"]] * 9)])
            elif kind == "bad_json":
                raw = urllib.request.Request(
                    f"http://{served.url}/v2/models/{name}/infer",
                    method="POST",
                    data=b'{"inputs": [{"name": "TEXT", "shape": [1, 1], ',
                    headers={"Content-Type": "application/json"},
                )
                try:
                    urllib.request.urlopen(raw, timeout=30).read()
                except urllib.error.HTTPError as exc:
                    return ("error", f"{exc.code} {exc.read()[:200]!r}")
                return ("ok", None)
            elif kind == "empty_batch":
                empty = http.InferInput("TEXT", [0, 1], "BYTES")
                empty.set_data_from_numpy(np.zeros((0, 1), dtype=object))
                client.infer(name, [empty])
            elif kind == "unknown_model":
                client.infer("no_such_model", [text_input([[b"a"]])])
            return ("ok", None)
        except InferenceServerException as exc:
            return ("error", exc.message() if callable(getattr(exc, "message", None)) else str(exc))

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        futures = [pool.submit(send, i) for i in range(len(plan))]
        outcomes = [f.result(timeout=DEADLINE_S + 60) for f in futures]

    assert served.running, served.log_tail(3000)
    log = served.log_tail(10**6)
    assert "Segmentation fault" not in log and "terminate called" not in log
    assert not [o for o in outcomes if o[0] == "skipped"], "the fuzz ran past its time bound"
    good = bad = 0
    for (kind, payload, expectation), (status, value) in zip(plan, outcomes):
        if kind == "good":
            assert status == "ok", (payload, value)
            expected = reference[payload]
            assert value.shape == expected.shape
            np.testing.assert_allclose(value, expected, atol=1e-4)
            good += 1
        else:
            assert status == "error", (kind, value)
            assert expectation.lower() in value.lower(), (kind, value)
            bad += 1
    assert good >= 500 and bad >= 400 and good + bad >= 1000

    # the dynamic batcher did put requests together (so bad and good texts shared batches)
    (stats,) = served.client.get_inference_statistics(tiny_ensemble.models["tokenizer"].model_name)["model_stats"]
    assert any(s["batch_size"] > 1 and s["compute_infer"]["count"] > 0 for s in stats["batch_stats"]), stats
    # and it still answers, correctly
    after = np.concatenate(
        [
            served.client.infer(name, [text_input([[t.encode()] for t in GOOD_TEXTS[i : i + 5]])]).as_numpy("EMBEDDING")
            for i in (0, 5)
        ]
    )
    np.testing.assert_allclose(after, reference, atol=1e-4)


def test_direct_model_requests_with_bad_ids_do_not_spoil_good_ones(served, tiny_ensemble):
    model = tiny_ensemble.models["model"].model_name
    served.load(model)  # loaded with the ensemble already: a no-op that checks it is ready
    rng = np.random.default_rng(3)
    local = threading.local()

    def feed(bad):
        ids = np.full((1, SEQUENCE_LENGTH), 10**9 if bad else 0, dtype=np.int64)
        if not bad:
            ids[:] = rng.integers(0, 1000, ids.shape)
        inputs = []
        for name, array in (
            ("input_ids", ids),
            ("attention_mask", np.ones_like(ids)),
            ("token_type_ids", np.zeros_like(ids)),
        ):
            tensor = http.InferInput(name, list(array.shape), "INT64")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        return inputs

    def send(index):
        if not hasattr(local, "client"):
            local.client = served.new_client()
        bad = index % 3 == 0
        try:
            local.client.infer(model, feed(bad))
            return bad, "ok"
        except InferenceServerException as exc:
            return bad, exc.message()

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        outcomes = [f.result(timeout=120) for f in [pool.submit(send, i) for i in range(120)]]
    assert served.running
    assert all(status == "ok" for bad, status in outcomes if not bad), outcomes
    assert all("onnxruntime failed" in status for bad, status in outcomes if bad), outcomes


def test_the_repository_readme_says_what_the_server_accepts(tiny_ensemble):
    readme = tiny_ensemble.readme.read_text()
    assert "UTF-8" in readme and f"{MAX_TEXT_BYTES}" in readme
    assert json.loads(tiny_ensemble.provenance.read_text())["ensemble"] == tiny_ensemble.ensemble_name
