"""Which exporter gives the fastest final model? TorchScript vs dynamo, each exported, fused and quantized.

For each exporter: the ops onnxruntime's BERT optimizer fused, and the latency of the fused FP32 and dynamic
INT8 models, all timed in one run, interleaved, onnxruntime spinning off.

    python bench/exporters.py [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from workbench.data import load_sentence_splits, tokenize_batches
from workbench.engines.onnxruntime import OnnxRuntimeRunner
from workbench.models import load_model
from workbench.stages.benchmark.latency import BenchmarkConfig, benchmark
from workbench.stages.export import ExportConfig, export_onnx
from workbench.stages.fusion import FusionConfig, fuse_transformer
from workbench.stages.precision.quantize import quantize_dynamic


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--iterations", type=int, default=50)
    args = parser.parse_args()

    source = load_model()
    tokenizer = source.load_tokenizer()
    texts = load_sentence_splits(max_eval=16).evaluation
    report: dict[str, dict] = {}
    runners = []
    with tempfile.TemporaryDirectory(prefix="bench-exporters-") as folder:
        for preset in ("default", "dynamo"):
            config = ExportConfig.preset(preset)
            exported = export_onnx(source, Path(folder) / f"{config.exporter}.onnx", config, check_texts=texts)
            fused = fuse_transformer(
                exported.path, Path(folder) / f"{config.exporter}_fused.onnx", FusionConfig.for_source(source)
            )
            int8 = quantize_dynamic(fused.path, Path(folder) / f"{config.exporter}_int8.onnx")
            report[config.exporter] = {
                "export_seconds": round(exported.seconds, 2),
                "export_max_abs_error": exported.max_abs_error,
                "fused_ops": {k: v for k, v in fused.fused_ops.items() if v},
            }
            runners += [
                OnnxRuntimeRunner(fused.path, name=f"{config.exporter}_fused_fp32", allow_spinning=False),
                OnnxRuntimeRunner(int8.path, name=f"{config.exporter}_fused_int8", allow_spinning=False),
            ]

        def feeds_for(batch: int, seq: int) -> dict:
            chosen = [texts[i % len(texts)] for i in range(batch)]
            return tokenize_batches(
                tokenizer,
                chosen,
                batch_size=batch,
                sequence_length=seq,
                input_names=("input_ids", "attention_mask", "token_type_ids"),
            )[0]

        timings = benchmark(runners, feeds_for, BenchmarkConfig(batch_sizes=(1,), iterations=args.iterations))
    for row in timings.rows:
        exporter, variant = row.name.split("_", 1)
        report[exporter][f"{variant}_p50_ms"] = round(row.p50_ms, 3)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"# {timings.machine['processor']}, {timings.machine['cpu_count']} cores, batch 1, seq 128, "
        f"{args.iterations} interleaved runs"
    )
    for exporter, facts in report.items():
        print(f"{exporter:<12} fused: {facts['fused_ops']}")
        print(
            f"{'':<12} fused FP32 {facts['fused_fp32_p50_ms']:.2f} ms, fused INT8 {facts['fused_int8_p50_ms']:.2f} ms, "
            f"export {facts['export_seconds']:.1f} s, max abs vs PyTorch {facts['export_max_abs_error']:.1e}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
