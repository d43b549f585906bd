"""Run every stage with its inputs in a read-only folder and report what each one wrote, and where.

Used by test_writes_stay_inside.py, which runs this file as an unprivileged user (so the input folder is
really read-only) with the current directory in the input folder and TMPDIR and HOME in folders of their own.
Prints one JSON object: stage -> {"error": ..., "input_changed": [...], "tmp_left": [...], "home_left": [...],
"outputs": [...]}.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            stat = path.lstat()
            found[str(path.relative_to(folder))] = (stat.st_size if name in files else -1, stat.st_mtime_ns)
    return found


def main() -> None:
    base = Path(sys.argv[1])
    ro, out, tmp, home = base / "ro", base / "out", base / "tmp", base / "home"
    import numpy as np

    from workbench.data import tokenize_batches
    from workbench.models import load_model

    source = load_model(ro / "tiny")
    tokenizer = source.load_tokenizer()
    feeds = tokenize_batches(
        tokenizer, ["the cat sat", "revenue grew 12%", "how do I reset it?", "x"], batch_size=2, sequence_length=16
    )
    fused_feeds = [{k: v for k, v in f.items()} for f in feeds]

    def export():
        from workbench.stages.export import export_onnx

        return [export_onnx(source, out / "export" / "model.onnx").path]

    def fuse():
        from workbench.stages.fusion import FusionConfig, fuse_transformer

        return [
            fuse_transformer(
                ro / "model.onnx", out / "fuse" / "fused.onnx", FusionConfig.for_source(source), check_feeds=feeds[:1]
            ).path
        ]

    def quantize_dynamic():
        from workbench.stages.precision.quantize import quantize_dynamic

        return [
            quantize_dynamic(ro / "fused.onnx", out / "dynamic" / "int8.onnx").path,
            quantize_dynamic(ro / "model.onnx", out / "dynamic" / "int8_unfused.onnx").path,
        ]

    def quantize_static():
        from workbench.stages.precision.quantize import StaticQuantConfig, quantize_static

        return [
            quantize_static(
                ro / "fused.onnx",
                out / "static" / "int8.onnx",
                fused_feeds,
                cache_dir=out / "static" / "cache",
                progress=False,
            ).path,
            quantize_static(
                ro / "fused.onnx",
                out / "static" / "int8_raw.onnx",
                fused_feeds,
                StaticQuantConfig(preprocess=False),
                cache_dir=out / "static" / "cache",
                progress=False,
            ).path,
        ]

    def calibrate():
        from workbench.stages.precision.calibrate import calibrate

        return [calibrate(ro / "fused.onnx", fused_feeds, cache_dir=out / "calibrate", progress=False).cache_path]

    def fp16():
        from workbench.stages.precision.quantize import convert_fp16

        return [convert_fp16(ro / "model.onnx", out / "fp16" / "fp16.onnx", scan_feeds=feeds).path]

    def smoothquant():
        from dataclasses import replace

        from workbench.stages.precision.plan import PrecisionPlan
        from workbench.stages.precision.smooth import SmoothingConfig

        plan = replace(PrecisionPlan.preset("cpu_int8_dynamic"), smoothing=SmoothingConfig())
        return [plan.convert(ro / "fused.onnx", out / "smooth" / "int8.onnx", calibration_feeds=fused_feeds).path]

    def surgery():
        from workbench.stages.surgery.edits import Cleanup, FoldConstants, SurgeryPlan
        from workbench.stages.surgery.run import run_surgery

        plan = SurgeryPlan((FoldConstants(), Cleanup()))
        return [run_surgery(ro / "model.onnx", out / "surgery" / "edited.onnx", plan, check_feeds=feeds).path]

    def compare():
        from workbench.stages.accuracy.compare import AccuracyBudget, compare_candidates, save_polygraphy_data

        compare_candidates(
            ro / "model.onnx", {"fused": ro / "fused.onnx"}, feeds, budget=AccuracyBudget.preset("relaxed")
        )
        files = save_polygraphy_data(
            ro / "model.onnx", feeds, out / "poly" / "inputs.json", out / "poly" / "outputs.json"
        )
        return list(files)

    def benchmark():
        from workbench.engines.onnxruntime import OnnxRuntimeRunner
        from workbench.stages.benchmark.latency import BenchmarkConfig, benchmark

        config = BenchmarkConfig(batch_sizes=(1,), sequence_lengths=(16,), warmup=0, iterations=2, threads=1)
        benchmark(
            [OnnxRuntimeRunner(ro / "model.onnx", name="fp32")],
            lambda b, s: {k: v[:b, :s] for k, v in feeds[0].items()},
            config,
        )
        return []

    def triton():
        from workbench.triton.config import TritonConfig
        from workbench.triton.ensemble import export_triton_ensemble
        from workbench.triton.model import export_triton

        one = export_triton(ro / "model.onnx", out / "triton", TritonConfig(model_name="tiny"))
        ensemble = export_triton_ensemble(
            ro / "model.onnx", out / "ensemble", ro / "tiny", TritonConfig(model_name="tiny"), sequence_length=16
        )
        return [*one.files, *ensemble.files]

    def pipeline():
        from workbench.pipeline import Pipeline, PipelineParameters
        from workbench.stages.accuracy.compare import AccuracyBudget

        parameters = PipelineParameters(
            model_path=str(ro / "tiny"),
            data_dir=str(ro / "data"),
            output_dir=str(out / "pipeline"),
            sequence_length=16,
            max_eval_samples=4,
            max_calibration_samples=4,
            eval_batch_size=2,
            benchmark_batch_sizes=(1,),
            benchmark_iterations=2,
        )
        summary = Pipeline(parameters, budget=AccuracyBudget.preset("relaxed")).run_all()
        return [Path(c["path"]) for c in summary["candidates"]]

    report = {}
    stages = {
        "export": export,
        "fuse": fuse,
        "quantize_dynamic": quantize_dynamic,
        "quantize_static": quantize_static,
        "calibrate": calibrate,
        "fp16": fp16,
        "smoothquant": smoothquant,
        "surgery": surgery,
        "compare": compare,
        "benchmark": benchmark,
        "triton": triton,
        "pipeline": pipeline,
    }
    wanted = sys.argv[2].split(",") if len(sys.argv) > 2 and sys.argv[2] else list(stages)
    for name in wanted:
        before = listing(ro)
        entry = {}
        try:
            entry["outputs"] = [str(p) for p in stages[name]()]
        except Exception as exc:  # noqa: BLE001 - reported to the test, which fails on it
            entry["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            entry["traceback"] = traceback.format_exc()[-3000:]
        after = listing(ro)
        entry["input_changed"] = sorted(set(before.items()) ^ set(after.items()))
        # onnxruntime writes a session-id file `.ses` into TMPDIR when it is imported (not a stage's file)
        entry["tmp_left"] = sorted(k for k in listing(tmp) if k != ".ses")
        # ... and its device id and usage database into ~/.cache/Microsoft/DeveloperTools/.onnxruntime
        entry["home_left"] = sorted(
            k for k in listing(home) if k != ".cache" and not k.startswith((".cache/matplotlib", ".cache/Microsoft"))
        )
        report[name] = entry
    np.seterr(all="ignore")
    print("REPORT " + json.dumps(report, default=str))


if __name__ == "__main__":
    main()
