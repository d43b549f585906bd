"""Serving stage: load-test a served model the way production sees it.

- `load`: ServingConfig, a closed-loop load generator with perf_analyzer's semantics (Triton HTTP/gRPC asyncio
  clients, or a JSON endpoint), LoadResult and the throughput-vs-p99 chart;
- `stats`: the server's own statistics (executed batch sizes, queue vs compute time, Prometheus counters);
- `baselines`: the FastAPI + uvicorn servers a data scientist would otherwise write (PyTorch, or ONNX Runtime);
- `sweep`: Model-Analyzer-like search of dynamic-batching delay, preferred batch sizes and instance count;
- `run`: everything in one run: length-aware vs fixed-padding Triton, both FastAPI servers, and the sweep;
- `summary`: `serving_summary(result)`, the stable keys of summary.json's `serving` section.

Importing this package is light (no torch, onnxruntime or tritonclient until a function runs).
"""
