"""Every precision method on MiniLM in one run: latency, sentence-embedding cosine, size, and calibration facts.

From the FUSED FP32 model it builds one candidate per method: dynamic INT8 per-tensor and per-channel, static
QDQ INT8 calibrated with MinMax, Entropy and Percentile, static QOperator INT8 (MinMax), and FP16 (the gpu_fp16
preset, with its overflow scan on a few calibration feeds). The fused FP32 model is a row too.

- Latency: p50 at each batch size, sequence 128, every candidate in this one process, interleaved run by run
  (workbench.stages.benchmark.latency.benchmark), onnxruntime thread spinning off and intra-op threads set explicitly
  (see "Measuring speed here" in shared/measured-facts.md). Compare ratios within one run only.
- Accuracy: mean and min cosine of mean-pooled sentence embeddings vs the FP32 *unfused* export, on the
  evaluation sentences padded to 128 tokens in batches of 8 (as a batching server feeds them).
- Calibration: static QDQ MinMax calibration of the calibration sentences (batch 1, padded to 128) timed cold
  and again (a cache hit), the peak RSS of this process after it, and the peak RSS of a calibration alone
  (MinMax and Entropy) in a child process that imports only numpy, onnxruntime and the workbench's calibrate
  stage (this process's RSS includes torch and the export).

Everything is written into a temporary folder; nothing lands in the current directory.

    python bench/precision.py                    # a table, then the calibration lines
    python bench/precision.py --json             # stdout: a JSON list of rows; stderr: one calibration JSON line
    python bench/precision.py --cache-dir DIR    # keep calibration ranges in DIR and reuse them across runs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

# Runs in a fresh interpreter, so its peak RSS is that of a calibration alone (no torch, no export).
# argv: pre-processed model, feeds .npz, method, cache folder (empty: the run is cold).
CHILD = r"""
import json, resource, sys, time
import numpy as np
import onnxruntime, onnxruntime.quantization.calibrate
from workbench.stages.precision.calibrate import CalibrationConfig, calibrate

def peak_mb():
    # VmHWM: the peak RSS of this process's own address space. ru_maxrss would not do here: Linux keeps it
    # across execve, so a child started by a 1.5 GB parent reports the parent's peak.
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    return float("nan")

model, data, method, cache = sys.argv[1:5]
with np.load(data) as archive:
    arrays = {name: archive[name] for name in archive.files}
count = len(next(iter(arrays.values())))
feeds = [{name: array[i] for name, array in arrays.items()} for i in range(count)]
before = peak_mb()
started = time.perf_counter()
result = calibrate(model, feeds, CalibrationConfig(method=method), cache_dir=cache, progress=False)
print(json.dumps({"method": method, "samples": result.samples, "cache_hit": result.cache_hit,
                  "seconds": round(time.perf_counter() - started, 2), "rss_before_mb": round(before, 1),
                  "peak_rss_mb": round(peak_mb(), 1), "cache_file": str(result.cache_path),
                  "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)}))
"""

GB_TARGET_MB = 2048.0


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def log(started: float, message: str) -> None:
    print(f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)


def child_calibration(model: Path, data: Path, method: str, folder: Path, timeout: float) -> dict[str, Any]:
    """Calibrate `model` on the saved feeds in a child interpreter, cold (its own empty cache folder)."""
    cache = folder / f"child-cache-{method.lower()}"
    process = subprocess.run(
        [sys.executable, "-c", CHILD, str(model), str(data), method, str(cache)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=folder,
    )
    if process.returncode != 0:
        tail = process.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
        return {"method": method, "error": f"child exited {process.returncode}: {tail[0]}"}
    return json.loads(process.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--json",
        action="store_true",
        help="stdout: only a JSON list of rows (name, batch, seq, p50_ms, cosine_mean, cosine_min, "
        "size_mb); the calibration facts go to stderr as one JSON line",
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seq", type=int, default=128, help="padded sequence length for timing, calibration, eval")
    parser.add_argument("--iterations", type=int, default=20, help="timed runs per candidate and batch size")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads per session (default: all cores)")
    parser.add_argument("--calibration-samples", type=int, default=200, help="calibration sentences (batch 1 each)")
    parser.add_argument("--eval-samples", type=int, default=120, help="evaluation sentences (batches of 8)")
    parser.add_argument("--scan-samples", type=int, default=8, help="calibration feeds for FP16's overflow scan")
    parser.add_argument(
        "--cache-dir",
        default=None,
        help="calibration cache folder to reuse across runs (default: one inside the temp folder)",
    )
    parser.add_argument("--model-path", default=None, help="default: the bundled all-MiniLM-L6-v2")
    args = parser.parse_args()

    started = time.perf_counter()
    threads = args.threads or os.cpu_count() or 1
    # In --json mode stdout carries the rows alone: anything a library prints goes to stderr.
    redirect = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with redirect, tempfile.TemporaryDirectory(prefix="bench-precision-") as temp:
        result = run(args, Path(temp), threads, started)
    rows, calibration, failures, text = result

    if args.json:
        print(json.dumps({"calibration": calibration}), file=sys.stderr)
        for name, error in failures.items():
            print(f"FAILED {name}: {error}", file=sys.stderr)
        print(json.dumps(rows, indent=2))
    else:
        print(text)
        for name, error in failures.items():
            print(f"FAILED {name}: {error}")
    log(started, "done")
    return 1 if failures else 0


def run(args: argparse.Namespace, folder: Path, threads: int, started: float) -> tuple[list, dict, dict, str]:
    import numpy as np

    from workbench.data import tokenize_batches
    from workbench.engines.onnxruntime import OnnxRuntimeRunner
    from workbench.onnx.io import model_size_mb
    from workbench.pipeline import Pipeline, PipelineParameters
    from workbench.stages.accuracy.compare import compare_candidates
    from workbench.stages.benchmark.latency import BenchmarkConfig, benchmark
    from workbench.stages.precision.calibrate import CalibrationConfig
    from workbench.stages.precision.plan import PrecisionPlan
    from workbench.stages.precision.quantize import StaticQuantConfig, preprocess_for_quantization

    cache_dir = Path(args.cache_dir).resolve() if args.cache_dir else folder / "calibration-cache"
    pipeline = Pipeline(
        PipelineParameters(
            model_path=args.model_path,
            output_dir=str(folder),
            sequence_length=args.seq,
            max_calibration_samples=args.calibration_samples,
            max_eval_samples=args.eval_samples,
            eval_batch_size=8,
            threads=threads,
        )
    )
    pipeline.export()
    pipeline.fuse()
    reference, fused = pipeline.candidates["reference"], pipeline.candidates["fp32_fused"]
    log(started, f"exported and fused ({pipeline.results['fuse'].fused_ops})")
    input_names = pipeline.input_names
    # batch 1, all padded to one length: histogram methods (Entropy, Percentile) need equal shapes
    calibration_feeds = tokenize_batches(
        pipeline.tokenizer,
        pipeline.sentences.calibration,
        batch_size=1,
        sequence_length=args.seq,
        input_names=input_names,
    )
    eval_feeds = pipeline.evaluation_feeds()
    eval_sentences = len(pipeline.sentences.evaluation)

    built: dict[str, Any] = {}  # name -> QuantizeResult
    failures: dict[str, str] = {}

    def build(name: str, plan: PrecisionPlan, feeds: Any = None) -> Any:
        begun = time.perf_counter()
        try:
            result = plan.convert(
                fused, folder / f"{name}.onnx", calibration_feeds=feeds, cache_dir=cache_dir, progress=False
            )
        except Exception as exc:  # report every method, even when one fails
            failures[name] = f"{type(exc).__name__}: {exc}"
            log(started, f"FAILED {name} after {time.perf_counter() - begun:.1f} s: {failures[name]}")
            return None
        built[name] = result
        log(started, f"built {name} in {result.seconds:.1f} s ({result.size_mb:.1f} MB)")
        return result

    # ---- calibration: static QDQ MinMax cold, then again (a cache hit), through quantize_static itself ----
    minmax_plan = PrecisionPlan.preset("cpu_int8_static")
    cold = build("int8_static_qdq_minmax", minmax_plan, calibration_feeds)
    rss_after_calibration = peak_rss_mb()
    calibration: dict[str, Any] = {
        "samples": len(calibration_feeds),
        "seq": args.seq,
        "batch": 1,
        "cache_dir": str(cache_dir),
        "cache_dir_reused": bool(args.cache_dir),
        "parent_peak_rss_mb_after_calibration": round(rss_after_calibration, 1),
    }
    if cold is not None:
        calibration["minmax_first"] = {
            "cache_hit": cold.calibration.cache_hit,
            "calibrate_s": round(cold.calibration.seconds, 3),
            "quantize_static_s": round(cold.seconds, 2),
        }
        again = build("int8_static_qdq_minmax_again", minmax_plan, calibration_feeds)
        built.pop("int8_static_qdq_minmax_again", None)
        if again is not None:
            calibration["minmax_second"] = {
                "cache_hit": again.calibration.cache_hit,
                "calibrate_s": round(again.calibration.seconds, 3),
                "quantize_static_s": round(again.seconds, 2),
            }

    # ---- calibration alone, in child processes: peak RSS without torch ----
    children = []
    try:
        prepared = preprocess_for_quantization(fused, folder / "fused_preprocessed.onnx")
        data = folder / "calibration_feeds.npz"
        np.savez(data, **{name: np.stack([feed[name] for feed in calibration_feeds]) for name in input_names})
        for method in ("MinMax", "Entropy"):
            child = child_calibration(prepared, data, method, folder, timeout=300)
            children.append(child)
            log(started, f"child calibration {method}: {child}")
            # The child calibrated the same pre-processed model on the same feeds: hand its ranges to the
            # candidates below through the cache (the cache key covers model bytes, data and method).
            if "cache_file" in child:
                target = cache_dir / Path(child["cache_file"]).name
                if not target.exists():
                    cache_dir.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(child["cache_file"], target)
                child.pop("cache_file")
    except Exception as exc:
        children.append({"error": f"{type(exc).__name__}: {exc}"})
    calibration["child_processes"] = children

    # ---- the other candidates ----
    build("int8_dynamic_per_tensor", PrecisionPlan.preset("cpu_int8_dynamic_per_tensor"))
    build("int8_dynamic_per_channel", PrecisionPlan.preset("cpu_int8_dynamic"))
    for method in ("Entropy", "Percentile"):
        options = StaticQuantConfig(calibration=CalibrationConfig.preset(method.lower()))
        build(f"int8_static_qdq_{method.lower()}", PrecisionPlan("int8_static", options), calibration_feeds)
    build("int8_static_qoperator_minmax", PrecisionPlan.preset("cpu_int8_static_qoperator"), calibration_feeds)
    build("fp16", PrecisionPlan.preset("gpu_fp16"), calibration_feeds[: args.scan_samples])

    order = [
        "fp32_fused",
        "int8_dynamic_per_tensor",
        "int8_dynamic_per_channel",
        "int8_static_qdq_minmax",
        "int8_static_qdq_entropy",
        "int8_static_qdq_percentile",
        "int8_static_qoperator_minmax",
        "fp16",
    ]
    paths = {"fp32_fused": fused, **{name: result.path for name, result in built.items()}}
    sizes = {"fp32_fused": model_size_mb(fused), **{name: result.size_mb for name, result in built.items()}}
    # a candidate onnxruntime cannot load would stop the comparison of all of them: check each first
    for name in [n for n in order if n in paths]:
        try:
            with OnnxRuntimeRunner(paths[name], intra_op_threads=threads, allow_spinning=False):
                pass
        except Exception as exc:
            failures[name] = f"does not load in onnxruntime: {type(exc).__name__}: {exc}"
            del paths[name]
    names = [n for n in order if n in paths]

    report = compare_candidates(reference, {n: paths[n] for n in names}, eval_feeds, threads=threads)
    log(started, "compared")
    config = BenchmarkConfig(
        batch_sizes=tuple(args.batch_sizes),
        sequence_lengths=(args.seq,),
        warmup=args.warmup,
        iterations=args.iterations,
        threads=threads,
    )
    runners = [OnnxRuntimeRunner(paths[n], name=n, intra_op_threads=threads, allow_spinning=False) for n in names]
    timings = benchmark(runners, pipeline._feeds_for, config)
    log(started, "benchmarked")

    rows = []
    for name in names:
        accuracy = report[name]
        for batch in args.batch_sizes:
            rows.append(
                {
                    "name": name,
                    "batch": batch,
                    "seq": args.seq,
                    "p50_ms": round(timings.p50(name, batch, args.seq), 3),
                    "cosine_mean": round(accuracy.embedding_cosine_mean, 6),
                    "cosine_min": round(accuracy.embedding_cosine_min, 6),
                    "size_mb": round(sizes[name], 2),
                }
            )
    text = table(rows, timings, threads, args, eval_sentences, built, calibration)
    return rows, calibration, failures, text


def table(
    rows: list[dict[str, Any]],
    timings: Any,
    threads: int,
    args: argparse.Namespace,
    eval_sentences: int,
    built: dict[str, Any],
    calibration: dict[str, Any],
) -> str:
    machine = timings.machine
    lines = [
        f"# {machine['processor']}, {machine['cpu_count']} cores; onnxruntime runners with allow_spinning=False "
        f"and intra_op_threads={threads}, interleaved run by run by workbench.stages.benchmark.latency.benchmark "
        f"({args.warmup} warm-up + {args.iterations} timed runs per candidate and batch)",
        f"# cosine: mean-pooled sentence embeddings vs the FP32 unfused export, {eval_sentences} evaluation "
        f"sentences padded to {args.seq}, batch 8; candidates built from the fused FP32 model",
        f"{'name':<30}{'batch':>6}{'seq':>5}{'p50 ms':>9}{'vs fused':>9}{'cos mean':>10}{'cos min':>10}{'MB':>8}",
    ]
    for row in rows:
        base = timings.p50("fp32_fused", row["batch"], row["seq"])
        ratio = f"{base / row['p50_ms']:.2f}x" if base else "-"
        lines.append(
            f"{row['name']:<30}{row['batch']:>6}{row['seq']:>5}{row['p50_ms']:>9.2f}{ratio:>9}"
            f"{row['cosine_mean']:>10.5f}{row['cosine_min']:>10.5f}{row['size_mb']:>8.1f}"
        )
    lines.append("")
    lines.append("# built")
    for name, result in built.items():
        ops = ", ".join(f"{op} {count}" for op, count in result.quantized_ops.items()) or "none"
        source = ""
        calibrated = result.calibration
        if calibrated is not None and hasattr(calibrated, "cache_hit"):
            source = "; calibration: " + ("cache hit" if calibrated.cache_hit else f"{calibrated.seconds:.1f} s")
        kept = f"; {len(result.keep_fp32)} nodes kept FP32" if result.keep_fp32 else ""
        lines.append(f"{name:<30}{result.seconds:6.1f} s; {ops}{source}{kept}")
        lines += [f"{'':<30}note: {note}" for note in result.notes]
    lines.append("")
    lines += calibration_lines(calibration)
    return "\n".join(lines)


def calibration_lines(c: dict[str, Any]) -> list[str]:
    lines = [
        f"# calibration: static QDQ MinMax, {c['samples']} sentences, batch {c['batch']}, seq {c['seq']}, "
        f"cache {c['cache_dir']}{' (--cache-dir)' if c['cache_dir_reused'] else ' (temporary)'}"
    ]
    for key, label in (("minmax_first", "first run "), ("minmax_second", "second run")):
        if key in c:
            run = c[key]
            lines.append(
                f"calibration {label}: cache_hit={run['cache_hit']}, calibrate {run['calibrate_s']:.3f} s "
                f"(quantize_static total {run['quantize_static_s']:.2f} s)"
            )
    lines.append(
        f"peak RSS of this process after calibration (ru_maxrss): "
        f"{c['parent_peak_rss_mb_after_calibration']:.0f} MB (includes torch and the export)"
    )
    for child in c["child_processes"]:
        if "error" in child:
            lines.append(f"calibration in a child process {child.get('method', '')}: FAILED {child['error']}")
            continue
        verdict = "under" if child["peak_rss_mb"] < GB_TARGET_MB else "OVER"
        lines.append(
            f"calibration in a child process, {child['method']:<7}: peak RSS {child['peak_rss_mb']:.0f} MB "
            f"({child['rss_before_mb']:.0f} MB before calibrating), {child['seconds']:.1f} s, "
            f"{child['samples']} samples, cache_hit={child['cache_hit']}; {verdict} the 2 GB target"
        )
    if any("ru_maxrss_mb" in child for child in c["child_processes"]):
        lines.append(
            "# child peak = VmHWM of its own address space; its ru_maxrss "
            f"({max(ch.get('ru_maxrss_mb', 0) for ch in c['child_processes']):.0f} MB) is the parent's "
            "peak, which Linux carries across execve"
        )
    return lines


if __name__ == "__main__":
    sys.exit(main())
