"""Fused vs unfused MiniLM in ONNX Runtime: what fused, how close the outputs are, and the latency of both.

Both models are timed in one run, interleaved, onnxruntime spinning off.

    python bench/fusion.py           # a table
    python bench/fusion.py --json    # {"fused_ops": {...}, "max_abs_diff": x, "latency": [rows]}
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from workbench.data import load_sentence_splits, tokenize_batches
from workbench.engines.onnxruntime import OnnxRuntimeRunner, max_output_difference
from workbench.models import load_model
from workbench.stages.benchmark.latency import BenchmarkConfig, benchmark
from workbench.stages.export import export_onnx
from workbench.stages.fusion import FusionConfig, fuse_transformer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=50)
    args = parser.parse_args()

    import onnx

    source = load_model()
    tokenizer = source.load_tokenizer()
    texts = load_sentence_splits(max_eval=64).evaluation
    with tempfile.TemporaryDirectory(prefix="bench-fusion-") as folder:
        exported = export_onnx(source, Path(folder) / "model.onnx", check_texts=texts)
        feeds = tokenize_batches(
            tokenizer, texts, batch_size=8, sequence_length=args.seq, input_names=exported.input_names
        )
        fused = fuse_transformer(exported.path, Path(folder) / "fused.onnx", FusionConfig.for_source(source))
        # over every evaluation sentence, not only the stage's own one-batch check
        max_abs_diff = max_output_difference(onnx.load(str(exported.path)), onnx.load(str(fused.path)), feeds)

        def feeds_for(batch: int, seq: int) -> dict:
            chosen = [texts[i % len(texts)] for i in range(batch)]
            return tokenize_batches(
                tokenizer, chosen, batch_size=batch, sequence_length=seq, input_names=exported.input_names
            )[0]

        runners = [
            OnnxRuntimeRunner(exported.path, name="ort_fp32_unfused", allow_spinning=False),
            OnnxRuntimeRunner(fused.path, name="ort_fp32_fused", allow_spinning=False),
        ]
        timings = benchmark(
            runners,
            feeds_for,
            BenchmarkConfig(
                batch_sizes=tuple(args.batch_sizes), sequence_lengths=(args.seq,), iterations=args.iterations, warmup=10
            ),
        )
    report = {
        "fused_ops": {op: count for op, count in fused.fused_ops.items() if count},
        "nodes_unfused": fused.nodes_before,
        "nodes_fused": fused.nodes_after,
        "max_abs_diff": max_abs_diff,
        "latency": [
            {"name": r.name, "batch": r.batch, "seq": r.seq, "p50_ms": round(r.p50_ms, 3), "p90_ms": round(r.p90_ms, 3)}
            for r in timings.rows
        ],
        "machine": timings.machine,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"fused ops: {report['fused_ops']}; nodes {fused.nodes_before} -> {fused.nodes_after}")
    print(f"max abs diff fused vs unfused over {len(texts)} sentences at seq {args.seq}: {max_abs_diff:.2e}")
    print(f"# {timings.machine['processor']}, {timings.machine['cpu_count']} cores, {args.iterations} interleaved runs")
    for row in report["latency"]:
        print(
            f"{row['name']:<20} batch {row['batch']:>2} seq {row['seq']:>4}  p50 {row['p50_ms']:7.2f} ms"
            f"  p90 {row['p90_ms']:7.2f} ms"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
