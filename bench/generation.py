"""Generation speed of a decoder: PyTorch generate, ONNX Runtime FP32 and weight-only quantized candidates, in ONE
interleaved run, with the quantized candidates' accuracy against FP32.

The model: a random-init GPT-2 with the shape of distilgpt2 (6 layers, width 768, 12 heads, 1024 positions,
vocabulary 50257: 82 M parameters), built from a config (nothing is downloaded), with a byte-level BPE tokenizer
trained on data/calibration.txt (tests/generation/tiny_decoders.py). Big enough that the weights, not Python,
dominate a step; small enough for a 2-core CPU. Random weights make its text meaningless, and its accuracy
figures are only a check that the quantized graphs compute the same thing, not what a trained model would lose.

Candidates (all ONNX ones from the fused FP32 decoder, workbench.stages.generation):

    pytorch                      transformers' generate (eager attention, KV cache), the baseline
    ort_fp32                     the fused FP32 decoder, the library's loop (workbench.stages.generation.generate)
    ort_int8_weight_only         PrecisionPlan preset cpu_int8_weight_only (MatMulNBits, 8 bits, block 32,
                                 accuracy_level 4: INT8 dot products)
    ort_int4_weight_only         PrecisionPlan preset cpu_int4_weight_only (the same with 4 bits)
    ort_int4_weight_only_fp32c   cpu_int4_weight_only_fp32_compute (4 bits, accuracy_level 0: FP32 compute)

For every batch size and prompt length each candidate generates --new-tokens tokens from the same random
prompts, candidates taking turns run by run (workbench.stages.generation.benchmark). onnxruntime's thread
spinning is off and every engine gets the same explicit thread count. Compare ratios within one run only.

    python bench/generation.py              # a table (about 5 minutes on 2 cores)
    python bench/generation.py --json       # stdout: JSON {"machine", "accuracy", "timings", "design"}
    python bench/generation.py --design     # also: the prompt step of the single decoder (empty cache) vs a
                                            # decoder exported without cache inputs (the two-model design)

Everything is written into a temporary folder.
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

REPOSITORY = Path(__file__).resolve().parents[1]
if str(REPOSITORY) not in sys.path:  # the model builder lives with the tests
    sys.path.insert(0, str(REPOSITORY))

DISTILGPT2 = {"hidden": 768, "layers": 6, "heads": 12, "max_positions": 1024, "init": 0.02, "vocab_size": 50257}
PRESETS = {
    "ort_int8_weight_only": "cpu_int8_weight_only",
    "ort_int4_weight_only": "cpu_int4_weight_only",
    "ort_int4_weight_only_fp32c": "cpu_int4_weight_only_fp32_compute",
}


def log(started: float, message: str) -> None:
    print(f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)


def load_average() -> str:
    try:
        return " / ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="stdout: only JSON")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--prompt-lengths", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=3, help="timed generations per candidate and shape")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="threads per engine (default: all cores)")
    parser.add_argument("--layers", type=int, default=DISTILGPT2["layers"], help="decoder layers (default 6)")
    parser.add_argument("--design", action="store_true", help="also time the two-model design's prompt step")
    args = parser.parse_args()

    started = time.perf_counter()
    load_before = load_average()
    redirect = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with redirect, tempfile.TemporaryDirectory(prefix="bench-generation-") as folder:
        report = run(args, Path(folder), started)
    report["load_average"] = {"before": load_before, "after": load_average()}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    machine = report["machine"]
    print(f"# {report['model']}")
    print(
        f"# {machine['processor']}, {machine['cpu_count']} cores, {machine['threads']} threads per engine, "
        f"{args.iterations} interleaved runs after {args.warmup} warm-up, {args.new_tokens} new tokens; "
        f"load average before {load_before}, after {report['load_average']['after']}"
    )
    header = (
        f"{'candidate':<28}{'batch':>6}{'prompt':>7}{'TTFT p50':>10}{'TTFT p90':>10}{'ITL p50':>9}"
        f"{'ITL p90':>9}{'tok/s':>8}{'vs torch':>9}"
    )
    print(header)
    print("-" * len(header))
    baseline = {(t["batch"], t["prompt_length"]): t for t in report["timings"] if t["name"] == "pytorch"}
    for t in report["timings"]:
        base = baseline.get((t["batch"], t["prompt_length"]))
        ratio = f"{t['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        print(
            f"{t['name']:<28}{t['batch']:>6}{t['prompt_length']:>7}{t['ttft_ms_p50']:>10.1f}"
            f"{t['ttft_ms_p90']:>10.1f}{t['itl_ms_p50']:>9.2f}{t['itl_ms_p90']:>9.2f}{t['tokens_per_s']:>8.1f}"
            f"{ratio:>9}"
        )
    print()
    print(f"Accuracy vs ONNX FP32 ({report['accuracy_settings']}):")
    for name, values in report["accuracy"].items():
        print(
            f"  {name:<28} next-token agreement {values['next_token_agreement']:.4f}, perplexity ratio "
            f"{values['perplexity_ratio']:.4f}, logits cosine {values['logits_cosine_mean']:.5f}, greedy agreement "
            f"{values['greedy_agreement']:.3f}, {values['size_mb']:.0f} MB"
        )
    if report.get("design"):
        d = report["design"]
        print()
        print(
            f"Design: prompt step at batch 1, {d['prompt_length']} tokens, p50 of {d['runs']} interleaved runs: "
            f"single decoder with an empty cache {d['single_decoder_ms']:.1f} ms, decoder without cache inputs "
            f"{d['prompt_model_ms']:.1f} ms ({d['single_decoder_ms'] / d['prompt_model_ms']:.3f}x); files "
            f"{d['single_decoder_mb']:.0f} MB vs {d['two_models_mb']:.0f} MB for prompt + decode models"
        )
    log(started, "done")
    return 0


def run(args: argparse.Namespace, folder: Path, started: float) -> dict[str, Any]:
    from tests.generation.tiny_decoders import build_tiny_decoder
    from workbench.models import load_model
    from workbench.stages.generation.accuracy import evaluate_generation
    from workbench.stages.generation.benchmark import (
        GenerationBenchmarkConfig,
        benchmark_generation,
    )
    from workbench.stages.generation.export import (
        DecoderExportConfig,
        export_decoder,
        load_causal_lm,
    )
    from workbench.stages.generation.fusion import (
        decoder_fusion_config,
        fuse_decoder,
        fusion_report,
    )
    from workbench.stages.precision.plan import PrecisionPlan
    from workbench.tasks.generation import TextGeneration, load_prompts

    sizes = {**DISTILGPT2, "layers": args.layers}
    model_dir = build_tiny_decoder("gpt2", folder / "model", **sizes)
    log(started, f"built a random-init GPT-2 {sizes}")
    checks = DecoderExportConfig(check_batch_sizes=(1, 2), check_prompt_lengths=(1, 9), check_past_lengths=(0, 7))
    exported = export_decoder(model_dir, folder / "decoder.onnx", checks)
    config = json.loads((model_dir / "config.json").read_text())
    fused = fuse_decoder(exported.path, folder / "fused.onnx", decoder_fusion_config(config))
    log(started, f"exported (max abs error {exported.max_abs_error:.2e}) and fused ({fusion_report(fused)['fused']})")
    candidates = {"ort_fp32": fused.path}
    sizes_mb = {"ort_fp32": fused.path.stat().st_size / 1e6}
    for name, preset in PRESETS.items():
        result = PrecisionPlan.preset(preset).convert(fused.path, folder / f"{name}.onnx")
        candidates[name] = result.path
        sizes_mb[name] = result.size_mb
    log(started, f"quantized {list(PRESETS)}")

    tokenizer = load_model(model_dir).load_tokenizer()
    texts = TextGeneration().load_samples(None, max_eval=24).evaluation
    accuracy = evaluate_generation(
        fused.path,
        {k: v for k, v in candidates.items() if k != "ort_fp32"},
        tokenizer,
        texts=texts,
        prompts=load_prompts(limit=6),
        sequence_length=64,
        greedy_tokens=16,
        threads=args.threads,
    )
    log(started, "measured accuracy")

    model, _ = load_causal_lm(model_dir)
    bench_config = GenerationBenchmarkConfig(
        batch_sizes=tuple(args.batch_sizes),
        prompt_lengths=tuple(args.prompt_lengths),
        new_tokens=args.new_tokens,
        warmup=args.warmup,
        iterations=args.iterations,
        threads=args.threads,
    )
    timings = benchmark_generation(
        candidates, exported.spec, bench_config, pytorch_model=model, progress=lambda line: log(started, line)
    )
    report: dict[str, Any] = {
        "model": f"random-init GPT-2, distilgpt2 shape ({sizes['layers']} layers, width 768, 12 heads, vocabulary "
        f"50257, {sum(p.numel() for p in model.parameters()) / 1e6:.0f} M parameters)",
        "machine": timings.machine,
        "fusion": fusion_report(fused),
        "accuracy_settings": {**accuracy.settings, "reference": "ort_fp32"},
        "accuracy": {
            name: {
                **{k: round(v, 6) for k, v in result.values.items()},
                "size_mb": round(sizes_mb[name], 1),
                "meets_default_budget": result.meets_budget,
            }
            for name, result in accuracy.items()
        },
        "timings": [
            {k: (round(v, 3) if isinstance(v, float) else v) for k, v in t.to_dict().items()} for t in timings.timings
        ],
        "benchmark": bench_config.to_dict(),
    }
    if args.design:
        report["design"] = design_check(model, exported, folder, args.prompt_lengths[-1], args.threads, started)
    return report


def design_check(
    model: Any, exported: Any, folder: Path, length: int, threads: int | None, started: float
) -> dict[str, Any]:
    """The prompt step of the single decoder (empty cache) vs a decoder exported without cache inputs (what the
    prompt model of a prompt + decode-step design is), interleaved; and the files each design needs."""
    import numpy as np
    import torch

    from workbench.decoding import prompt_feeds
    from workbench.engines.onnxruntime import OnnxRuntimeRunner

    spec = exported.spec

    class PromptModel(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, input_ids, attention_mask, position_ids, logit_positions):
            out = self.inner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                logits_to_keep=logit_positions,
            )
            return (out.logits, *[t for layer in out.cache.layers for t in (layer.keys, layer.values)])

    feeds = prompt_feeds(spec, [list(range(1, length + 1))])
    plain = {k: feeds[k] for k in ("input_ids", "attention_mask", "position_ids", "logit_positions")}
    path = folder / "prompt_model.onnx"
    axes = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "sequence"},
        "position_ids": {0: "batch", 1: "sequence"},
        "logit_positions": {0: "kept"},
    }
    torch.onnx.export(
        PromptModel().eval(),
        tuple(torch.from_numpy(v) for v in plain.values()),
        str(path),
        input_names=list(plain),
        output_names=spec.output_names(),
        dynamic_axes=axes,
        opset_version=17,
        dynamo=False,
    )
    runs = 15
    times: dict[str, list[float]] = {"single": [], "prompt": []}
    with (
        OnnxRuntimeRunner(exported.path, intra_op_threads=threads, allow_spinning=False) as single,
        OnnxRuntimeRunner(path, intra_op_threads=threads, allow_spinning=False) as prompt,
    ):
        for index in range(runs + 2):
            for key, runner, fed in (("single", single, feeds), ("prompt", prompt, plain)):
                tick = time.perf_counter()
                runner.infer(fed)
                if index >= 2:
                    times[key].append((time.perf_counter() - tick) * 1000.0)
    log(started, "timed the design check")
    single_mb = exported.path.stat().st_size / 1e6
    return {
        "prompt_length": length,
        "runs": runs,
        "single_decoder_ms": float(np.median(times["single"])),
        "prompt_model_ms": float(np.median(times["prompt"])),
        "single_decoder_mb": single_mb,
        "two_models_mb": single_mb + path.stat().st_size / 1e6,
    }


if __name__ == "__main__":
    sys.exit(main())
