"""The serving stage without a Triton server: configs, the load generator's semantics against a real HTTP server on
loopback (aiohttp, in a thread), server statistics parsing, the sweep's rule and the summary's stable keys."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest
from typing_extensions import Self

from workbench.errors import ConfigError, ServingError
from workbench.stages.serving.load import (
    Endpoint,
    LevelResult,
    LoadResult,
    ServingConfig,
    Window,
    _stable,
    measure_load,
)
from workbench.stages.serving.stats import (
    ModelStatistics,
    ServerStatistics,
    model_statistics_delta,
    parse_prometheus,
)
from workbench.stages.serving.sweep import SweepConfig, SweepPoint, suggest
from workbench.triton.config import TritonConfig

aiohttp = pytest.importorskip("aiohttp", reason="aiohttp is not installed (tritonclient[http] brings it)")

QUICK = ServingConfig(
    concurrency=(1, 4),
    window_s=0.3,
    stable_windows=2,
    stability=0.5,
    max_windows=4,
    warmup_s=0.1,
    max_level_s=5.0,
    request_timeout_s=5.0,
)


# ------------------------------------------------------------------------------------------------- configs


@pytest.mark.parametrize(
    "changes",
    [
        {"concurrency": ()},
        {"concurrency": (0, 2)},
        {"concurrency": (2, 2)},
        {"concurrency": (1.5,)},
        {"stability": 0.0},
        {"stability": 1.5},
        {"window_s": 0},
        {"max_windows": 2, "stable_windows": 3},
        {"max_level_s": 1.0, "window_s": 1.0},
        {"protocol": "websocket"},
        {"texts_per_request": 0},
        {"max_requests": 2.5},
        {"warmup_s": -1},
        {"max_error_fraction": 1.0},
    ],
)
def test_invalid_serving_configs_are_config_errors(changes):
    with pytest.raises(ConfigError):
        ServingConfig(**changes)


def test_serving_config_round_trips_and_has_presets():
    quick = ServingConfig.preset("quick")
    assert quick.concurrency == (1, 4, 8) and quick.window_s < ServingConfig().window_s
    assert ServingConfig.from_json(quick.to_json()) == quick
    assert ServingConfig().concurrency == (1, 2, 4, 8, 16)


@pytest.mark.parametrize("url", ["10.0.0.1:8000", "example.com:8001", "http://192.168.1.2:8000/embed"])
def test_endpoints_off_loopback_are_refused(url):
    with pytest.raises(ConfigError, match="loopback"):
        Endpoint("far", "json" if url.startswith("http") else "http", url, model="m")


def test_triton_endpoints_need_a_model():
    with pytest.raises(ConfigError, match="model"):
        Endpoint("t", "grpc", "127.0.0.1:8001")


def _window(throughput: float, mean_ms: float, requests: int = 10) -> Window:
    return Window(
        start_s=0.0, seconds=1.0, requests=requests, texts=requests, errors=0, throughput=throughput, mean_ms=mean_ms
    )


def test_stability_needs_the_last_windows_to_agree_on_throughput_and_latency():
    assert _stable([_window(50, 10), _window(100, 20), _window(104, 21), _window(98, 20)], 3, 0.1)
    assert not _stable([_window(100, 20), _window(104, 21)], 3, 0.1)  # too few
    assert not _stable([_window(100, 20), _window(130, 20), _window(100, 20)], 3, 0.1)  # throughput moves
    assert not _stable([_window(100, 20), _window(100, 30), _window(100, 20)], 3, 0.1)  # latency moves
    assert not _stable([_window(0, float("nan"), 0)] * 3, 3, 0.1)  # nothing completed


# --------------------------------------------------------------------------------- the load generator, live


class _JsonServer:
    """A real aiohttp server on 127.0.0.1 in its own thread: POST {"texts"} -> {"embeddings"} after `delay_s`,
    counting how many requests are in flight at once; texts starting with "fail" get HTTP 500."""

    def __init__(self, delay_s: float = 0.005) -> None:
        self.delay_s = delay_s
        self.in_flight = 0
        self.max_in_flight = 0
        self.served = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    async def _embed(self, request):
        from aiohttp import web

        body = await request.json()
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
        finally:
            self.in_flight -= 1
        self.served += 1
        if any(t.startswith("fail") for t in body["texts"]):
            return web.json_response({"detail": "asked to fail"}, status=500)
        return web.json_response({"embeddings": [[1.0, 0.0]] * len(body["texts"])})

    def _serve(self) -> None:
        from aiohttp import web

        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_post("/embed", self._embed)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    def __enter__(self) -> Self:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint("aiohttp", "json", f"http://127.0.0.1:{self.port}/embed")


def test_closed_loop_keeps_exactly_concurrency_requests_in_flight_and_measures_windows():
    with _JsonServer(delay_s=0.01) as server:
        result = measure_load(server.endpoint, ["a", "b", "c"], QUICK, concurrency=(4,))
        assert server.max_in_flight == 4  # closed loop: never more than N outstanding, and N reached
        (level,) = result.levels
        assert level.concurrency == 4 and level.errors == 0 and level.stable
        # 4 clients, 10 ms per request: at most 400 requests/s, and the client overhead is small next to 10 ms
        assert 100 < level.requests_per_s <= 400
        assert level.throughput == pytest.approx(level.requests_per_s)
        assert 10 <= level.p50_ms <= level.p90_ms <= level.p99_ms
        assert 2 <= len(level.windows) <= QUICK.max_windows and level.seconds < QUICK.max_level_s + 1
        assert level.requests == sum(w.requests for w in level.windows[-QUICK.stable_windows :])
        assert result.to_dict()["levels"][0]["concurrency"] == 4


def test_every_level_is_bounded_in_requests_and_time():
    config = QUICK.replace(max_requests=30, stability=0.01)  # too strict to become stable: bounds end it
    # slow enough that the 30 requests outlast the warm-up and a window (on a fast machine 2 ms each did not)
    delay = 2 * (config.warmup_s + config.window_s) / 15
    with _JsonServer(delay_s=delay) as server:
        result = measure_load(server.endpoint, ["x"], config, concurrency=(2,))
        served = server.served
    assert served <= 30 + 1  # the first check request, then at most max_requests
    (level,) = result.levels
    assert level.seconds <= config.max_level_s + config.request_timeout_s


def test_texts_per_request_multiplies_throughput_in_texts():
    with _JsonServer(delay_s=0.01) as server:
        one = measure_load(server.endpoint, ["a", "b"], QUICK, concurrency=(2,)).levels[0]
        three = measure_load(server.endpoint, ["a", "b"], QUICK.replace(texts_per_request=3), concurrency=(2,)).levels[
            0
        ]
    assert three.throughput == pytest.approx(3 * three.requests_per_s)
    assert three.throughput > 1.5 * one.throughput


def test_failing_requests_are_counted_and_raise_beyond_the_allowed_fraction():
    with _JsonServer() as server:
        with pytest.raises(ServingError, match="first request"):
            measure_load(server.endpoint, ["fail now"], QUICK, concurrency=(1,))
        with pytest.raises(ServingError, match="failed at concurrency 2"):
            measure_load(server.endpoint, ["fine", "fail later"], QUICK, concurrency=(2,))
        tolerant = measure_load(
            server.endpoint, ["fine", "fail later"], QUICK.replace(max_error_fraction=0.9), concurrency=(2,)
        )
    level = tolerant.levels[0]
    assert level.errors > 0 and "500" in level.first_error
    assert level.requests == level.texts + level.errors  # one text per request: answered + failed
    assert level.requests_per_s == pytest.approx(level.texts / sum(w.seconds for w in level.windows[-2:]))


def test_a_server_that_is_not_there_fails_fast():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    started = time.perf_counter()
    with pytest.raises(ServingError, match="first request"):
        measure_load(Endpoint("gone", "json", f"http://127.0.0.1:{port}/embed"), ["a"], QUICK)
    assert time.perf_counter() - started < 10


def test_measure_load_works_inside_a_running_event_loop():
    """A notebook kernel runs an event loop; the load runs in a loop of its own."""
    with _JsonServer() as server:

        async def inside():
            return measure_load(server.endpoint, ["a"], QUICK, concurrency=(1,))

        result = asyncio.run(inside())
    assert result.levels[0].requests > 0


# ------------------------------------------------------------------------------------------ server statistics


PROMETHEUS = """# HELP nv_inference_request_success Number of successful inference requests
# TYPE nv_inference_request_success counter
nv_inference_request_success{model="m",version="1"} 120
nv_inference_request_success{model="m_ensemble",version="1"} 40
# TYPE nv_inference_exec_count counter
nv_inference_exec_count{model="m",version="1"} 30
# TYPE nv_inference_queue_duration_us counter
nv_inference_queue_duration_us{model="m",version="1"} 5000
# TYPE nv_cpu_utilization gauge
nv_cpu_utilization 0.5
"""


def test_prometheus_counters_are_read_per_model():
    values = parse_prometheus(PROMETHEUS)
    assert values["nv_inference_request_success"] == {"m": 120.0, "m_ensemble": 40.0}
    assert values["nv_inference_exec_count"] == {"m": 30.0}
    assert values["nv_inference_queue_duration_us"] == {"m": 5000.0}
    assert "nv_cpu_utilization" not in values


def _stats(success: int, inferences: int, executions: int, queue_ns: int, sizes: dict[int, int]) -> dict:
    return {
        "inference_count": inferences,
        "execution_count": executions,
        "inference_stats": {
            "success": {"count": success, "ns": 0},
            "fail": {"count": 0, "ns": 0},
            "queue": {"count": success, "ns": queue_ns},
            "compute_infer": {"count": success, "ns": 2_000_000 * success},
        },
        "batch_stats": [{"batch_size": b, "compute_infer": {"count": c, "ns": 0}} for b, c in sizes.items()],
    }


def test_statistics_deltas_give_batch_sizes_and_times_per_request():
    before = _stats(10, 10, 10, 10_000_000, {1: 10})
    after = _stats(50, 50, 20, 90_000_000, {1: 12, 4: 8})
    delta = model_statistics_delta("m", before, after)
    assert (delta.requests, delta.inferences, delta.executions) == (40, 40, 10)
    assert delta.batch_sizes == {1: 2, 4: 8} and delta.max_batch_size == 4
    assert delta.mean_batch_size == pytest.approx(4.0)
    assert delta.queue_ms == pytest.approx(2.0) and delta.compute_infer_ms == pytest.approx(2.0)
    stats = ServerStatistics(models={"m": delta}, engine="m")
    assert stats.mean_batch_size == pytest.approx(4.0)
    assert stats.to_dict()["models"]["m"]["batch_sizes"] == {"1": 2, "4": 8}


# ----------------------------------------------------------------------------------------- sweep and summary


def _level(concurrency: int, throughput: float, p99: float, batch: float | None = None) -> LevelResult:
    server = None
    if batch is not None:
        server = ServerStatistics(
            models={"m": ModelStatistics("m", 10, 0, int(10 * batch), 10, {2: 10}, 1.0, 0.0, 1.0, 0.0)}, engine="m"
        )
    return LevelResult(
        concurrency=concurrency,
        throughput=throughput,
        requests_per_s=throughput,
        p50_ms=p99 / 2,
        p90_ms=p99 * 0.8,
        p99_ms=p99,
        mean_ms=p99 / 2,
        requests=100,
        texts=100,
        errors=0,
        windows=(),
        stable=True,
        seconds=3.0,
        server=server,
    )


def test_the_suggestion_maximises_throughput_within_the_latency_limit():
    points = [
        SweepPoint(0, 1, (), (_level(8, 100, 50),)),
        SweepPoint(2000, 1, (), (_level(8, 140, 90),)),
        SweepPoint(2000, 2, (8,), (_level(8, 139, 70),)),
        SweepPoint(10000, 2, (), (_level(8, 150, 300),)),
    ]
    best = suggest(points, SweepConfig())
    assert (best.max_queue_delay_us, best.instance_count) == (10000, 2)  # no limit: most throughput
    limited = suggest(points, SweepConfig(p99_limit_ms=100))
    # 140 and 139 texts/s are within 3%: the lower p99 wins
    assert (limited.max_queue_delay_us, limited.instance_count, limited.preferred_batch_sizes) == (2000, 2, (8,))
    assert "p99 100" in limited.reason
    with pytest.raises(ServingError, match="p99"):
        suggest(points, SweepConfig(p99_limit_ms=10))
    applied = limited.apply(TritonConfig(model_name="m", max_batch_size=8))
    assert (applied.max_queue_delay_us, applied.instance_count, applied.preferred_batch_sizes) == (2000, 2, (8,))
    assert limited.apply(TritonConfig(model_name="m", max_batch_size=4)).preferred_batch_sizes == ()


def test_sweep_config_lists_every_setting_and_checks_its_objective():
    config = SweepConfig(max_queue_delays_us=(0, 100), instance_counts=(1, 2), preferred_batch_sizes=(4,))
    assert len(config.settings()) == 8 and (100, 2, (4,)) in config.settings()
    assert config.target == 8
    with pytest.raises(ConfigError):
        SweepConfig(concurrency=(4, 8), objective_concurrency=16)
    with pytest.raises(ConfigError):
        SweepConfig(instance_counts=(0,))


def test_serving_summary_has_its_documented_stable_keys():
    from workbench.stages.serving.run import ServingResult
    from workbench.stages.serving.summary import serving_summary
    from workbench.stages.serving.sweep import SweepResult
    from workbench.triton.padding import PaddingPolicy

    def load(name: str, kind: str, throughputs: list[float], p99s: list[float], batch: float | None) -> LoadResult:
        endpoint = Endpoint(name, kind, "127.0.0.1:1" if kind != "json" else "http://127.0.0.1:1/embed", model="m")
        return LoadResult(
            endpoint,
            tuple(_level(c, t, p, batch) for c, t, p in zip((1, 8), throughputs, p99s)),
            QUICK.replace(concurrency=(1, 8)),
        )

    servers = {
        "triton_length_aware_http": load("a", "http", [50, 300], [30, 60], 3.0),
        "triton_length_aware_grpc": load("b", "grpc", [55, 330], [28, 55], 3.0),
        "triton_fixed_http": load("c", "http", [20, 100], [60, 120], 4.0),
        "fastapi_pytorch": load("d", "json", [10, 50], [100, 300], None),
        "fastapi_onnxruntime": load("e", "json", [40, 150], [40, 100], None),
    }
    points = (SweepPoint(0, 1, (), (_level(8, 300, 60),)),)
    sweep = SweepResult(points, suggest(points, SweepConfig()), SweepConfig(), "bls")
    result = ServingResult(
        servers=servers,
        sweep=sweep,
        padding=PaddingPolicy(),
        triton_config=TritonConfig(),
        tokens={"length_aware": {"per_text": 39.2}, "fixed": {"per_text": 128.0}},
        config=QUICK.replace(concurrency=(1, 8)),
        machine={"cpus": 2},
    )
    summary = serving_summary(result)
    assert set(summary) == {
        "serving_version",
        "concurrency",
        "padding",
        "tokens_per_text",
        "servers",
        "levels",
        "length_aware_vs_fixed",
        "length_aware_vs_fixed_p99",
        "triton_vs_fastapi_pytorch",
        "triton_vs_fastapi_onnxruntime",
        "grpc_vs_http",
        "suggestion",
        "machine",
    }
    assert summary["concurrency"] == 8 and summary["serving_version"] == 1
    assert summary["length_aware_vs_fixed"] == pytest.approx(3.0)
    assert summary["length_aware_vs_fixed_p99"] == pytest.approx(0.5)
    assert summary["triton_vs_fastapi_pytorch"] == pytest.approx(6.0)
    assert summary["triton_vs_fastapi_onnxruntime"] == pytest.approx(2.0)
    assert summary["grpc_vs_http"] == pytest.approx(1.1)
    assert summary["servers"]["triton_fixed_http"]["engine_batch_size"] == pytest.approx(4.0)
    assert "engine_batch_size" not in summary["servers"]["fastapi_pytorch"]
    assert [lv["concurrency"] for lv in summary["levels"]["fastapi_onnxruntime"]] == [1, 8]
    assert summary["padding"]["buckets"] == [16, 32, 64, 128] and summary["tokens_per_text"]["fixed"] == 128.0
    assert summary["suggestion"]["instance_count"] == 1
    import json

    json.dumps(summary)  # plain JSON
    figure = result.figure()
    assert len(figure.data) == len(servers) and figure.layout.xaxis.title.text == "p99 latency (ms)"
    assert list(figure.data[0].x) == [30, 60] and list(figure.data[0].text) == ["c1", "c8"]
    assert result.ratio("triton_length_aware_http", "triton_fixed_http", 1) == pytest.approx(2.5)
    assert "length-aware / fixed: 3.00x" in result._repr_html_()
    assert np.isclose(result.level("fastapi_pytorch").throughput, 50)
