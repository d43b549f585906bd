"""The serving benchmark in one run: the length-aware Triton repository against what it replaces and against the
server a data scientist would otherwise write, side by side, and the batching sweep.

Servers (stable keys):

- `triton_length_aware_http`, `triton_length_aware_grpc`: the exported repository with the length-aware
  `PaddingPolicy` (default: bucketed padding in the ensemble), through Triton's HTTP and gRPC clients;
- `triton_fixed_http`, `triton_fixed_grpc`: the same engine with every text padded to max_length (what the
  workbench served before);
- `fastapi_pytorch`: FastAPI + uvicorn, the PyTorch model (transformers, mean pooling), one POST endpoint;
- `fastapi_onnxruntime`: the same FastAPI server calling the same ONNX engine as Triton, so that server overhead
  and engine speed are told apart.

Every server is started first (each on its own free loopback ports); then each concurrency level is measured on
every server in turn, so that whatever else the machine does slows them alike. Both repositories are exported
into a temporary folder this function owns and removes; nothing else is written.
"""

from __future__ import annotations

import contextlib
import html
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench.errors import ConfigError, DataError
from workbench.stages.serving.load import (
    Endpoint,
    LevelResult,
    LoadResult,
    ServingConfig,
    measure_load,
)
from workbench.stages.serving.sweep import SweepConfig, SweepResult
from workbench.triton.config import TritonConfig
from workbench.triton.padding import PaddingPolicy

LENGTH_AWARE = "triton_length_aware"
FIXED = "triton_fixed"
FASTAPI_PYTORCH = "fastapi_pytorch"
FASTAPI_ONNXRUNTIME = "fastapi_onnxruntime"
#: Every server the benchmark can run, by stable key.
SERVERS = (
    f"{LENGTH_AWARE}_http",
    f"{LENGTH_AWARE}_grpc",
    f"{FIXED}_http",
    f"{FIXED}_grpc",
    FASTAPI_PYTORCH,
    FASTAPI_ONNXRUNTIME,
)
TITLES = {
    f"{LENGTH_AWARE}_http": "Triton, length-aware (HTTP)",
    f"{LENGTH_AWARE}_grpc": "Triton, length-aware (gRPC)",
    f"{FIXED}_http": "Triton, fixed padding (HTTP)",
    f"{FIXED}_grpc": "Triton, fixed padding (gRPC)",
    FASTAPI_PYTORCH: "FastAPI + PyTorch",
    FASTAPI_ONNXRUNTIME: "FastAPI + ONNX Runtime",
}


@dataclass(frozen=True)
class ServingResult:
    """Every server at every concurrency level, the batching sweep and the padding figures of one run.

    Attributes:
        servers: Stable key (SERVERS) -> its LoadResult.
        sweep: The batching sweep on the length-aware repository, or None when it was not run.
        padding: The length-aware policy.
        triton_config: The TritonConfig both repositories were exported with.
        tokens: Policy name ("length_aware", "fixed") -> {"computed": tokens the engine computes for the texts
            in dynamic batches of max_batch_size, "real": tokens of the texts, "padding_fraction"}.
        config: The load generator's settings.
        machine: The machine it ran on.
        notes: What was skipped or unstable.
    """

    servers: dict[str, LoadResult]
    sweep: SweepResult | None
    padding: PaddingPolicy
    triton_config: TritonConfig
    tokens: dict[str, dict[str, float]]
    config: ServingConfig
    machine: dict[str, Any]
    notes: tuple[str, ...] = field(default=())

    @property
    def concurrency(self) -> int:
        """The headline level: 8 when measured (the Done-when's), else the largest."""
        levels = self.config.concurrency
        return 8 if 8 in levels else max(levels)

    def level(self, server: str, concurrency: int | None = None) -> LevelResult:
        return self.servers[server].level(concurrency if concurrency is not None else self.concurrency)

    def ratio(self, server: str, baseline: str, concurrency: int | None = None) -> float | None:
        """Throughput of `server` / throughput of `baseline` (None when either was not measured)."""
        if server not in self.servers or baseline not in self.servers:
            return None
        base = self.level(baseline, concurrency).throughput
        return self.level(server, concurrency).throughput / base if base > 0 else None

    def table(self) -> list[dict[str, Any]]:
        """One row per server and concurrency level."""
        return [
            {
                "server": key,
                "title": TITLES.get(key, key),
                "concurrency": lv.concurrency,
                "throughput": lv.throughput,
                "p50_ms": lv.p50_ms,
                "p90_ms": lv.p90_ms,
                "p99_ms": lv.p99_ms,
                "errors": lv.errors,
                "stable": lv.stable,
                "engine_batch": lv.server.mean_batch_size if lv.server is not None else None,
            }
            for key, result in self.servers.items()
            for lv in result.levels
        ]

    def figure(self) -> Any:
        """Plotly: throughput against p99 latency per concurrency level, one line per server."""
        from workbench.stages.serving.load import throughput_latency_figure

        named = {TITLES.get(k, k): v for k, v in self.servers.items()}
        return throughput_latency_figure(named, title="Serving: throughput vs p99 latency per concurrency level")

    def to_dict(self) -> dict[str, Any]:
        return {
            "servers": {k: v.to_dict() for k, v in self.servers.items()},
            "sweep": self.sweep.to_dict() if self.sweep is not None else None,
            "padding": {**self.padding.to_dict(), "description": self.padding.describe()},
            "triton_config": self.triton_config.to_dict(),
            "tokens": self.tokens,
            "config": self.config.to_dict(),
            "machine": self.machine,
            "notes": list(self.notes),
            "concurrency": self.concurrency,
        }

    def _repr_html_(self) -> str:
        c = self.concurrency
        rows = "".join(
            f"<tr><td>{html.escape(TITLES.get(k, k))}</td><td>{r.level(c).throughput:.1f}</td>"
            f"<td>{r.level(c).p50_ms:.1f}</td><td>{r.level(c).p99_ms:.1f}</td>"
            f"<td>{'' if r.level(c).server is None else format(r.level(c).server.mean_batch_size, '.2f')}</td></tr>"
            for k, r in self.servers.items()
        )
        ratio = self.ratio(f"{LENGTH_AWARE}_http", f"{FIXED}_http")
        headline = f"; length-aware / fixed: {ratio:.2f}x" if ratio is not None else ""
        return (
            f"<b>Serving</b> at concurrency {c} ({html.escape(self.padding.describe())}){headline}"
            "<table><tr><th>server</th><th>texts/s</th><th>p50 ms</th><th>p99 ms</th><th>engine batch</th></tr>"
            f"{rows}</table>" + (self.sweep._repr_html_() if self.sweep is not None else "")
        )


def _token_figures(tokenizer: Any, texts: Sequence[str], policy: PaddingPolicy, batch: int) -> dict[str, float]:
    lengths = policy.token_lengths(tokenizer, texts)
    computed, real = policy.padded_tokens(lengths, batch)
    return {
        "computed": float(computed),
        "real": float(real),
        "per_text": computed / len(lengths),
        "padding_fraction": 1 - real / computed if computed else 0.0,
    }


def benchmark_serving(
    onnx_path: str | os.PathLike[str],
    tokenizer_dir: str | os.PathLike[str],
    texts: Sequence[str],
    config: ServingConfig | None = None,
    *,
    triton_config: TritonConfig | None = None,
    padding: PaddingPolicy | None = None,
    pytorch_model: str | os.PathLike[str] | None = None,
    sweep: SweepConfig | None = None,
    servers: Sequence[str] = SERVERS,
    progress: bool = True,
) -> ServingResult:
    """Serve one ONNX engine every way and load each server at every concurrency level, interleaved.

    Args:
        onnx_path: The chosen ONNX engine (inputs among input_ids, attention_mask, token_type_ids;
            `last_hidden_state` out), served by both Triton repositories and by `fastapi_onnxruntime`.
        tokenizer_dir: Its tokenizer folder (the Hugging Face model folder).
        texts: The texts to send, in turn (the evaluation-text mix).
        config: The load generator's settings; default ServingConfig().
        triton_config: How both repositories are exported (name, max batch, delay, instances); default
            TritonConfig(model_name="served").
        padding: The length-aware policy; default PaddingPolicy() (its max_length is the sequence length both
            repositories truncate to).
        pytorch_model: The Hugging Face model folder for `fastapi_pytorch`; None skips that server.
        sweep: The batching sweep to run on the length-aware repository; None skips it.
        servers: Which of SERVERS to run.
        progress: A tqdm bar (tqdm.auto: a widget in a notebook, stderr on a terminal) over the measurements.

    Returns:
        A ServingResult; its `figure()` is the throughput vs p99 chart and `sweep.suggestion` the setting to
        export with (`suggestion.apply(triton_config)`).
    """
    from tqdm.auto import tqdm

    from workbench.machine import machine_info
    from workbench.models import load_model
    from workbench.stages.serving.baselines import FastAPIServer
    from workbench.stages.serving.stats import ServerProbe
    from workbench.stages.serving.sweep import sweep_batching
    from workbench.triton.ensemble import export_triton_ensemble
    from workbench.triton.server import TritonServer

    config = config if config is not None else ServingConfig()
    triton_config = triton_config if triton_config is not None else TritonConfig(model_name="served")
    padding = padding if padding is not None else PaddingPolicy()
    texts = [str(t) for t in texts]
    if not texts:
        raise DataError("No texts to send.", fix="pass the evaluation sentences, for example")
    unknown = [s for s in servers if s not in SERVERS]
    if unknown or not servers:
        raise ConfigError(
            f"servers {unknown or list(servers)} are not among {list(SERVERS)}.",
            fix="pick servers from workbench.stages.serving.run.SERVERS",
        )
    wanted = [s for s in SERVERS if s in servers]
    notes: list[str] = []
    if FASTAPI_PYTORCH in wanted and pytorch_model is None:
        wanted.remove(FASTAPI_PYTORCH)
        notes.append("fastapi_pytorch was skipped: no pytorch_model (Hugging Face model folder) was given")
    onnx_path, tokenizer_dir = Path(onnx_path), Path(tokenizer_dir)
    fixed = PaddingPolicy.fixed(padding.max_length)
    tokenizer = load_model(tokenizer_dir).load_tokenizer()
    tokens = {
        "length_aware": _token_figures(tokenizer, texts, padding, triton_config.max_batch_size),
        "fixed": _token_figures(tokenizer, texts, fixed, triton_config.max_batch_size),
    }

    with tempfile.TemporaryDirectory(prefix="workbench-serving-") as folder, contextlib.ExitStack() as stack:
        exported: dict[str, Any] = {}
        tritons: dict[str, Any] = {}
        for family, policy in ((LENGTH_AWARE, padding), (FIXED, fixed)):
            if any(s.startswith(family) for s in wanted) or (family == LENGTH_AWARE and sweep is not None):
                exported[family] = export_triton_ensemble(
                    onnx_path,
                    Path(folder) / family,
                    tokenizer_dir,
                    triton_config,
                    sequence_length=padding.max_length,
                    padding=policy,
                )
                tritons[family] = stack.enter_context(
                    TritonServer(exported[family].repository, models=[exported[family].model_name], metrics=True)
                )
        fastapis = {}
        for key, engine, model in (
            (FASTAPI_PYTORCH, "pytorch", pytorch_model),
            (FASTAPI_ONNXRUNTIME, "onnxruntime", onnx_path),
        ):
            if key in wanted and model is not None:
                fastapis[key] = stack.enter_context(
                    FastAPIServer(engine, model, tokenizer_dir, max_length=padding.max_length)
                )
        endpoints: dict[str, tuple[Endpoint, Any]] = {}
        for key in wanted:
            if key in fastapis:
                endpoints[key] = (Endpoint(TITLES[key], "json", fastapis[key].url), None)
                continue
            family, protocol = key.rsplit("_", 1)
            server, repo = tritons[family], exported[family]
            url = server.url if protocol == "http" else server.grpc_url
            probe = ServerProbe(
                server.url, repo.model_names, engine=repo.models["model"].model_name, metrics_url=server.metrics_url
            )
            endpoints[key] = (
                Endpoint(TITLES[key], protocol, url, model=repo.model_name, output=repo.output_names[0]),
                probe,
            )
        levels: dict[str, list[LevelResult]] = {key: [] for key in endpoints}
        steps = len(config.concurrency) * len(endpoints) + (len(sweep.settings()) if sweep is not None else 0)
        bar = stack.enter_context(tqdm(total=steps, desc="serving", unit="load", disable=not progress))
        for concurrency in config.concurrency:  # interleaved: every server at this level, then the next level
            for key, (endpoint, probe) in endpoints.items():
                bar.set_postfix_str(f"{key} c{concurrency}")
                levels[key] += measure_load(endpoint, texts, config, probe=probe, concurrency=(concurrency,)).levels
                bar.update()
        results = {
            key: LoadResult(
                endpoint=endpoints[key][0],
                levels=tuple(lv),
                config=config,
                notes=tuple(f"concurrency {x.concurrency} was not stable" for x in lv if not x.stable),
            )
            for key, lv in levels.items()
        }
        sweep_result = None
        if sweep is not None:
            bar.set_postfix_str("batching sweep")
            sweep_result = sweep_batching(tritons[LENGTH_AWARE], exported[LENGTH_AWARE], texts, config, sweep)
            bar.update(len(sweep.settings()))
    for key, result in results.items():
        notes += [f"{key}: {note}" for note in result.notes]
    return ServingResult(
        servers=results,
        sweep=sweep_result,
        padding=padding,
        triton_config=triton_config,
        tokens=tokens,
        config=config,
        machine=machine_info(),
        notes=tuple(notes),
    )
