"""A closed-loop load generator on 127.0.0.1 with perf_analyzer's semantics, written with asyncio clients.

Triton's `perf_analyzer` cannot be installed here (its PyPI name is a placeholder and tritonclient ships no
binary), so this implements what it measures, with tritonclient's own asyncio clients (`tritonclient.http.aio`,
`tritonclient.grpc.aio`) for Triton and aiohttp for a plain JSON endpoint (the FastAPI baselines):

- concurrency N: N clients, each sending its next request as soon as the previous one is answered (closed loop),
  texts taken in turn from one shared list (the evaluation-text mix);
- measurement windows of `window_s`, repeated until the last `stable_windows` agree within `stability` (both
  throughput and mean latency within that fraction of their mean, perf_analyzer's `--stability-percentage`), at
  most `max_windows` (its `--max-trials`); the level then reports the stable windows together: throughput in
  texts per second and p50/p90/p99 latency of the requests completed in them;
- every level is bounded in requests (`max_requests`) and time (`max_level_s`), every request by
  `request_timeout_s`; a level that is not stable within its bounds says so (`stable=False`).

The client runs in this process and takes CPU from the server it measures (perf_analyzer does too, less): on a
machine of 2 cores, compare servers within one run, as ratios.
"""

from __future__ import annotations

import asyncio
import dataclasses
import html
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from workbench._lazy import require
from workbench.config import StageConfig, check_choice, check_positive
from workbench.errors import ConfigError, DataError, ServingError

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from typing_extensions import Self

PROTOCOLS = ("http", "grpc")
#: How an endpoint is spoken to: Triton's HTTP or gRPC inference protocol, or JSON {"texts": [...]} over HTTP.
ENDPOINT_KINDS = ("http", "grpc", "json")


@dataclass(frozen=True)
class ServingConfig(StageConfig):
    """How a served model is loaded and measured (the load generator's settings).

    Attributes:
        concurrency: Concurrency levels to measure, each a number of clients in a closed loop.
        window_s: Length of one measurement window (perf_analyzer's --measurement-interval).
        stable_windows: Consecutive windows that must agree for a level to be stable (perf_analyzer: 3).
        stability: How closely they must agree: throughput and mean latency each within this fraction of
            their mean (perf_analyzer's --stability-percentage, 10%).
        max_windows: Windows measured at most per level (perf_analyzer's --max-trials).
        warmup_s: Seconds of load before the first window, not measured (connections, caches, batch sizes).
        max_requests: Requests sent at most per level (warm-up included).
        max_level_s: Seconds at most per level (warm-up included); a level ends when either bound is hit.
        request_timeout_s: Longest wait for one response; a request that takes longer is an error.
        protocol: "http" or "grpc": the Triton client protocol (JSON endpoints always use HTTP).
        texts_per_request: Texts in one request (1: one sentence per request, as an interactive service).
        max_error_fraction: A level with more failed requests than this fraction raises ServingError.
    """

    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    window_s: float = 2.0
    stable_windows: int = 3
    stability: float = 0.10
    max_windows: int = 8
    warmup_s: float = 1.0
    max_requests: int = 50_000
    max_level_s: float = 30.0
    request_timeout_s: float = 30.0
    protocol: str = "http"
    texts_per_request: int = 1
    max_error_fraction: float = 0.0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        # seconds, for tests and the guided workbench: short windows, few levels
        "quick": {
            "concurrency": (1, 4, 8),
            "window_s": 0.5,
            "stable_windows": 2,
            "stability": 0.25,
            "max_windows": 4,
            "warmup_s": 0.3,
            "max_level_s": 6.0,
        },
        # closer to perf_analyzer's defaults (5 s windows), for a quiet machine
        "thorough": {"window_s": 5.0, "max_windows": 10, "warmup_s": 2.0, "max_level_s": 90.0},
    }

    def __post_init__(self) -> None:
        concurrency = self.concurrency
        if isinstance(concurrency, list):
            concurrency = tuple(concurrency)
            object.__setattr__(self, "concurrency", concurrency)
        if (
            not isinstance(concurrency, tuple)
            or not concurrency
            or any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in concurrency)
        ):
            raise ConfigError(
                f"ServingConfig.concurrency must be a non-empty tuple of integers >= 1, got {concurrency!r}.",
                fix="pass for example (1, 2, 4, 8, 16)",
            )
        if len(set(concurrency)) != len(concurrency):
            raise ConfigError(f"ServingConfig.concurrency lists a level twice: {concurrency}.")
        check_positive(
            self,
            "window_s",
            "stable_windows",
            "max_windows",
            "max_requests",
            "max_level_s",
            "request_timeout_s",
            "texts_per_request",
        )
        for name in ("stable_windows", "max_windows", "max_requests", "texts_per_request"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"ServingConfig.{name} must be an integer, got {value!r}.")
        if not 0 < self.stability < 1:
            raise ConfigError(
                f"ServingConfig.stability must be a fraction between 0 and 1, got {self.stability!r}.",
                fix="pass for example 0.1 (10%, perf_analyzer's default)",
            )
        if not isinstance(self.warmup_s, (int, float)) or self.warmup_s < 0:
            raise ConfigError(f"ServingConfig.warmup_s must be >= 0, got {self.warmup_s!r}.")
        if not 0 <= self.max_error_fraction < 1:
            raise ConfigError(f"ServingConfig.max_error_fraction must be in [0, 1), got {self.max_error_fraction!r}.")
        if self.max_windows < self.stable_windows:
            raise ConfigError(
                f"ServingConfig.max_windows ({self.max_windows}) is below stable_windows ({self.stable_windows}), so "
                "no level could ever be stable.",
                fix="raise max_windows or lower stable_windows",
            )
        if self.warmup_s + self.stable_windows * self.window_s > self.max_level_s:
            raise ConfigError(
                f"ServingConfig.max_level_s ({self.max_level_s} s) is shorter than the warm-up plus "
                f"{self.stable_windows} windows of {self.window_s} s, so no level could ever be stable.",
                fix="raise max_level_s, or shorten window_s / warmup_s",
            )
        check_choice(self, "protocol", PROTOCOLS)


@dataclass(frozen=True)
class Endpoint:
    """Where a load goes.

    Attributes:
        name: Label in reports (e.g. "triton length-aware (http)").
        kind: "http" / "grpc" (Triton's inference protocols, `url` host:port) or "json" (POST {"texts": [...]}
            to `url`, a full http:// URL, expecting {"embeddings": [[...], ...]}).
        url: See kind. Must be on 127.0.0.1 (or localhost): load is never sent off this machine.
        model: The Triton model to call (Triton kinds).
        output: The output to fetch (Triton kinds); its first dimension must be the request's texts.
        input: The Triton input that takes the texts.
    """

    name: str
    kind: str
    url: str
    model: str | None = None
    output: str = "EMBEDDING"
    input: str = "TEXT"

    def __post_init__(self) -> None:
        check_choice(self, "kind", ENDPOINT_KINDS)
        host = self.url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0]
        if host not in ("127.0.0.1", "localhost"):
            raise ConfigError(
                f"Endpoint {self.name!r} is at {self.url!r}, not on loopback.",
                expected="127.0.0.1:PORT (or http://127.0.0.1:PORT/... for kind 'json')",
                fix="load-test servers on this machine only",
            )
        if self.kind != "json" and not self.model:
            raise ConfigError(f"Endpoint {self.name!r} of kind {self.kind!r} needs the Triton model to call.")


@dataclass(frozen=True)
class Window:
    """One measurement window: what completed within it.

    Attributes:
        start_s: When it began, seconds after its level began (warm-up included).
        seconds: Its length.
        requests, texts, errors: Requests that completed in it, the texts they answered, those that failed.
        throughput: Texts answered per second.
        mean_ms: Mean latency of the requests answered.
    """

    start_s: float
    seconds: float
    requests: int
    texts: int
    errors: int
    throughput: float
    mean_ms: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class LevelResult:
    """One concurrency level, over its stable windows (or its last ones when it never became stable).

    Attributes:
        concurrency: Clients in the closed loop.
        throughput: Texts answered per second (sentences/s with one text per request).
        requests_per_s: Requests answered per second.
        p50_ms, p90_ms, p99_ms, mean_ms: Latency of one request, client side.
        requests, texts, errors: Completed in the reported windows; errors: failed requests in them.
        windows: Every window measured, in order.
        stable: Whether the last `stable_windows` agreed within the stability threshold.
        seconds: Wall time of the level, warm-up included.
        server: What the server itself reported for the level (workbench.stages.serving.stats), or None.
        first_error: The first failure's message, if any request failed.
    """

    concurrency: int
    throughput: float
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    requests: int
    texts: int
    errors: int
    windows: tuple[Window, ...]
    stable: bool
    seconds: float
    server: Any = None
    first_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        values = {k: v for k, v in self.__dict__.items() if k not in ("windows", "server")}
        values["windows"] = [w.to_dict() for w in self.windows]
        values["server"] = self.server.to_dict() if self.server is not None else None
        return values


@dataclass(frozen=True)
class LoadResult:
    """Every concurrency level measured against one endpoint."""

    endpoint: Endpoint
    levels: tuple[LevelResult, ...]
    config: ServingConfig
    notes: tuple[str, ...] = field(default=())

    @property
    def name(self) -> str:
        return self.endpoint.name

    def level(self, concurrency: int) -> LevelResult:
        for level in self.levels:
            if level.concurrency == concurrency:
                return level
        raise KeyError(
            f"{self.name!r} was not measured at concurrency {concurrency} "
            f"(levels: {[lv.concurrency for lv in self.levels]})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "endpoint": dict(self.endpoint.__dict__),
            "levels": [lv.to_dict() for lv in self.levels],
            "config": self.config.to_dict(),
            "notes": list(self.notes),
        }

    def figure(self) -> Any:
        """Plotly: throughput against p99 latency, one point per concurrency level."""
        return throughput_latency_figure({self.name: self}, title=f"{self.name}: throughput vs p99 latency")

    def _repr_html_(self) -> str:
        return f"<b>{html.escape(self.name)}</b>" + levels_table_html(self.levels)


def levels_table_html(levels: Sequence[LevelResult]) -> str:
    rows = "".join(
        f"<tr><td>{lv.concurrency}</td><td>{lv.throughput:.1f}</td><td>{lv.p50_ms:.1f}</td><td>{lv.p90_ms:.1f}</td>"
        f"<td>{lv.p99_ms:.1f}</td><td>{lv.errors}</td><td>{'yes' if lv.stable else 'no'}</td>"
        f"<td>{lv.server.mean_batch_size:.2f}</td></tr>"
        if lv.server is not None
        else f"<tr><td>{lv.concurrency}</td><td>{lv.throughput:.1f}</td><td>{lv.p50_ms:.1f}</td>"
        f"<td>{lv.p90_ms:.1f}</td>"
        f"<td>{lv.p99_ms:.1f}</td><td>{lv.errors}</td><td>{'yes' if lv.stable else 'no'}</td><td>-</td></tr>"
        for lv in levels
    )
    return (
        "<table><tr><th>concurrency</th><th>texts/s</th><th>p50 ms</th><th>p90 ms</th><th>p99 ms</th>"
        f"<th>errors</th><th>stable</th><th>engine batch</th></tr>{rows}</table>"
    )


def throughput_latency_figure(results: dict[str, LoadResult], *, title: str = "Throughput vs p99 latency") -> Any:
    """Plotly: one line per server, x = p99 latency (ms), y = texts/s, each point labelled with its concurrency."""
    import plotly.graph_objects as go

    figure = go.Figure()
    for name, result in results.items():
        levels = sorted(result.levels, key=lambda lv: lv.concurrency)
        figure.add_scatter(
            x=[lv.p99_ms for lv in levels],
            y=[lv.throughput for lv in levels],
            name=name,
            mode="lines+markers+text",
            text=[f"c{lv.concurrency}" for lv in levels],
            textposition="top center",
            hovertemplate="concurrency %{text}<br>p99 %{x:.1f} ms<br>%{y:.1f} texts/s<extra>" + name + "</extra>",
        )
    figure.update_layout(
        title=title, xaxis_title="p99 latency (ms)", yaxis_title="throughput (texts/s)", legend_title="server"
    )
    return figure


# --------------------------------------------------------------------------------------------------- senders

Sender = Callable[[list[str]], Awaitable[None]]


class _Client:
    """The asyncio client of one endpoint: `send(texts)` raises on any failure (error status, wrong shape)."""

    def __init__(self, endpoint: Endpoint, timeout_s: float, connections: int) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.connections = connections
        self._client: Any = None
        self._session: Any = None

    async def __aenter__(self) -> Self:
        kind = self.endpoint.kind
        if kind == "http":
            aio = require("tritonclient.http.aio", purpose="Load-testing a Triton server", extra="triton")
            self._module = require("tritonclient.http", purpose="Load-testing a Triton server", extra="triton")
            self._client = aio.InferenceServerClient(
                self.endpoint.url, conn_limit=max(self.connections, 1), conn_timeout=self.timeout_s
            )
        elif kind == "grpc":
            aio = require("tritonclient.grpc.aio", purpose="Load-testing a Triton server", extra="triton")
            self._module = require("tritonclient.grpc", purpose="Load-testing a Triton server", extra="triton")
            self._client = aio.InferenceServerClient(self.endpoint.url)
        else:
            aiohttp = require("aiohttp", purpose="Load-testing an HTTP JSON endpoint", extra="serving")
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=max(self.connections, 1)),
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                trust_env=False,
            )  # loopback: never a proxy
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._client is not None:
            await self._client.close()
        if self._session is not None:
            await self._session.close()

    async def send(self, texts: list[str]) -> None:
        endpoint = self.endpoint
        if endpoint.kind == "json":
            async with self._session.post(endpoint.url, json={"texts": texts}) as response:
                body = await response.json(content_type=None)
                if response.status != 200:
                    raise RuntimeError(f"HTTP {response.status}: {str(body)[:200]}")
            got = len(body.get("embeddings", ())) if isinstance(body, dict) else -1
            if got != len(texts):
                raise RuntimeError(f"{got} embeddings for {len(texts)} texts")
            return
        array = np.array([[t.encode("utf-8")] for t in texts], dtype=np.object_)
        request = self._module.InferInput(endpoint.input, list(array.shape), "BYTES")
        request.set_data_from_numpy(array)
        outputs = [self._module.InferRequestedOutput(endpoint.output)]
        if endpoint.kind == "grpc":
            result = await self._client.infer(endpoint.model, [request], outputs=outputs, client_timeout=self.timeout_s)
        else:
            result = await self._client.infer(endpoint.model, [request], outputs=outputs)
        value = result.as_numpy(endpoint.output)
        if value is None or value.shape[0] != len(texts):
            raise RuntimeError(
                f"output {endpoint.output!r} has shape {getattr(value, 'shape', None)} for {len(texts)} texts"
            )


# ---------------------------------------------------------------------------------------------- measurement


@dataclass
class _Record:
    start: float
    end: float
    texts: int
    error: str | None


def _stable(windows: list[Window], count: int, threshold: float) -> bool:
    if len(windows) < count:
        return False
    last = windows[-count:]
    for values in ([w.throughput for w in last], [w.mean_ms for w in last]):
        mean = float(np.mean(values))
        if mean <= 0 or not np.isfinite(mean) or max(abs(v - mean) for v in values) > threshold * mean:
            return False
    return all(w.requests > 0 for w in last)


def _window(records: list[_Record], start: float, end: float, origin: float) -> Window:
    done = [r for r in records if start <= r.end < end]
    ok = [r for r in done if r.error is None]
    seconds = end - start
    mean_ms = float(np.mean([(r.end - r.start) * 1e3 for r in ok])) if ok else float("nan")
    return Window(
        start_s=start - origin,
        seconds=seconds,
        requests=len(done),
        texts=sum(r.texts for r in ok),
        errors=len(done) - len(ok),
        throughput=sum(r.texts for r in ok) / seconds,
        mean_ms=mean_ms,
    )


async def _measure_level(
    client: _Client, texts: Sequence[str], concurrency: int, config: ServingConfig, offset: int
) -> tuple[LevelResult, int]:
    records: list[_Record] = []
    state = {"next": offset, "sent": 0}
    stop = asyncio.Event()
    per_request = config.texts_per_request

    async def worker() -> None:
        while not stop.is_set() and state["sent"] < config.max_requests:
            start_index = state["next"]
            state["next"] += per_request
            state["sent"] += 1
            batch = [texts[(start_index + i) % len(texts)] for i in range(per_request)]
            began = time.perf_counter()
            error = None
            try:
                await asyncio.wait_for(client.send(batch), timeout=config.request_timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - every failure is counted and reported, none stops the load
                error = f"{type(exc).__name__}: {exc}"[:500]
            records.append(_Record(began, time.perf_counter(), per_request, error))

    level_start = time.perf_counter()
    deadline = level_start + config.max_level_s
    tasks = [asyncio.create_task(worker()) for _ in range(concurrency)]
    windows: list[Window] = []
    try:
        await asyncio.sleep(min(config.warmup_s, config.max_level_s))
        while (
            len(windows) < config.max_windows
            and state["sent"] < config.max_requests
            and time.perf_counter() + config.window_s <= deadline
        ):
            started = time.perf_counter()
            await asyncio.sleep(config.window_s)
            windows.append(_window(records, started, time.perf_counter(), level_start))
            if _stable(windows, config.stable_windows, config.stability):
                break
    finally:
        stop.set()
        _done, pending = await asyncio.wait(tasks, timeout=config.request_timeout_s + 1)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
    seconds = time.perf_counter() - level_start
    if not windows:
        raise ServingError(
            f"No measurement window fit at concurrency {concurrency} against {client.endpoint.name!r} "
            f"({state['sent']} requests sent in {seconds:.1f} s).",
            fix="raise ServingConfig.max_requests or max_level_s",
        )
    stable = _stable(windows, config.stable_windows, config.stability)
    reported = windows[-config.stable_windows :]  # the stable windows, or the last ones
    spans = [(level_start + w.start_s, level_start + w.start_s + w.seconds) for w in reported]
    chosen = [r for r in records if any(a <= r.end < b for a, b in spans)]
    total_s = sum(w.seconds for w in reported)
    ok = [r for r in chosen if r.error is None]
    latencies = np.array([(r.end - r.start) * 1e3 for r in ok]) if ok else np.array([np.nan])
    errors = [r for r in records if r.error is not None]
    answered = sum(r.texts for r in ok)
    level = LevelResult(
        concurrency=concurrency,
        throughput=answered / total_s,
        requests_per_s=len(ok) / total_s,
        p50_ms=float(np.percentile(latencies, 50)),
        p90_ms=float(np.percentile(latencies, 90)),
        p99_ms=float(np.percentile(latencies, 99)),
        mean_ms=float(np.mean(latencies)),
        requests=len(chosen),
        texts=answered,
        errors=len(chosen) - len(ok),
        windows=tuple(windows),
        stable=stable,
        seconds=seconds,
        first_error=errors[0].error if errors else None,
    )
    if errors and len(errors) > config.max_error_fraction * max(len(records), 1):
        raise ServingError(
            f"{len(errors)} of {len(records)} requests to {client.endpoint.name!r} failed at concurrency "
            f"{concurrency}; the first: {errors[0].error}",
            fix="check that the server is up and serves this model; raise ServingConfig.max_error_fraction to "
            "measure a server that fails some requests on purpose",
        )
    return level, state["next"]


def _in_own_loop(coroutine_function: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run a coroutine in a fresh event loop on a thread of its own (works inside Jupyter's running loop)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="workbench-load") as pool:
        return pool.submit(lambda: asyncio.run(coroutine_function())).result()


def measure_load(
    endpoint: Endpoint,
    texts: Sequence[str],
    config: ServingConfig | None = None,
    *,
    probe: Any = None,
    concurrency: Sequence[int] | None = None,
) -> LoadResult:
    """Load `endpoint` at each concurrency level of `config` (closed loop, windows until stable).

    One request is sent and checked first, so that a server that cannot answer fails fast with its reason.

    Args:
        endpoint: Where to send the load (loopback only).
        texts: The texts, sent in turn (e.g. the evaluation sentences); `config.texts_per_request` per request.
        config: Windows, stability, bounds, protocol; default ServingConfig().
        probe: A `workbench.stages.serving.stats.ServerProbe` to read the server's own statistics around each
            level (Triton endpoints), or None.
        concurrency: Levels to measure instead of `config.concurrency`.

    Returns:
        One LevelResult per level, in the order measured.

    Raises:
        ServingError: The first request failed, a level had more failed requests than
            `config.max_error_fraction`, or no window fit in a level's bounds.
        DataError: No texts.
    """
    config = config if config is not None else ServingConfig()
    texts = [str(t) for t in texts]
    if not texts:
        raise DataError("No texts to send.", fix="pass the evaluation sentences, for example")
    levels_wanted = tuple(concurrency) if concurrency is not None else config.concurrency
    if not levels_wanted or any(not isinstance(c, int) or isinstance(c, bool) or c < 1 for c in levels_wanted):
        raise ConfigError(f"concurrency must be integers >= 1, got {levels_wanted!r}.")

    async def run() -> tuple[LevelResult, ...]:
        async with _Client(endpoint, config.request_timeout_s, max(levels_wanted)) as client:
            try:
                await asyncio.wait_for(client.send(texts[: config.texts_per_request]), config.request_timeout_s)
            except Exception as exc:
                raise ServingError(
                    f"The first request to {endpoint.name!r} ({endpoint.url}) failed: {type(exc).__name__}: {exc}",
                    fix="check that the server is running and serves this model",
                ) from exc
            levels, offset = [], 0
            for level_concurrency in levels_wanted:
                before = probe.snapshot() if probe is not None else None
                level, offset = await _measure_level(client, texts, level_concurrency, config, offset)
                if probe is not None:
                    level = dataclasses.replace(level, server=probe.delta(before, probe.snapshot()))
                levels.append(level)
            return tuple(levels)

    levels = _in_own_loop(run)
    notes = tuple(
        f"concurrency {lv.concurrency} was not stable within {config.max_windows} windows / "
        f"{config.max_level_s:.0f} s; its figures are the last {config.stable_windows} windows"
        for lv in levels
        if not lv.stable
    )
    return LoadResult(endpoint=endpoint, levels=levels, config=config, notes=notes)
