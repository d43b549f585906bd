"""The run summary: a stable JSON contract for CI, and a short table for people."""

from __future__ import annotations

from typing import Any

from workbench._lazy import installed_distribution

_VERSIONED = ("torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "polygraphy", "tritonclient")


def library_versions() -> dict[str, str]:
    """Versions of the libraries a result depends on (those installed)."""
    versions = {name: installed_distribution(name) for name in _VERSIONED}
    return {name: version for name, version in versions.items() if version}


def build_summary(pipeline: Any) -> dict[str, Any]:
    """The summary.json contents for a pipeline that has run its steps.

    Stable keys (CI reads them): model, reference, candidates[{name, path, latency_ms_p50, cosine_mean,
    cosine_min}], pytorch_latency_ms_p50, chosen, triton_repository. Everything else is informative.
    """
    from workbench.pipeline import SUMMARY_VERSION

    parameters = pipeline.parameters
    report = pipeline.results.get("compare")
    timings = pipeline.results.get("benchmark")
    choice = pipeline.results.get("choose")
    triton = pipeline.results.get("export_triton")
    seq = parameters.sequence_length
    candidates = []
    for name, path in pipeline.candidate_models.items():
        accuracy = report[name] if report is not None else None
        candidates.append({
            "name": name,
            "path": str(path),
            "latency_ms_p50": timings.p50(name, 1, seq) if timings else None,
            "latency_ms_p50_by_batch": {str(b): timings.p50(name, b, seq) for b in timings.config.batch_sizes}
            if timings else {},
            "cosine_mean": accuracy.embedding_cosine_mean if accuracy is not None else None,
            "cosine_min": accuracy.embedding_cosine_min if accuracy is not None else None,
            "meets_budget": bool(accuracy) if accuracy is not None else None,
            "failures": list(accuracy.failures) if accuracy is not None else [],
        })
    return {
        "summary_version": SUMMARY_VERSION,
        "model": str(getattr(pipeline.source, "path", pipeline.source.name)),
        "reference": str(pipeline.candidates.get("reference")),
        "candidates": candidates,
        "pytorch_latency_ms_p50": timings.p50("pytorch", 1, seq) if timings else None,
        "chosen": choice.name if choice else None,
        "chosen_reason": choice.reason if choice else None,
        "triton_repository": str(triton.repository) if triton else None,
        "triton_model": triton.model_name if triton else None,
        "budget": pipeline.budget.to_dict(),
        "parameters": parameters.to_dict(),
        "export_max_abs_error": pipeline.results["export"].max_abs_error if pipeline.results.get("export") else None,
        "benchmark": {"batch": 1, "seq": seq, "threads": timings.config.effective_threads,
                      "iterations": timings.config.iterations} if timings else None,
        "machine": timings.machine if timings else None,
        "versions": library_versions(),
    }


def format_summary(summary: dict[str, Any]) -> str:
    """A short plain-text table of a summary.json, as `make demo` prints it."""
    seq = (summary.get("benchmark") or {}).get("seq", "?")
    pytorch = summary.get("pytorch_latency_ms_p50")
    lines = [f"model: {summary['model']}", f"latency: batch 1, sequence {seq}; cosine: sentence embeddings vs ONNX FP32", ""]
    header = f"{'candidate':<28}{'p50 ms':>9}{'vs torch':>10}{'cos mean':>10}{'cos min':>9}  budget"
    lines += [header, "-" * len(header)]
    if pytorch is not None:
        lines.append(f"{'pytorch (baseline)':<28}{pytorch:>9.2f}{'1.00x':>10}{'':>10}{'':>9}")
    for c in summary["candidates"]:
        p50 = c.get("latency_ms_p50")
        speedup = f"{pytorch / p50:.2f}x" if pytorch and p50 else "-"
        cos_mean = f"{c['cosine_mean']:.4f}" if c.get("cosine_mean") is not None else "-"
        cos_min = f"{c['cosine_min']:.4f}" if c.get("cosine_min") is not None else "-"
        verdict = {True: "meets", False: "misses", None: "-"}[c.get("meets_budget")]
        marker = " <- chosen" if c["name"] == summary.get("chosen") else ""
        p50_text = f"{p50:.2f}" if p50 is not None else "-"
        lines.append(f"{c['name']:<28}{p50_text:>9}{speedup:>10}{cos_mean:>10}{cos_min:>9}  {verdict}{marker}")
    lines += ["", f"chosen: {summary.get('chosen')} ({summary.get('chosen_reason')})",
              f"triton repository: {summary.get('triton_repository')}"]
    return "\n".join(lines)
