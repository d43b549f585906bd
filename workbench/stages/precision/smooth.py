"""Activation smoothing (SmoothQuant): move activation outliers into the weights before INT8 quantization.

MiniLM's hidden states carry a few outlier channels, so a per-tensor INT8 activation scale spends its range on
them and rounds every other channel coarsely. For a MatMul y = x W, dividing each input channel k of x by s_k
and multiplying row k of W by s_k leaves y unchanged in exact arithmetic, while the activations' range shrinks
and the weights (quantized per channel) absorb it. s_k = max|x_k|^alpha / max|W_k|^(1 - alpha) (Xiao et al.,
SmoothQuant, 2022). The node keeps its name, so a PrecisionPlan's pins still apply.

Where the division goes: when the smoothed nodes are the only readers of a LayerNorm's output (LayerNormalization,
SkipLayerNormalization, EmbedLayerNormalization, and their RMS "Simplified" forms), they share one scale (from the
largest weight row over all of them, as SmoothQuant does for Q, K and V) and 1/s folds into the LayerNorm's gamma
and beta: y / s = (gamma / s) * norm(x) + beta / s, so smoothing costs nothing at run time there. Everywhere else a
Mul is inserted before each smoothed node. In post-LN encoders such as BERT every LayerNorm output also feeds the
next residual Add, which needs it unscaled, so there the Muls stay; pre-LN blocks (GPT-2, Llama, ViT) fold.
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
#: LayerNorm op type -> (input index of gamma, of beta or None): output 0, the normalized tensor, is what folds.
LAYER_NORMS: dict[str, tuple[int, int | None]] = {
    "LayerNormalization": (1, 2),
    "SkipLayerNormalization": (2, 3),
    "EmbedLayerNormalization": (5, 6),
    "SimplifiedLayerNormalization": (1, None),
    "SkipSimplifiedLayerNormalization": (2, None),
}


@dataclass(frozen=True)
class SmoothingConfig(StageConfig):
    """SmoothQuant settings.

    Attributes:
        alpha: How much of the activation range moves into the weights (0: none, 1: all). 0.75 met the accuracy
            budget for dynamic INT8 on MiniLM where 0.5 did not.
        op_types: Ops whose input activations are smoothed (their weight must be a 2-D initializer [K, N]).
        min_scale: Smallest per-channel scale (guards channels that are always ~0).
        max_scale: Largest per-channel scale.
        op_alphas: Per op type alphas that replace `alpha` for that type, e.g. (("MatMul", 0.8),); NNCF's
            SmoothQuant takes one alpha per layer type the same way.
    """

    alpha: float = 0.75
    op_types: tuple[str, ...] = SMOOTHABLE_OP_TYPES
    min_scale: float = 1e-2
    max_scale: float = 1e3
    op_alphas: tuple[tuple[str, float], ...] = ()

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"default": {}, "mild": {"alpha": 0.5}}

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"SmoothingConfig.alpha must be in [0, 1], got {self.alpha}.")
        check_positive(self, "min_scale", "max_scale")
        unknown = [op for op in self.op_types if op not in SMOOTHABLE_OP_TYPES]
        if unknown:
            raise ConfigError(
                f"SmoothingConfig cannot smooth {unknown}.", expected=f"op types among {SMOOTHABLE_OP_TYPES}"
            )
        # from JSON the pairs arrive as lists: store hashable tuples (a config is a dict key in the autofix search)
        pairs = tuple((str(op), float(alpha)) for op, alpha in (tuple[Any, ...](p) for p in self.op_alphas))
        object.__setattr__(self, "op_alphas", pairs)
        for op, alpha in pairs:
            if op not in self.op_types:
                raise ConfigError(
                    f"SmoothingConfig.op_alphas sets an alpha for {op!r}, which op_types does not smooth.",
                    expected=f"op types among {list(self.op_types)}",
                )
            if not 0.0 <= alpha <= 1.0:
                raise ConfigError(f"SmoothingConfig.op_alphas[{op!r}] must be in [0, 1], got {alpha}.")
        if len({op for op, _ in pairs}) != len(pairs):
            raise ConfigError(f"SmoothingConfig.op_alphas names an op type twice: {pairs}.")

    def alpha_for(self, op_type: str) -> float:
        """The alpha used for nodes of `op_type`: its entry in op_alphas, else `alpha`."""
        return dict(self.op_alphas).get(op_type, self.alpha)


@dataclass(frozen=True)
class SmoothingResult:
    """The smoothed model and the nodes whose inputs were smoothed.

    Attributes:
        smoothed: Every node whose input was smoothed.
        folded: Those of them whose scale folded into the LayerNorm before them (no Mul was inserted);
            the others read a Mul named `<node>_smooth`.
    """

    path: Path
    config: SmoothingConfig
    smoothed: tuple[str, ...]
    largest_scale: float
    seconds: float
    folded: tuple[str, ...] = ()

    @property
    def muls(self) -> dict[str, str]:
        """Smoothed node -> the Mul inserted before it (nodes whose scale folded have none)."""
        return {name: f"{name}_smooth" for name in self.smoothed if name not in self.folded}

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "config": self.config.to_dict(),
            "smoothed": list(self.smoothed),
            "folded": list(self.folded),
            "largest_scale": self.largest_scale,
            "seconds": self.seconds,
        }

    def _repr_html_(self) -> str:
        folded = f", {len(self.folded)} of them folded into LayerNorms" if self.folded else ""
        return (
            f"<b>Smoothed</b> the inputs of {len(self.smoothed)} nodes{folded} (alpha {self.config.alpha}, "
            f"largest scale {self.largest_scale:.1f}) -> <code>{self.path}</code>"
        )


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


def smooth_model(
    model: Any, feeds: Sequence[Mapping[str, np.ndarray]], config: SmoothingConfig
) -> tuple[Any, list[str], float, list[str]]:
    """Smooth an in-memory model; returns (smoothed copy, smoothed node names, largest scale, folded node names)."""
    onnx = require("onnx", purpose="Activation smoothing")
    from workbench.onnx.shapes import copy_model

    smoothed = copy_model(model)
    graph = smoothed.graph
    initializers = {t.name: t for t in graph.initializer}
    uses: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    targets = [
        n
        for n in graph.node
        if n.op_type in config.op_types
        and len(n.input) > 1
        and n.input[1] in initializers
        and len(initializers[n.input[1]].dims) == 2
        and uses[n.input[1]] == 1
        and n.input[0] not in initializers
    ]
    maxima = channel_max(model, feeds, sorted({n.input[0] for n in targets}))

    def weight(node: Any) -> np.ndarray:
        return onnx.numpy_helper.to_array(initializers[node.input[1]]).astype(np.float32)

    def scale_for(activation_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
        scale = np.maximum(activation_max, 1e-5) ** alpha / np.maximum(weight_max, 1e-5) ** (1.0 - alpha)
        return np.clip(scale, config.min_scale, config.max_scale).astype(np.float32)

    groups: dict[str, list[Any]] = {}
    for node in targets:
        if maxima[node.input[0]].shape[0] == weight(node).shape[0]:  # else not an [.., K] x [K, N] product
            groups.setdefault(node.input[0], []).append(node)
    largest = 1.0
    inserted, folded = [], []
    for tensor, nodes in groups.items():
        layer_norm = _foldable_layer_norm(graph, tensor, nodes, uses, initializers, config)
        if layer_norm is not None:  # one scale for every reader, divided out of gamma and beta
            weight_max = np.max([np.abs(weight(n)).max(axis=1) for n in nodes], axis=0)
            shared = scale_for(maxima[tensor], weight_max, config.alpha_for(nodes[0].op_type))
            _divide_affine(onnx, graph, layer_norm, shared, initializers, uses)
            scales = {n.name: shared for n in nodes}
            folded += [n.name for n in nodes]
        else:
            scales = {
                n.name: scale_for(maxima[tensor], np.abs(weight(n)).max(axis=1), config.alpha_for(n.op_type))
                for n in nodes
            }
        for node in nodes:
            scale = scales[node.name]
            largest = max(largest, float(scale.max()))
            initializers[node.input[1]].CopyFrom(
                onnx.numpy_helper.from_array(weight(node) * scale[:, None], node.input[1])
            )
            if layer_norm is not None:
                continue
            inverse = f"{node.name}_smooth_inverse_scale"
            graph.initializer.append(onnx.numpy_helper.from_array((1.0 / scale).astype(np.float32), inverse))
            divided = f"{node.input[0]}_smoothed_for_{node.name}"
            inserted.append(
                (node, onnx.helper.make_node("Mul", [node.input[0], inverse], [divided], name=f"{node.name}_smooth"))
            )
            node.input[0] = divided
    for node, mul in inserted:
        position = list(graph.node).index(node)
        graph.node.insert(position, mul)
    names = [n.name for nodes in groups.values() for n in nodes]
    return smoothed, names, largest, folded


def _foldable_layer_norm(
    graph: Any,
    tensor: str,
    readers: Sequence[Any],
    uses: Mapping[str, int],
    initializers: Mapping[str, Any],
    config: SmoothingConfig,
) -> Any:
    """The LayerNorm node whose output 0 is `tensor`, when the smoothed `readers` are all that read it (and not a
    graph output) and its gamma (and beta) are initializers; else None."""
    producer = next((n for n in graph.node if n.output and n.output[0] == tensor), None)
    if producer is None or producer.op_type not in LAYER_NORMS:
        return None
    if uses.get(tensor, 0) != len(readers) or tensor in {o.name for o in graph.output}:
        return None  # something else (a residual Add) reads the unscaled tensor
    if len({config.alpha_for(n.op_type) for n in readers}) != 1:
        return None  # one shared scale needs one alpha
    gamma, beta = LAYER_NORMS[producer.op_type]
    affine = [i for i in (gamma, beta) if i is not None and i < len(producer.input) and producer.input[i]]
    if gamma not in affine or any(producer.input[i] not in initializers for i in affine):
        return None
    return producer


def _divide_affine(
    onnx: Any, graph: Any, layer_norm: Any, scale: np.ndarray, initializers: dict[str, Any], uses: dict[str, int]
) -> None:
    """gamma /= scale and beta /= scale of `layer_norm`, in initializers of its own (others may share the old)."""
    gamma, beta = LAYER_NORMS[layer_norm.op_type]
    for index in (gamma, beta):
        if index is None or index >= len(layer_norm.input) or not layer_norm.input[index]:
            continue
        old = layer_norm.input[index]
        values = onnx.numpy_helper.to_array(initializers[old]).astype(np.float32) / scale
        name = f"{old}_smoothed_in_{layer_norm.name}"
        tensor = onnx.numpy_helper.from_array(values.astype(np.float32), name)
        graph.initializer.append(tensor)
        initializers[name] = tensor
        layer_norm.input[index] = name
        uses[old] -= 1
        if uses[old] == 0:  # nothing else reads the unsmoothed copy
            graph.initializer.remove(initializers.pop(old))


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
    smoothed, names, largest, folded = smooth_model(load_onnx(model_path), calibration_feeds, config)
    save_onnx(smoothed, output_path)
    return SmoothingResult(
        Path(output_path), config, tuple(names), largest, time.perf_counter() - started, tuple(folded)
    )
