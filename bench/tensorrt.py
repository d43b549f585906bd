"""GPU candidates for MiniLM in one run: PyTorch, ONNX Runtime's GPU providers, and TensorRT FP16 / INT8 engines.

Needs TensorRT and an NVIDIA GPU. Where either is missing it prints one line saying what is missing and how to
install it, and exits with status 2 (nothing is exported or built).

Candidates, each skipped with a note when this machine cannot run it:
- pytorch_fp32: eager PyTorch, on CUDA when torch sees a GPU (else on the CPU).
- ort_cuda_fp32 / ort_trt_ep_fp16: onnxruntime-gpu's CUDA and TensorRT execution providers, when onnxruntime-gpu
  is installed (a provider that falls back to the CPU is reported, not timed).
- trt_fp16, trt_int8_qdq, trt_int8_calibrated: TensorRT engines built with workbench.stages.tensorrt from the
  plain export (and, for Q/DQ, its PrecisionPlan.preset("tensorrt_int8_qdq") conversion).

Accuracy: mean and min cosine of mean-pooled sentence embeddings vs PyTorch FP32 on the CPU, on the evaluation
sentences padded to --seq tokens in batches of 8. Latency: p50 per batch size, every candidate in this process,
interleaved run by run (workbench.stages.benchmark.latency.benchmark), numpy in and numpy out (host-device copies
included for every GPU candidate alike). Compare ratios within one run only.

    python bench/tensorrt.py               # a table
    python bench/tensorrt.py --json        # a JSON object: {"rows": [...], "notes": [...]}
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

# Run as a script, this file's folder is sys.path[0], and this file would be what `import tensorrt` finds.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from workbench.engines.base import BaseRunner  # noqa: E402 (after the sys.path fix above)

EXIT_MISSING = 2
EVAL_BATCH = 8


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="print JSON (rows and notes) instead of a table")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seq", type=int, default=128, help="padded sequence length")
    parser.add_argument("--iterations", type=int, default=100)
    parser.add_argument(
        "--model-path", default=None, help="a Hugging Face model folder; default: the bundled all-MiniLM-L6-v2"
    )
    parser.add_argument("--output-dir", default=None, help="keep the models and engines here (default: a temp dir)")
    args = parser.parse_args(argv)

    from workbench.engines.tensorrt import tensorrt_status

    available, reason = tensorrt_status()
    if not available:
        print(f"bench/tensorrt.py cannot run here: {reason}", file=sys.stderr)
        return EXIT_MISSING
    if args.output_dir:
        Path(args.output_dir).mkdir(parents=True, exist_ok=True)
        return _run(args, Path(args.output_dir), reason)
    with tempfile.TemporaryDirectory(prefix="bench-tensorrt-") as folder:
        return _run(args, Path(folder), reason)


class TorchCudaRunner(BaseRunner):
    """Eager PyTorch on CUDA, numpy in and out, synchronised: its timing includes the copies, like the others'."""

    def __init__(self, module: Any, output_names: tuple[str, ...], name: str) -> None:
        super().__init__()
        self.module, self.output_names, self.name = module, output_names, name
        self.torch: Any = None

    def _activate(self) -> None:
        import torch

        self.torch = torch
        self.module.to("cuda").eval()

    def _infer(self, feeds: Any) -> dict[str, Any]:
        torch = self.torch
        with torch.inference_mode():
            outputs = self.module(**{k: torch.from_numpy(v).to("cuda") for k, v in feeds.items()})
            values = {n: outputs[n].float().cpu().numpy() for n in self.output_names}
        torch.cuda.synchronize()
        return values

    def _deactivate(self) -> None:
        self.module.to("cpu")
        self.torch = None


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0]


def _run(args: argparse.Namespace, folder: Path, status: str) -> int:
    import numpy as np

    from workbench.data import tokenize_batches
    from workbench.engines.onnxruntime import OnnxRuntimeRunner
    from workbench.engines.pytorch import PyTorchRunner
    from workbench.engines.tensorrt import TensorRTRunner, ort_gpu_providers
    from workbench.errors import WorkbenchError
    from workbench.pipeline import Pipeline, PipelineParameters
    from workbench.stages.accuracy.compare import mean_pooled_embeddings
    from workbench.stages.benchmark.latency import BenchmarkConfig, benchmark
    from workbench.stages.precision.plan import PrecisionPlan
    from workbench.stages.tensorrt import (
        TensorRTConfig,
        build_engine,
        profile_from_choices,
    )

    pipeline = Pipeline(
        PipelineParameters(
            model_path=args.model_path, output_dir=str(folder), sequence_length=args.seq, eval_batch_size=EVAL_BATCH
        )
    )
    export = pipeline.export()
    plain = pipeline.candidates["reference"]
    names = pipeline.input_names
    output_names = tuple(export.output_names) if export is not None else ("last_hidden_state",)
    eval_feeds = pipeline.evaluation_feeds()
    batches = sorted({*args.batch_sizes, EVAL_BATCH})
    profile = profile_from_choices(names, batches, [args.seq], opt_batch=args.batch_sizes[0])
    opt_batch = profile[names[0]][1][0]
    calibration = tokenize_batches(
        pipeline.tokenizer,
        pipeline.sentences.calibration,
        batch_size=opt_batch,
        sequence_length=args.seq,
        input_names=names,
    )
    calibration = [f for f in calibration if next(iter(f.values())).shape[0] == opt_batch]  # opt shape only

    notes: list[str] = []
    runners: list[Any] = []
    module = pipeline.source.load_module()
    reference = PyTorchRunner(module, output_names=output_names, name="pytorch_fp32_cpu")
    with reference:
        expected = [reference.infer(f)[output_names[0]] for f in eval_feeds]

    import torch

    if torch.cuda.is_available():
        gpu_module = pipeline.source.load_module()  # its own copy: the CPU reference keeps its weights
        runners.append(TorchCudaRunner(gpu_module, output_names, "pytorch_fp32_cuda"))
    else:
        notes.append("pytorch_fp32_cuda: skipped, torch sees no CUDA device (a CPU build?)")

    import onnxruntime

    ort_providers = onnxruntime.get_available_providers()
    if "CUDAExecutionProvider" in ort_providers:
        runners.append(
            OnnxRuntimeRunner(plain, name="ort_cuda_fp32", providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
        )
    else:
        notes.append(f"ort_cuda_fp32: skipped, onnxruntime offers {ort_providers} (install onnxruntime-gpu)")
    if "TensorrtExecutionProvider" in ort_providers:
        runners.append(
            OnnxRuntimeRunner(
                plain, name="ort_trt_ep_fp16", providers=ort_gpu_providers(True, cache_dir=folder / "ort_trt_cache")
            )
        )
    else:
        notes.append("ort_trt_ep_fp16: skipped, onnxruntime has no TensorrtExecutionProvider")

    engines = {
        "trt_fp16": lambda: build_engine(
            plain, TensorRTConfig.preset("tensorrt_fp16", profiles=(profile,)), engine_path=folder / "trt_fp16.plan"
        ),
        "trt_int8_qdq": lambda: build_engine(
            PrecisionPlan.preset("tensorrt_int8_qdq")
            .convert(plain, folder / "model_qdq.onnx", calibration_feeds=calibration, progress=False)
            .path,
            TensorRTConfig.preset("tensorrt_int8_qdq", profiles=(profile,)),
            engine_path=folder / "trt_int8_qdq.plan",
        ),
        "trt_int8_calibrated": lambda: build_engine(
            plain,
            TensorRTConfig.preset("tensorrt_int8_calibrated", profiles=(profile,)),
            calibration_feeds=calibration,
            engine_path=folder / "trt_int8_calibrated.plan",
        ),
    }
    for name, build in engines.items():
        try:
            engine = build()
        except WorkbenchError as exc:
            notes.append(f"{name}: build failed: {_first_line(exc)}")
            continue
        notes.append(
            f"{name}: built in {engine.seconds:.1f} s, {engine.size_mb:.1f} MB"
            + "".join(f"; {n}" for n in engine.notes)
        )
        runners.append(TensorRTRunner(engine.path, name=name, output_names=output_names))

    # accuracy, and weed out candidates that cannot run here (a provider falling back, a CUDA error)
    accuracy: dict[str, tuple[float, float]] = {}
    usable = []
    for runner in runners:
        try:
            with runner:
                got = [runner.infer(f)[output_names[0]] for f in eval_feeds]
        except (WorkbenchError, RuntimeError) as exc:  # torch and CUDA errors are RuntimeErrors
            notes.append(f"{runner.name}: skipped, {type(exc).__name__}: {_first_line(exc)}")
            continue
        cosines = np.concatenate(
            [
                np.sum(
                    mean_pooled_embeddings(e, f["attention_mask"]) * mean_pooled_embeddings(g, f["attention_mask"]),
                    axis=1,
                )
                for e, f, g in zip(expected, eval_feeds, got)
            ]
        )
        accuracy[runner.name] = (float(cosines.mean()), float(cosines.min()))
        usable.append(runner)
    if not usable:
        print("bench/tensorrt.py: no candidate could run; " + " | ".join(notes), file=sys.stderr)
        return 1

    config = BenchmarkConfig(
        batch_sizes=tuple(args.batch_sizes), sequence_lengths=(args.seq,), iterations=args.iterations, warmup=10
    )
    result = benchmark(usable, pipeline._feeds_for, config)
    rows = [
        {
            "name": r.name,
            "batch": r.batch,
            "seq": r.seq,
            "p50_ms": round(r.p50_ms, 3),
            "p90_ms": round(r.p90_ms, 3),
            "cosine_mean": round(accuracy[r.name][0], 5),
            "cosine_min": round(accuracy[r.name][1], 5),
        }
        for r in result.rows
    ]
    if args.json:
        print(json.dumps({"rows": rows, "notes": notes}, indent=2))
        return 0
    print(f"# {status}; {result.machine['processor']}; {args.iterations} interleaved runs, numpy in/out")
    print(f"{'name':<24}{'batch':>6}{'seq':>6}{'p50 ms':>10}{'p90 ms':>10}{'cos mean':>10}{'cos min':>10}")
    for row in rows:
        print(
            f"{row['name']:<24}{row['batch']:>6}{row['seq']:>6}{row['p50_ms']:>10.3f}{row['p90_ms']:>10.3f}"
            f"{row['cosine_mean']:>10.5f}{row['cosine_min']:>10.5f}"
        )
    for note in notes:
        print(f"# {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
