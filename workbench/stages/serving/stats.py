"""What a Triton server itself reports about a load: executed batch sizes, queue and compute time per model.

Two sources, read before and after each concurrency level and subtracted:

- the statistics extension (`GET /v2/models/<name>/stats`, tritonclient's `get_inference_statistics`): per
  model the requests, inferences (batch items) and executions, cumulative queue / compute-input / compute-infer /
  compute-output time, and per executed batch size how many executions ran at it;
- the Prometheus metrics endpoint (`TritonServer(metrics=True)`): the `nv_inference_*` counters, parsed with
  prometheus_client's parser, as a cross-check that a monitoring system would see the same.
"""

from __future__ import annotations

import html
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from workbench._lazy import require
from workbench.errors import ServingError

#: Prometheus counters read from Triton's metrics endpoint (per model).
PROMETHEUS_COUNTERS = (
    "nv_inference_request_success",
    "nv_inference_request_failure",
    "nv_inference_count",
    "nv_inference_exec_count",
    "nv_inference_request_duration_us",
    "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us",
    "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us",
)
_DURATIONS = ("queue", "compute_input", "compute_infer", "compute_output")


@dataclass(frozen=True)
class ModelStatistics:
    """One model's share of a load, from Triton's statistics extension.

    Attributes:
        model: The model's name.
        requests: Requests it answered (success count); a batch of 8 requests is 8.
        failed: Requests it failed.
        inferences: Batch items it computed (inference_count).
        executions: Times it ran (execution_count); inferences / executions is its mean batch size.
        batch_sizes: Executed batch size -> executions at that size.
        queue_ms, compute_input_ms, compute_infer_ms, compute_output_ms: Mean per request, in milliseconds.
    """

    model: str
    requests: int
    failed: int
    inferences: int
    executions: int
    batch_sizes: dict[int, int]
    queue_ms: float
    compute_input_ms: float
    compute_infer_ms: float
    compute_output_ms: float

    @property
    def mean_batch_size(self) -> float:
        return self.inferences / self.executions if self.executions else 0.0

    @property
    def max_batch_size(self) -> int:
        return max((size for size, count in self.batch_sizes.items() if count), default=0)

    def to_dict(self) -> dict[str, Any]:
        values = dict(self.__dict__)
        values["batch_sizes"] = {str(k): v for k, v in sorted(self.batch_sizes.items())}
        values["mean_batch_size"] = self.mean_batch_size
        return values


@dataclass(frozen=True)
class ServerStatistics:
    """What the server reported for one level: every model's statistics, and the Prometheus counters.

    Attributes:
        models: Model name -> its statistics over the level.
        engine: The model that runs the network (its batch sizes are the ones that matter), if known.
        prometheus: Counter name -> model -> increase over the level (empty without a metrics endpoint).
    """

    models: dict[str, ModelStatistics]
    engine: str | None = None
    prometheus: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def mean_batch_size(self) -> float:
        """The engine's mean executed batch size (0 when no engine is named or it did not run)."""
        model = self.models.get(self.engine or "")
        return model.mean_batch_size if model is not None else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "mean_batch_size": self.mean_batch_size,
            "models": {name: stats.to_dict() for name, stats in self.models.items()},
            "prometheus": self.prometheus,
        }

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(s.model)}</td><td>{s.requests}</td><td>{s.executions}</td>"
            f"<td>{s.mean_batch_size:.2f}</td><td>{s.max_batch_size}</td><td>{s.queue_ms:.2f}</td>"
            f"<td>{s.compute_infer_ms:.2f}</td></tr>"
            for s in self.models.values()
        )
        return (
            "<table><tr><th>model</th><th>requests</th><th>executions</th><th>mean batch</th><th>max batch</th>"
            f"<th>queue ms</th><th>compute ms</th></tr>{rows}</table>"
        )


def _raw_statistics(client: Any, model: str) -> dict[str, Any]:
    (stats,) = client.get_inference_statistics(model)["model_stats"]
    return stats


def _ns(stats: Mapping[str, Any], key: str) -> tuple[int, int]:
    entry = stats.get("inference_stats", {}).get(key, {})
    return int(entry.get("count", 0)), int(entry.get("ns", 0))


def model_statistics_delta(model: str, before: Mapping[str, Any], after: Mapping[str, Any]) -> ModelStatistics:
    """A model's statistics between two `get_inference_statistics` snapshots (HTTP JSON form)."""
    requests = _ns(after, "success")[0] - _ns(before, "success")[0]
    failed = _ns(after, "fail")[0] - _ns(before, "fail")[0]
    means = {}
    for key in _DURATIONS:
        count = _ns(after, key)[0] - _ns(before, key)[0]
        total = _ns(after, key)[1] - _ns(before, key)[1]
        means[key] = total / count / 1e6 if count else 0.0
    earlier = {int(b["batch_size"]): int(b["compute_infer"]["count"]) for b in before.get("batch_stats", [])}
    sizes = {
        int(b["batch_size"]): int(b["compute_infer"]["count"]) - earlier.get(int(b["batch_size"]), 0)
        for b in after.get("batch_stats", [])
    }
    return ModelStatistics(
        model=model,
        requests=requests,
        failed=failed,
        inferences=int(after.get("inference_count", 0)) - int(before.get("inference_count", 0)),
        executions=int(after.get("execution_count", 0)) - int(before.get("execution_count", 0)),
        batch_sizes={k: v for k, v in sorted(sizes.items()) if v > 0},
        queue_ms=means["queue"],
        compute_input_ms=means["compute_input"],
        compute_infer_ms=means["compute_infer"],
        compute_output_ms=means["compute_output"],
    )


def parse_prometheus(text: str) -> dict[str, dict[str, float]]:
    """Triton's metrics text -> counter name -> model -> value, for PROMETHEUS_COUNTERS (versions summed)."""
    parser = require("prometheus_client.parser", purpose="Reading Triton's Prometheus metrics", extra="serving")
    values: dict[str, dict[str, float]] = {}
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removesuffix("_total")
            if name in PROMETHEUS_COUNTERS and "model" in sample.labels:
                per_model = values.setdefault(name, {})
                model = sample.labels["model"]
                per_model[model] = per_model.get(model, 0.0) + float(sample.value)
    return values


class ServerProbe:
    """Snapshots of a Triton server's statistics (and metrics), to subtract around a load.

    Args:
        url: The server's HTTP endpoint, 127.0.0.1:PORT.
        models: The models to read.
        engine: The model whose batch sizes matter (the ONNX engine).
        metrics_url: `TritonServer.metrics_url`, or None to skip Prometheus.
        timeout_s: Longest wait for one statistics or metrics request.
    """

    def __init__(
        self,
        url: str,
        models: Sequence[str],
        *,
        engine: str | None = None,
        metrics_url: str | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self.models = tuple(models)
        self.engine = engine
        self.metrics_url = metrics_url
        self.timeout_s = timeout_s

    def snapshot(self) -> dict[str, Any]:
        """The raw statistics of every model, and the parsed metrics."""
        http = require("tritonclient.http", purpose="Reading Triton's statistics", extra="triton")
        client = http.InferenceServerClient(self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s)
        try:
            stats = {model: _raw_statistics(client, model) for model in self.models}
        except Exception as exc:
            raise ServingError(
                f"Could not read Triton's statistics from {self.url}: {exc}",
                fix=f"check that the server runs and has these models loaded: {list(self.models)}",
            ) from exc
        finally:
            client.close()
        metrics: dict[str, dict[str, float]] = {}
        if self.metrics_url is not None:
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never a proxy
            try:
                with opener.open(self.metrics_url, timeout=self.timeout_s) as response:
                    metrics = parse_prometheus(response.read().decode("utf-8"))
            except OSError as exc:
                raise ServingError(
                    f"Could not read Triton's metrics from {self.metrics_url}: {exc}",
                    fix="start the server with TritonServer(..., metrics=True)",
                ) from exc
        return {"stats": stats, "metrics": metrics}

    def delta(self, before: Mapping[str, Any], after: Mapping[str, Any]) -> ServerStatistics:
        """What happened between two snapshots."""
        models = {m: model_statistics_delta(m, before["stats"][m], after["stats"][m]) for m in self.models}
        prometheus = {
            name: {
                model: value - before["metrics"].get(name, {}).get(model, 0.0)
                for model, value in per_model.items()
                if model in self.models
            }
            for name, per_model in after["metrics"].items()
        }
        return ServerStatistics(models=models, engine=self.engine, prometheus=prometheus)
