"""The engines side by side on MiniLM: PyTorch FP32, the best ONNX Runtime candidate, OpenVINO FP32, OpenVINO INT8
with NNCF's defaults, OpenVINO INT8 after the workbench's fix, and OpenVINO INT8 from NNCF's own
`quantize_with_accuracy_control` on the same budget.

    ort_int8_dynamic_smoothquant  ONNX Runtime, fused graph, dynamic per-channel INT8 after SmoothQuant (alpha 0.75),
                                  as the Pipeline's quantize_smoothquant step makes it
    ov_fp32                       OpenVINO IR converted from the plain ONNX export (FP32 weights)
    ov_int8_nncf                  PrecisionPlan preset cpu_int8_nncf: NNCF, model_type=TRANSFORMER, SmoothQuant 0.95
    ov_int8_fixed                 the workbench's autofix from cpu_int8_nncf: SmoothQuant alpha tuned, then the fewest
                                  ops pinned to FP32 that meet the target (mean >= 0.997, min >= 0.995)
    ov_int8_accuracy_control      nncf.quantize_with_accuracy_control, the same target as one metric (see below)
    <each OpenVINO one>_bf16      the same IR, its floating-point ops in bf16 (INFERENCE_PRECISION_HINT; a Candidate
                                  with float_precision="bf16"), where the CPU has bfloat16 instructions
                                  (--no-bf16 leaves them out); the fix search then judges its pins in bf16 too

Calibration: the first --calibration-samples sentences of data/calibration.txt, one per feed, padded to 128 tokens,
for SmoothQuant, NNCF and the search alike. Accuracy: mean / min sentence-embedding cosine against the FP32 export
(itself within 1e-5 of PyTorch) on data/evaluation.txt, served-style: padded to 128 tokens, batches of 8.

Timing: every candidate is timed in a process of its own, one after the other, in rounds whose order rotates
(A B C ..., then B C ... A), so no two engines' thread pools ever share the cores; explicit threads for every engine
(onnxruntime spinning off, torch.set_num_threads, OpenVINO INFERENCE_NUM_THREADS, LATENCY hint). Shapes: batch 1
and 8 at 128 tokens, and the real-length mix: every evaluation sentence, batches padded to their longest sentence
("mix"; ms per batch over whole passes). Quote ratios within one run only.

    python bench/engines.py            # a table (tens of minutes on 2 cores: the search re-quantizes per trial)
    python bench/engines.py --save-plan plan.json          # keep the search's plan
    python bench/engines.py --fixed-plan plan.json --json  # apply it again instead of searching (minutes, not an hour)
    python bench/engines.py --json     # stdout: one JSON object with "rows" (name, engine, precision,
                                       # float_precision, batch, seq, p50_ms, p90_ms, speedup_vs_pytorch,
                                       # cosine_mean, cosine_min), "search",
                                       # "accuracy_control", "machine", "timing"; progress on stderr
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SEQUENCE_LENGTH = 128
TARGET = {"embedding_cosine_mean": 0.997, "embedding_cosine_min": 0.995}
MIX = "mix"


def log(started: float, message: str) -> None:
    print(f"[{time.perf_counter() - started:7.1f} s] {message}", file=sys.stderr, flush=True)


def load_average() -> str:
    try:
        return " / ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def log_trial(started: float, trial: Any) -> None:
    """One line per evaluated fix trial (the auto-fix's progress events carry the Trial as their item)."""
    log(
        started,
        f"  trial {trial.index} ({trial.stage}): {len(trial.pins)} pins, mean {trial.cosine_mean:.5f} "
        f"min {trial.cosine_min:.5f}, {trial.latency_ms:.2f} ms",
    )


def bf16_available() -> bool:
    """Whether OpenVINO runs bf16 here (the CPU has bfloat16 instructions)."""
    from workbench.engines.openvino import require_openvino

    ov = require_openvino("bf16 candidates")
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


# ------------------------------------------------------------------------------------------ timing (child process)


def time_one(args: argparse.Namespace) -> int:
    """Child: time one candidate at every shape, alone in this process; print {"shape": [ms, ...]} as JSON."""
    from workbench.data import (
        EVALUATION_FILE,
        default_data_dir,
        read_sentences,
        tokenize_batches,
    )
    from workbench.engines.base import Candidate, get_engine
    from workbench.models import bundled_model_path, load_model

    source = load_model(args.model_path or bundled_model_path())
    tokenizer = source.load_tokenizer()
    sentences = read_sentences(default_data_dir() / EVALUATION_FILE)
    if args.engine == "pytorch":
        runner = get_engine("pytorch").runner(source.load_module(), name="pytorch", threads=args.threads)
    else:
        runner = Candidate(
            args.engine, Path(args.model), engine=args.engine, float_precision=args.float_precision
        ).runner(threads=args.threads)
    timings: dict[str, list[float]] = {}
    with runner:
        names = [
            n
            for n in ("input_ids", "attention_mask", "token_type_ids")
            if args.engine == "pytorch" or n in runner.input_specs()
        ]
        for batch in args.batch_sizes:
            for seq in args.seq:
                if seq == MIX:  # every sentence once per pass, each batch padded to its longest sentence
                    feeds = tokenize_batches(
                        tokenizer,
                        sentences,
                        batch_size=batch,
                        sequence_length=SEQUENCE_LENGTH,
                        padding="longest",
                        input_names=names,
                    )
                    passes = max(1, args.iterations // 10)
                else:
                    chosen = [sentences[i % len(sentences)] for i in range(batch)]
                    feeds = tokenize_batches(
                        tokenizer, chosen, batch_size=batch, sequence_length=int(seq), input_names=names
                    )
                    passes = args.iterations
                for feed in feeds if seq == MIX else [feeds[0]] * args.warmup:  # warm every shape up
                    runner.infer(feed)
                samples = []
                for _ in range(passes):
                    started = time.perf_counter()
                    for feed in feeds:
                        runner.infer(feed)
                    samples.append((time.perf_counter() - started) * 1000.0 / len(feeds))
                timings[f"{batch}x{seq}"] = samples
    print(json.dumps({k: [float(v) for v in values] for k, values in timings.items()}))
    return 0


def interleaved_timings(
    candidates: dict[str, dict[str, Any]], args: argparse.Namespace, started: float
) -> dict[str, dict[str, list[float]]]:
    """name -> shape -> every sample, from `args.rounds` rounds of one process per candidate, order rotating."""
    names = list(candidates)
    samples: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    for round_index in range(args.rounds):
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            facts = candidates[name]
            command = [
                sys.executable,
                __file__,
                "--time-one",
                "--engine",
                facts["engine"],
                "--model",
                str(facts.get("path") or ""),
                "--threads",
                str(args.threads),
                "--float-precision",
                facts.get("float_precision", "fp32"),
                "--iterations",
                str(args.iterations),
                "--warmup",
                str(args.warmup),
                "--batch-sizes",
                *map(str, args.batch_sizes),
                "--seq",
                *map(str, args.seq),
            ]
            if args.model_path:
                command += ["--model-path", args.model_path]
            done = subprocess.run(command, capture_output=True, text=True, timeout=1800, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"timing {name} failed:\n{done.stderr[-3000:]}")
            for shape, values in json.loads(done.stdout.strip().splitlines()[-1]).items():
                samples[name].setdefault(shape, []).extend(values)
        log(started, f"timing round {round_index + 1}/{args.rounds} done (load average {load_average()})")
    return samples


# ------------------------------------------------------------------------------------------ building the candidates


def accuracy_control(reference: Path, calibration: list, evaluation: list, output: Path, trial_bound: int) -> dict:
    """nncf.quantize_with_accuracy_control on the same target, as one metric NNCF can hold within a drop.

    metric = min(mean cosine - 0.997, min cosine - 0.995): FP32 scores 0.003, and an absolute drop of at most
    0.003 holds exactly when both gates do. Each item is one evaluation batch of 8.
    """
    import nncf
    import numpy as np

    from workbench.engines.onnxruntime import OnnxRuntimeRunner
    from workbench.engines.openvino import ir_precisions, read_model, save_model
    from workbench.stages.accuracy.compare import mean_pooled_embeddings

    with OnnxRuntimeRunner(reference) as runner:
        expected = [
            mean_pooled_embeddings(runner.infer(f)["last_hidden_state"], f["attention_mask"]) for f in evaluation
        ]
    calls = {"full": 0, "items": 0}

    def cosines_of(compiled: Any, items: Any) -> tuple[list[float], list[float]]:
        every, per_item = [], []
        output_port = compiled.output("last_hidden_state")
        for index, feed in items:
            hidden = compiled(feed)[output_port]
            cos = (mean_pooled_embeddings(hidden, feed["attention_mask"]) * expected[index]).sum(axis=1)
            every += cos.tolist()
            per_item.append(
                float(min(cos.mean() - TARGET["embedding_cosine_mean"], cos.min() - TARGET["embedding_cosine_min"]))
            )
        return every, per_item

    def validate(compiled: Any, items: Any) -> tuple[float, list[float]]:
        items = list(items)
        calls["full" if len(items) == len(evaluation) else "items"] += 1
        every, per_item = cosines_of(compiled, items)
        metric = min(
            float(np.mean(every)) - TARGET["embedding_cosine_mean"],
            float(np.min(every)) - TARGET["embedding_cosine_min"],
        )
        return metric, per_item

    started = time.perf_counter()
    model = read_model(reference)
    quantized = nncf.quantize_with_accuracy_control(
        model,
        nncf.Dataset(calibration),
        nncf.Dataset(list(enumerate(evaluation)), lambda item: item[1]),
        validate,
        max_drop=0.003,
        drop_type=nncf.DropType.ABSOLUTE,
        model_type=nncf.ModelType.TRANSFORMER,
        subset_size=len(calibration),
        advanced_accuracy_restorer_parameters=nncf.AdvancedAccuracyRestorerParameters(max_num_iterations=trial_bound),
    )
    seconds = time.perf_counter() - started
    path = save_model(quantized, output)
    fp32_ops = sorted(name for name, precision in ir_precisions(path).items() if precision == "fp32")
    return {
        "path": str(path),
        "seconds": round(seconds, 1),
        "full_evaluations": calls["full"],
        "item_evaluations": calls["items"],
        "fp32_compute_ops": fp32_ops,
        "max_num_iterations": trial_bound,
    }


def build(args: argparse.Namespace, folder: Path, started: float) -> tuple[dict, dict, dict | None, Any]:
    from workbench.data import tokenize_batches
    from workbench.engines.openvino import convert_to_openvino, ir_precisions
    from workbench.pipeline import Pipeline, PipelineParameters
    from workbench.stages.accuracy.autofix import AutofixConfig, autofix, trial_budget
    from workbench.stages.accuracy.compare import AccuracyBudget
    from workbench.stages.accuracy.diagnose import quantized_nodes
    from workbench.stages.precision.plan import PrecisionPlan

    pipeline = Pipeline(
        PipelineParameters(
            model_path=args.model_path,
            output_dir=str(folder),
            max_eval_samples=args.eval_samples,
            max_calibration_samples=args.calibration_samples,
        )
    )
    pipeline.export()
    pipeline.fuse()
    pipeline.quantize_smoothquant()
    reference = pipeline.candidates["reference"]
    log(started, "exported, fused, ORT dynamic INT8 + SmoothQuant built")
    calibration = tokenize_batches(
        pipeline.tokenizer,
        pipeline.sentences.calibration,
        batch_size=1,
        sequence_length=SEQUENCE_LENGTH,
        input_names=pipeline.input_names,
    )
    evaluation = pipeline.evaluation_feeds()  # padded to 128, batches of 8: as served
    candidates: dict[str, dict[str, Any]] = {
        "pytorch_fp32": {"engine": "pytorch", "precision": "fp32", "path": None},
        "ort_int8_dynamic_smoothquant": {
            "engine": "onnxruntime",
            "precision": "int8_dynamic",
            "path": pipeline.candidates["int8_dynamic_smoothquant"],
        },
    }
    converted = convert_to_openvino(reference, folder / "ov_fp32.xml")
    candidates["ov_fp32"] = {"engine": "openvino", "precision": "fp32", "path": converted.path}
    defaults = PrecisionPlan.preset("cpu_int8_nncf").convert(
        reference, folder / "ov_int8_nncf.xml", calibration_feeds=calibration
    )
    candidates["ov_int8_nncf"] = {"engine": "openvino", "precision": "int8_nncf", "path": defaults.path}
    log(started, f"OpenVINO FP32 and NNCF INT8 built ({defaults.seconds:.0f} s)")

    if args.fixed_plan:  # the plan an earlier search found (--save-plan), applied again: one quantization, no search
        plan = PrecisionPlan.load(args.fixed_plan)
        fixed_result = plan.convert(reference, folder / "ov_int8_fixed.xml", calibration_feeds=calibration)
        search = {
            "reused_plan": str(args.fixed_plan),
            "pins": list(plan.keep_fp32),
            "smoothing_alpha": plan.smoothing.alpha if plan.smoothing else None,
            "quantized_ops": len(quantized_nodes(reference, defaults.path)),
            "trials": None,
            "trial_bound": None,
            "seconds": round(fixed_result.seconds, 1),
        }
        candidates["ov_int8_fixed"] = {"engine": "openvino", "precision": "int8_nncf", "path": fixed_result.path}
        log(started, f"the fixed plan from {args.fixed_plan} applied: {len(plan.keep_fp32)} pins")
        return candidates, search, None, (reference, evaluation)

    budget = AccuracyBudget(**TARGET)
    search_started = time.perf_counter()
    # where the fixed model will run its float ops in bf16, judge the pins that way
    float_precision = "bf16" if not args.no_bf16 and bf16_available() else "fp32"
    config = AutofixConfig(threads=args.threads, latency_iterations=10, float_precision=float_precision)
    fixed = autofix(
        reference,
        PrecisionPlan.preset("cpu_int8_nncf"),
        evaluation,
        folder / "search",
        budget=budget,
        calibration_feeds=calibration,
        config=config,
        progress=lambda event: log_trial(started, event.item) if event.item is not None else None,
    )
    quantized = len(quantized_nodes(reference, fixed.start.path))
    bound = trial_budget(quantized, config.max_prune_trials, len(config.smoothing_alphas))
    search = {
        "float_precision": float_precision,
        "trials": len(fixed.trials),
        "trial_bound": bound,
        "quantized_ops": quantized,
        "pins": list(fixed.plan.keep_fp32),
        "smoothing_alpha": fixed.plan.smoothing.alpha if fixed.plan.smoothing else None,
        "seconds": round(time.perf_counter() - search_started, 1),
        "diagnosis_seconds": round(fixed.diagnosis.seconds, 1) if fixed.diagnosis else None,
        "notes": list(fixed.notes),
        "trial_log": [
            {
                "stage": t.stage,
                "pins": len(t.pins),
                "alpha": t.smoothing_alpha,
                "cosine_mean": round(t.cosine_mean, 5),
                "cosine_min": round(t.cosine_min, 5),
                "meets_budget": t.meets_budget,
            }
            for t in fixed.trials
        ],
    }
    candidates["ov_int8_fixed"] = {"engine": "openvino", "precision": "int8_nncf", "path": fixed.path}
    log(started, f"autofix: {len(fixed.trials)} trials, {len(fixed.plan.keep_fp32)} pins")
    if args.save_plan:
        fixed.plan.save(args.save_plan)

    control = None
    if not args.skip_accuracy_control:
        control = accuracy_control(reference, calibration, evaluation, folder / "ov_int8_accuracy_control.xml", bound)
        default_fp32 = {n for n, p in ir_precisions(defaults.path).items() if p == "fp32"}
        control["pins"] = [n for n in control.pop("fp32_compute_ops") if n not in default_fp32]
        candidates["ov_int8_accuracy_control"] = {
            "engine": "openvino",
            "precision": "int8_nncf",
            "path": Path(control["path"]),
        }
        log(
            started,
            f"NNCF accuracy control: {control['full_evaluations']} full evaluations, "
            f"{len(control['pins'])} ops reverted",
        )
    return candidates, search, control, (reference, evaluation)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="stdout: one JSON object (rows, search, accuracy_control)")
    parser.add_argument("--iterations", type=int, default=30, help="timed runs per candidate, shape and round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs per shape")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of one process per candidate, order rotating")
    parser.add_argument("--threads", type=int, default=2, help="threads per engine")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--seq", nargs="+", default=["128", MIX], help=f"sequence lengths and/or {MIX!r}")
    parser.add_argument("--calibration-samples", type=int, default=128)
    parser.add_argument("--eval-samples", type=int, default=120)
    parser.add_argument("--skip-accuracy-control", action="store_true", help="leave out NNCF's own search")
    parser.add_argument("--model-path", default=None, help="default: the bundled all-MiniLM-L6-v2")
    parser.add_argument("--save-plan", type=Path, default=None, help="write the fix search's PrecisionPlan (JSON)")
    parser.add_argument(
        "--fixed-plan",
        type=Path,
        default=None,
        help="apply this PrecisionPlan JSON (from --save-plan) as ov_int8_fixed instead of searching "
        "(one quantization instead of the search's dozen); no accuracy control then",
    )
    parser.add_argument("--time-one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--float-precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument(
        "--no-bf16", action="store_true", help="leave out the OpenVINO candidates whose float ops run in bf16"
    )
    args = parser.parse_args()
    if args.time_one:
        return time_one(args)

    import numpy as np

    from workbench.engines.base import Candidate, get_engine
    from workbench.machine import machine_info
    from workbench.stages.accuracy.compare import compare_candidates

    started = time.perf_counter()
    load_before = load_average()
    # stdout carries the table or the JSON alone: what the libraries print (NNCF's progress) goes to stderr
    with contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory(prefix="bench-engines-") as folder:
        candidates, search, control, (reference, evaluation) = build(args, Path(folder), started)
        if not args.no_bf16 and bf16_available():
            # the same IRs, their floating-point ops in bf16 (OpenVINO's INFERENCE_PRECISION_HINT): the FP32 model
            # whole, and the FP32 ops an INT8 model keeps (its pins among them)
            for name in [n for n, c in candidates.items() if "bf16" in get_engine(c["engine"]).float_precisions]:
                candidates[f"{name}_bf16"] = {**candidates[name], "float_precision": "bf16"}
        models = {
            n: Candidate(n, c["path"], engine=c["engine"], float_precision=c.get("float_precision", "fp32"))
            for n, c in candidates.items()
            if c["path"]
        }
        report = compare_candidates(reference, models, evaluation)
        accuracy = {c.name: (c.embedding_cosine_mean, c.embedding_cosine_min) for c in report.candidates}
        accuracy["pytorch_fp32"] = (1.0, 1.0)
        log(started, "accuracy measured")
        samples = interleaved_timings(candidates, args, started)
    load_after = load_average()

    rows = []
    for name, facts in candidates.items():
        for shape, values in samples[name].items():
            batch, seq = shape.split("x", 1)
            base = float(np.median(samples["pytorch_fp32"][shape]))
            p50 = float(np.median(values))
            mean, low = accuracy[name]
            rows.append(
                {
                    "name": name,
                    "engine": facts["engine"],
                    "precision": facts["precision"],
                    "float_precision": facts.get("float_precision", "fp32"),
                    "batch": int(batch),
                    "seq": seq if seq == MIX else int(seq),
                    "p50_ms": round(p50, 3),
                    "p90_ms": round(float(np.percentile(values, 90)), 3),
                    "speedup_vs_pytorch": round(base / p50, 2),
                    "cosine_mean": round(mean, 5),
                    "cosine_min": round(low, 5),
                    "meets_target": bool(
                        mean >= TARGET["embedding_cosine_mean"] and low >= TARGET["embedding_cosine_min"]
                    ),
                }
            )
    machine = machine_info()
    timing = (
        f"{args.rounds} rounds x {args.iterations} runs, each candidate in its own process, order rotating; "
        f"{args.threads} threads per engine; load average before {load_before}, after {load_after}"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "machine": machine,
                    "timing": timing,
                    "target": TARGET,
                    "rows": rows,
                    "search": search,
                    "accuracy_control": control,
                },
                indent=2,
            )
        )
        log(started, "done")
        return 0
    print(f"# {machine['processor']}, {machine['cpu_count']} cores; {timing}")
    print(
        f"# accuracy: {len(evaluation)} batches of 8 evaluation sentences padded to 128 vs the FP32 export; "
        f"target mean >= {TARGET['embedding_cosine_mean']}, min >= {TARGET['embedding_cosine_min']}"
    )
    header = (
        f"{'name':<30}{'batch':>6}{'seq':>5}{'p50 ms':>9}{'p90 ms':>9}{'vs torch':>10}{'cos mean':>10}{'cos min':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in sorted(rows, key=lambda r: (str(r["seq"]), r["batch"])):
        print(
            f"{row['name']:<30}{row['batch']:>6}{row['seq']!s:>5}{row['p50_ms']:>9.2f}{row['p90_ms']:>9.2f}"
            f"{row['speedup_vs_pytorch']:>9.2f}x{row['cosine_mean']:>10.5f}{row['cosine_min']:>9.5f}"
        )
    if search.get("reused_plan"):
        print(
            f"\nworkbench fix: the plan in {search['reused_plan']} (alpha {search['smoothing_alpha']}, "
            f"{len(search['pins'])} of {search['quantized_ops']} quantized ops pinned: {search['pins']})"
        )
    else:
        print(
            f"\nworkbench search: {search['trials']} trials (bound {search['trial_bound']}), alpha "
            f"{search['smoothing_alpha']}, {len(search['pins'])} of {search['quantized_ops']} quantized ops "
            f"pinned: {search['pins']}; {search['seconds']} s"
        )
    if control is not None:
        print(
            f"NNCF quantize_with_accuracy_control: {control['full_evaluations']} full evaluations + "
            f"{control['item_evaluations']} ranking evaluations, {len(control['pins'])} ops reverted to FP32: "
            f"{control['pins']}; {control['seconds']} s"
        )
    log(started, "done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
