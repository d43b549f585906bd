"""The exported Python models answer each request of a batch on its own (in-process, fake pb_utils).

One bad request in a dynamic batch must get an error response of its own (a TritonError made for it alone:
responses that share one error object crash tritonserver's Python backend), and every good request of the same
batch its correct result. execute() must never raise.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.reliability.conftest import SEQUENCE_LENGTH, load_python_model
from workbench.triton.python_models import LABELS_MODEL, ONNXRUNTIME_BACKEND_MODEL, POOLING_MODEL, TOKENIZER_MODEL
from workbench.triton.python_models import tokenizer_model as tokenizer_module

pytestmark = pytest.mark.reliability

GOOD = [b"A man is playing a guitar.", "Ünïcödé 🙂".encode(), b"a", b"short"]


def texts_request(pb_utils, *texts):
    return pb_utils.InferenceRequest(TEXT=np.array([[t] for t in texts], dtype=np.object_))


def assert_own_errors(pb_utils, responses, bad_indices):
    errors = [r.error for i, r in enumerate(responses) if i in bad_indices]
    assert all(e is not None for e in errors), [i for i, r in enumerate(responses) if r.error is None]
    assert len({id(e) for e in errors}) == len(errors), "responses share one TritonError object"
    assert all(responses[i].error is None for i in range(len(responses)) if i not in bad_indices)


@pytest.fixture
def tokenizer(tiny_ensemble, pb_utils):
    return load_python_model(tiny_ensemble.models["tokenizer"].model_dir, TOKENIZER_MODEL)


def expected_ids(tokenizer, text: bytes):
    return tokenizer_module.encode(tokenizer.tokenizer, [text], tokenizer.dtypes)


def test_tokenizer_answers_each_request_on_its_own(tokenizer, pb_utils):
    oversized = b"x " * (tokenizer.max_text_bytes // 2 + 1)
    requests = [
        texts_request(pb_utils, GOOD[0]),
        texts_request(pb_utils, b"\xff\xfe not UTF-8"),
        texts_request(pb_utils, GOOD[1], GOOD[2]),
        texts_request(pb_utils, oversized),
        texts_request(pb_utils, GOOD[3], b"\xc3\x28"),
        texts_request(pb_utils, GOOD[2]),
        texts_request(pb_utils, b""),  # empty, and white space only: nothing to encode
        texts_request(pb_utils, GOOD[0], b" \t\n"),
    ]
    responses = tokenizer.execute(requests)

    assert len(responses) == len(requests)
    assert_own_errors(pb_utils, responses, {1, 3, 4, 6, 7})
    assert "text 0 is empty" in responses[6].error.message() and "text 1 is empty" in responses[7].error.message()
    assert "UTF-8" in responses[1].error.message() and "text 0" in responses[1].error.message()
    assert "text 1" in responses[4].error.message()  # which text of the request is bad
    assert str(tokenizer.max_text_bytes) in responses[3].error.message()
    for index, texts in ((0, [GOOD[0]]), (2, [GOOD[1], GOOD[2]]), (5, [GOOD[2]])):
        got = {t.name(): t.as_numpy() for t in responses[index].output_tensors()}
        # each request alone, padded as the served policy pads it (fixed: SEQUENCE_LENGTH; buckets: its bucket)
        longest = max(len(e.ids) for e in tokenizer_module.encodings(tokenizer.tokenizer, texts))
        length = tokenizer_module.padded_length(longest, tokenizer.padding, SEQUENCE_LENGTH, tokenizer.buckets)
        want = tokenizer_module.encode(
            tokenizer.tokenizer,
            texts,
            tokenizer.dtypes,
            length=None if tokenizer.padding == "fixed" else length,
            pad=tokenizer.pad,
        )
        assert sorted(got) == sorted(want)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
            assert got[name].shape == (len(texts), length)


def test_tokenizer_gives_every_bad_request_its_own_error(tokenizer, pb_utils):
    requests = [texts_request(pb_utils, b"\xff" * n) for n in range(1, 5)]
    responses = tokenizer.execute(requests)
    assert_own_errors(pb_utils, responses, {0, 1, 2, 3})


def test_tokenizer_error_messages_are_ascii_and_short(tokenizer, pb_utils):
    (response,) = tokenizer.execute([texts_request(pb_utils, b"\x80" * 10_000 + "é".encode())])
    message = response.error.message()
    assert message.isascii() and len(message) < 400


def test_tokenizer_survives_requests_it_cannot_read(tokenizer, pb_utils):
    missing = pb_utils.InferenceRequest()  # no TEXT tensor at all
    numbers = pb_utils.InferenceRequest(TEXT=np.array([[1.5]], dtype=np.float32))
    good = texts_request(pb_utils, GOOD[0])
    responses = tokenizer.execute([missing, numbers, good])
    assert_own_errors(pb_utils, responses, {0, 1})
    assert responses[2].output_tensors()


def test_tokenizer_falls_back_to_one_request_at_a_time(tokenizer, pb_utils, monkeypatch):
    # a failure of the batched encode (for example inside the tokenizers library) must not fail the good requests
    real = tokenizer.tokenizer.encode_batch

    def fragile(texts, **kwargs):
        if any("poison" in t for t in texts):
            raise RuntimeError("tokenizer bug")
        return real(texts, **kwargs)

    monkeypatch.setattr(tokenizer, "tokenizer", _Proxy(tokenizer.tokenizer, encode_batch=fragile))
    responses = tokenizer.execute(
        [texts_request(pb_utils, GOOD[0]), texts_request(pb_utils, b"poison"), texts_request(pb_utils, GOOD[3])]
    )
    assert_own_errors(pb_utils, responses, {1})
    assert "tokenizer bug" in responses[1].error.message()


class _Proxy:
    def __init__(self, inner, **overrides):
        self._inner, self._overrides = inner, overrides

    def __getattr__(self, name):
        return self._overrides.get(name) or getattr(self._inner, name)


def test_onnxruntime_backend_answers_each_request_of_a_batch(tiny_ensemble, pb_utils):
    pytest.importorskip("onnxruntime")
    model = load_python_model(tiny_ensemble.models["model"].model_dir, ONNXRUNTIME_BACKEND_MODEL)
    rng = np.random.default_rng(0)

    def feed(ids):
        ids = np.asarray(ids, dtype=np.int64)
        return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}

    good = [feed(rng.integers(0, 1000, (1, SEQUENCE_LENGTH))) for _ in range(3)]
    bad = feed(np.full((1, SEQUENCE_LENGTH), 10**9))  # ids far outside the vocabulary: Gather fails
    requests = [pb_utils.InferenceRequest(**f) for f in (good[0], bad, good[1], good[2])]
    responses = model.execute(requests)
    assert_own_errors(pb_utils, responses, {1})
    assert "onnxruntime" in responses[1].error.message()
    for response, f in zip([responses[0], responses[2], responses[3]], good):
        (alone,) = model.execute([pb_utils.InferenceRequest(**f)])
        got = {t.name(): t.as_numpy() for t in response.output_tensors()}
        want = {t.name(): t.as_numpy() for t in alone.output_tensors()}
        np.testing.assert_allclose(got["last_hidden_state"], want["last_hidden_state"], atol=1e-5)


def test_pooling_answers_each_request_on_its_own(tiny_ensemble, pb_utils):
    model = load_python_model(tiny_ensemble.models["pooling"].model_dir, POOLING_MODEL)
    rng = np.random.default_rng(1)
    hidden = rng.normal(size=(2, SEQUENCE_LENGTH, 32)).astype(np.float32)
    mask = np.ones((2, SEQUENCE_LENGTH), dtype=np.int64)
    requests = [
        pb_utils.InferenceRequest(last_hidden_state=hidden, attention_mask=mask),
        pb_utils.InferenceRequest(last_hidden_state=hidden, attention_mask=mask[:, :3]),  # shapes disagree
        pb_utils.InferenceRequest(last_hidden_state=hidden),  # no mask
        pb_utils.InferenceRequest(last_hidden_state=hidden[:1], attention_mask=mask[:1]),
    ]
    responses = model.execute(requests)
    assert_own_errors(pb_utils, responses, {1, 2})
    (embedding,) = responses[3].output_tensors()
    assert embedding.as_numpy().shape == (1, 32)
    np.testing.assert_allclose(np.linalg.norm(embedding.as_numpy(), axis=1), 1.0, atol=1e-5)


def test_labels_answers_each_request_on_its_own(tmp_path, pb_utils):
    from google.protobuf import json_format

    from workbench.triton.config import render_model_config

    pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    cfg = pb2.ModelConfig(name="labels", backend="python", max_batch_size=8)
    cfg.input.add(name="logits", data_type=pb2.DataType.Value("TYPE_FP32"), dims=[3])
    cfg.output.add(name="LABEL", data_type=pb2.DataType.Value("TYPE_STRING"), dims=[1])
    cfg.output.add(name="PROBABILITIES", data_type=pb2.DataType.Value("TYPE_FP32"), dims=[3])
    cfg.parameters["labels"].string_value = '["a", "b", "c"]'
    (tmp_path / "config.pbtxt").write_text(render_model_config(cfg))
    assert json_format  # the loader converts the config the way Triton hands it over
    model = load_python_model(tmp_path, LABELS_MODEL)
    requests = [
        pb_utils.InferenceRequest(logits=np.array([[0.0, 2.0, 1.0]], dtype=np.float32)),
        pb_utils.InferenceRequest(logits=np.array([[0.0, 2.0]], dtype=np.float32)),
        pb_utils.InferenceRequest(),
        pb_utils.InferenceRequest(logits=np.array([[5.0, 0.0, 1.0]], dtype=np.float32)),
    ]
    responses = model.execute(requests)
    assert_own_errors(pb_utils, responses, {1, 2})
    labels = [r.output_tensors()[0].as_numpy()[0][0] for r in (responses[0], responses[3])]
    assert labels == [b"b", b"a"]
