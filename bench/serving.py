"""Serving MiniLM under load: the length-aware Triton repository against fixed padding and against FastAPI, in ONE run.

Servers, all on 127.0.0.1 and all started before any is measured; every concurrency level is measured on every
server in turn (workbench.stages.serving.run.benchmark_serving):

    triton_length_aware_http / _grpc   the exported repository, PaddingPolicy() (default: buckets, ensemble)
    triton_fixed_http / _grpc          the same engine, every text padded to 128 tokens (the old export)
    fastapi_pytorch                    FastAPI + uvicorn, transformers + PyTorch, mean pooling, one POST endpoint
    fastapi_onnxruntime                the same FastAPI server calling the same ONNX engine as Triton

The engine is MiniLM exported and fused (ONNX Runtime FP32; `--engine int8` for dynamic INT8 per-channel). The
load is the evaluation-text mix (data/evaluation.txt, one sentence per request, clients in a closed loop), with
perf_analyzer's semantics: windows repeated until 3 agree within the stability threshold. Then the batching
sweep (queue delay x instance count) on the length-aware repository suggests the deployment setting.

    python bench/serving.py                   # tables (about 8 minutes on 2 cores)
    python bench/serving.py --json            # stdout: JSON {"rows": [...], "sweep": [...], "summary": {...}}
    python bench/serving.py --designs         # instead: the serving designs against each other (Triton only):
                                              # fixed, ensemble_buckets, bls_buckets, bls_longest, interleaved
    python bench/serving.py --quick           # short windows, concurrency 1 4 8 (a smoke run, noisy)

The load generator runs in this process and competes with the servers for the CPU: on a 2-core machine quote
ratios from one run, never absolute figures across runs. Everything is written into a temporary folder.
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

DESIGNS = ("fixed", "ensemble_buckets", "bls_buckets", "bls_longest")


def log(started: float, message: str) -> None:
    print(f"[{time.perf_counter() - started:6.1f} s] {message}", file=sys.stderr, flush=True)


def load_average() -> str:
    try:
        return " / ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def build_engine(args: argparse.Namespace, folder: Path, started: float) -> tuple[Any, Path]:
    from workbench.models import load_model
    from workbench.stages.export import export_onnx
    from workbench.stages.fusion import FusionConfig, fuse_transformer

    source = load_model(args.model_path)
    exported = export_onnx(source, folder / "model.onnx").path
    fused = fuse_transformer(exported, folder / "model_fused.onnx", FusionConfig.for_source(source)).path
    engine = fused
    if args.engine == "int8":
        from workbench.stages.precision.plan import PrecisionPlan

        engine = (
            PrecisionPlan.preset("cpu_int8_dynamic").convert(fused, folder / "model_int8.onnx", progress=False).path
        )
    log(started, f"built the engine ({args.engine}): {engine.name}")
    return source, engine


def serving_config(args: argparse.Namespace) -> Any:
    from workbench.stages.serving.load import ServingConfig

    base = ServingConfig.preset("quick") if args.quick else ServingConfig()
    changes: dict[str, Any] = {"protocol": "http"}
    if args.concurrency:
        changes["concurrency"] = tuple(args.concurrency)
    if args.window is not None:
        changes["window_s"] = args.window
    return base.replace(**changes)


def run_designs(args: argparse.Namespace, folder: Path, started: float) -> list[dict[str, Any]]:
    """Every serving design on the same engine, each in its own server, measured in interleaved rounds."""
    from workbench.data import EVALUATION_FILE, default_data_dir, read_sentences
    from workbench.stages.serving.load import Endpoint, measure_load
    from workbench.stages.serving.stats import ServerProbe
    from workbench.triton.config import TritonConfig
    from workbench.triton.ensemble import export_triton_ensemble
    from workbench.triton.padding import PaddingPolicy
    from workbench.triton.server import TritonServer

    source, engine = build_engine(args, folder, started)
    texts = read_sentences(default_data_dir() / EVALUATION_FILE)
    config = serving_config(args)
    triton_config = TritonConfig(model_name="minilm", max_batch_size=8, max_queue_delay_us=args.delay_us)
    rows: list[dict[str, Any]] = []
    with contextlib.ExitStack() as stack:
        servers = {}
        for design in DESIGNS:
            exported = export_triton_ensemble(
                engine,
                folder / design,
                source.path,
                triton_config,
                sequence_length=128,
                padding=PaddingPolicy.preset(design, max_length=128),
            )
            server = stack.enter_context(TritonServer(exported.repository, models=[exported.model_name]))
            servers[design] = (exported, server)
        log(started, f"started {len(servers)} Triton servers")
        for round_index in range(args.rounds):
            for concurrency in config.concurrency:
                for design, (exported, server) in servers.items():
                    probe = ServerProbe(server.url, exported.model_names, engine=exported.models["model"].model_name)
                    endpoint = Endpoint(design, "http", server.url, model=exported.model_name)
                    (level,) = measure_load(endpoint, texts, config, probe=probe, concurrency=(concurrency,)).levels
                    rows.append(
                        {
                            "round": round_index,
                            "design": design,
                            "concurrency": concurrency,
                            "throughput": round(level.throughput, 2),
                            "p50_ms": round(level.p50_ms, 2),
                            "p99_ms": round(level.p99_ms, 2),
                            "stable": level.stable,
                            "engine_batch": round(level.server.mean_batch_size, 2),
                        }
                    )
                    log(
                        started,
                        f"round {round_index} {design} c{concurrency}: {level.throughput:.1f} texts/s, "
                        f"p99 {level.p99_ms:.0f} ms",
                    )
    return rows


def print_designs(rows: list[dict[str, Any]]) -> None:
    import statistics

    print(
        f"# serving designs on one engine, medians over {max(r['round'] for r in rows) + 1} interleaved round(s);"
        f" load average now {load_average()}"
    )
    header = f"{'design':<20}{'conc':>5}{'texts/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'engine batch':>14}{'vs fixed':>10}"
    print(header)
    print("-" * len(header))
    for concurrency in sorted({r["concurrency"] for r in rows}):
        medians = {}
        for design in DESIGNS:
            mine = [r for r in rows if r["design"] == design and r["concurrency"] == concurrency]
            medians[design] = {
                k: statistics.median(r[k] for r in mine) for k in ("throughput", "p50_ms", "p99_ms", "engine_batch")
            }
        for design, m in medians.items():
            ratio = m["throughput"] / medians["fixed"]["throughput"]
            print(
                f"{design:<20}{concurrency:>5}{m['throughput']:>10.1f}{m['p50_ms']:>9.1f}{m['p99_ms']:>9.1f}"
                f"{m['engine_batch']:>14.2f}{ratio:>9.2f}x"
            )


def run_servers(args: argparse.Namespace, folder: Path, started: float) -> Any:
    from workbench.data import EVALUATION_FILE, default_data_dir, read_sentences
    from workbench.stages.serving.run import benchmark_serving
    from workbench.stages.serving.sweep import SweepConfig
    from workbench.triton.config import TritonConfig
    from workbench.triton.padding import PaddingPolicy

    source, engine = build_engine(args, folder, started)
    texts = read_sentences(default_data_dir() / EVALUATION_FILE)
    config = serving_config(args)
    sweep = (
        None
        if args.no_sweep
        else SweepConfig(
            max_queue_delays_us=tuple(args.sweep_delays_us),
            instance_counts=(1, 2),
            concurrency=(8,) if 8 in config.concurrency or not args.concurrency else (max(config.concurrency),),
        )
    )
    result = benchmark_serving(
        engine,
        source.path,
        texts,
        config,
        triton_config=TritonConfig(model_name="minilm", max_batch_size=8, max_queue_delay_us=args.delay_us),
        padding=PaddingPolicy(max_length=128),
        pytorch_model=source.path,
        sweep=sweep,
    )
    log(started, "measured every server")
    return result


def print_servers(result: Any, summary: dict[str, Any], load_before: str) -> None:
    from workbench.stages.serving.run import TITLES

    machine = result.machine
    print(
        f"# {machine.get('processor')}, {machine.get('cpu_count')} cores; load average before {load_before}, "
        f"after {load_average()}; client in the same process (2 cores: quote ratios)"
    )
    print(
        f"# length-aware policy: {result.padding.describe()}; engine tokens per text: "
        f"length-aware {result.tokens['length_aware']['per_text']:.1f}, "
        f"fixed {result.tokens['fixed']['per_text']:.1f}"
    )
    header = (
        f"{'server':<30}{'conc':>5}{'texts/s':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'engine batch':>14}"
        f"{'stable':>8}"
    )
    print(header)
    print("-" * len(header))
    for concurrency in result.config.concurrency:
        for key, load in result.servers.items():
            lv = load.level(concurrency)
            batch = f"{lv.server.mean_batch_size:.2f}" if lv.server is not None else "-"
            print(
                f"{TITLES[key]:<30}{concurrency:>5}{lv.throughput:>10.1f}{lv.p50_ms:>9.1f}{lv.p90_ms:>9.1f}"
                f"{lv.p99_ms:>9.1f}{batch:>14}{'yes' if lv.stable else 'no':>8}"
            )
        print()
    c = summary["concurrency"]

    def ratio(key: str) -> str:
        value = summary.get(key)
        return "-" if value is None else f"{value:.2f}x"

    print(
        f"At concurrency {c}: length-aware / fixed padding {ratio('length_aware_vs_fixed')} texts/s "
        f"(p99 ratio {ratio('length_aware_vs_fixed_p99')}); Triton length-aware / FastAPI + PyTorch "
        f"{ratio('triton_vs_fastapi_pytorch')}; / FastAPI + ONNX Runtime {ratio('triton_vs_fastapi_onnxruntime')}; "
        f"gRPC / HTTP {ratio('grpc_vs_http')}"
    )
    if result.sweep is not None:
        print()
        print(f"Batching sweep ({result.sweep.batching} design), concurrency {result.sweep.suggestion.concurrency}:")
        for row in result.sweep.table():
            mark = "  <- suggested" if row["suggested"] else ""
            print(f"  {row['setting']:<40}{row['throughput']:>9.1f} texts/s  p99 {row['p99_ms']:>7.1f} ms{mark}")
        print(f"Suggested: {result.sweep.suggestion.reason}")
    for note in result.notes:
        print(f"note: {note}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true", help="stdout: only JSON (rows, sweep, summary)")
    parser.add_argument("--designs", action="store_true", help="compare the serving designs instead (Triton only)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds with --designs")
    parser.add_argument("--quick", action="store_true", help="short windows and fewer levels (a smoke run)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=None, help="default: 1 2 4 8 16")
    parser.add_argument("--window", type=float, default=None, help="measurement window in seconds (default 2)")
    parser.add_argument("--delay-us", type=int, default=2000, help="dynamic batching max queue delay to export with")
    parser.add_argument("--sweep-delays-us", type=int, nargs="+", default=[0, 2000, 10000])
    parser.add_argument("--no-sweep", action="store_true", help="skip the batching sweep")
    parser.add_argument(
        "--engine",
        choices=("fp32", "int8"),
        default="fp32",
        help="fp32: the fused FP32 graph; int8: dynamic INT8 per-channel of it",
    )
    parser.add_argument("--model-path", default=None, help="default: the bundled all-MiniLM-L6-v2")
    args = parser.parse_args()

    started = time.perf_counter()
    load_before = load_average()
    redirect = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    with redirect, tempfile.TemporaryDirectory(prefix="bench-serving-") as folder:
        if args.designs:
            rows = run_designs(args, Path(folder), started)
        else:
            result = run_servers(args, Path(folder), started)
    if args.designs:
        if args.json:
            print(json.dumps({"rows": rows, "load_average": load_average()}, indent=2))
        else:
            print_designs(rows)
        log(started, "done")
        return 0
    from workbench.stages.serving.summary import serving_summary

    summary = serving_summary(result)
    if args.json:
        print(
            json.dumps(
                {
                    "rows": result.table(),
                    "sweep": result.sweep.table() if result.sweep else None,
                    "summary": summary,
                    "load_average": {"before": load_before, "after": load_average()},
                },
                indent=2,
            )
        )
    else:
        print_servers(result, summary, load_before)
    log(started, "done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
