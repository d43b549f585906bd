"""summary.json's `serving` section: stable keys that CI and the README read from a ServingResult.

    {
      "serving_version": 1,
      "concurrency": 8,                        # the headline level (8 when measured, else the largest)
      "padding": {"mode", "max_length", "buckets", "batching", "description"},
      "tokens_per_text": {"length_aware": 39.2, "fixed": 128.0},   # tokens the engine computes per text
      "servers": {                             # at the headline level; keys among run.SERVERS that ran
        "triton_length_aware_http": {"throughput": texts/s, "p50_ms", "p90_ms", "p99_ms", "stable",
                                     "engine_batch_size"},          # engine_batch_size: Triton servers only
        ...
      },
      "levels": {"<server>": [{"concurrency", "throughput", "p50_ms", "p90_ms", "p99_ms"}, ...]},
      "length_aware_vs_fixed": throughput ratio over HTTP (null if either is missing),
      "length_aware_vs_fixed_p99": p99 ratio over HTTP (below 1: length-aware is faster),
      "triton_vs_fastapi_pytorch": length-aware Triton (HTTP) / FastAPI + PyTorch throughput,
      "triton_vs_fastapi_onnxruntime": length-aware Triton (HTTP) / FastAPI + ONNX Runtime throughput,
      "grpc_vs_http": length-aware Triton gRPC / HTTP throughput,
      "suggestion": {"max_queue_delay_us", "preferred_batch_sizes", "instance_count", "concurrency",
                     "throughput", "p99_ms"} or null (no sweep),
      "machine": {...}
    }

Throughputs are texts (sentences) per second; latencies are client-side milliseconds per request.
"""

from __future__ import annotations

from typing import Any

SERVING_SUMMARY_VERSION = 1


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator


def serving_summary(result: Any) -> dict[str, Any]:
    """The `serving` section of summary.json for a ServingResult (keys documented in this module)."""
    from workbench.stages.serving.run import (
        FASTAPI_ONNXRUNTIME,
        FASTAPI_PYTORCH,
        FIXED,
        LENGTH_AWARE,
    )

    c = result.concurrency
    servers: dict[str, dict[str, Any]] = {}
    for key, load in result.servers.items():
        level = load.level(c)
        entry = {
            "throughput": level.throughput,
            "p50_ms": level.p50_ms,
            "p90_ms": level.p90_ms,
            "p99_ms": level.p99_ms,
            "stable": level.stable,
        }
        if level.server is not None:
            entry["engine_batch_size"] = level.server.mean_batch_size
        servers[key] = entry

    def get(key: str, field: str) -> float | None:
        return servers[key][field] if key in servers else None

    aware, fixed = f"{LENGTH_AWARE}_http", f"{FIXED}_http"
    suggestion = None
    if result.sweep is not None:
        s = result.sweep.suggestion
        suggestion = {
            "max_queue_delay_us": s.max_queue_delay_us,
            "preferred_batch_sizes": list(s.preferred_batch_sizes),
            "instance_count": s.instance_count,
            "concurrency": s.concurrency,
            "throughput": s.throughput,
            "p99_ms": s.p99_ms,
        }
    return {
        "serving_version": SERVING_SUMMARY_VERSION,
        "concurrency": c,
        "padding": {
            **result.padding.to_dict(),
            "buckets": list(result.padding.bucket_lengths),
            "description": result.padding.describe(),
        },
        "tokens_per_text": {name: figures["per_text"] for name, figures in result.tokens.items()},
        "servers": servers,
        "levels": {
            key: [
                {
                    "concurrency": lv.concurrency,
                    "throughput": lv.throughput,
                    "p50_ms": lv.p50_ms,
                    "p90_ms": lv.p90_ms,
                    "p99_ms": lv.p99_ms,
                }
                for lv in load.levels
            ]
            for key, load in result.servers.items()
        },
        "length_aware_vs_fixed": _ratio(get(aware, "throughput"), get(fixed, "throughput")),
        "length_aware_vs_fixed_p99": _ratio(get(aware, "p99_ms"), get(fixed, "p99_ms")),
        "triton_vs_fastapi_pytorch": _ratio(get(aware, "throughput"), get(FASTAPI_PYTORCH, "throughput")),
        "triton_vs_fastapi_onnxruntime": _ratio(get(aware, "throughput"), get(FASTAPI_ONNXRUNTIME, "throughput")),
        "grpc_vs_http": _ratio(get(f"{LENGTH_AWARE}_grpc", "throughput"), get(aware, "throughput")),
        "suggestion": suggestion,
        "machine": result.machine,
    }
