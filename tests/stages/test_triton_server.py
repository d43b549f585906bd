"""A real Triton server (the nvidia-pytriton wheel's tritonserver, on 127.0.0.1) serves exported repositories.

Texts go in over HTTP; the embeddings that come back must be the workbench's own (onnxruntime on the same ONNX
model, the same tokenization at the same sequence length, mean_pooled_embeddings). Concurrent requests must be
batched by Triton's dynamic batcher, and wiring mistakes must fail with the server's own words.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (the [triton] extra)")
if importlib.util.find_spec("pytriton") is None:
    pytest.skip("nvidia-pytriton is not installed (the [triton] extra)", allow_module_level=True)

import numpy as np  # noqa: E402
import tritonclient.http as http  # noqa: E402

from workbench.data import tokenize_batches  # noqa: E402
from workbench.engines.onnxruntime import OnnxRuntimeRunner  # noqa: E402
from workbench.errors import TritonServerError  # noqa: E402
from workbench.models import load_model  # noqa: E402
from workbench.stages.accuracy.compare import mean_pooled_embeddings  # noqa: E402
from workbench.triton.config import TritonConfig, parse_model_config, render_model_config  # noqa: E402
from workbench.triton.ensemble import export_triton_ensemble  # noqa: E402
from workbench.triton.server import TritonServer, copy_for_cpu  # noqa: E402

pytestmark = pytest.mark.slow

SEQUENCE_LENGTH = 32
TEXTS = (
    "A man is playing a guitar.",
    "The new movie is awesome!",
    "Ünïcödé and émojis 🙂 go through the tokenizer too.",
    "a",
    "short",
    " ".join(["A sentence longer than the sequence length is truncated."] * 20),
)


def workbench_embeddings(
    onnx_path: Path, tokenizer_dir: Path, texts, sequence_length: int, *, batch_size: int, padding=None
):
    """The workbench's own sentence embeddings: tokenize_batches (or the served PaddingPolicy's encode, whose
    feeds follow text order at batch_size 1) + onnxruntime + mean_pooled_embeddings."""
    tokenizer = load_model(tokenizer_dir).load_tokenizer()
    with OnnxRuntimeRunner(onnx_path) as runner:
        if padding is not None:
            assert batch_size == 1, "PaddingPolicy.encode regroups texts by bucket above batch size 1"
            feeds = padding.encode(tokenizer, list(texts), 1, input_names=list(runner.input_specs()))
        else:
            feeds = tokenize_batches(
                tokenizer,
                list(texts),
                batch_size=batch_size,
                sequence_length=sequence_length,
                input_names=list(runner.input_specs()),
            )
        return np.concatenate(
            [mean_pooled_embeddings(runner.infer(f)["last_hidden_state"], f["attention_mask"]) for f in feeds]
        )


def served_embeddings(client, model: str, texts) -> np.ndarray:
    """One request with every text in it ([batch, 1] strings)."""
    array = np.array([[t.encode("utf-8")] for t in texts], dtype=object)
    request = http.InferInput("TEXT", list(array.shape), "BYTES")
    request.set_data_from_numpy(array)
    result = client.infer(model, [request], outputs=[http.InferRequestedOutput("EMBEDDING")])
    return result.as_numpy("EMBEDDING")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def model_stats(client, model: str) -> dict:
    (stats,) = client.get_inference_statistics(model)["model_stats"]
    return stats


# ----------------------------------------------------------------------------------------------- tiny BERT


@pytest.fixture(scope="module")
def tiny_repository(tiny_bert_onnx, tiny_model_dir, tmp_path_factory):
    config = TritonConfig(
        model_name="tiny", max_batch_size=8, preferred_batch_sizes=(4, 8), max_queue_delay_us=20_000, warmup=True
    )
    return export_triton_ensemble(
        tiny_bert_onnx,
        tmp_path_factory.mktemp("served") / "repo",
        tiny_model_dir("bert"),
        config,
        sequence_length=SEQUENCE_LENGTH,
    )


@pytest.fixture(scope="module")
def tiny_server(tiny_repository):
    with TritonServer(tiny_repository.repository, models=[tiny_repository.ensemble_name]) as server:
        yield server


@pytest.fixture(scope="module")
def tiny_reference(tiny_bert_onnx, tiny_model_dir):
    return workbench_embeddings(tiny_bert_onnx, tiny_model_dir("bert"), TEXTS, SEQUENCE_LENGTH, batch_size=1)


def test_served_embeddings_are_the_workbench_embeddings(tiny_server, tiny_repository, tiny_reference):
    name = tiny_repository.ensemble_name
    for model in tiny_repository.model_names:
        assert tiny_server.client.is_model_ready(model)

    batched = served_embeddings(tiny_server.client, name, TEXTS)  # one request of 6 texts
    one_by_one = np.concatenate([served_embeddings(tiny_server.client, name, [t]) for t in TEXTS])

    assert batched.shape == (len(TEXTS), 32) and batched.dtype == np.float32
    for served in (batched, one_by_one):
        similarity = cosines(served, tiny_reference)
        assert similarity.min() >= 0.9999, similarity
        np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)


def test_concurrent_requests_are_batched_by_the_server(tiny_server, tiny_repository, tiny_reference):
    name, onnx_model = tiny_repository.ensemble_name, tiny_repository.models["model"].model_name
    before = model_stats(tiny_server.client, onnx_model)
    local = threading.local()

    def one(index: int) -> np.ndarray:
        if not hasattr(local, "client"):  # tritonclient's HTTP client is not thread-safe: one per thread
            local.client = tiny_server.new_client()
        return served_embeddings(local.client, name, [TEXTS[index % len(TEXTS)]])[0]

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(one, i) for i in range(32)]
        results = [f.result(timeout=60) for f in futures]

    after = model_stats(tiny_server.client, onnx_model)
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == 32
    assert executions < inferences, (executions, inferences)
    sizes_before = {s["batch_size"]: s["compute_infer"]["count"] for s in before["batch_stats"]}
    grown = [
        s["batch_size"]
        for s in after["batch_stats"]
        if s["batch_size"] > 1 and s["compute_infer"]["count"] > sizes_before.get(s["batch_size"], 0)
    ]
    assert grown, after["batch_stats"]
    expected = np.stack([tiny_reference[i % len(TEXTS)] for i in range(32)])
    assert cosines(np.stack(results), expected).min() >= 0.9999


def test_a_miswired_ensemble_fails_with_the_servers_message(tiny_server, tiny_repository):
    # The strict parse accepts it (the config is a valid ModelConfig); only a server load sees the wiring.
    cfg = parse_model_config(tiny_repository.models["ensemble"].config_text)
    cfg.name = "tiny_miswired"
    tokenize = cfg.ensemble_scheduling.step[0]
    tokenize.output_map["IDZ"] = tokenize.output_map.pop("input_ids")
    folder = tiny_repository.repository / "tiny_miswired"
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(render_model_config(cfg))
    try:
        with pytest.raises(TritonServerError) as info:
            tiny_server.load("tiny_miswired")
    finally:
        shutil.rmtree(folder)
    message = str(info.value)
    assert "non-existing output IDZ" in message and "tiny_tokenizer" in message
    assert "Server log" in message
    assert info.value.fix
    assert tiny_server.client.is_model_ready(tiny_repository.ensemble_name)  # the good ensemble is unaffected


def test_a_gpu_export_fails_here_with_no_gpus_and_serves_from_a_cpu_copy(
    tiny_bert_onnx, tiny_model_dir, tiny_reference, tmp_path
):
    config = TritonConfig.preset("gpu_tensorrt_fp16", model_name="tiny", max_batch_size=8)
    exported = export_triton_ensemble(
        tiny_bert_onnx, tmp_path / "gpu_repo", tiny_model_dir("bert"), config, sequence_length=SEQUENCE_LENGTH
    )
    model_config = exported.models["model"].config_path.read_text()
    assert "KIND_GPU" in model_config and 'value: "FP16"' in model_config

    with TritonServer(exported.repository) as server:
        with pytest.raises(TritonServerError, match="no GPUs are available"):
            server.load(exported.ensemble_name)

    rewritten = copy_for_cpu(exported.repository, tmp_path / "cpu_copy")
    assert rewritten == ["tiny"]
    assert exported.models["model"].config_path.read_text() == model_config  # the artifact keeps KIND_GPU
    with TritonServer(tmp_path / "cpu_copy", models=[exported.ensemble_name]) as server:
        served = served_embeddings(server.client, exported.ensemble_name, TEXTS)
    assert cosines(served, tiny_reference).min() >= 0.9999


def test_server_stops_and_reports_a_missing_repository(tmp_path):
    with pytest.raises(TritonServerError, match="not a folder"):
        TritonServer(tmp_path / "missing").start()
    server = TritonServer(tmp_path)
    with server:
        pid = server.pid
        assert server.running and server.url.startswith("127.0.0.1:")
        with pytest.raises(TritonServerError, match="nothing_here"):
            server.load("nothing_here")
    assert not server.running and server.pid is None
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the server and its whole process group are gone
    assert "Started HTTPService at 127.0.0.1" in server.log_tail(100_000)
    server.stop()  # twice is fine
    with pytest.raises(TritonServerError, match="not running"):
        server.load("anything")


def test_a_server_that_ignores_sigterm_too_long_is_killed_with_its_stubs(tiny_repository, tmp_path):
    server = TritonServer(
        tiny_repository.repository, models=[tiny_repository.models["tokenizer"].model_name], stop_timeout_s=0.01
    )
    with server:
        pid, prefix = server.pid, server._shm_prefix
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    assert not list(Path("/dev/shm").glob(f"{prefix}*"))  # nothing of the killed stubs is left in shared memory


# ------------------------------------------------------------------------------------------ MiniLM, INT8


def test_minilm_dynamic_int8_ensemble_serves_the_workbench_embeddings(tmp_path):
    from workbench.stages.export import export_onnx
    from workbench.stages.precision.plan import PrecisionPlan

    source = load_model()
    fp32 = export_onnx(source, tmp_path / "minilm.onnx").path
    plan = PrecisionPlan.preset("cpu_int8_dynamic")
    int8 = tmp_path / "minilm_int8.onnx"
    plan.convert(fp32, int8, progress=False)
    sequence_length = 128
    exported = export_triton_ensemble(
        int8,
        tmp_path / "repo",
        source.path,
        TritonConfig.preset("cpu", model_name="minilm"),
        sequence_length=sequence_length,
        provenance={"source_model": str(source.path), "precision_plan": plan, "accuracy": {"note": "test"}},
    )
    # Dynamic INT8 computes activation scales over the whole batch (and its padding), so compare request for
    # request: one text per request, sent one after the other (batch 1 at the model), against the workbench at
    # batch 1 padded as the served policy pads it.
    reference = workbench_embeddings(int8, source.path, TEXTS, sequence_length, batch_size=1, padding=exported.padding)
    with TritonServer(exported.repository, models=[exported.ensemble_name]) as server:
        served = np.concatenate([served_embeddings(server.client, exported.ensemble_name, [t]) for t in TEXTS])
    assert served.shape == (len(TEXTS), 384)
    similarity = cosines(served, reference)
    assert similarity.min() >= 0.9999, similarity
    record = exported.provenance.read_text()
    assert '"method": "int8_dynamic"' in record and '"nvidia-pytriton"' in record


# ----------------------------------------------------------------------------------------------- a classifier


def test_a_served_classifier_returns_its_label_and_probabilities(tmp_path):
    """text-classification's ensemble: TEXT in, LABEL (id2label of the argmax) and PROBABILITIES out."""
    import json

    from tests.tiny_models import build_tiny_model
    from workbench.stages.export import export_onnx
    from workbench.tasks.classification import probabilities

    folder = build_tiny_model("bert", tmp_path / "hf", classifier=True)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config["id2label"] = {"0": "negative", "1": "neutral", "2": "positive"}
    config["label2id"] = {v: int(k) for k, v in config["id2label"].items()}
    config_path.write_text(json.dumps(config))
    source = load_model(folder)
    onnx_path = export_onnx(source, tmp_path / "classifier.onnx").path
    repository = export_triton_ensemble(
        onnx_path,
        tmp_path / "repo",
        folder,
        TritonConfig(model_name="clf"),
        sequence_length=SEQUENCE_LENGTH,
        task=source.task,
        model_config=source.config,
    )
    assert set(repository.models) == {"model", "tokenizer", "labels", "ensemble"}
    assert repository.output_names == ("LABEL", "PROBABILITIES")
    tokenizer = source.load_tokenizer()
    with OnnxRuntimeRunner(onnx_path) as runner:
        feeds = tokenize_batches(
            tokenizer,
            list(TEXTS),
            batch_size=len(TEXTS),
            sequence_length=SEQUENCE_LENGTH,
            input_names=list(runner.input_specs()),
        )
        logits = runner.infer(feeds[0])["logits"]
    expected = [config["id2label"][str(i)] for i in np.argmax(logits, axis=-1)]
    with TritonServer(repository.repository, models=[repository.ensemble_name]) as server:
        array = np.array([[t.encode("utf-8")] for t in TEXTS], dtype=object)
        request = http.InferInput("TEXT", list(array.shape), "BYTES")
        request.set_data_from_numpy(array)
        result = server.client.infer(repository.ensemble_name, [request])
    labels = [v[0].decode() if isinstance(v[0], bytes) else v[0] for v in result.as_numpy("LABEL")]
    assert labels == expected
    np.testing.assert_allclose(result.as_numpy("PROBABILITIES"), probabilities(logits), atol=1e-5)
    np.testing.assert_allclose(result.as_numpy("PROBABILITIES").sum(axis=1), 1.0, atol=1e-5)
