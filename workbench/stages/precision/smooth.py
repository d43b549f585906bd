"""Activation smoothing (SmoothQuant): move activation outliers into the weights before INT8 quantization.

MiniLM's hidden states carry a few outlier channels, so a per-tensor INT8 activation scale spends its range on
them and rounds every other channel coarsely. For a MatMul y = x W, dividing each input channel k of x by s_k
and multiplying row k of W by s_k leaves y unchanged in exact arithmetic, while the activations' range shrinks
and the weights (quantized per channel) absorb it. s_k = max|x_k|^alpha / max|W_k|^(1 - alpha) (Xiao et al.,
SmoothQuant, 2022). The division is a Mul inserted before each smoothed node; the node keeps its name, so a
PrecisionPlan's pins still apply.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from workbench._lazy import require
from workbench.config import StageConfig, check_positive
from workbench.errors import ConfigError

SMOOTHABLE_OP_TYPES = ("MatMul", "Attention")


@dataclass(frozen=True)
class SmoothingConfig(StageConfig):
    """SmoothQuant settings.

    Attributes:
        alpha: How much of the activation range moves into the weights (0: none, 1: all). 0.75 met the accuracy
            budget for dynamic INT8 on MiniLM where 0.5 did not.
        op_types: Ops whose input activations are smoothed (their weight must be a 2-D initializer [K, N]).
        min_scale: Smallest per-channel scale (guards channels that are always ~0).
        max_scale: Largest per-channel scale.
    """

    alpha: float = 0.75
    op_types: tuple[str, ...] = SMOOTHABLE_OP_TYPES
    min_scale: float = 1e-2
    max_scale: float = 1e3

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"default": {}, "mild": {"alpha": 0.5}}

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"SmoothingConfig.alpha must be in [0, 1], got {self.alpha}.")
        check_positive(self, "min_scale", "max_scale")
        unknown = [op for op in self.op_types if op not in SMOOTHABLE_OP_TYPES]
        if unknown:
            raise ConfigError(f"SmoothingConfig cannot smooth {unknown}.", expected=f"op types among {SMOOTHABLE_OP_TYPES}")


@dataclass(frozen=True)
class SmoothingResult:
    """The smoothed model and the nodes whose inputs were smoothed."""

    path: Path
    config: SmoothingConfig
    smoothed: tuple[str, ...]
    largest_scale: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "config": self.config.to_dict(), "smoothed": list(self.smoothed),
                "largest_scale": self.largest_scale, "seconds": self.seconds}

    def _repr_html_(self) -> str:
        return (f"<b>Smoothed</b> the inputs of {len(self.smoothed)} nodes (alpha {self.config.alpha}, largest scale "
                f"{self.largest_scale:.1f}) -> <code>{self.path}</code>")


def channel_max(model: Any, feeds: Sequence[Mapping[str, np.ndarray]], tensors: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-channel (last axis) max |x| of `tensors` over `feeds`, one feed dict at a time."""
    from workbench.engines.onnxruntime import model_session
    from workbench.stages.surgery.edits import AddOutputs

    graph_inputs = {i.name for i in model.graph.input}
    fetched = [t for t in tensors if t not in graph_inputs]
    exposed = AddOutputs(tuple(fetched)).apply(model) if fetched else model
    maxima: dict[str, np.ndarray] = {}
    with model_session(exposed, fetched) as run:
        for feed in feeds:
            for name, array in run(feed).items():
                current = np.abs(array).reshape(-1, array.shape[-1]).max(axis=0)
                maxima[name] = current if name not in maxima else np.maximum(maxima[name], current)
    return maxima


def smooth_model(model: Any, feeds: Sequence[Mapping[str, np.ndarray]], config: SmoothingConfig) -> tuple[Any, list[str], float]:
    """Smooth an in-memory model; returns (smoothed copy, smoothed node names, largest scale)."""
    onnx = require("onnx", purpose="Activation smoothing")
    from workbench.onnx.shapes import copy_model

    smoothed = copy_model(model)
    initializers = {t.name: t for t in smoothed.graph.initializer}
    uses: dict[str, int] = {}
    for node in smoothed.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    targets = [n for n in smoothed.graph.node
               if n.op_type in config.op_types and len(n.input) > 1 and n.input[1] in initializers
               and len(initializers[n.input[1]].dims) == 2 and uses[n.input[1]] == 1
               and n.input[0] not in initializers]
    maxima = channel_max(model, feeds, sorted({n.input[0] for n in targets}))
    largest = 1.0
    inserted = []
    for node in targets:
        weight = onnx.numpy_helper.to_array(initializers[node.input[1]]).astype(np.float32)
        activation_max = maxima[node.input[0]]
        if activation_max.shape[0] != weight.shape[0]:
            continue  # not an [.., K] x [K, N] product
        scale = np.maximum(activation_max, 1e-5) ** config.alpha / np.maximum(np.abs(weight).max(axis=1), 1e-5) ** (
            1.0 - config.alpha)
        scale = np.clip(scale, config.min_scale, config.max_scale).astype(np.float32)
        largest = max(largest, float(scale.max()))
        initializers[node.input[1]].CopyFrom(onnx.numpy_helper.from_array(weight * scale[:, None], node.input[1]))
        inverse = f"{node.name}_smooth_inverse_scale"
        smoothed.graph.initializer.append(onnx.numpy_helper.from_array((1.0 / scale).astype(np.float32), inverse))
        divided = f"{node.input[0]}_smoothed_for_{node.name}"
        inserted.append((node, onnx.helper.make_node("Mul", [node.input[0], inverse], [divided],
                                                     name=f"{node.name}_smooth")))
        node.input[0] = divided
    for node, mul in inserted:
        position = list(smoothed.graph.node).index(node)
        smoothed.graph.node.insert(position, mul)
    return smoothed, [node.name for node, _ in inserted], largest


def smooth_activations(
    model_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    calibration_feeds: Sequence[Mapping[str, np.ndarray]],
    config: SmoothingConfig = SmoothingConfig(),
) -> SmoothingResult:
    """Write a smoothed copy of an FP32 model; its outputs equal the input model's up to float rounding.

    Raises:
        DataError: The calibration data is empty or does not match the model.
    """
    from workbench._files import check_output_file
    from workbench.onnx.io import load_onnx, save_onnx
    from workbench.stages.precision.calibrate import validate_feeds

    check_output_file(output_path, what="The smoothed model's path")
    started = time.perf_counter()
    validate_feeds(list(calibration_feeds), model_path, what="smoothing calibration data")
    smoothed, names, largest = smooth_model(load_onnx(model_path), calibration_feeds, config)
    save_onnx(smoothed, output_path)
    return SmoothingResult(Path(output_path), config, tuple(names), largest, time.perf_counter() - started)
