"""Latency of PyTorch FP32, ONNX Runtime FP32 (plain and fused) and ONNX Runtime dynamic INT8 on MiniLM.

All candidates are measured in one process, in one run, interleaved run by run, with onnxruntime's thread
spinning off (see "Measuring speed here" in shared/measured-facts.md). Compare ratios within one run only.

    python bench/latency.py            # a table
    python bench/latency.py --json     # a JSON list of rows: name, batch, seq, p50_ms, p90_ms
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile

from workbench.pipeline import Pipeline, PipelineParameters

NAMES = {"pytorch": "pytorch_fp32", "fp32": "ort_fp32", "fp32_fused": "ort_fp32_fused",
         "int8_dynamic_per_channel": "ort_int8_dynamic_per_channel"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print a JSON list of rows instead of a table")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seq", type=int, nargs="+", default=[128], help="sequence lengths")
    parser.add_argument("--iterations", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="threads per engine (default: all cores)")
    parser.add_argument("--model-path", default=None, help="default: the bundled all-MiniLM-L6-v2")
    args = parser.parse_args()

    from workbench.backends.onnxrt import OnnxRuntimeRunner
    from workbench.backends.pytorch import PyTorchRunner
    from workbench.stages.benchmark import BenchmarkConfig, benchmark

    with tempfile.TemporaryDirectory(prefix="bench-latency-") as folder:
        pipeline = Pipeline(PipelineParameters(model_path=args.model_path, output_dir=folder, max_eval_samples=16))
        pipeline.export()
        pipeline.fuse()
        pipeline.quantize()
        config = BenchmarkConfig(batch_sizes=tuple(args.batch_sizes), sequence_lengths=tuple(args.seq),
                                 iterations=args.iterations, warmup=10, threads=args.threads)
        threads = config.effective_threads
        runners = [PyTorchRunner(pipeline.source.load_module(), name=NAMES["pytorch"], threads=threads)]
        runners += [OnnxRuntimeRunner(pipeline.candidates[key], name=NAMES[key], intra_op_threads=threads,
                                      allow_spinning=False) for key in ("fp32", "fp32_fused", "int8_dynamic_per_channel")]
        result = benchmark(runners, pipeline._feeds_for, config)

    rows = [{"name": r.name, "batch": r.batch, "seq": r.seq, "p50_ms": round(r.p50_ms, 3), "p90_ms": round(r.p90_ms, 3)}
            for r in result.rows]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    machine = result.machine
    print(f"# {machine['processor']}, {machine['cpu_count']} cores, {threads} threads per engine, "
          f"{args.iterations} interleaved runs; onnxruntime spinning off")
    print(f"{'name':<32}{'batch':>6}{'seq':>6}{'p50 ms':>10}{'p90 ms':>10}{'vs torch':>10}")
    for row in rows:
        base = result.p50(NAMES["pytorch"], row["batch"], row["seq"])
        print(f"{row['name']:<32}{row['batch']:>6}{row['seq']:>6}{row['p50_ms']:>10.2f}{row['p90_ms']:>10.2f}"
              f"{base / row['p50_ms']:>9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
