"""Latency of PyTorch FP32, ONNX Runtime FP32 (plain and fused) and the INT8 candidates on MiniLM, in ONE run.

Candidates (all INT8 ones are built from the fused FP32 graph with
workbench.stages.precision.plan.PrecisionPlan presets):

    pytorch_fp32                   PyTorch eager, FP32
    ort_fp32                       ONNX Runtime, the TorchScript export
    ort_fp32_fused                 ONNX Runtime, fused (Attention, LayerNorm, GELU)
    ort_int8_dynamic_per_channel   preset cpu_int8_dynamic
    ort_int8_dynamic_per_tensor    preset cpu_int8_dynamic_per_tensor
    ort_int8_static_qdq_minmax     preset cpu_int8_static: QDQ, uint8 activations, MinMax ranges calibrated on
                                   data/calibration.txt, one sentence per feed (batch 1) padded to 128 tokens

All candidates are measured in one process, in one run, interleaved run by run
(workbench.stages.benchmark.latency), with
onnxruntime's thread spinning off and intra-op threads set explicitly for torch and every session (see
"Measuring speed here" in shared/measured-facts.md). Compare ratios within one run only. The machine's load
average is printed before and after: other work on the machine slows every candidate, not only one.

    python bench/latency.py                      # a table (about 2 minutes on 2 cores)
    python bench/latency.py --json               # stdout: a JSON list of rows: name, batch, seq, p50_ms,
                                                 # p90_ms, p99_ms, throughput (samples/s); progress on stderr
    python bench/latency.py --concurrency 1 2    # also: serving throughput of the per-channel INT8 model with
                                                 # 1 and 2 threads, each with its own single-threaded session

Everything is written into a temporary folder; nothing lands in the current directory.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

NAMES = {
    "pytorch": "pytorch_fp32",
    "fp32": "ort_fp32",
    "fp32_fused": "ort_fp32_fused",
    "int8_dynamic_per_channel": "ort_int8_dynamic_per_channel",
    "int8_dynamic_per_tensor": "ort_int8_dynamic_per_tensor",
    "int8_static_qdq_minmax": "ort_int8_static_qdq_minmax",
}
# candidate key -> PrecisionPlan preset (converted from the fused FP32 graph)
PRESETS = {
    "int8_dynamic_per_channel": "cpu_int8_dynamic",
    "int8_dynamic_per_tensor": "cpu_int8_dynamic_per_tensor",
    "int8_static_qdq_minmax": "cpu_int8_static",
}
CALIBRATION_LENGTH = 128


def log(started: float, message: str) -> None:
    print(f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)


def load_average() -> str:
    try:
        return " / ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--json",
        action="store_true",
        help="stdout: only a JSON list of rows (name, batch, seq, p50_ms, p90_ms, p99_ms, throughput)",
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seq", type=int, nargs="+", default=[32, 128], help="sequence lengths")
    parser.add_argument("--iterations", type=int, default=20, help="timed runs per candidate and shape")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs per candidate and shape")
    parser.add_argument("--threads", type=int, default=None, help="threads per engine (default: all cores)")
    parser.add_argument(
        "--calibration-samples",
        type=int,
        default=None,
        help="calibration sentences for static INT8 (default: all of data/calibration.txt)",
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="*",
        default=[],
        help="also measure serving throughput of the per-channel INT8 model at these thread counts",
    )
    parser.add_argument("--concurrency-duration", type=float, default=3.0, help="seconds per concurrency")
    parser.add_argument("--model-path", default=None, help="default: the bundled all-MiniLM-L6-v2")
    args = parser.parse_args()

    started = time.perf_counter()
    load_before = load_average()
    # In --json mode stdout carries the rows alone: anything a library prints goes to stderr.
    redirect = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with redirect, tempfile.TemporaryDirectory(prefix="bench-latency-") as folder:
        result, concurrency, threads, calibration_count = run(args, Path(folder), started)
    load_after = load_average()

    rows = [
        {
            "name": r.name,
            "batch": r.batch,
            "seq": r.seq,
            "p50_ms": round(r.p50_ms, 3),
            "p90_ms": round(r.p90_ms, 3),
            "p99_ms": round(r.p99_ms, 3),
            "throughput": round(r.throughput, 2),
        }
        for r in result.rows
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        log(started, "done")
        return 0
    machine = result.machine
    print(
        f"# {machine['processor']}, {machine['cpu_count']} cores, {threads} threads per engine, "
        f"{args.iterations} interleaved runs after {args.warmup} warm-up; onnxruntime spinning off"
    )
    print(
        f"# static INT8 calibrated on {calibration_count} sentences (batch 1, padded to {CALIBRATION_LENGTH}); "
        f"load average (1/5/15 min) before {load_before}, after {load_after}"
    )
    header = (
        f"{'name':<30}{'batch':>6}{'seq':>5}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'samples/s':>11}{'vs torch':>10}"
    )
    print(header)
    print("-" * len(header))
    order = {name: i for i, name in enumerate(result.names)}
    for row in sorted(rows, key=lambda r: (r["seq"], r["batch"], order[r["name"]])):
        base = result.p50(NAMES["pytorch"], row["batch"], row["seq"])
        print(
            f"{row['name']:<30}{row['batch']:>6}{row['seq']:>5}{row['p50_ms']:>9.2f}{row['p90_ms']:>9.2f}"
            f"{row['p99_ms']:>9.2f}{row['throughput']:>11.1f}{base / row['p50_ms']:>9.2f}x"
        )
    print()
    memory = ", ".join(f"{name} {'-' if mb is None else f'{mb:.0f}'}" for name, mb in result.peak_memory_mb.items())
    print(
        f"RSS growth while each session was created (MB): {memory}; process peak RSS "
        f"{result.process_peak_rss_mb} MB (includes torch and the export)"
    )
    if concurrency is not None:
        print()
        print(
            f"Serving throughput, {concurrency.name}, batch {concurrency.batch}, seq {args.seq[-1]}, one session "
            f"(1 intra-op thread) per thread, {concurrency.duration_s:g} s each:"
        )
        for r in concurrency.rows:
            print(
                f"  {r.concurrency} thread(s): {r.requests_per_s:7.1f} requests/s, p50 {r.p50_ms:.2f} ms, "
                f"p90 {r.p90_ms:.2f} ms"
            )
    log(started, "done")
    return 0


def run(args: argparse.Namespace, folder: Path, started: float) -> tuple[Any, Any, int, int]:
    from workbench.data import CALIBRATION_FILE, default_data_dir, read_sentences, tokenize_batches
    from workbench.engines.onnxruntime import OnnxRuntimeRunner
    from workbench.engines.pytorch import PyTorchRunner
    from workbench.pipeline import Pipeline, PipelineParameters
    from workbench.stages.benchmark.concurrency import benchmark_concurrency
    from workbench.stages.benchmark.latency import BenchmarkConfig, benchmark
    from workbench.stages.precision.plan import PrecisionPlan

    pipeline = Pipeline(PipelineParameters(model_path=args.model_path, output_dir=str(folder), max_eval_samples=16))
    pipeline.export()
    pipeline.fuse()
    fused = pipeline.candidates["fp32_fused"]
    log(started, f"exported and fused ({pipeline.results['fuse'].fused_ops})")

    sentences = read_sentences(default_data_dir() / CALIBRATION_FILE, args.calibration_samples)
    calibration_feeds = tokenize_batches(
        pipeline.tokenizer,
        sentences,
        batch_size=1,
        sequence_length=CALIBRATION_LENGTH,
        input_names=pipeline.input_names,
    )
    paths = {"fp32": pipeline.candidates["fp32"], "fp32_fused": fused}
    for key, preset in PRESETS.items():
        plan = PrecisionPlan.preset(preset)
        converted = plan.convert(
            fused,
            folder / f"model_{key}.onnx",
            calibration_feeds=calibration_feeds if plan.method == "int8_static" else None,
            cache_dir=folder / "calibration-cache",
            progress=False,
        )
        paths[key] = converted.path
        log(started, f"built {key} ({preset}) in {converted.seconds:.1f} s")

    config = BenchmarkConfig(
        batch_sizes=tuple(args.batch_sizes),
        sequence_lengths=tuple(args.seq),
        iterations=args.iterations,
        warmup=args.warmup,
        threads=args.threads,
    )
    threads = config.effective_threads
    runners: list[Any] = [PyTorchRunner(pipeline.source.load_module(), name=NAMES["pytorch"], threads=threads)]
    runners += [
        OnnxRuntimeRunner(path, name=NAMES[key], intra_op_threads=threads, allow_spinning=False)
        for key, path in paths.items()
    ]
    result = benchmark(runners, pipeline._feeds_for, config)
    log(started, "benchmarked")

    concurrency = None
    if args.concurrency:
        int8 = paths["int8_dynamic_per_channel"]
        concurrency = benchmark_concurrency(
            lambda: OnnxRuntimeRunner(
                int8, name=NAMES["int8_dynamic_per_channel"], intra_op_threads=1, allow_spinning=False
            ),
            pipeline._feeds_for(1, args.seq[-1]),
            threads_list=tuple(args.concurrency),
            duration_s=args.concurrency_duration,
        )
        log(started, "measured concurrency")
    return result, concurrency, threads, len(calibration_feeds)


if __name__ == "__main__":
    sys.exit(main())
