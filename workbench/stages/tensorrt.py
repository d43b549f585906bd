"""TensorRT stage: an ONNX model -> a serialized TensorRT engine, built with Polygraphy's loaders.

The chain is Polygraphy's own::

    NetworkFromOnnxPath -> PostprocessNetwork(layer precisions from the PrecisionPlan)
        -> EngineFromNetwork(network, CreateConfig(fp16, int8, profiles, calibrator, ...)) -> SaveEngine

What runs where (TensorRT needs NVIDIA's `tensorrt` package and an NVIDIA GPU):

- Anywhere: :class:`TensorRTConfig`, :func:`profile_for`, :func:`layer_precisions` (TensorRT layer name -> ONNX
  node -> the plan's precision), :func:`check_onnx_for_tensorrt`, and :func:`build_loaders`, which *constructs*
  the chain without calling it (Polygraphy's loaders import tensorrt only when called).
- Two settings cannot even be expressed without tensorrt, so :class:`BuilderConfig` resolves them when the chain
  is called: Polygraphy's ``Calibrator`` subclasses ``trt.IInt8EntropyCalibrator2`` when it is created, and the
  workspace limit is keyed by ``trt.MemoryPoolType.WORKSPACE``.
- Only with tensorrt and a GPU: :func:`apply_layer_precisions` and :func:`build_engine` (which raises
  MissingDependency naming the ``[gpu]`` extra without tensorrt, DeviceUnavailable without a GPU).

Build from the plain export (``model.onnx``), not from onnxruntime's fused graph: TensorRT's ONNX parser does not
know onnxruntime's contrib ops (Attention, SkipLayerNormalization, ...) and fuses attention itself.
"""

from __future__ import annotations

import copy
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from workbench._lazy import require
from workbench.config import StageConfig, check_choice
from workbench.engines.polygraphy import quiet_polygraphy
from workbench.engines.tensorrt import (
    TensorRTRunner,
    require_tensorrt,
    tensorrt_status,
)
from workbench.errors import ConfigError, DataError, ModelSourceError, WorkbenchError

PRECISION_CONSTRAINTS = ("obey", "prefer", "none")
OPTIMIZATION_LEVELS = (0, 1, 2, 3, 4, 5)
DEFAULT_BATCH = (1, 1, 32)  # (min, opt, max), used when a config names no profiles
DEFAULT_SEQUENCE = (1, 128, 512)
CONTRIB_DOMAINS = ("com.microsoft",)

Shape = tuple[int, ...]
ShapeRange = tuple[Shape, Shape, Shape]  # (min, opt, max)

__all__ = [
    "BuilderConfig",
    "CalibrationFeeds",
    "LayerPrecisionReport",
    "TensorRTConfig",
    "TensorRTEngine",
    "TensorRTLoaders",
    "apply_layer_precisions",
    "build_engine",
    "build_loaders",
    "check_onnx_for_tensorrt",
    "layer_precisions",
    "onnx_node_of",
    "profile_for",
    "profile_from_choices",
    "tensorrt_status",
]


# --------------------------------------------------------------------------------------------------------------
# config


def profile_for(
    input_names: Iterable[str],
    min_batch: int,
    opt_batch: int,
    max_batch: int,
    min_seq: int,
    opt_seq: int,
    max_seq: int,
) -> dict[str, ShapeRange]:
    """One optimization profile for [batch, sequence] inputs: input name -> ((min), (opt), (max)) shapes.

    TensorRT accepts any shape between min and max and picks its kernels for opt.
    """
    names = list(input_names)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"profile_for needs the model's input names, got {names!r}.")
    _check_range("batch", (min_batch, opt_batch, max_batch))
    _check_range("sequence", (min_seq, opt_seq, max_seq))
    return {name: ((min_batch, min_seq), (opt_batch, opt_seq), (max_batch, max_seq)) for name in names}


def profile_from_choices(
    input_names: Iterable[str],
    batch_sizes: Sequence[int],
    sequence_lengths: Sequence[int],
    *,
    opt_batch: int | None = None,
    opt_seq: int | None = None,
) -> dict[str, ShapeRange]:
    """The profile that covers the batch sizes and sequence lengths a user chose (e.g. BenchmarkConfig's).

    min and max are the smallest and largest choices; opt defaults to the first of each, which is what
    choose_candidate() optimises for by default (batch 1 first: online latency).
    """
    if not batch_sizes or not sequence_lengths:
        raise ConfigError("profile_from_choices needs at least one batch size and one sequence length.")
    return profile_for(
        input_names,
        min(batch_sizes),
        opt_batch if opt_batch is not None else batch_sizes[0],
        max(batch_sizes),
        min(sequence_lengths),
        opt_seq if opt_seq is not None else sequence_lengths[0],
        max(sequence_lengths),
    )


def _check_range(what: str, values: tuple[Any, Any, Any]) -> None:
    if not all(_is_int(v) and v >= 1 for v in values) or not values[0] <= values[1] <= values[2]:
        raise ConfigError(f"The {what} range (min, opt, max) = {values} must be integers with 1 <= min <= opt <= max.")


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class TensorRTConfig(StageConfig):
    """How TensorRT builds the engine.

    Attributes:
        fp16: Let TensorRT run layers in FP16 where it is faster.
        int8: Let TensorRT run layers in INT8. Without explicit_quantization the ranges come from calibration
            data (a Polygraphy Calibrator fed with the workbench's feed dicts). NVIDIA deprecates this implicit
            quantization from TensorRT 10 on in favour of explicit Q/DQ models.
        explicit_quantization: Build from a Q/DQ model (PrecisionPlan.preset("tensorrt_int8_qdq").convert(...)):
            the scales are in the model, so there is no calibrator. Needs int8.
        profiles: Optimization profiles, each input name -> (min, opt, max) shapes (see profile_for()); every
            profile names the same inputs. Calibration uses the last profile's opt shapes. Empty: one profile
            for [batch, sequence] inputs with batch DEFAULT_BATCH and sequence DEFAULT_SEQUENCE.
        workspace_mb: Largest scratch memory a layer may use while building; None: TensorRT's default (the
            GPU's memory).
        timing_cache: File to load and save tactic timings (rebuilds of similar models are much faster); None:
            no cache across builds.
        calibration_cache: File for calibrated INT8's ranges. When it exists TensorRT reads it and does not
            calibrate, so delete it when the model or the data changes.
        builder_optimization_level: 0-5; higher searches longer for faster kernels; None: TensorRT's (3).
        precision_constraints: How TensorRT treats the layer precisions set from a PrecisionPlan: "obey" (fail
            when a layer has no kernel in its precision), "prefer" (fall back, with a warning) or "none" (ignore
            them; an error when the plan pins nodes).
    """

    fp16: bool = True
    int8: bool = False
    explicit_quantization: bool = False
    # one mapping is accepted for a single profile: _normalize_profiles checks and normalises the field
    profiles: tuple[dict[str, ShapeRange], ...] = field(default=(), metadata={"checked_in_post_init": True})
    workspace_mb: int | None = None
    timing_cache: str | None = None
    calibration_cache: str | None = None
    builder_optimization_level: int | None = None
    precision_constraints: str = "prefer"

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        "tensorrt_fp16": {"fp16": True, "int8": False, "explicit_quantization": False},
        # FP16 stays on so that the layers TensorRT does not run in INT8 run in FP16 rather than FP32
        "tensorrt_int8_calibrated": {"fp16": True, "int8": True, "explicit_quantization": False},
        "tensorrt_int8_qdq": {"fp16": True, "int8": True, "explicit_quantization": True},
    }

    def __post_init__(self) -> None:
        for name in ("fp16", "int8", "explicit_quantization"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"TensorRTConfig.{name} must be True or False, got {getattr(self, name)!r}.")
        if self.explicit_quantization and not self.int8:
            raise ConfigError(
                "TensorRTConfig.explicit_quantization needs int8=True (a Q/DQ model is INT8).",
                fix="use TensorRTConfig.preset('tensorrt_int8_qdq')",
            )
        check_choice(self, "precision_constraints", PRECISION_CONSTRAINTS)
        if self.workspace_mb is not None and (not _is_int(self.workspace_mb) or self.workspace_mb < 1):
            raise ConfigError(
                f"TensorRTConfig.workspace_mb must be a positive integer or None, got {self.workspace_mb!r}."
            )
        level = self.builder_optimization_level
        if level is not None and (not _is_int(level) or level not in OPTIMIZATION_LEVELS):
            raise ConfigError(
                f"TensorRTConfig.builder_optimization_level must be one of {list(OPTIMIZATION_LEVELS)} "
                f"or None, got {level!r}."
            )
        for name in ("timing_cache", "calibration_cache"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
                object.__setattr__(self, name, value)
            if value is not None and (not isinstance(value, str) or not value):
                raise ConfigError(f"TensorRTConfig.{name} must be a file path or None, got {value!r}.")
        if self.calibration_cache is not None and (not self.int8 or self.explicit_quantization):
            raise ConfigError(
                "TensorRTConfig.calibration_cache is set but nothing is calibrated (calibration runs "
                "only with int8=True and explicit_quantization=False), so it would be ignored.",
                fix="leave calibration_cache as None",
            )
        object.__setattr__(self, "profiles", _normalize_profiles(self.profiles))

    def __hash__(self) -> int:  # profiles hold dicts; hash the JSON form instead
        return hash(self.to_json())

    @property
    def calibrated(self) -> bool:
        """Whether building needs calibration data (INT8 without a Q/DQ model)."""
        return self.int8 and not self.explicit_quantization

    @property
    def precisions(self) -> tuple[str, ...]:
        """The precisions TensorRT may use: fp32 always, plus fp16 and int8 when enabled."""
        return ("fp32",) + (("fp16",) if self.fp16 else ()) + (("int8",) if self.int8 else ())


def _normalize_profiles(profiles: Any) -> tuple[dict[str, ShapeRange], ...]:
    """Tuples all the way down (JSON gives lists), checked: same inputs in every profile, min <= opt <= max."""
    if isinstance(profiles, Mapping):
        profiles = (profiles,)
    if not isinstance(profiles, (tuple, list)):
        raise ConfigError(
            f"TensorRTConfig.profiles must be a tuple of profiles, got {profiles!r}.",
            fix="use profiles=(profile_for(input_names, 1, 1, 32, 1, 128, 512),)",
        )
    normalized = []
    for index, profile in enumerate(profiles):
        where = f"TensorRTConfig.profiles[{index}]"
        if not isinstance(profile, Mapping) or not profile:
            raise ConfigError(
                f"{where} must map input names to (min, opt, max) shapes, got {profile!r}.",
                fix="build it with profile_for(input_names, min_batch, opt_batch, max_batch, ...)",
            )
        entry: dict[str, ShapeRange] = {}
        for name, shapes in profile.items():
            if not isinstance(shapes, (tuple, list)) or len(shapes) != 3:
                raise ConfigError(f"{where}[{name!r}] must be (min, opt, max) shapes, got {shapes!r}.")
            try:
                low, opt, high = (tuple(int(d) if _is_int(d) else d for d in shape) for shape in shapes)
            except TypeError:
                raise ConfigError(
                    f"{where}[{name!r}] must be three shapes (sequences of ints), got {shapes!r}."
                ) from None
            if not all(_is_int(d) and d >= 1 for shape in (low, opt, high) for d in shape):
                raise ConfigError(f"{where}[{name!r}] = {shapes!r}: every dimension must be an integer >= 1.")
            if not len(low) == len(opt) == len(high) or not low:
                raise ConfigError(
                    f"{where}[{name!r}] = {shapes!r}: min, opt and max must have the same, non-zero rank."
                )
            if not all(a <= b <= c for a, b, c in zip(low, opt, high)):
                raise ConfigError(f"{where}[{name!r}] = {shapes!r}: each dimension needs min <= opt <= max.")
            entry[str(name)] = (low, opt, high)
        normalized.append(entry)
    names = [sorted(p) for p in normalized]
    if any(n != names[0] for n in names):
        raise ConfigError(
            f"TensorRTConfig.profiles name different inputs: {names}.",
            expected="every profile to give shapes for every dynamic input",
        )
    return tuple(normalized)


# --------------------------------------------------------------------------------------------------------------
# TensorRT layer names -> ONNX nodes -> the plan's precisions

_ONNX_LAYER = re.compile(r"\[ONNX Layer: (.*?)\]")
_SUFFIX_START = re.compile(r"_\d|\s")
_SUFFIX = re.compile(r"(?:_\d+)+(?:\s.*)?|\s.*", re.DOTALL)


def onnx_node_of(layer_name: str, node_names: Iterable[str], metadata: str = "") -> str | None:
    """The ONNX node a TensorRT layer came from, or None (a helper layer the parser added, or another model).

    TensorRT's ONNX parser names a node's layer after the node, and the extra layers of the same node after the
    node plus a "_N" counter; TensorRT 10 also records "[ONNX Layer: <node>]" in each layer's metadata, which
    wins when present. Otherwise: an exact name, else the longest node name that the layer name starts with
    followed by "_N" suffixes and/or a space and anything (" [Constant]"). Pass *every* node name of the model:
    with only a few, "…/MatMul_1" (a node of its own) would be taken for a layer of "…/MatMul".
    """
    nodes = node_names if isinstance(node_names, (set, frozenset, dict)) else set(node_names)
    for text in (metadata or "", layer_name):
        for found in _ONNX_LAYER.findall(text):
            if found in nodes:
                return found
    if layer_name in nodes:
        return layer_name
    best = None
    for match in _SUFFIX_START.finditer(layer_name):  # left to right: the last hit is the longest node name
        prefix = layer_name[: match.start()]
        if prefix in nodes and _SUFFIX.fullmatch(layer_name[match.start() :]):
            best = prefix
    return best


def _layer_nodes(
    plan: Any, layer_names: Iterable[str], node_names: Iterable[str] | None, metadata: Mapping[str, str] | None
) -> dict[str, str]:
    """Layer -> the plan node it came from, for the layers of the plan's exceptions only."""
    nodes = set(plan.nodes) | set(node_names or ())
    metadata = metadata or {}
    found = {}
    for layer in layer_names:
        node = onnx_node_of(layer, nodes, metadata.get(layer, ""))
        if node is not None and node in plan.nodes:
            found[layer] = node
    return found


def layer_precisions(
    plan: Any,
    layer_names: Iterable[str],
    *,
    node_names: Iterable[str] | None = None,
    metadata: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """TensorRT layer -> "fp32" / "fp16" / "int8", for the layers of the nodes the plan makes exceptions of.

    Layers of other nodes get nothing: the builder flags (TensorRTConfig.fp16 / int8) choose for them, which is
    what the plan's method means.

    Args:
        plan: A PrecisionPlan.
        layer_names: The network's layer names.
        node_names: Every node name of the ONNX model the network was parsed from (strongly recommended: see
            onnx_node_of()); None: only the plan's node names are known.
        metadata: Layer name -> its metadata string (TensorRT 10: "[ONNX Layer: <node>]").
    """
    return {
        layer: plan.nodes[node].precision
        for layer, node in _layer_nodes(plan, layer_names, node_names, metadata).items()
    }


@dataclass(frozen=True)
class LayerPrecisionReport:
    """What apply_layer_precisions() did to a network."""

    applied: dict[str, tuple[str, str]]  # layer -> (ONNX node, precision)
    skipped: dict[str, str]  # layer -> why its precision cannot be set (constants, shape values, Q/DQ)
    unmatched_nodes: tuple[str, ...]  # plan nodes no layer came from (ONNX Constant nodes, or another graph)

    def to_dict(self) -> dict[str, Any]:
        return {
            "applied": {k: list(v) for k, v in self.applied.items()},
            "skipped": dict(self.skipped),
            "unmatched_nodes": list(self.unmatched_nodes),
        }


def apply_layer_precisions(network: Any, plan: Any, *, node_names: Iterable[str] | None = None) -> LayerPrecisionReport:
    """Set the precision (and output types) of the layers of the plan's exceptions on a TensorRT network.

    A node pinned to fp32 gets ``layer.precision = trt.float32`` and float32 outputs on each of its layers;
    fp16 likewise with float16; int8 sets only the compute precision. Layers whose precision TensorRT does not
    let one choose (constants, shape computations, Q/DQ layers) are skipped and reported. Needs tensorrt.
    """
    trt = require("tensorrt", purpose="Setting TensorRT layer precisions", extra="gpu")
    layers = [network.get_layer(i) for i in range(network.num_layers)]
    metadata = {layer.name: str(getattr(layer, "metadata", "") or "") for layer in layers}
    nodes_of = _layer_nodes(plan, [layer.name for layer in layers], node_names, metadata)
    types = {"fp32": trt.float32, "fp16": trt.float16, "int8": trt.int8}
    excluded = {
        getattr(trt.LayerType, name)
        for name in ("CONSTANT", "SHAPE", "QUANTIZE", "DEQUANTIZE", "ASSERTION")
        if hasattr(trt.LayerType, name)
    }
    float_types = (trt.float32, trt.float16)
    applied: dict[str, tuple[str, str]] = {}
    skipped: dict[str, str] = {}
    for layer in layers:
        node = nodes_of.get(layer.name)
        if node is None:
            continue
        precision = plan.nodes[node].precision
        outputs = [layer.get_output(i) for i in range(layer.num_outputs)]
        if layer.type in excluded:
            skipped[layer.name] = f"{layer.type.name} layer"
        elif any(not getattr(o, "is_execution_tensor", True) for o in outputs):
            skipped[layer.name] = "computes shapes, not activations"
        elif any(o.dtype not in (*float_types, trt.int8) for o in outputs):
            skipped[layer.name] = f"outputs {[str(o.dtype) for o in outputs]}, not activations"
        else:
            layer.precision = types[precision]
            if precision != "int8":  # an INT8 output type would need a dynamic range too
                for index, output in enumerate(outputs):
                    if output.dtype in float_types:
                        layer.set_output_type(index, types[precision])
            applied[layer.name] = (node, precision)
    matched = set(nodes_of.values())
    return LayerPrecisionReport(
        applied=applied, skipped=skipped, unmatched_nodes=tuple(sorted(n for n in plan.nodes if n not in matched))
    )


class PlanLayerPrecisions:
    """The postprocess step of the chain: apply_layer_precisions() with every node name of the ONNX file.

    Polygraphy's PostprocessNetwork calls it with ``network=``; the last report stays in ``report``.
    """

    def __init__(self, plan: Any, onnx_path: str | os.PathLike[str]) -> None:
        self.plan = plan
        self.onnx_path = Path(onnx_path)
        self.report: LayerPrecisionReport | None = None
        self.__name__ = "workbench_layer_precisions"

    def __call__(self, network: Any) -> None:
        self.report = apply_layer_precisions(network, self.plan, node_names=_node_names(self.onnx_path))

    def __repr__(self) -> str:
        return f"PlanLayerPrecisions({len(self.plan.nodes)} node(s) of {self.onnx_path.name})"


# --------------------------------------------------------------------------------------------------------------
# the ONNX side: is this model something TensorRT can parse, and does the plan belong to it?


def _load_graph(onnx_path: Path) -> Any:
    onnx = require("onnx", purpose="Reading an ONNX model for TensorRT")
    if not onnx_path.is_file():
        raise ModelSourceError(f"ONNX model {onnx_path} does not exist.", fix="export the model first")
    return onnx.load(str(onnx_path), load_external_data=False).graph


def _node_names(onnx_path: Path) -> list[str]:
    return [node.name for node in _load_graph(onnx_path).node if node.name]


def check_onnx_for_tensorrt(
    onnx_path: str | os.PathLike[str], config: TensorRTConfig = TensorRTConfig(), plan: Any = None
) -> list[str]:
    """Check, without TensorRT, what would make the build fail or silently do less; return the node names.

    Raises:
        ModelSourceError: The file is missing, or it holds onnxruntime contrib ops TensorRT cannot parse.
        ConfigError: The plan names nodes that are not in this graph, or the config's INT8 mode does not match
            the model (Q/DQ nodes without explicit_quantization, or none with it).
    """
    path = Path(onnx_path)
    graph = _load_graph(path)
    contrib = sorted({node.op_type for node in graph.node if node.domain in CONTRIB_DOMAINS})
    if contrib:
        raise ModelSourceError(
            f"{path} uses onnxruntime's contrib ops {contrib}, which TensorRT's ONNX parser does not know.",
            expected="a graph of standard ONNX ops",
            fix="build from the plain export (export_onnx()'s model.onnx), not from fuse_transformer()'s output; "
            "TensorRT fuses attention and layer norm itself",
        )
    names = [node.name for node in graph.node if node.name]
    if config.profiles:
        _check_profiles_cover_inputs(graph, config.profiles, path)
    if plan is not None:
        missing = sorted(set(plan.nodes) - set(names))
        if missing:
            raise ConfigError(
                f"The PrecisionPlan pins {len(missing)} node(s) that are not in {path.name}: {missing[:5]}"
                f"{' ...' if len(missing) > 5 else ''}.",
                expected="node names of the model being built (a plan made on the fused graph uses its names, "
                "e.g. 'Attention_0')",
                fix="make the plan on the graph TensorRT builds from (the plain or Q/DQ export)",
            )
    has_qdq = any(node.op_type in ("QuantizeLinear", "DequantizeLinear") for node in graph.node)
    if config.explicit_quantization and not has_qdq:
        raise ConfigError(
            f"explicit_quantization is set but {path.name} has no QuantizeLinear/DequantizeLinear nodes, so "
            "TensorRT would quantize nothing.",
            fix="convert it first (PrecisionPlan.preset('tensorrt_int8_qdq').convert(...)), or use the "
            "'tensorrt_int8_calibrated' preset with calibration feeds",
        )
    if config.calibrated and has_qdq:
        raise ConfigError(
            f"{path.name} already has Q/DQ nodes; TensorRT then ignores a calibrator, so the calibration data "
            "would be silently unused.",
            fix="use TensorRTConfig.preset('tensorrt_int8_qdq') for this model",
        )
    return names


def _graph_inputs(graph: Any) -> dict[str, int]:
    """Input name -> rank, for the inputs a caller feeds (not initializers)."""
    initializers = {t.name for t in graph.initializer}
    return {v.name: len(v.type.tensor_type.shape.dim) for v in graph.input if v.name not in initializers}


def _check_profiles_cover_inputs(graph: Any, profiles: Sequence[Mapping[str, ShapeRange]], path: Path) -> None:
    inputs = _graph_inputs(graph)
    profile = profiles[0]  # every profile names the same inputs (TensorRTConfig checks)
    missing = sorted(set(inputs) - set(profile))
    unknown = sorted(set(profile) - set(inputs))
    wrong_rank = {
        name: (len(profile[name][0]), rank)
        for name, rank in inputs.items()
        if name in profile and rank and len(profile[name][0]) != rank
    }
    if missing or unknown or wrong_rank:
        problems = []
        if missing:
            problems.append(f"no shapes for the inputs {missing} (Polygraphy would fix them at 1 in every dimension)")
        if unknown:
            problems.append(f"shapes for {unknown}, which are not inputs of {path.name}")
        if wrong_rank:
            problems.append("ranks (profile, model) differ: " + ", ".join(f"{n} {r}" for n, r in wrong_rank.items()))
        raise ConfigError(
            f"TensorRTConfig.profiles do not match {path.name}: {'; '.join(problems)}.",
            expected=f"shapes for exactly the inputs {sorted(inputs)}",
            fix="build the profile with profile_for(<the model's input names>, ...)",
        )


def _default_profile(onnx_path: Path) -> dict[str, ShapeRange]:
    ranks = _graph_inputs(_load_graph(onnx_path))
    if not ranks or any(rank != 2 for rank in ranks.values()):
        raise ConfigError(
            f"TensorRTConfig.profiles is empty and {onnx_path.name}'s inputs are not all [batch, sequence] "
            f"(ranks {ranks}), so no default profile fits.",
            fix="give TensorRTConfig(profiles=({name: (min_shape, opt_shape, max_shape), ...},))",
        )
    return profile_for(list(ranks), *DEFAULT_BATCH, *DEFAULT_SEQUENCE)


# --------------------------------------------------------------------------------------------------------------
# the loader chain


class CalibrationFeeds:
    """Workbench feed dicts as a rewindable data loader for Polygraphy's Calibrator.

    The Calibrator sets ``input_metadata`` (the network's input types at the calibration profile's opt shapes);
    feeds are then cast to those types (int64 token ids -> int32 where the network takes int32) and inputs the
    network does not have are dropped.
    """

    def __init__(self, feeds: Iterable[Mapping[str, Any]]) -> None:
        self.feeds = [dict(feed) for feed in feeds]
        self.input_metadata: Any = None

    def __len__(self) -> int:
        return len(self.feeds)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        from workbench.engines.tensorrt import _cast, _numpy_dtype

        for feed in self.feeds:
            if self.input_metadata is None:
                yield {name: np.asarray(value) for name, value in feed.items()}
            else:
                yield {
                    name: _cast(np.asarray(feed[name]), _numpy_dtype(meta.dtype))
                    for name, meta in self.input_metadata.items()
                    if name in feed
                }


def _check_calibration_feeds(feeds: list[dict[str, Any]], profile: Mapping[str, ShapeRange]) -> None:
    if not feeds:
        raise DataError(
            "Calibrated INT8 needs calibration data, and none was given.",
            fix="pass calibration_feeds=tokenize_batches(tokenizer, sentences, ...)",
        )
    for index, feed in enumerate(feeds):
        missing = sorted(set(profile) - set(feed))
        if missing:
            raise DataError(
                f"Calibration batch {index} lacks the inputs {missing}.",
                fix="tokenize with input_names= the model's inputs",
            )
        for name, (_, opt, _) in profile.items():
            shape = tuple(np.shape(feed[name]))
            if shape != tuple(opt):
                raise DataError(
                    f"Calibration batch {index}: input {name!r} has shape {shape}, but TensorRT calibrates at the "
                    f"calibration profile's opt shape {tuple(opt)} only.",
                    expected="every calibration batch at the last profile's opt shape",
                    fix=f"tokenize_batches(tokenizer, sentences, batch_size={opt[0]}, sequence_length={opt[-1]}, "
                    "padding='max_length') and drop a smaller last batch",
                )


class BuilderConfig:
    """Polygraphy's CreateConfig plus the settings that need tensorrt to exist, resolved when called.

    EngineFromNetwork calls it with (builder, network), as it would a CreateConfig. Until then:
    ``create_config`` holds every flag (inspectable without tensorrt), ``calibration_feeds`` the data the
    Calibrator will read, and ``workspace_bytes`` the workspace limit.
    """

    def __init__(
        self,
        create_config: Any,
        *,
        workspace_bytes: int | None = None,
        calibration_feeds: CalibrationFeeds | None = None,
        calibration_cache: str | None = None,
    ) -> None:
        self.create_config = create_config
        self.workspace_bytes = workspace_bytes
        self.calibration_feeds = calibration_feeds
        self.calibration_cache = calibration_cache

    def resolve(self) -> Any:
        """A CreateConfig with the Calibrator and the workspace limit set. Needs tensorrt."""
        trt = require("tensorrt", purpose="Configuring a TensorRT build", extra="gpu")
        trt_backend = require("polygraphy.backend.trt", purpose="Configuring a TensorRT build")
        resolved = copy.copy(self.create_config)  # loaders are constant: never mutate the one we were given
        if self.workspace_bytes is not None:
            resolved.memory_pool_limits = {
                **(resolved.memory_pool_limits or {}),
                trt.MemoryPoolType.WORKSPACE: self.workspace_bytes,
            }
        if self.calibration_feeds is not None:
            if not hasattr(trt, "IInt8EntropyCalibrator2"):
                raise WorkbenchError(
                    f"TensorRT {getattr(trt, '__version__', '')} has no INT8 calibrators (implicit quantization was "
                    "removed).",
                    fix="use TensorRTConfig.preset('tensorrt_int8_qdq') with a Q/DQ model",
                )
            resolved.calibrator = trt_backend.Calibrator(
                data_loader=self.calibration_feeds, cache=self.calibration_cache
            )
        return resolved

    def __call__(self, builder: Any, network: Any) -> Any:
        return self.resolve()(builder, network)


@dataclass(frozen=True)
class TensorRTLoaders:
    """The Polygraphy loader chain build_loaders() constructs; calling it builds (and saves) the engine.

    Attributes:
        network: NetworkFromOnnxPath.
        postprocess: PostprocessNetwork that applies the plan's layer precisions, or None without a plan.
        create_config: The CreateConfig (fp16, int8, profiles, precision_constraints, load_timing_cache, ...).
        builder_config: What EngineFromNetwork calls for its config (create_config + Calibrator + workspace).
        engine: EngineFromNetwork.
        save: SaveEngine, or None when no engine_path was given.
        profiles: The profiles as plain shapes (the same as create_config.profiles).
        layer_precisions: The PlanLayerPrecisions step (its .report is filled by a build), or None.
    """

    network: Any
    postprocess: Any
    create_config: Any
    builder_config: BuilderConfig
    engine: Any
    save: Any
    profiles: tuple[dict[str, ShapeRange], ...]
    layer_precisions: PlanLayerPrecisions | None = None

    @property
    def calibration_feeds(self) -> CalibrationFeeds | None:
        return self.builder_config.calibration_feeds

    @property
    def final(self) -> Any:
        """The last loader of the chain: SaveEngine, or EngineFromNetwork."""
        return self.save if self.save is not None else self.engine

    def __call__(self) -> Any:
        """Build the engine (and save it); returns the trt.ICudaEngine. Needs tensorrt and a GPU."""
        return self.final()


def _check_plan(plan: Any, config: TensorRTConfig) -> None:
    if plan is None:
        return
    if plan.method == "int8_dynamic":
        raise ConfigError(
            "TensorRT has no dynamic INT8, so a PrecisionPlan with method 'int8_dynamic' cannot "
            "describe a TensorRT engine.",
            fix="use PrecisionPlan.preset('tensorrt_int8_qdq') and build from its Q/DQ model with "
            "TensorRTConfig.preset('tensorrt_int8_qdq'), or calibrated INT8",
        )
    if plan.method == "fp32" and (config.fp16 or config.int8):
        raise ConfigError(
            "The PrecisionPlan says FP32 throughout, but the TensorRTConfig enables "
            f"{[p for p in config.precisions if p != 'fp32']}.",
            fix="set fp16=False and int8=False, or use a plan for the reduced precision",
        )
    needed = {plan.default_precision} | {node.precision for node in plan.nodes.values()}
    disabled = sorted(p for p in needed if p not in config.precisions)
    if disabled:
        raise ConfigError(
            f"The PrecisionPlan ({plan.method}) needs {disabled}, which the TensorRTConfig does not "
            f"enable (it allows {list(config.precisions)}).",
            fix=f"set {' and '.join(f'{p}=True' for p in disabled)} in the TensorRTConfig",
        )
    if plan.nodes and config.precision_constraints == "none":
        raise ConfigError(
            f"The PrecisionPlan keeps {len(plan.nodes)} node(s) at other precisions, but "
            "precision_constraints='none' makes TensorRT ignore layer precisions.",
            fix="set precision_constraints='prefer' (or 'obey' to fail when a layer has no such kernel)",
        )


def build_loaders(
    onnx_path: str | os.PathLike[str],
    config: TensorRTConfig = TensorRTConfig(),
    *,
    plan: Any = None,
    calibration_feeds: Iterable[Mapping[str, Any]] | None = None,
    engine_path: str | os.PathLike[str] | None = None,
) -> TensorRTLoaders:
    """Construct Polygraphy's loader chain for `onnx_path` without calling it (no tensorrt needed).

    Args:
        onnx_path: The plain (or Q/DQ) ONNX model. Read now only when config.profiles is empty.
        config: Precisions, profiles, caches.
        plan: A PrecisionPlan whose exceptions become layer precisions; None: builder flags only.
        calibration_feeds: Feed dicts at the last profile's opt shape, for calibrated INT8 (and only for it).
        engine_path: Where SaveEngine writes the engine; None: the chain ends at EngineFromNetwork.

    Raises:
        ConfigError: The plan and the config disagree, or calibration feeds are given where nothing calibrates.
        DataError: Calibrated INT8 without feeds, or feeds of the wrong shape.
    """
    trt_backend = require("polygraphy.backend.trt", purpose="Building TensorRT loaders")
    onnx_path = Path(onnx_path)
    _check_plan(plan, config)
    profiles = config.profiles or (_default_profile(onnx_path),)
    feeds = None
    if config.calibrated:
        if calibration_feeds is None:
            raise DataError(
                "Calibrated INT8 (int8=True without explicit_quantization) needs calibration_feeds.",
                fix="pass calibration_feeds=tokenize_batches(...), or build from a Q/DQ model with "
                "TensorRTConfig.preset('tensorrt_int8_qdq')",
            )
        feeds = CalibrationFeeds(calibration_feeds)
        _check_calibration_feeds(feeds.feeds, profiles[-1])
    elif calibration_feeds is not None:
        raise ConfigError(
            "calibration_feeds were given but this config does not calibrate "
            f"(int8={config.int8}, explicit_quantization={config.explicit_quantization}); they would "
            "be ignored.",
            fix="drop calibration_feeds, or use the 'tensorrt_int8_calibrated' preset",
        )

    with quiet_polygraphy("WARNING"):  # CreateConfig logs an INFO line about TF32 on construction
        network = trt_backend.NetworkFromOnnxPath(str(onnx_path))
        precisions = postprocess = None
        if plan is not None:
            precisions = PlanLayerPrecisions(plan, onnx_path)
            postprocess = trt_backend.PostprocessNetwork(
                network, precisions, name="workbench: layer precisions from the PrecisionPlan"
            )
        polygraphy_profiles = []
        for profile in profiles:
            shapes = trt_backend.Profile()
            for name, (low, opt, high) in profile.items():
                shapes.add(name, min=low, opt=opt, max=high)
            polygraphy_profiles.append(shapes)
        create_config = trt_backend.CreateConfig(
            fp16=config.fp16,
            int8=config.int8,
            profiles=polygraphy_profiles,
            precision_constraints=None if config.precision_constraints == "none" else config.precision_constraints,
            load_timing_cache=config.timing_cache,
            builder_optimization_level=config.builder_optimization_level,
        )
        builder_config = BuilderConfig(
            create_config,
            workspace_bytes=config.workspace_mb * 2**20 if config.workspace_mb is not None else None,
            calibration_feeds=feeds,
            calibration_cache=config.calibration_cache,
        )
        engine = trt_backend.EngineFromNetwork(
            postprocess if postprocess is not None else network,
            config=builder_config,
            save_timing_cache=config.timing_cache,
        )
        save = trt_backend.SaveEngine(engine, str(engine_path)) if engine_path is not None else None
    return TensorRTLoaders(
        network=network,
        postprocess=postprocess,
        create_config=create_config,
        builder_config=builder_config,
        engine=engine,
        save=save,
        profiles=profiles,
        layer_precisions=precisions,
    )


# --------------------------------------------------------------------------------------------------------------
# building


@dataclass(frozen=True)
class TensorRTEngine:
    """A built engine and how it was built."""

    path: Path
    onnx_path: Path
    config: TensorRTConfig
    seconds: float
    size_mb: float
    layer_precisions: LayerPrecisionReport | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def runner(self, **options: Any) -> TensorRTRunner:
        """A TensorRTRunner for this engine (name: the file's stem unless given)."""
        return TensorRTRunner(self.path, **options)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "onnx_path": str(self.onnx_path),
            "config": self.config.to_dict(),
            "seconds": self.seconds,
            "size_mb": self.size_mb,
            "notes": list(self.notes),
            "layer_precisions": self.layer_precisions.to_dict() if self.layer_precisions else None,
        }

    def _repr_html_(self) -> str:
        pinned = (
            f", {len(self.layer_precisions.applied)} layer(s) pinned by the plan"
            if self.layer_precisions is not None
            else ""
        )
        notes = "".join(f"<li>{n}</li>" for n in self.notes)
        return (
            f"<b>TensorRT engine</b> <code>{self.path}</code>: {'/'.join(self.config.precisions)}, "
            f"{self.size_mb:.1f} MB, built in {self.seconds:.1f} s{pinned}.{f'<ul>{notes}</ul>' if notes else ''}"
        )


def build_engine(
    onnx_path: str | os.PathLike[str],
    config: TensorRTConfig = TensorRTConfig(),
    *,
    plan: Any = None,
    calibration_feeds: Iterable[Mapping[str, Any]] | None = None,
    engine_path: str | os.PathLike[str] | None = None,
) -> TensorRTEngine:
    """Build a TensorRT engine from an ONNX model with Polygraphy and save it.

    The model and the arguments are checked first (no tensorrt needed for that); the engine file appears only
    when the build succeeds.

    Args:
        onnx_path: The plain export, or its Q/DQ conversion for explicit quantization.
        config: Precisions, profiles, caches.
        plan: A PrecisionPlan whose exceptions (e.g. nodes kept in FP32) become TensorRT layer precisions.
        calibration_feeds: For calibrated INT8: feed dicts at the last profile's opt shape.
        engine_path: Where to write the engine; default: beside the model, with the suffix ".plan".

    Raises:
        MissingDependency: tensorrt is not installed (install the [gpu] extra on a GPU machine).
        DeviceUnavailable: tensorrt is installed but there is no NVIDIA GPU.
        ModelSourceError, ConfigError, DataError: see check_onnx_for_tensorrt() and build_loaders().
        WorkbenchError: TensorRT failed to parse or build (Polygraphy's message included).
    """
    onnx_path = Path(onnx_path)
    engine_path = Path(engine_path) if engine_path is not None else onnx_path.with_suffix(".plan")
    check_onnx_for_tensorrt(onnx_path, config, plan)
    loaders = build_loaders(onnx_path, config, plan=plan, calibration_feeds=calibration_feeds)
    require_tensorrt("Building a TensorRT engine")
    trt_backend = require("polygraphy.backend.trt", purpose="Building a TensorRT engine")
    exceptions = require("polygraphy.exception", purpose="Building a TensorRT engine")

    from workbench._files import FILE_MODE, disk_errors, staging_directory

    started = time.perf_counter()
    with staging_directory(engine_path.parent, "tensorrt") as staging, disk_errors(engine_path):
        staged = staging / engine_path.name
        with quiet_polygraphy("WARNING"):
            save = trt_backend.SaveEngine(loaders.engine, str(staged))
            try:
                engine = save()
            except exceptions.PolygraphyException as exc:
                raise WorkbenchError(
                    f"TensorRT could not build an engine from {onnx_path}: {exc}",
                    fix="read TensorRT's messages above; with precision_constraints='obey', try 'prefer'; "
                    "`polygraphy inspect capability` on the model lists the nodes TensorRT cannot parse",
                ) from exc
        del engine  # frees the GPU engine; the file is what we keep
        os.chmod(staged, FILE_MODE)
        os.replace(staged, engine_path)
    seconds = time.perf_counter() - started

    report = loaders.layer_precisions.report if loaders.layer_precisions is not None else None
    notes = []
    if report is not None and report.unmatched_nodes:
        notes.append(
            f"{len(report.unmatched_nodes)} node(s) of the plan became no TensorRT layer whose precision "
            f"could be set (e.g. ONNX Constant nodes): {list(report.unmatched_nodes)[:5]}"
        )
    if config.calibrated:
        notes.append("calibrated (implicit) INT8: deprecated by NVIDIA from TensorRT 10 on; prefer Q/DQ models")
        if config.calibration_cache and Path(config.calibration_cache).exists():
            notes.append(
                f"calibration ranges cached in {config.calibration_cache}: delete it when the model or "
                "the data changes, or TensorRT reuses stale ranges"
            )
    return TensorRTEngine(
        path=engine_path,
        onnx_path=onnx_path,
        config=config,
        seconds=seconds,
        size_mb=engine_path.stat().st_size / 2**20,
        layer_precisions=report,
        notes=tuple(notes),
    )
