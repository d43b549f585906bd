"""The serving stage against real servers on loopback (Triton from nvidia-pytriton, FastAPI + uvicorn), with the
tiny BERT: executed batch sizes under concurrent mixed-length traffic, HTTP and gRPC agreeing, malformed
requests answered with errors while the server keeps serving, the sweep, the FastAPI baselines and the whole
benchmark. Load tests are bounded to seconds."""

from __future__ import annotations

import importlib.util
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (the [triton] extra)")
pytest.importorskip("tritonclient.grpc", reason="tritonclient is not installed (the [triton] extra)")
if importlib.util.find_spec("pytriton") is None:
    pytest.skip("nvidia-pytriton is not installed (the [triton] extra)", allow_module_level=True)

import numpy as np
from tritonclient import grpc, http
from tritonclient.utils import InferenceServerException

from workbench.data import default_data_dir, read_sentences
from workbench.engines.onnxruntime import OnnxRuntimeRunner
from workbench.models import load_model
from workbench.stages.accuracy.compare import mean_pooled_embeddings
from workbench.stages.serving.load import Endpoint, ServingConfig, measure_load
from workbench.stages.serving.stats import ServerProbe
from workbench.triton.config import TritonConfig, parse_model_config
from workbench.triton.ensemble import export_triton_ensemble
from workbench.triton.padding import PaddingPolicy
from workbench.triton.server import TritonServer

pytestmark = pytest.mark.slow

MAX_LENGTH = 32
QUICK = ServingConfig(
    concurrency=(8,),
    window_s=0.5,
    stable_windows=2,
    stability=0.5,
    max_windows=3,
    warmup_s=0.3,
    max_level_s=6.0,
    request_timeout_s=20.0,
)
DESIGNS = ("bls_buckets", "ensemble_buckets", "fixed")
TEXTS = (
    "A man is playing a guitar.",
    "short",
    "Ünïcödé and émojis 🙂 go through the tokenizer too.",
    " ".join(["A sentence longer than the sequence length is truncated."] * 8),
    "How are you?",
)


@pytest.fixture(scope="module")
def mix():
    return read_sentences(default_data_dir() / "evaluation.txt")


@pytest.fixture(scope="module", params=DESIGNS)
def served(request, tiny_bert_onnx, tiny_model_dir, tmp_path_factory):
    """(design, exported repository, running server with metrics) for each served design."""
    design = request.param
    exported = export_triton_ensemble(
        tiny_bert_onnx,
        tmp_path_factory.mktemp(design) / "repo",
        tiny_model_dir("bert"),
        TritonConfig(model_name="tiny", max_batch_size=8, max_queue_delay_us=5000),
        sequence_length=MAX_LENGTH,
        padding=PaddingPolicy.preset(design, max_length=MAX_LENGTH),
    )
    with TritonServer(exported.repository, models=[exported.model_name], metrics=True) as server:
        yield design, exported, server


def reference(onnx_path, tokenizer_dir, texts, policy):
    """The workbench's embeddings of each text alone under the served policy."""
    tokenizer = load_model(tokenizer_dir).load_tokenizer()
    with OnnxRuntimeRunner(onnx_path) as runner:
        names = list(runner.input_specs())
        return np.concatenate(
            [
                mean_pooled_embeddings(runner.infer(f)["last_hidden_state"], f["attention_mask"])
                for t in texts
                for f in policy.encode(tokenizer, [t], 1, input_names=names)
            ]
        )


def infer(client, module, model, texts, *, input_name="TEXT", raw=None):
    array = raw if raw is not None else np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)
    request = module.InferInput(input_name, list(array.shape), "BYTES")
    request.set_data_from_numpy(array)
    return client.infer(model, [request], outputs=[module.InferRequestedOutput("EMBEDDING")]).as_numpy("EMBEDDING")


def test_executed_batch_sizes_exceed_one_under_concurrent_mixed_length_traffic(served, mix):
    design, exported, server = served
    engine = exported.models["model"].model_name
    probe = ServerProbe(server.url, exported.model_names, engine=engine, metrics_url=server.metrics_url)
    result = measure_load(Endpoint(design, "http", server.url, model=exported.model_name), mix, QUICK, probe=probe)
    (level,) = result.levels
    assert level.errors == 0 and level.throughput > 0
    stats = level.server
    # the model that forms batches ran batches of more than one text
    batcher = exported.model_name if design.startswith("bls") else engine
    assert stats.models[batcher].max_batch_size > 1, stats.models[batcher].batch_sizes
    assert stats.models[batcher].executions < stats.models[batcher].inferences
    assert stats.models[engine].max_batch_size > 1, stats.models[engine].batch_sizes
    assert stats.mean_batch_size > 1
    # every text the clients had answered went through the engine once (plus the first check request)
    assert stats.models[exported.model_name].requests >= level.requests
    # a monitoring system reading the Prometheus endpoint sees the same executions
    assert stats.prometheus["nv_inference_exec_count"][engine] == stats.models[engine].executions
    assert stats.prometheus["nv_inference_count"][engine] == stats.models[engine].inferences


def test_http_and_grpc_clients_get_the_same_embeddings(served, tiny_bert_onnx, tiny_model_dir):
    design, exported, server = served
    expected = reference(tiny_bert_onnx, tiny_model_dir("bert"), TEXTS, exported.padding)
    http_client = http.InferenceServerClient(server.url)
    grpc_client = grpc.InferenceServerClient(server.grpc_url)
    try:
        one_by_one_http = np.concatenate([infer(http_client, http, exported.model_name, [t]) for t in TEXTS])
        one_by_one_grpc = np.concatenate([infer(grpc_client, grpc, exported.model_name, [t]) for t in TEXTS])
        together_grpc = infer(grpc_client, grpc, exported.model_name, list(TEXTS))
    finally:
        http_client.close()
        grpc_client.close()
    np.testing.assert_array_equal(one_by_one_http, one_by_one_grpc)  # same server, same bytes
    for served_embeddings in (one_by_one_http, together_grpc):
        cosines = np.sum(served_embeddings * expected, axis=1)
        assert cosines.min() > 0.9999, (design, cosines)


def test_malformed_requests_get_errors_and_the_server_keeps_serving(served, tiny_bert_onnx, tiny_model_dir):
    _design, exported, server = served
    name = exported.model_name
    client = http.InferenceServerClient(server.url, network_timeout=60)
    good = reference(tiny_bert_onnx, tiny_model_dir("bert"), ["A man is playing a guitar."], exported.padding)

    def serves_the_next_request():
        value = infer(client, http, name, ["A man is playing a guitar."])
        assert float(np.sum(value * good)) > 0.9999

    try:
        with pytest.raises(InferenceServerException):  # Triton itself refuses an input the model does not have
            infer(client, http, name, ["x"], input_name="TEXTS")
        serves_the_next_request()
        with pytest.raises(InferenceServerException, match="(?i)utf-8|decode"):
            infer(client, http, name, [], raw=np.array([[b"\xff\xfe not utf-8"]], dtype=np.object_))
        serves_the_next_request()
        # an empty text has nothing to embed, a 1 MB text is over the 64 KiB a request may hold: both are refused
        # with an error response that says why, and the server goes on
        for text in ("", "   "):
            with pytest.raises(InferenceServerException, match="is empty"):
                infer(client, http, name, [text])
            serves_the_next_request()
        with pytest.raises(InferenceServerException, match="bytes long"):
            infer(client, http, name, ["word " * 200_000])
        serves_the_next_request()
        assert client.is_server_live() and client.is_model_ready(name)
    finally:
        client.close()


def test_a_bad_request_does_not_fail_its_batch_mates_in_the_bls_design(served, mix):
    design, exported, server = served
    if not design.startswith("bls"):
        pytest.skip("the fixed and bucket ensembles' tokenizer model is hardened separately (robustness work)")
    local = threading.local()

    def call(index: int) -> str:
        if not hasattr(local, "client"):
            local.client = http.InferenceServerClient(server.url, network_timeout=60)
        bad = index % 4 == 0
        raw = np.array([[b"\xff bad"]], dtype=np.object_) if bad else None
        try:
            infer(local.client, http, exported.model_name, [mix[index % len(mix)]], raw=raw)
            return "bad-ok" if bad else "ok"
        except InferenceServerException:
            return "bad-error" if bad else "good-error"

    with ThreadPoolExecutor(max_workers=8) as pool:
        outcomes = [f.result(timeout=60) for f in [pool.submit(call, i) for i in range(48)]]
    assert outcomes.count("bad-error") == 12 and outcomes.count("ok") == 36, outcomes


def test_the_sweep_measures_each_setting_suggests_one_and_restores_the_configs(served, mix):
    from workbench.stages.serving.sweep import (
        SweepConfig,
        batching_roles,
        sweep_batching,
    )

    design, exported, server = served
    if design == "fixed":
        pytest.skip("the sweep is run on the length-aware repositories")
    sweep = SweepConfig(max_queue_delays_us=(0, 5000), instance_counts=(1, 2), concurrency=(8,))
    result = sweep_batching(server, exported, mix, QUICK, sweep)
    assert [(p.max_queue_delay_us, p.instance_count) for p in result.points] == [(0, 1), (0, 2), (5000, 1), (5000, 2)]
    # each setting was really applied: with 2 instances the batching model ran on 2 instances
    suggestion = result.suggestion
    assert (suggestion.max_queue_delay_us, suggestion.instance_count) in [(0, 1), (0, 2), (5000, 1), (5000, 2)]
    best = max(p.level(8).throughput for p in result.points)
    assert suggestion.throughput >= (1 - sweep.tie_fraction) * best
    applied = suggestion.apply(TritonConfig(model_name="tiny"))
    assert applied.instance_count == suggestion.instance_count
    assert sum(row["suggested"] for row in result.table()) == 1
    json.dumps(result.to_dict())
    # the server serves the repository's own configs again
    for role in batching_roles(exported.padding.batching):
        name = exported.models[role].model_name
        cfg = server.client.get_model_config(name)
        written = parse_model_config(exported.models[role].config_text)
        assert cfg["instance_group"][0]["count"] == written.instance_group[0].count
        if written.HasField("dynamic_batching"):
            assert (
                cfg["dynamic_batching"]["max_queue_delay_microseconds"]
                == written.dynamic_batching.max_queue_delay_microseconds
            )


@pytest.mark.parametrize("engine", ["onnxruntime", "pytorch"])
def test_fastapi_baselines_serve_the_workbench_embeddings_and_stop(engine, tiny_bert_onnx, tiny_model_dir):
    pytest.importorskip("fastapi", reason="fastapi is not installed (the [serving] extra)")
    pytest.importorskip("uvicorn", reason="uvicorn is not installed (the [serving] extra)")
    import urllib.request

    from workbench.stages.serving.baselines import FastAPIServer

    model = tiny_bert_onnx if engine == "onnxruntime" else tiny_model_dir("bert")
    # FastAPI pads each request to its longest text
    expected = reference(
        tiny_bert_onnx,
        tiny_model_dir("bert"),
        TEXTS,
        PaddingPolicy(mode="longest", batching="bls", max_length=MAX_LENGTH),
    )
    server = FastAPIServer(engine, model, tiny_model_dir("bert"), max_length=MAX_LENGTH)
    with server:
        pid = server._process.pid
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        request = urllib.request.Request(
            server.url, data=json.dumps({"texts": list(TEXTS)}).encode(), headers={"Content-Type": "application/json"}
        )
        with opener.open(request, timeout=60) as response:
            together = np.array(json.loads(response.read())["embeddings"])
        result = measure_load(Endpoint(engine, "json", server.url), TEXTS, QUICK.replace(concurrency=(2,)))
        assert result.levels[0].errors == 0 and result.levels[0].throughput > 0
    # one request of texts of different lengths is padded to its longest: FP32 masks it out
    assert np.sum(together * expected, axis=1).min() > (0.9999 if engine == "onnxruntime" else 0.999)
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


def test_benchmark_serving_runs_every_server_side_by_side(tiny_bert_onnx, tiny_model_dir, mix):
    pytest.importorskip("fastapi", reason="fastapi is not installed (the [serving] extra)")
    from workbench.stages.serving.run import SERVERS, benchmark_serving
    from workbench.stages.serving.summary import serving_summary
    from workbench.stages.serving.sweep import SweepConfig

    config = QUICK.replace(concurrency=(1, 8))
    result = benchmark_serving(
        tiny_bert_onnx,
        tiny_model_dir("bert"),
        mix[:40],
        config,
        triton_config=TritonConfig(model_name="tiny", max_batch_size=8),
        padding=PaddingPolicy(max_length=MAX_LENGTH),
        pytorch_model=tiny_model_dir("bert"),
        sweep=SweepConfig(max_queue_delays_us=(0, 2000), instance_counts=(1,)),
    )
    assert tuple(result.servers) == SERVERS
    for key, load in result.servers.items():
        assert [lv.concurrency for lv in load.levels] == [1, 8], key
        assert all(lv.errors == 0 and lv.throughput > 0 for lv in load.levels), key
        assert (load.levels[0].server is not None) == key.startswith("triton"), key
    assert result.tokens["length_aware"]["per_text"] < result.tokens["fixed"]["per_text"] == MAX_LENGTH
    summary = serving_summary(result)
    assert set(summary["servers"]) == set(SERVERS) and summary["concurrency"] == 8
    assert summary["suggestion"]["max_queue_delay_us"] in (0, 2000)
    assert summary["length_aware_vs_fixed"] > 0
    json.dumps(summary)
    json.dumps(result.to_dict())
    assert len(result.figure().data) == len(SERVERS)


def test_bls_calls_a_post_processing_model_that_offers_no_function(
    tiny_bert_onnx, tiny_model_dir, tmp_path, monkeypatch
):
    """Task post-processing without `postprocess()` (a labels model, say) is called through BLS instead."""
    import workbench.triton.served as served_module

    monkeypatch.setattr(served_module, "inline_postprocessing", lambda source: False)
    exported = export_triton_ensemble(
        tiny_bert_onnx,
        tmp_path / "repo",
        tiny_model_dir("bert"),
        TritonConfig(model_name="tiny"),
        sequence_length=MAX_LENGTH,
        padding=PaddingPolicy(max_length=MAX_LENGTH, batching="bls"),
    )
    assert exported.model_names == ("tiny", "tiny_pooling", "tiny_ensemble")
    entry = parse_model_config(exported.models["ensemble"].config_text)
    assert entry.parameters["postprocess_model"].string_value == "tiny_pooling"
    expected = reference(tiny_bert_onnx, tiny_model_dir("bert"), TEXTS, exported.padding)
    with TritonServer(exported.repository, models=[exported.model_name]) as server:  # loads what it calls
        assert server.client.is_model_ready("tiny_pooling")
        together = infer(server.client, http, exported.model_name, list(TEXTS))
        stats = server.client.get_inference_statistics("tiny_pooling")["model_stats"][0]
    assert np.sum(together * expected, axis=1).min() > 0.9999
    assert stats["inference_count"] == len(TEXTS)  # the pooling model did the work


def test_the_serving_pipeline_fills_the_summarys_serving_section(tiny_model_dir, tmp_path):
    from workbench.pipeline import PipelineParameters, ServingPipeline
    from workbench.stages.accuracy.compare import AccuracyBudget

    parameters = PipelineParameters(
        model_path=str(tiny_model_dir("bert")),
        output_dir=str(tmp_path / "run"),
        sequence_length=MAX_LENGTH,
        max_eval_samples=24,
        max_calibration_samples=8,
        benchmark_batch_sizes=(1,),
        benchmark_iterations=2,
        threads=1,
    )
    pipeline = ServingPipeline(parameters, budget=AccuracyBudget.preset("relaxed"))
    assert pipeline.steps.names[-2:] == ("serve", "write_summary")
    pipeline.serving_config = QUICK.replace(concurrency=(4,))
    pipeline.serving_servers = ("triton_length_aware_http", "triton_fixed_http")
    for name in ("export", "compare", "benchmark", "choose", "export_triton", "serve"):
        pipeline.run_step(name)
    summary = pipeline.write_summary()
    serving = json.loads(summary.path.read_text())["serving"]
    assert set(serving["servers"]) == {"triton_length_aware_http", "triton_fixed_http"}
    assert serving["concurrency"] == 4 and serving["padding"] == {
        **pipeline.padding.to_dict(),
        "buckets": list(pipeline.padding.bucket_lengths),
        "description": pipeline.padding.describe(),
    }
    assert all(s["throughput"] > 0 and s["p99_ms"] > 0 for s in serving["servers"].values())
    assert serving["length_aware_vs_fixed"] > 0
    (record,) = [r for r in pipeline.history if r.step == "serve"]
    assert record.configs == {"serving_config": pipeline.serving_config}
