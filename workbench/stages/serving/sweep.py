"""Deployment settings from measurement: sweep dynamic-batching delay, preferred batch sizes and instance count
on a running server, as Triton's Model Analyzer does (its brute-force search), and suggest the best.

Each setting is applied by reloading the models that batch (Triton's `load_model` with a config override, no
restart; the repository's files are not touched) and measured with the load generator at the sweep's
concurrency levels; at the end the repository's own configs are loaded again (as overrides of the same text:
Triton keeps the last override when a plain load finds the model folder unchanged). Which models get a setting
depends on the served design: with `PaddingPolicy(batching="ensemble")` the engine's dynamic batcher forms the
batches, so it gets delay, preferred sizes and instances; with "bls" the client-facing BLS model forms them (it
gets delay, preferred sizes and instances) and the engine gets the instance count.

The suggestion maximises throughput at the objective concurrency among the settings whose p99 latency there is
within `p99_limit_ms` (Model Analyzer's default objective with a latency constraint); settings within
`tie_fraction` of the best throughput are ranked by p99. `ServingSuggestion.apply(TritonConfig)` gives the
TritonConfig to export with.
"""

from __future__ import annotations

import html
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from workbench._lazy import require
from workbench.config import StageConfig
from workbench.errors import ConfigError, ServingError
from workbench.stages.serving.load import (
    Endpoint,
    LevelResult,
    ServingConfig,
    measure_load,
)
from workbench.triton.config import TritonConfig


def _int_tuple(config: object, name: str, *, minimum: int, allow_empty: bool = False) -> tuple[int, ...]:
    value = getattr(config, name)
    if isinstance(value, list):
        value = tuple(value)
        object.__setattr__(config, name, value)
    if (
        not isinstance(value, tuple)
        or (not value and not allow_empty)
        or any(not isinstance(v, int) or isinstance(v, bool) or v < minimum for v in value)
        or len(set(value)) != len(value)
    ):
        raise ConfigError(
            f"{type(config).__name__}.{name} must be a tuple of distinct integers >= {minimum}"
            f"{'' if allow_empty else ' (at least one)'}, got {value!r}."
        )
    return value


@dataclass(frozen=True)
class SweepConfig(StageConfig):
    """The settings to try and how to pick one.

    Attributes:
        max_queue_delays_us: Dynamic-batching delays to try (microseconds a request may wait for batch-mates).
        instance_counts: Instance counts to try (1 vs 2 on a 2-core machine).
        preferred_batch_sizes: Each size is also tried as the single preferred batch size, besides none.
        concurrency: Concurrency levels each setting is measured at.
        objective_concurrency: The level the suggestion maximises throughput at; None: the largest measured.
        p99_limit_ms: Settings whose p99 latency at that level exceeds this are not suggested; None: no limit.
        tie_fraction: Settings within this fraction of the best throughput are ranked by p99 latency.
    """

    max_queue_delays_us: tuple[int, ...] = (0, 2000, 10000)
    instance_counts: tuple[int, ...] = (1, 2)
    preferred_batch_sizes: tuple[int, ...] = ()
    concurrency: tuple[int, ...] = (8,)
    objective_concurrency: int | None = None
    p99_limit_ms: float | None = None
    tie_fraction: float = 0.03

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        "quick": {"max_queue_delays_us": (0, 5000), "instance_counts": (1, 2)},
        "wide": {
            "max_queue_delays_us": (0, 500, 2000, 5000, 20000),
            "instance_counts": (1, 2),
            "preferred_batch_sizes": (4, 8),
            "concurrency": (4, 8, 16),
        },
    }

    def __post_init__(self) -> None:
        _int_tuple(self, "max_queue_delays_us", minimum=0)
        _int_tuple(self, "instance_counts", minimum=1)
        _int_tuple(self, "preferred_batch_sizes", minimum=1, allow_empty=True)
        levels = _int_tuple(self, "concurrency", minimum=1)
        if self.objective_concurrency is not None and self.objective_concurrency not in levels:
            raise ConfigError(
                f"SweepConfig.objective_concurrency {self.objective_concurrency} is not among the "
                f"measured levels {levels}.",
                fix="add it to concurrency, or pass None",
            )
        limit = self.p99_limit_ms
        if limit is not None and (not isinstance(limit, (int, float)) or isinstance(limit, bool) or limit <= 0):
            raise ConfigError(f"SweepConfig.p99_limit_ms must be positive or None, got {self.p99_limit_ms!r}.")
        if not 0 <= self.tie_fraction < 1:
            raise ConfigError(f"SweepConfig.tie_fraction must be in [0, 1), got {self.tie_fraction!r}.")

    @property
    def target(self) -> int:
        return self.objective_concurrency if self.objective_concurrency is not None else max(self.concurrency)

    def settings(self) -> list[tuple[int, int, tuple[int, ...]]]:
        """Every (delay us, instance count, preferred batch sizes) to try, in order."""
        preferred: list[tuple[int, ...]] = [(), *((size,) for size in self.preferred_batch_sizes)]
        return list(itertools.product(self.max_queue_delays_us, self.instance_counts, preferred))


@dataclass(frozen=True)
class SweepPoint:
    """One setting and what it measured."""

    max_queue_delay_us: int
    instance_count: int
    preferred_batch_sizes: tuple[int, ...]
    levels: tuple[LevelResult, ...]

    def level(self, concurrency: int) -> LevelResult:
        for level in self.levels:
            if level.concurrency == concurrency:
                return level
        raise KeyError(concurrency)

    @property
    def label(self) -> str:
        preferred = f", preferred {list(self.preferred_batch_sizes)}" if self.preferred_batch_sizes else ""
        return f"delay {self.max_queue_delay_us} us, {self.instance_count} instance(s){preferred}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_queue_delay_us": self.max_queue_delay_us,
            "instance_count": self.instance_count,
            "preferred_batch_sizes": list(self.preferred_batch_sizes),
            "label": self.label,
            "levels": [lv.to_dict() for lv in self.levels],
        }


@dataclass(frozen=True)
class ServingSuggestion:
    """The setting to deploy with, and why."""

    max_queue_delay_us: int
    instance_count: int
    preferred_batch_sizes: tuple[int, ...]
    concurrency: int
    throughput: float
    p99_ms: float
    reason: str

    def apply(self, config: TritonConfig) -> TritonConfig:
        """`config` with this setting's batching and instances (for export_triton_ensemble / export_triton)."""
        sizes = tuple(s for s in self.preferred_batch_sizes if s <= config.max_batch_size)
        return config.replace(
            max_queue_delay_us=self.max_queue_delay_us,
            instance_count=self.instance_count,
            preferred_batch_sizes=sizes,
            dynamic_batching=True,
        )

    def to_dict(self) -> dict[str, Any]:
        values = dict(self.__dict__)
        values["preferred_batch_sizes"] = list(self.preferred_batch_sizes)
        return values


@dataclass(frozen=True)
class SweepResult:
    """Every setting measured, and the suggestion."""

    points: tuple[SweepPoint, ...]
    suggestion: ServingSuggestion
    config: SweepConfig
    batching: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "batching": self.batching,
            "config": self.config.to_dict(),
            "points": [p.to_dict() for p in self.points],
            "suggestion": self.suggestion.to_dict(),
        }

    def table(self) -> list[dict[str, Any]]:
        """One row per setting and concurrency level: the sweep table."""
        return [
            {
                "setting": p.label,
                "max_queue_delay_us": p.max_queue_delay_us,
                "instance_count": p.instance_count,
                "preferred_batch_sizes": list(p.preferred_batch_sizes),
                "concurrency": lv.concurrency,
                "throughput": lv.throughput,
                "p50_ms": lv.p50_ms,
                "p99_ms": lv.p99_ms,
                "engine_batch": lv.server.mean_batch_size if lv.server is not None else None,
                "suggested": (p.max_queue_delay_us, p.instance_count, p.preferred_batch_sizes)
                == (
                    self.suggestion.max_queue_delay_us,
                    self.suggestion.instance_count,
                    self.suggestion.preferred_batch_sizes,
                ),
            }
            for p in self.points
            for lv in p.levels
        ]

    def figure(self) -> Any:
        """Plotly: throughput vs p99 at the objective concurrency, one point per setting."""
        import plotly.graph_objects as go

        target = self.suggestion.concurrency
        figure = go.Figure()
        for point in self.points:
            level = point.level(target)
            chosen = point.label == _label(self.suggestion)
            figure.add_scatter(
                x=[level.p99_ms],
                y=[level.throughput],
                name=point.label,
                mode="markers",
                marker={"size": 14 if chosen else 9, "symbol": "star" if chosen else "circle"},
            )
        figure.update_layout(
            title=f"Batching sweep at concurrency {target} (star: suggested)",
            xaxis_title="p99 latency (ms)",
            yaxis_title="throughput (texts/s)",
        )
        return figure

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{html.escape(r['setting'])}</td><td>{r['concurrency']}</td><td>{r['throughput']:.1f}</td>"
            f"<td>{r['p50_ms']:.1f}</td><td>{r['p99_ms']:.1f}</td>"
            f"<td>{'' if r['engine_batch'] is None else format(r['engine_batch'], '.2f')}</td>"
            f"<td>{'&#9733;' if r['suggested'] else ''}</td></tr>"
            for r in self.table()
        )
        return (
            f"<b>Batching sweep</b> ({html.escape(self.batching)} design). Suggested: "
            f"{html.escape(_label(self.suggestion))} &mdash; {html.escape(self.suggestion.reason)}"
            "<table><tr><th>setting</th><th>concurrency</th><th>texts/s</th><th>p50 ms</th><th>p99 ms</th>"
            f"<th>engine batch</th><th></th></tr>{rows}</table>"
        )


def _label(suggestion: ServingSuggestion) -> str:
    return SweepPoint(
        suggestion.max_queue_delay_us, suggestion.instance_count, suggestion.preferred_batch_sizes, ()
    ).label


def suggest(points: Sequence[SweepPoint], config: SweepConfig) -> ServingSuggestion:
    """The setting with the most throughput at the objective concurrency within the p99 limit (ties: lowest p99)."""
    target = config.target
    measured = [(p, p.level(target)) for p in points]
    allowed = [(p, lv) for p, lv in measured if config.p99_limit_ms is None or lv.p99_ms <= config.p99_limit_ms]
    if not allowed:
        best_p99 = min(lv.p99_ms for _, lv in measured)
        raise ServingError(
            f"No batching setting kept p99 latency at concurrency {target} within {config.p99_limit_ms} ms "
            f"(the lowest was {best_p99:.1f} ms).",
            fix="raise SweepConfig.p99_limit_ms, lower the concurrency, or serve a faster engine",
        )
    best = max(lv.throughput for _, lv in allowed)
    close = [(p, lv) for p, lv in allowed if lv.throughput >= (1 - config.tie_fraction) * best]
    point, level = min(close, key=lambda item: (item[1].p99_ms, item[0].instance_count, item[0].max_queue_delay_us))
    limit = f" within p99 {config.p99_limit_ms} ms" if config.p99_limit_ms is not None else ""
    reason = (
        f"most throughput at concurrency {target}{limit}: {level.throughput:.1f} texts/s at p99 "
        f"{level.p99_ms:.1f} ms (settings within {config.tie_fraction:.0%} of the best ranked by p99; "
        f"{len(points)} settings measured)"
    )
    return ServingSuggestion(
        point.max_queue_delay_us,
        point.instance_count,
        point.preferred_batch_sizes,
        target,
        level.throughput,
        level.p99_ms,
        reason,
    )


def batching_roles(batching: str) -> dict[str, tuple[str, ...]]:
    """Role -> the settings it gets in a sweep ("delay", "preferred", "instances") for a served design."""
    if batching == "bls":
        return {"ensemble": ("delay", "preferred", "instances"), "model": ("instances",)}
    return {"model": ("delay", "preferred", "instances")}


def _setting_config(
    config_text: str, settings: tuple[str, ...], delay: int, instances: int, preferred: tuple[int, ...]
) -> str:
    from workbench.triton.config import parse_model_config

    json_format = require("google.protobuf.json_format", purpose="Reloading Triton models", extra="triton")
    cfg = parse_model_config(config_text)
    if "delay" in settings or "preferred" in settings:
        cfg.dynamic_batching.SetInParent()
    if "delay" in settings:
        cfg.dynamic_batching.max_queue_delay_microseconds = delay
    if "preferred" in settings:
        del cfg.dynamic_batching.preferred_batch_size[:]
        cfg.dynamic_batching.preferred_batch_size.extend(s for s in preferred if s <= cfg.max_batch_size)
    if "instances" in settings:
        for group in cfg.instance_group:
            group.count = instances
    return str(json_format.MessageToJson(cfg, preserving_proto_field_name=True))


def sweep_batching(
    server: Any,
    exported: Any,
    texts: Sequence[str],
    serving: ServingConfig | None = None,
    sweep: SweepConfig | None = None,
    *,
    protocol: str | None = None,
) -> SweepResult:
    """Measure every setting of `sweep` on a running server and suggest one.

    Args:
        server: A running `workbench.triton.server.TritonServer` with `exported` loaded.
        exported: The `TritonEnsembleResult` it serves (its configs are the starting point of every setting).
        texts: The texts to send (the evaluation-text mix).
        serving: Windows, stability and bounds of each measurement; default ServingConfig().
        sweep: The settings and the objective; default SweepConfig().
        protocol: "http" or "grpc"; default `serving.protocol`.

    Returns:
        Every setting's levels and the suggestion. The server serves the repository's own configs again
        afterwards.
    """
    from workbench.stages.serving.stats import ServerProbe

    serving = serving if serving is not None else ServingConfig()
    sweep = sweep if sweep is not None else SweepConfig()
    batching = exported.padding.batching if getattr(exported, "padding", None) is not None else "ensemble"
    roles = {role: s for role, s in batching_roles(batching).items() if role in exported.models}
    protocol = protocol or serving.protocol
    url = server.url if protocol == "http" else server.grpc_url
    endpoint = Endpoint(
        f"{exported.model_name} sweep ({protocol})",
        protocol,
        url,
        model=exported.model_name,
        output=exported.output_names[0],
    )
    engine = exported.models["model"].model_name
    probe = ServerProbe(
        server.url,
        exported.model_names,
        engine=engine,
        metrics_url=server.metrics_url if getattr(server, "metrics_port", None) else None,
    )
    points = []
    try:
        for delay, instances, preferred in sweep.settings():
            for role, settings in roles.items():
                result = exported.models[role]
                override = _setting_config(result.config_text, settings, delay, instances, preferred)
                server.load(result.model_name, config=override)
            load = measure_load(endpoint, texts, serving, probe=probe, concurrency=sweep.concurrency)
            points.append(SweepPoint(delay, instances, tuple(preferred), load.levels))
    finally:  # serve the repository's own configs again: an override of the same text (a plain load of an
        # unchanged folder would keep the last override)
        for role in roles:
            result = exported.models[role]
            server.load(result.model_name, config=_setting_config(result.config_text, (), 0, 0, ()))
    return SweepResult(points=tuple(points), suggestion=suggest(points, sweep), config=sweep, batching=batching)
