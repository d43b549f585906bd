"""PrecisionPlan: which precision each node runs at, and why. The one source for every converter.

A plan names a method (how the bulk of the model is converted: dynamic INT8, static INT8, FP16, or none) with
its options, and the nodes that are exceptions: kept in FP32 because a user pinned them, an FP16 overflow scan
flagged them, or a sensitivity search found that they lose the accuracy. Converters receive the exceptions as
`keep_fp32` (onnxruntime's `nodes_to_exclude` for INT8, `node_block_list` for FP16, NNCF's `ignored_scope` for
OpenVINO INT8; TensorRT layer precisions later).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from workbench.errors import ConfigError

PRECISIONS = ("fp32", "fp16", "int8", "int4")
REASONS = ("pinned", "overflow", "sensitivity")
# weight-only methods (decoders): MatMulNBits for onnxruntime, NNCF weight compression for OpenVINO
WEIGHT_ONLY_METHODS = ("int4_weight_only", "int8_weight_only", "nncf_int4_weight_only", "nncf_int8_weight_only")
METHODS = ("int8_dynamic", "int8_static", "int8_nncf", "fp16", "fp32", *WEIGHT_ONLY_METHODS)
_METHOD_PRECISION = {
    "int8_dynamic": "int8",
    "int8_static": "int8",
    "int8_nncf": "int8",
    "fp16": "fp16",
    "fp32": "fp32",
    "int4_weight_only": "int4",
    "int8_weight_only": "int8",
    "nncf_int4_weight_only": "int4",
    "nncf_int8_weight_only": "int8",
}
#: The engine that runs each method's output (a candidate's `engine`).
METHOD_ENGINE = {
    "int8_dynamic": "onnxruntime",
    "int8_static": "onnxruntime",
    "int8_nncf": "openvino",
    "fp16": "onnxruntime",
    "fp32": "onnxruntime",
    "int4_weight_only": "onnxruntime",
    "int8_weight_only": "onnxruntime",
    "nncf_int4_weight_only": "openvino",
    "nncf_int8_weight_only": "openvino",
}


def _config_class(method: str) -> Any:
    if method == "int8_nncf":  # its own module: NNCF and OpenVINO are an extra of their own
        from workbench.stages.precision.nncf import NncfQuantConfig

        return NncfQuantConfig
    from workbench.stages.precision import quantize as precision

    if method in WEIGHT_ONLY_METHODS:
        from workbench.stages.precision.weight_only import WeightOnlyQuantConfig

        return WeightOnlyQuantConfig
    return {
        "int8_dynamic": precision.DynamicQuantConfig,
        "int8_static": precision.StaticQuantConfig,
        "fp16": precision.Fp16Config,
    }.get(method)


@dataclass(frozen=True)
class NodePrecision:
    """One node's exception to the plan's default precision."""

    precision: str = "fp32"
    reason: str = "pinned"
    note: str = ""

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ConfigError(f"Node precision {self.precision!r} is not one of {list(PRECISIONS)}.")
        if self.reason not in REASONS:
            raise ConfigError(f"Reason {self.reason!r} is not one of {list(REASONS)}.")


@dataclass(frozen=True)
class PrecisionPlan:
    """Per-node precision for one conversion method.

    Attributes:
        method: "int8_dynamic", "int8_static", "int8_nncf" (OpenVINO IR quantized by NNCF), "fp16", "fp32" (no
            conversion), or a weight-only method for decoders: "int4_weight_only" / "int8_weight_only"
            (onnxruntime's MatMulNBits) and "nncf_int4_weight_only" / "nncf_int8_weight_only" (NNCF, an OpenVINO
            IR; needs openvino and nncf).
        options: The method's config (DynamicQuantConfig, StaticQuantConfig, NncfQuantConfig, Fp16Config or
            WeightOnlyQuantConfig); None: its defaults.
        nodes: Node name -> NodePrecision, for the nodes that do not run at the method's precision.
        smoothing: A SmoothingConfig to apply before converting (SmoothQuant: activation outliers move into
            the weights, calibrated on the conversion's calibration data), or None. For int8_nncf it becomes
            NNCF's own SmoothQuant (alpha per layer type); None switches NNCF's SmoothQuant off.
    """

    method: str = "int8_dynamic"
    options: Any = None
    nodes: Mapping[str, NodePrecision] = field(default_factory=dict)
    smoothing: Any = None

    PRESETS: ClassVar[dict[str, tuple[str, str]]] = {
        # preset -> (method, the method config's preset)
        "cpu_int8_dynamic": ("int8_dynamic", "cpu_int8_dynamic"),
        "cpu_int8_dynamic_per_tensor": ("int8_dynamic", "cpu_int8_dynamic_per_tensor"),
        "cpu_int8_static": ("int8_static", "cpu_int8_static"),
        "cpu_int8_static_qoperator": ("int8_static", "cpu_int8_static_qoperator"),
        "tensorrt_int8_qdq": ("int8_static", "tensorrt_int8_qdq"),
        # NNCF's defaults for transformers (SmoothQuant on MatMuls, alpha 0.95), and the same without smoothing
        "cpu_int8_nncf": ("int8_nncf", "cpu_int8_nncf"),
        "cpu_int8_nncf_no_smoothing": ("int8_nncf", "cpu_int8_nncf"),
        "gpu_fp16": ("fp16", "gpu_fp16"),
        "cpu_int4_weight_only": ("int4_weight_only", "cpu_weight_only"),
        "cpu_int8_weight_only": ("int8_weight_only", "cpu_weight_only"),
        "cpu_int4_weight_only_fp32_compute": ("int4_weight_only", "cpu_weight_only_fp32_compute"),
        "openvino_int4_weight_only": ("nncf_int4_weight_only", "cpu_weight_only"),
        "openvino_int8_weight_only": ("nncf_int8_weight_only", "cpu_weight_only"),
    }
    #: Presets that smooth: preset -> SmoothingConfig fields.
    PRESET_SMOOTHING: ClassVar[dict[str, dict[str, Any]]] = {
        "cpu_int8_nncf": {"alpha": 0.95, "op_types": ("MatMul",)},
    }

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"PrecisionPlan.method {self.method!r} is not one of {list(METHODS)}.")
        config_class = _config_class(self.method)
        if config_class is None:
            options = None
        elif self.options is None:
            options = config_class()
        elif isinstance(self.options, Mapping):
            options = config_class.from_dict(dict(self.options))
        elif isinstance(self.options, config_class):
            options = self.options
        else:
            raise ConfigError(
                f"PrecisionPlan options for {self.method} must be a {config_class.__name__}, "
                f"got {type(self.options).__name__}."
            )
        object.__setattr__(self, "options", options)
        nodes = {
            name: value if isinstance(value, NodePrecision) else NodePrecision(**value)
            for name, value in dict(self.nodes).items()
        }
        object.__setattr__(self, "nodes", nodes)
        if isinstance(self.smoothing, Mapping):
            from workbench.stages.precision.smooth import SmoothingConfig

            object.__setattr__(self, "smoothing", SmoothingConfig.from_dict(dict(self.smoothing)))

    @classmethod
    def preset(cls, name: str) -> PrecisionPlan:
        """A named plan: cpu_int8_dynamic, cpu_int8_static, tensorrt_int8_qdq, gpu_fp16, ..."""
        if name not in cls.PRESETS:
            raise ConfigError(f"No PrecisionPlan preset {name!r}.", expected=f"one of {sorted(cls.PRESETS)}")
        method, options_preset = cls.PRESETS[name]
        smoothing = cls.PRESET_SMOOTHING.get(name)
        options = _config_class(method).preset(options_preset)
        return cls(method, options, smoothing=dict(smoothing) if smoothing else None)

    @property
    def engine(self) -> str:
        """The engine that runs this plan's converted model ("onnxruntime" or "openvino")."""
        return METHOD_ENGINE[self.method]

    @property
    def default_precision(self) -> str:
        return _METHOD_PRECISION[self.method]

    def precision_of(self, node: str) -> str:
        return self.nodes[node].precision if node in self.nodes else self.default_precision

    def pin(
        self, names: Iterable[str], precision: str = "fp32", reason: str = "pinned", note: str = ""
    ) -> PrecisionPlan:
        """A new plan with `names` at `precision` (the plan itself is not changed)."""
        nodes = dict(self.nodes)
        for name in names:
            nodes[name] = NodePrecision(precision, reason, note)
        return replace(self, nodes=nodes)

    def unpin(self, names: Iterable[str]) -> PrecisionPlan:
        """A new plan where `names` run at the method's precision again."""
        drop = set(names)
        return replace(self, nodes={k: v for k, v in self.nodes.items() if k not in drop})

    @property
    def keep_fp32(self) -> tuple[str, ...]:
        """Nodes that stay FP32: `nodes_to_exclude` for INT8 converters, `node_block_list` for FP16."""
        return tuple(sorted(name for name, node in self.nodes.items() if node.precision == "fp32"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "options": self.options.to_dict() if self.options is not None else None,
            "nodes": {name: dict(node.__dict__) for name, node in sorted(self.nodes.items())},
            "smoothing": self.smoothing.to_dict() if self.smoothing is not None else None,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, *, source: str = "PrecisionPlan JSON") -> PrecisionPlan:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{source} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                "it is truncated or damaged.",
                fix="save the plan again with plan.save(path), or repair the JSON",
            ) from exc
        if not isinstance(values, dict):
            raise ConfigError(
                f"{source} holds a {type(values).__name__}, not a plan (a JSON object).",
                fix="save the plan with plan.save(path)",
            )
        unknown = set(values) - {"method", "options", "nodes", "smoothing"}
        if unknown:
            raise ConfigError(f"PrecisionPlan JSON has unknown keys {sorted(unknown)}.")
        return cls(**values)

    def save(self, path: str | os.PathLike[str]) -> Path:
        from workbench._files import atomic_path

        with atomic_path(path) as tmp:
            tmp.write_text(self.to_json() + "\n")
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> PrecisionPlan:
        """Read a plan saved with save(); a missing, unreadable or damaged file is a ConfigError naming it."""
        path = Path(path)
        try:
            text = path.read_bytes().decode("utf-8")
        except FileNotFoundError as exc:
            raise ConfigError(f"Precision plan {path} does not exist.", fix="save one with plan.save(path)") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"Precision plan {path} cannot be read: {exc}.", fix="pass a plan file written by plan.save(path)"
            ) from exc
        return cls.from_json(text, source=f"Precision plan {path}")

    def convert(
        self,
        model_path: str | os.PathLike[str],
        output_path: str | os.PathLike[str],
        *,
        calibration_feeds: Any = None,
        cache_dir: str | os.PathLike[str] | None = None,
        progress: Any = True,
    ) -> Any:
        """Apply this plan to an FP32 model with the method's converter; returns its QuantizeResult.

        Args:
            model_path: The FP32 model (fused or not; node names must be this model's). For int8_nncf: the plain
                (unfused) ONNX export or its OpenVINO IR; output_path is then an OpenVINO .xml.
            output_path: Where the converted model goes.
            calibration_feeds: Feed dicts: calibration data for static INT8 and NNCF, scan data for FP16's
                overflow scan.
            cache_dir: Calibration cache folder (static INT8).
            progress: While calibrating: True a progress bar, False none, or a ProgressCallback (see
                workbench.stages.precision.calibrate.calibrate).
        """
        from workbench.stages.precision import quantize as precision

        if self.method == "int8_nncf":  # NNCF smooths by itself: the plan's smoothing becomes its alphas
            from workbench.stages.precision.nncf import quantize_nncf

            return quantize_nncf(
                model_path,
                output_path,
                calibration_feeds,
                self.options,
                keep_fp32=self.keep_fp32,
                smoothing=self.smoothing,
            )
        if self.smoothing is not None:
            return self._convert_smoothed(
                model_path, output_path, calibration_feeds=calibration_feeds, cache_dir=cache_dir, progress=progress
            )
        if self.method == "int8_dynamic":
            return precision.quantize_dynamic(model_path, output_path, self.options, keep_fp32=self.keep_fp32)
        if self.method == "int8_static":
            return precision.quantize_static(
                model_path,
                output_path,
                calibration_feeds,
                self.options,
                keep_fp32=self.keep_fp32,
                cache_dir=cache_dir,
                progress=progress,
            )
        if self.method == "fp16":
            return precision.convert_fp16(
                model_path, output_path, self.options, keep_fp32=self.keep_fp32, scan_feeds=calibration_feeds
            )
        if self.method in WEIGHT_ONLY_METHODS:
            from workbench.stages.precision import weight_only

            bits = weight_only.WEIGHT_ONLY_BITS[self.method]
            convert = (
                weight_only.compress_weights_nncf
                if self.method.startswith("nncf_")
                else weight_only.quantize_weight_only
            )
            return convert(model_path, output_path, self.options, bits=bits, keep_fp32=self.keep_fp32)
        raise ConfigError("A PrecisionPlan with method 'fp32' converts nothing.", fix="use the FP32 model as it is")

    def _convert_smoothed(self, model_path: Any, output_path: Any, **options: Any) -> Any:
        from workbench._files import staging_directory
        from workbench.errors import DataError
        from workbench.stages.precision.smooth import smooth_activations

        if not options.get("calibration_feeds"):
            raise DataError(
                "A plan with smoothing needs calibration_feeds to measure activation ranges.",
                fix="pass calibration_feeds=tokenize_batches(tokenizer, calibration_sentences, ...)",
            )
        with staging_directory(Path(output_path).parent, "smooth") as folder:
            smoothed = smooth_activations(
                model_path, Path(folder) / "smoothed.onnx", options["calibration_feeds"], self.smoothing
            )
            # a node kept in FP32 keeps its smoothing Mul in FP32 too, or the Mul's output is still quantized
            muls = [smoothed.muls[name] for name in self.keep_fp32 if name in smoothed.muls]
            plain = replace(self, smoothing=None).pin(muls, note="smoothing Mul of a node kept in FP32")
            result = plain.convert(smoothed.path, output_path, **options)
        note = f"smoothed the inputs of {len(smoothed.smoothed)} nodes (alpha {self.smoothing.alpha}) before converting"
        return replace(result, notes=(*result.notes, note))

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td><code>{name}</code></td><td>{node.precision}</td><td>{node.reason}</td><td>{node.note}</td></tr>"
            for name, node in sorted(self.nodes.items())
        )
        smoothing = f", SmoothQuant alpha {self.smoothing.alpha}" if self.smoothing is not None else ""
        head = f"<b>Precision plan</b>: {self.method}{smoothing}, every node at {self.default_precision}"
        if not rows:
            return head + "."
        return (
            f"{head} except these {len(self.nodes)}:<table><tr><th>node</th><th>precision</th><th>why</th>"
            f"<th></th></tr>{rows}</table>"
        )
