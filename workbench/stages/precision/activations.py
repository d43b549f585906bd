"""Activation statistics: the value ranges of every float tensor of an FP32 model on real data.

Static INT8 maps each activation's calibrated range onto 256 levels. When a few values of a tensor are far
larger than the rest (MiniLM's outlier hidden dimensions), the range is set by those few and every other value
gets only a handful of levels: that is why static INT8 loses accuracy on MiniLM. `activation_statistics` shows
where: per tensor, min / max / max |x| next to the 99.99th percentile of |x|, and their ratio
(`outlier_ratio`; large means a few outliers dominate the range).

How it is measured, in two passes over the feeds, one chunk of feeds at a time:

1. Pass 1 runs the model with every float node output exposed and keeps, per tensor, running count, min, max,
   max |x|, and mean / variance (merged across chunks with Chan's parallel formula, in float64).
2. Pass 2 runs it again and fills, per tensor, a histogram of x with `bins` bins over [min, max] (edges fixed by
   pass 1, so the counts of all chunks add up exactly), and keeps the largest |x| values the percentile needs:
   with the count known from pass 1, p99.99 reads only the top 0.01% (plus one) of the values, so it is exact
   (np.percentile's linear interpolation) while holding one ten-thousandth of the values.

Memory: one feed dict's activations plus, per tensor, its histogram and 0.01% of its
values. Time: the model runs twice over the data.

Non-finite values (inf, NaN) are counted in `nonfinite` and left out of every other statistic.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench._lazy import require
from workbench.errors import ConfigError, DataError

PERCENTILE = 99.99
TOP_OUTLIERS = 20
_FLOAT_TYPES = (1, 10, 11)  # ONNX float32, float16, float64


@dataclass(frozen=True)
class TensorStats:
    """Statistics of one float tensor over every feed.

    Attributes:
        name: The tensor.
        node: The node that produces it.
        op_type: That node's op type.
        position: Its index among the measured tensors, in graph order.
        count: Finite values seen (elements over all feeds).
        nonfinite: inf / NaN values seen (left out of the other statistics).
        min, max: Smallest and largest value.
        max_abs: Largest |x|.
        mean, std: Mean and standard deviation.
        p9999_abs: The 99.99th percentile of |x| (exact; np.percentile's linear interpolation).
        histogram: Counts of x in `len(histogram)` equal bins over [min, max].
        edges: The histogram's bin edges (one more than counts).
    """

    name: str
    node: str
    op_type: str
    position: int
    count: int
    nonfinite: int
    min: float
    max: float
    max_abs: float
    mean: float
    std: float
    p9999_abs: float
    histogram: tuple[int, ...]
    edges: tuple[float, ...]

    @property
    def outlier_ratio(self) -> float:
        """max |x| / p99.99 |x|: 1 for a tensor without outliers; large when a few values set the range.

        1.0 for an all-zero tensor; inf when fewer than 0.01% of the values are non-zero.
        """
        if self.p9999_abs > 0:
            return self.max_abs / self.p9999_abs
        return 1.0 if self.max_abs == 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: non-finite numbers (no finite values seen; an infinite ratio) become None."""
        numbers = {
            key: _json_float(getattr(self, key))
            for key in ("min", "max", "max_abs", "mean", "std", "p9999_abs", "outlier_ratio")
        }
        return {
            "name": self.name,
            "node": self.node,
            "op_type": self.op_type,
            "position": self.position,
            "count": self.count,
            "nonfinite": self.nonfinite,
            **numbers,
            "histogram": list(self.histogram),
            "edges": list(self.edges),
        }


@dataclass(frozen=True)
class ActivationStats:
    """Per-tensor activation statistics of one model on one data set, in graph order.

    Attributes:
        model_path: The model measured.
        rows: One TensorStats per float node output, in graph order.
        feeds: Feed dicts measured.
        bins: Histogram bins per tensor.
    """

    model_path: Path
    rows: tuple[TensorStats, ...]
    feeds: int
    bins: int

    def __getitem__(self, name: str) -> TensorStats:
        for row in self.rows:
            if row.name == name:
                return row
        raise DataError(
            f"No activation statistics for tensor {name!r}.",
            expected=f"one of the {len(self.rows)} measured tensors, e.g. {[r.name for r in self.rows[:5]]}",
            fix="pick a name from stats.rows (tensor names, not node names)",
        )

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(row.name for row in self.rows)

    def top_outliers(self, n: int = TOP_OUTLIERS) -> tuple[TensorStats, ...]:
        """The `n` tensors with the largest outlier ratio, largest first."""
        return tuple(sorted(self.rows, key=lambda r: (-r.outlier_ratio, r.position))[:n])

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_path": str(self.model_path),
            "feeds": self.feeds,
            "bins": self.bins,
            "percentile": PERCENTILE,
            "tensors": [row.to_dict() for row in self.rows],
        }

    def _repr_html_(self) -> str:
        top = self.top_outliers()
        rows = "".join(
            f"<tr><td><code>{html.escape(r.name)}</code></td><td><code>{html.escape(r.node)}</code></td>"
            f"<td>{html.escape(r.op_type)}</td><td>{r.min:.4g}</td><td>{r.max:.4g}</td><td>{r.mean:.4g}</td>"
            f"<td>{r.std:.4g}</td><td>{r.p9999_abs:.4g}</td><td>{r.max_abs:.4g}</td>"
            f"<td><b>{r.outlier_ratio:.3g}</b></td></tr>"
            for r in top
        )
        return (
            f"<b>Activation statistics</b> of <code>{html.escape(self.model_path.name)}</code>: "
            f"{len(self.rows)} tensors over {self.feeds} feed dicts. The {len(top)} with the largest outlier "
            f"ratio (max |x| / p{PERCENTILE:g} |x|; large: a few values set the INT8 range):"
            "<table><tr><th>tensor</th><th>node</th><th>op</th><th>min</th><th>max</th><th>mean</th>"
            f"<th>std</th><th>p{PERCENTILE:g} |x|</th><th>max |x|</th><th>outlier ratio</th></tr>{rows}</table>"
        )

    def range_figure(self) -> Any:
        """Plotly chart, one column per tensor in graph order (log |x|): a bar from p99.99 |x| up to max |x|
        (its length shows how far the outliers reach past the bulk), a tick at p99.99, coloured by op type."""
        go = require("plotly.graph_objects", purpose="Plotting activation ranges")
        colors = require("plotly.colors", purpose="Plotting activation ranges").qualitative.Plotly
        figure = go.Figure()
        op_types = list(dict.fromkeys(r.op_type for r in self.rows))
        for i, op_type in enumerate(op_types):
            rows = [r for r in self.rows if r.op_type == op_type and r.max_abs > 0]
            if not rows:
                continue
            color = colors[i % len(colors)]
            floor = [r.p9999_abs if r.p9999_abs > 0 else r.max_abs for r in rows]
            custom = [
                [r.name, r.node, r.min, r.max, r.mean, r.std, r.outlier_ratio, r.max_abs, r.p9999_abs] for r in rows
            ]
            hover = (
                "%{customdata[0]}<br>node %{customdata[1]} (" + html.escape(op_type) + ")<br>"
                "min %{customdata[2]:.4g}, max %{customdata[3]:.4g}<br>mean %{customdata[4]:.4g}, "
                "std %{customdata[5]:.4g}<br>p99.99 |x| %{customdata[8]:.4g}, max |x| %{customdata[7]:.4g}"
                "<br>outlier ratio %{customdata[6]:.3g}<extra></extra>"
            )
            figure.add_bar(
                x=[r.position for r in rows],
                base=floor,
                y=[r.max_abs - f for r, f in zip(rows, floor)],
                customdata=custom,
                hovertemplate=hover,
                name=op_type,
                legendgroup=op_type,
                marker_color=color,
            )
            figure.add_scatter(
                x=[r.position for r in rows],
                y=floor,
                mode="markers",
                legendgroup=op_type,
                showlegend=False,
                marker={"symbol": "line-ew-open", "size": 10, "color": color},
                name=f"{op_type} p{PERCENTILE:g}",
                hoverinfo="skip",
            )
        figure.update_layout(
            title=f"Activation ranges of {self.model_path.name}: p{PERCENTILE:g} |x| (tick) to max |x| (bar top)",
            xaxis_title="tensor (graph order)",
            yaxis_title="|x| (log)",
            yaxis_type="log",
            barmode="overlay",
            bargap=0.2,
            legend_title="op type",
        )
        return figure

    def histogram_figure(self, tensor_name: str) -> Any:
        """Plotly histogram of one tensor's values (the stored counts; log count axis)."""
        go = require("plotly.graph_objects", purpose="Plotting activation histograms")
        row = self[tensor_name]
        edges = np.asarray(row.edges)
        figure = go.Figure()
        figure.add_bar(
            x=((edges[:-1] + edges[1:]) / 2).tolist(),
            y=list(row.histogram),
            width=np.diff(edges).tolist(),
            name=row.name,
            hovertemplate="%{x:.4g}: %{y} values<extra></extra>",
        )
        figure.update_layout(
            title=(
                f"{row.name} ({row.op_type} {row.node}): {row.count:,} values, mean {row.mean:.4g}, "
                f"std {row.std:.4g}, outlier ratio {row.outlier_ratio:.3g}"
            ),
            xaxis_title="value",
            yaxis_title="count (log)",
            yaxis_type="log",
            bargap=0,
        )
        return figure


def _json_float(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclass
class _Running:
    """Pass-1 accumulator of one tensor."""

    count: int = 0
    nonfinite: int = 0
    low: float = math.inf
    high: float = -math.inf
    mean: float = 0.0
    m2: float = 0.0

    def add(self, values: np.ndarray) -> None:
        finite = values[np.isfinite(values)]
        self.nonfinite += values.size - finite.size
        if not finite.size:
            return
        n, mean = finite.size, float(finite.mean())
        m2 = float(np.square(finite - mean).sum())
        self.low, self.high = min(self.low, float(finite.min())), max(self.high, float(finite.max()))
        total = self.count + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.count * n / total
        self.count = total


def _float_tensors(model: Any) -> list[tuple[str, str, str]]:
    """(tensor, node, op type) of every float node output, in graph order."""
    from workbench.stages.surgery.edits import tensor_types

    types = tensor_types(model)
    found = []
    for node in model.graph.node:
        for output in node.output:
            if output and types.get(output, (0,))[0] in _FLOAT_TYPES:
                found.append((output, node.name, node.op_type))
    return found


def activation_statistics(
    model_path: str | os.PathLike[str],
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    bins: int = 64,
    max_tensors: int | None = None,
) -> ActivationStats:
    """Run the FP32 model on `feeds` with its float node outputs exposed and measure each tensor's values.

    Two passes over the feeds (see the module docstring): the first finds each tensor's range, the second
    builds histograms with edges fixed by that range. Only one chunk's activations are in memory at a time.
    The input model is not modified.

    Args:
        model_path: The FP32 model (fused or not).
        feeds: Feed dicts (e.g. calibration data from workbench.data.tokenize_batches).
        bins: Histogram bins per tensor, over [min, max].
        max_tensors: Measure only the first this many float tensors in graph order (None: all).

    Raises:
        DataError: `feeds` is empty, or its dicts do not match the model's inputs (names, dtypes, ranks).
        ConfigError: bins or max_tensors is not positive.
    """
    from workbench.engines.onnxruntime import model_session
    from workbench.onnx.io import load_onnx
    from workbench.stages.precision.calibrate import validate_feeds
    from workbench.stages.surgery.edits import AddOutputs

    for name, value in (("bins", bins), ("max_tensors", max_tensors)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"activation_statistics: {name} must be a positive whole number, got {value!r}.")
    feeds = list(feeds)
    validate_feeds(feeds, model_path, what="activation-statistics data")
    model = load_onnx(model_path)
    tensors = _float_tensors(model)
    if max_tensors is not None:
        tensors = tensors[:max_tensors]
    names = [name for name, _, _ in tensors]
    if not names:
        return ActivationStats(Path(model_path), (), len(feeds), bins)
    exposed = AddOutputs(tuple(names)).apply(model)
    with model_session(exposed, names) as run:  # one session for both passes

        def results() -> Any:
            for feed in feeds:  # one feed dict's activations in memory at a time
                yield run(feed)

        # pass 1: ranges, mean and variance
        running = {name: _Running() for name in names}
        for outputs in results():
            for name in names:
                running[name].add(np.asarray(outputs[name], dtype=np.float64).ravel())

        # pass 2: histograms over the ranges found in pass 1, and the largest |x| the percentile needs
        edges, keep = {}, {}
        for name in names:
            r = running[name]
            low, high = (r.low, r.high) if r.count else (0.0, 0.0)
            if low == high:  # np.histogram's own convention for a constant tensor
                low, high = low - 0.5, high + 0.5
            edges[name] = np.linspace(low, high, bins + 1)
            keep[name] = _top_count(r.count, PERCENTILE)
        counts = {name: np.zeros(bins, np.int64) for name in names}
        largest = {name: np.empty(0, np.float64) for name in names}
        for outputs in results():
            for name in names:
                values = np.asarray(outputs[name], dtype=np.float64).ravel()
                values = values[np.isfinite(values)]
                if not values.size:
                    continue
                e = edges[name]
                values = np.clip(values, e[0], e[-1])  # a re-run can differ in the last bit; keep every value
                counts[name] += np.histogram(values, bins=bins, range=(e[0], e[-1]))[0]  # equal bins: the fast path
                largest[name] = _largest(
                    np.concatenate([largest[name], _largest(np.abs(values), keep[name])]), keep[name]
                )

    rows = []
    for position, (name, node, op_type) in enumerate(tensors):
        r = running[name]
        max_abs = max(abs(r.low), abs(r.high)) if r.count else 0.0
        rows.append(
            TensorStats(
                name=name,
                node=node,
                op_type=op_type,
                position=position,
                count=r.count,
                nonfinite=r.nonfinite,
                min=r.low if r.count else math.nan,
                max=r.high if r.count else math.nan,
                max_abs=max_abs,
                mean=min(max(r.mean, r.low), r.high) if r.count else math.nan,  # rounding never leaves the range
                std=math.sqrt(r.m2 / r.count) if r.count else math.nan,
                p9999_abs=_percentile(largest[name], r.count, PERCENTILE),
                histogram=tuple(int(c) for c in counts[name]),
                edges=tuple(float(e) for e in edges[name]),
            )
        )
    return ActivationStats(Path(model_path), tuple(rows), len(feeds), bins)


def _top_count(total: int, q: float) -> int:
    """How many of the largest values np.percentile(values, q) reads (linear interpolation), for `total` values."""
    return total - math.floor((total - 1) * q / 100.0) if total else 0


def _largest(values: np.ndarray, k: int) -> np.ndarray:
    """The `k` largest of `values` (unordered)."""
    if values.size <= k:
        return values
    return np.partition(values, values.size - k)[values.size - k :]


def _percentile(largest: np.ndarray, total: int, q: float) -> float:
    """np.percentile(all values, q) from the values' `_top_count(total, q)` largest (exact, linear method)."""
    if total == 0:
        return 0.0
    position = (total - 1) * q / 100.0
    top = np.sort(largest)  # top[j] is the (total - len(top) + j)-th smallest value
    first = total - top.size
    below = math.floor(position) - first
    fraction = position - math.floor(position)
    if below + 1 >= top.size:
        return float(top[below])
    return float(top[below] + (top[below + 1] - top[below]) * fraction)
