"""Token classification and extractive question answering on a real backbone: MiniLM with a fresh head.

For each task, the bundled all-MiniLM-L6-v2 (BertModel) gets a freshly initialised head (the task's
AutoModelFor... from the MiniLM folder, seeded), so hidden states are realistic while the head is random. Then,
with the workbench's stage functions: export to ONNX (checked against PyTorch), fuse, dynamic INT8 per-channel
and dynamic INT8 + SmoothQuant; every candidate is judged on the task's own metrics against the FP32 export, on
the bundled evaluation data served as Triton serves it (NER: evaluation.txt padded to 128 tokens; QA:
qa_evaluation.jsonl windowed at 384 tokens, stride 128), and timed against PyTorch in one interleaved run
(batch 1, onnxruntime spinning off). A candidate that misses the task's default budget goes to the auto-fix
(workbench/stages/accuracy/autofix.py), whose trials the task's metrics judge; when even every quantized node
in FP32 misses the budget, the report gives the search's own reason.

    python bench/tasks.py           # a table per task
    python bench/tasks.py --json    # one JSON object
    python bench/tasks.py --tasks question-answering --iterations 20
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from workbench.engines.onnxruntime import OnnxRuntimeRunner
from workbench.engines.pytorch import PyTorchRunner
from workbench.errors import AccuracyError
from workbench.models import bundled_model_path, load_model
from workbench.stages.accuracy.autofix import AutofixConfig, autofix
from workbench.stages.accuracy.compare import compare_candidates
from workbench.stages.benchmark.latency import BenchmarkConfig, benchmark
from workbench.stages.export import export_onnx
from workbench.stages.fusion import FusionConfig, fuse_transformer
from workbench.stages.precision.plan import PrecisionPlan
from workbench.stages.precision.smooth import SmoothingConfig
from workbench.tasks.base import get_task

NER_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
TASKS = {"token-classification": 128, "question-answering": 384}  # task -> the sequence length it is served at
#: task -> what its fresh head's config needs beside MiniLM's (NER: CoNLL-style labels)
HEAD_CONFIGS: dict[str, dict[str, Any]] = {
    "token-classification": {
        "num_labels": len(NER_LABELS),
        "id2label": dict(enumerate(NER_LABELS)),
        "label2id": {label: i for i, label in enumerate(NER_LABELS)},
    },
    "question-answering": {},
}


def build_model(task_name: str, folder: Path, seed: int) -> Any:
    """MiniLM with a fresh `task_name` head, saved (weights, config, tokenizer) to `folder`; the loaded module."""
    import torch
    import transformers

    task = get_task(task_name)
    extra = HEAD_CONFIGS[task_name]
    torch.manual_seed(seed)
    model = (
        getattr(transformers, task.auto_model)
        .from_pretrained(str(bundled_model_path()), attn_implementation="eager", local_files_only=True, **extra)
        .eval()
    )
    model.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(str(bundled_model_path()), local_files_only=True).save_pretrained(folder)
    return model


def export(folder: Path, path: Path) -> Path:
    """The export stage, as the pipeline runs it: load_model reads the task from config.json (its auto class and
    outputs), export_onnx checks the ONNX model against PyTorch at several shapes."""
    return export_onnx(load_model(folder), path).path


def bench_task(task_name: str, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    import transformers

    task = get_task(task_name)
    length = TASKS[task_name]
    started = time.perf_counter()
    module = build_model(task_name, folder / "model", args.seed)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder / "model"))
    config = json.loads((folder / "model" / "config.json").read_text())
    reference = export(folder / "model", folder / "model.onnx")
    fused = fuse_transformer(
        reference, folder / "fused.onnx", FusionConfig(model_type="bert", num_heads=12, hidden_size=384)
    ).path
    samples = task.load_samples(None, max_calibration=args.calibration_samples, max_eval=args.eval_samples)
    with OnnxRuntimeRunner(reference) as runner:
        names = list(runner.input_specs())
    evaluation = task.encode(
        tokenizer,
        list(samples.evaluation),
        batch_size=8,
        sequence_length=length,
        input_names=names,
        model_config=config,
    )
    calibration = task.encode(
        tokenizer, list(samples.calibration), batch_size=1, sequence_length=length, input_names=names
    ).feeds
    plans = {
        "dynamic_int8": PrecisionPlan.preset("cpu_int8_dynamic"),
        "dynamic_int8_smoothquant": PrecisionPlan(
            "int8_dynamic",
            PrecisionPlan.preset("cpu_int8_dynamic").options,
            smoothing=SmoothingConfig(alpha=args.alpha),
        ),
    }
    candidates = {"fp32_fused": fused}
    for name, plan in plans.items():
        candidates[name] = plan.convert(
            fused, folder / f"{name}.onnx", calibration_feeds=calibration, progress=False
        ).path
    budget = task.default_budget()
    report: dict[str, Any] = {
        "sequence_length": length,
        "evaluation_samples": len(samples.evaluation),
        "evaluation_rows": sum(len(next(iter(f.values()))) for f in evaluation.feeds),
        "budget": budget.to_dict(),
        "budget_text": budget.describe(),
        "candidates": {},
    }
    # the accuracy stage: every candidate against the FP32 export, judged by the task's metrics and budget
    comparison = compare_candidates(reference, candidates, evaluation, task=task, budget=budget, threads=args.threads)
    for name in candidates:
        accuracy = comparison[name]
        report["candidates"][name] = {
            "metrics": {
                k: round(float(accuracy.task_metrics[k]), 5) for k in task.metric_names if k in accuracy.task_metrics
            },
            "meets_budget": bool(accuracy),
            "failures": list(accuracy.failures),
        }
    for name, plan in plans.items():
        facts = report["candidates"][name]
        if facts["meets_budget"]:
            continue
        facts["autofix"] = try_autofix(
            task, fused, plan, evaluation, folder / f"fix_{name}", budget, reference, calibration, args
        )
        if facts["autofix"].get("path"):
            candidates[f"{name}_fixed"] = Path(facts["autofix"].pop("path"))
    report["latency"] = time_candidates(task, module, candidates, evaluation.feeds[0], length, args)
    pytorch = report["latency"]["pytorch_fp32"]
    for name in report["candidates"]:
        report["candidates"][name]["latency_ms"] = report["latency"].get(name)
        report["candidates"][name]["speedup_vs_pytorch"] = round(pytorch / report["latency"][name], 2)
    passing = [n for n, f in report["candidates"].items() if f["meets_budget"]]
    for name, facts in report["candidates"].items():  # a fixed candidate that meets the budget may ship too
        fix = facts.get("autofix") or {}
        if fix.get("meets_budget") and f"{name}_fixed" in report["latency"]:
            fix["latency_ms"] = report["latency"][f"{name}_fixed"]
            fix["speedup_vs_pytorch"] = round(pytorch / fix["latency_ms"], 2)
            passing.append(f"{name}_fixed")
    report["chosen"] = min(passing, key=lambda n: report["latency"][n]) if passing else None
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


def try_autofix(
    task: Any,
    fused: Path,
    plan: PrecisionPlan,
    evaluation: Any,
    out: Path,
    budget: Any,
    reference: Path,
    calibration: list[dict[str, np.ndarray]],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Run the auto-fix on the task's budget (trials judged by the task's metrics); when it cannot reach the
    budget, its own reason."""
    try:
        result = autofix(
            fused,
            plan,
            evaluation,
            out,
            budget=budget,
            task=task,
            reference=reference,
            calibration_feeds=calibration,
            config=AutofixConfig(threads=args.threads, max_prune_trials=args.prune_trials, latency_iterations=5),
        )
    except AccuracyError as exc:  # every quantized node in FP32 still misses: the search says why
        return {"ran": True, "meets_budget": False, "why": str(exc).splitlines()[0]}
    best = result.best
    return {
        "ran": True,
        "meets_budget": best.meets_budget,
        "pins": list(result.plan.keep_fp32),
        "smoothing": result.plan.smoothing is not None,
        "trials": len(result.trials),
        "metrics": {k: round(v, 5) for k, v in best.metrics.items() if k in task.metric_names},
        "notes": list(result.notes),
        "path": str(result.path),
    }


def time_candidates(
    task: Any,
    module: Any,
    candidates: dict[str, Path],
    feed: dict[str, np.ndarray],
    length: int,
    args: argparse.Namespace,
) -> dict[str, float]:
    """PyTorch and every candidate, batch 1 at the served length, interleaved, onnxruntime spinning off."""
    config = BenchmarkConfig(
        batch_sizes=(1,), sequence_lengths=(length,), iterations=args.iterations, warmup=5, threads=args.threads
    )
    threads = config.effective_threads
    one = {k: v[:1] for k, v in feed.items()}
    runners = [PyTorchRunner(module, output_names=task.outputs, name="pytorch_fp32", threads=threads)]
    runners += [
        OnnxRuntimeRunner(path, name=name, intra_op_threads=threads, allow_spinning=False)
        for name, path in candidates.items()
    ]
    timings = benchmark(runners, lambda batch, seq: one, config)
    return {row.name: round(row.p50_ms, 3) for row in timings.rows}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--iterations", type=int, default=30, help="timed runs per model")
    parser.add_argument("--eval-samples", type=int, default=None, help="evaluation samples (default: all)")
    parser.add_argument("--calibration-samples", type=int, default=32)
    parser.add_argument("--alpha", type=float, default=0.5, help="SmoothQuant strength")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prune-trials", type=int, default=2, help="auto-fix trials spent dropping pins")
    args = parser.parse_args()

    from workbench.machine import machine_info

    report: dict[str, Any] = {
        "machine": machine_info(),
        "tasks": {},
        "timing": f"batch 1, {args.iterations} interleaved runs, spinning off",
    }
    with tempfile.TemporaryDirectory(prefix="bench-tasks-") as folder:
        for task_name in args.tasks:
            (Path(folder) / task_name / "model").mkdir(parents=True)
            report["tasks"][task_name] = bench_task(task_name, Path(folder) / task_name, args)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"# {report['machine'].get('processor')}, {report['machine'].get('cpu_count')} cores; {report['timing']}")
    for task_name, facts in report["tasks"].items():
        print(
            f"\n## {task_name}: MiniLM + fresh head, {facts['evaluation_samples']} evaluation samples "
            f"({facts['evaluation_rows']} rows of {facts['sequence_length']} tokens); budget: {facts['budget_text']}"
        )
        print(f"PyTorch FP32 {facts['latency']['pytorch_fp32']:.2f} ms")
        for name, c in facts["candidates"].items():
            shown = ", ".join(
                f"{k} {v:.4f}"
                for k, v in c["metrics"].items()
                if k in get_task(task_name).metric_names[:4] or k.endswith("cosine_min")
            )
            verdict = "meets the budget" if c["meets_budget"] else "MISSES: " + "; ".join(c["failures"])
            print(f"  {name:28s} {c['latency_ms']:8.2f} ms  {c['speedup_vs_pytorch']:5.2f}x  {shown}  -> {verdict}")
            fix = c.get("autofix")
            if fix and "pins" in fix:
                smoothing = ", SmoothQuant" if fix["smoothing"] else ""
                print(
                    f"    auto-fix: {len(fix['pins'])} nodes kept in FP32{smoothing} in {fix['trials']} trials -> "
                    f"meets the budget: {fix['meets_budget']} ({fix['metrics']}); "
                    f"latency {facts['latency'].get(name + '_fixed')} ms"
                )
            elif fix:
                print(f"    auto-fix could not reach the budget: {fix['why']}")
        print(f"  chosen: {facts['chosen']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
