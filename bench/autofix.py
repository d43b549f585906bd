"""Automatic layer-precision fixes on MiniLM, from static QDQ INT8 and from dynamic per-channel INT8.

For each starting candidate: its accuracy, the fix the search found (smoothing and/or nodes kept in FP32), the
fixed accuracy, the number of trials, and the time a layer-by-layer diagnosis of 32 evaluation sentences takes.
Then PyTorch FP32, the plain dynamic INT8 model and every fixed model are timed together in one run,
interleaved, onnxruntime spinning off (batch 1, sequence 128).

    python bench/autofix.py           # a report
    python bench/autofix.py --json    # one JSON object
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

from workbench.data import tokenize_batches
from workbench.engines.onnxruntime import OnnxRuntimeRunner
from workbench.engines.pytorch import PyTorchRunner
from workbench.pipeline import Pipeline, PipelineParameters
from workbench.stages.accuracy.autofix import AutofixConfig, autofix
from workbench.stages.accuracy.compare import AccuracyBudget
from workbench.stages.accuracy.diagnose import diagnose, quantized_nodes
from workbench.stages.benchmark.latency import BenchmarkConfig, benchmark
from workbench.stages.precision.plan import PrecisionPlan

STARTS = {"static_qdq_int8": "cpu_int8_static", "dynamic_int8_per_channel": "cpu_int8_dynamic"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--iterations", type=int, default=40, help="timed runs per model in the final comparison")
    parser.add_argument("--calibration-samples", type=int, default=64)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    budget = AccuracyBudget()  # mean embedding cosine >= 0.995, min >= 0.99
    report: dict = {"budget": budget.to_dict(), "candidates": {}}
    with tempfile.TemporaryDirectory(prefix="bench-autofix-") as folder:
        pipeline = Pipeline(
            PipelineParameters(
                output_dir=folder, max_eval_samples=120, max_calibration_samples=args.calibration_samples
            )
        )
        pipeline.export()
        pipeline.fuse()
        reference, fused = pipeline.candidates["reference"], pipeline.candidates["fp32_fused"]
        evaluation = pipeline.evaluation_feeds()  # 120 sentences, padded to 128, batches of 8: as served
        calibration = tokenize_batches(
            pipeline.tokenizer,
            pipeline.sentences.calibration,
            batch_size=1,
            sequence_length=128,
            input_names=pipeline.input_names,
        )
        fixed_paths = {}
        for name, preset in STARTS.items():
            started = time.perf_counter()
            result = autofix(
                fused,
                PrecisionPlan.preset(preset),
                evaluation,
                Path(folder) / name,
                budget=budget,
                reference=reference,
                calibration_feeds=calibration,
                config=AutofixConfig(threads=args.threads),
                cache_dir=Path(folder) / "cache",
            )
            seconds = time.perf_counter() - started
            # layer-by-layer diagnosis of the starting candidate on 32 evaluation sentences (4 batches of 8)
            diagnosis = diagnose(fused, result.start.path, evaluation[:4])
            quantized = len(quantized_nodes(fused, result.start.path))
            best = result.best
            fixed_paths[name] = result.path
            report["candidates"][name] = {
                "start": {"cosine_mean": result.start.cosine_mean, "cosine_min": result.start.cosine_min},
                "fixed": {
                    "cosine_mean": best.cosine_mean,
                    "cosine_min": best.cosine_min,
                    "meets_budget": best.meets_budget,
                },
                "smoothing": result.plan.smoothing.to_dict() if result.plan.smoothing else None,
                "pinned_nodes": len(result.plan.keep_fp32),
                "pins": list(result.plan.keep_fp32),
                "quantized_nodes": quantized,
                "trials": len(result.trials),
                "trial_bound_2log2n_plus_10": 2 * math.log2(max(quantized, 2)) + 10,
                "diagnosis_seconds_32_sentences": round(diagnosis.seconds, 2),
                "search_seconds": round(seconds, 1),
                "trial_log": [
                    {
                        "stage": t.stage,
                        "pins": len(t.pins),
                        "smoothed": t.smoothed,
                        "cosine_mean": round(t.cosine_mean, 5),
                        "cosine_min": round(t.cosine_min, 5),
                        "meets_budget": t.meets_budget,
                    }
                    for t in result.trials
                ],
            }
            plain_dynamic = (
                result.start.path if name == "dynamic_int8_per_channel" else plain_dynamic_path(fused, Path(folder))
            )
        config = BenchmarkConfig(
            batch_sizes=(1,), sequence_lengths=(128,), iterations=args.iterations, warmup=10, threads=args.threads
        )
        threads = config.effective_threads
        runners = [
            PyTorchRunner(pipeline.source.load_module(), name="pytorch_fp32", threads=threads),
            OnnxRuntimeRunner(
                plain_dynamic, name="dynamic_int8_per_channel_unfixed", intra_op_threads=threads, allow_spinning=False
            ),
        ]
        runners += [
            OnnxRuntimeRunner(path, name=f"{name}_fixed", intra_op_threads=threads, allow_spinning=False)
            for name, path in fixed_paths.items()
        ]
        timings = benchmark(runners, pipeline._feeds_for, config)
    pytorch = timings.p50("pytorch_fp32", 1, 128)
    unfixed = timings.p50("dynamic_int8_per_channel_unfixed", 1, 128)
    report["latency_ms_p50_batch1_seq128"] = {r.name: round(r.p50_ms, 3) for r in timings.rows}
    report["pytorch_latency_ms"] = round(pytorch, 3)
    report["unfixed_dynamic_latency_ms"] = round(unfixed, 3)
    for name, facts in report["candidates"].items():
        fixed = timings.p50(f"{name}_fixed", 1, 128)
        facts["fixed_latency_ms"] = round(fixed, 3)
        facts["speedup_vs_pytorch"] = round(pytorch / fixed, 2)
        facts["latency_vs_unfixed_dynamic"] = round(fixed / unfixed, 3)
    report["machine"] = timings.machine
    report["timing"] = f"batch 1, seq 128, {args.iterations} interleaved runs, {threads} threads, spinning off"
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"# {timings.machine['processor']}, {timings.machine['cpu_count']} cores; {report['timing']}")
    print(f"# budget: mean embedding cosine >= {budget.embedding_cosine_mean}, min >= {budget.embedding_cosine_min}")
    print(f"PyTorch FP32 {pytorch:.2f} ms; plain dynamic INT8 per-channel {unfixed:.2f} ms")
    for name, facts in report["candidates"].items():
        smoothing = f"SmoothQuant alpha {facts['smoothing']['alpha']}" if facts["smoothing"] else "no smoothing"
        print(
            f"\n{name}: start mean {facts['start']['cosine_mean']:.5f} min {facts['start']['cosine_min']:.5f} -> "
            f"fixed mean {facts['fixed']['cosine_mean']:.5f} min {facts['fixed']['cosine_min']:.5f} "
            f"({'meets' if facts['fixed']['meets_budget'] else 'MISSES'} the budget)"
        )
        print(
            f"  fix: {smoothing}, {facts['pinned_nodes']} of {facts['quantized_nodes']} quantized nodes kept in FP32; "
            f"{facts['trials']} trials (bound {facts['trial_bound_2log2n_plus_10']:.1f}); "
            f"search {facts['search_seconds']} s"
        )
        print(
            f"  fixed latency {facts['fixed_latency_ms']:.2f} ms = {facts['speedup_vs_pytorch']:.2f}x PyTorch, "
            f"{facts['latency_vs_unfixed_dynamic']:.3f}x the plain dynamic INT8 model"
        )
        print(f"  diagnosis of 32 sentences: {facts['diagnosis_seconds_32_sentences']} s")
    return 0


def plain_dynamic_path(fused: Path, folder: Path) -> Path:
    """The unfixed dynamic per-channel model, for the timing comparison."""
    return PrecisionPlan.preset("cpu_int8_dynamic").convert(fused, folder / "plain_dynamic.onnx").path


if __name__ == "__main__":
    sys.exit(main())
