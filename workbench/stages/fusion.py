"""Fusion stage: onnxruntime's transformer optimizer fuses Attention, LayerNorm and GELU subgraphs, checked against
the unfused graph."""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from workbench._lazy import require
from workbench.config import StageConfig, check_choice
from workbench.engines.onnxruntime import max_output_difference
from workbench.errors import ConfigError, WorkbenchError
from workbench.models import HFModelSource, ModelSource

SUPPORTED_MODEL_TYPES = ("bert", "bart", "gpt2", "t5", "vit", "clip", "swin")
# Hugging Face model_type -> the onnxruntime optimizer's model_type
_HF_TO_ORT_MODEL_TYPE = {
    "bert": "bert",
    "roberta": "bert",
    "distilbert": "bert",
    "xlm-roberta": "bert",
    "electra": "bert",
    "mpnet": "bert",
    "camembert": "bert",
    "albert": "bert",
    "bart": "bart",
    "gpt2": "gpt2",
    "t5": "t5",
    "vit": "vit",
    "clip": "clip",
    "swin": "swin",
}
# op types the report counts; the optimizer's own statistics cover these and more
FUSED_OP_TYPES = (
    "EmbedLayerNormalization",
    "Attention",
    "MultiHeadAttention",
    "SkipLayerNormalization",
    "LayerNormalization",
    "BiasGelu",
    "FastGelu",
    "Gelu",
    "SkipSimplifiedLayerNormalization",
)


@dataclass(frozen=True)
class FusionConfig(StageConfig):
    """Options for onnxruntime's transformer optimizer.

    Attributes:
        model_type: The optimizer's model family ("bert" covers BERT, RoBERTa, DistilBERT, MiniLM, ...).
        num_heads: Attention heads; 0 lets the optimizer detect them from the graph.
        hidden_size: Hidden size; 0 lets the optimizer detect it.
        opt_level: onnxruntime graph optimizations to bake in before fusing: 0 keeps the graph portable
            across execution providers (recommended), 1/2/99 bake in provider-specific rewrites.
        atol: Largest allowed absolute difference between the fused and unfused model on the check inputs, at
            token positions (padded positions are not compared: see `max_abs_difference`).
    """

    model_type: str = "bert"
    num_heads: int = 0
    hidden_size: int = 0
    opt_level: int = 0
    atol: float = 1e-4

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"bert": {}, "minilm": {"num_heads": 12, "hidden_size": 384}}

    def __post_init__(self) -> None:
        check_choice(self, "model_type", SUPPORTED_MODEL_TYPES)
        check_choice(self, "opt_level", (0, 1, 2, 99))
        if self.num_heads < 0 or self.hidden_size < 0:
            raise ConfigError("FusionConfig.num_heads and hidden_size must be >= 0 (0 = detect from the graph).")
        if self.num_heads and self.hidden_size and self.hidden_size % self.num_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}.",
                fix="read both from the model's config.json, or leave them 0 to detect them",
            )

    @classmethod
    def for_source(cls, source: ModelSource, **overrides: Any) -> FusionConfig:
        """A config with model type, heads and hidden size read from a Hugging Face model's config."""
        values: dict[str, Any] = {}
        if isinstance(source, HFModelSource):
            hf_type = source.model_type
            if hf_type not in _HF_TO_ORT_MODEL_TYPE:
                raise ConfigError(
                    f"No transformer fusion is known for model_type {hf_type!r}.",
                    expected=f"one of {sorted(_HF_TO_ORT_MODEL_TYPE)}",
                    fix="skip fusion for this model, or pass FusionConfig(model_type=...) explicitly",
                )
            values = {
                "model_type": _HF_TO_ORT_MODEL_TYPE[hf_type],
                "num_heads": source.num_heads or 0,
                "hidden_size": source.hidden_size or 0,
            }
        return cls(**{**values, **overrides})


@dataclass(frozen=True)
class FusionResult:
    """The fused model and what fused."""

    path: Path
    config: FusionConfig
    fused_ops: dict[str, int]
    op_counts_before: dict[str, int]
    op_counts_after: dict[str, int]
    max_abs_diff: float | None
    seconds: float

    @property
    def nodes_before(self) -> int:
        return sum(self.op_counts_before.values())

    @property
    def nodes_after(self) -> int:
        return sum(self.op_counts_after.values())

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "config": self.config.to_dict(),
            "fused_ops": self.fused_ops,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "max_abs_diff": self.max_abs_diff,
            "seconds": self.seconds,
        }

    def _repr_html_(self) -> str:
        fused = ", ".join(f"{k} {v}" for k, v in self.fused_ops.items() if v) or "nothing"
        check = "not checked" if self.max_abs_diff is None else f"max abs diff vs unfused {self.max_abs_diff:.2e}"
        return (
            f"<b>Fused</b> <code>{self.path}</code>: {fused}. Nodes {self.nodes_before} -> {self.nodes_after}; "
            f"{check}; {self.seconds:.1f} s."
        )


def _op_counts(model: Any) -> dict[str, int]:
    return dict(Counter(node.op_type for node in model.graph.node))


def fuse_proto(model: Any, config: FusionConfig = FusionConfig()) -> tuple[Any, dict[str, int]]:
    """Fuse an in-memory model; returns (fused model, fused op counts). `model` is not modified."""
    onnx = require("onnx", purpose="Transformer fusion")
    optimizer = require("onnxruntime.transformers.optimizer", purpose="Transformer fusion")
    private = onnx.ModelProto()
    private.CopyFrom(model)  # the optimizer edits the proto it is given
    try:
        optimized = optimizer.optimize_model(
            private,
            model_type=config.model_type,
            num_heads=config.num_heads,
            hidden_size=config.hidden_size,
            opt_level=config.opt_level,
        )
    except Exception as exc:
        raise WorkbenchError(
            f"onnxruntime's transformer optimizer failed: {type(exc).__name__}: {exc}",
            fix="check FusionConfig.model_type, num_heads and hidden_size against the model's config.json",
        ) from exc
    statistics = optimized.get_fused_operator_statistics()
    # what the optimizer's own save does: sort the graph, declare the com.microsoft opset of the fused ops
    optimized.topological_sort()
    fused = optimized.model
    if any(n.domain == "com.microsoft" for n in fused.graph.node) and not any(
        o.domain == "com.microsoft" for o in fused.opset_import
    ):
        fused.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return fused, {op: int(statistics.get(op, 0)) for op in FUSED_OP_TYPES}


def fuse_transformer(
    model_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    config: FusionConfig = FusionConfig(),
    *,
    check_feeds: list[dict[str, np.ndarray]] | None = None,
) -> FusionResult:
    """Fuse attention, layer-norm and GELU subgraphs with onnxruntime's transformer optimizer.

    The input file is not modified. With `check_feeds`, the fused model is run against the input model and
    the stage raises if any output differs by more than `config.atol`; the fused file is written only then.

    Raises:
        WorkbenchError: The optimizer failed, or the fused model does not match the input model.
    """
    from workbench._files import check_output_file
    from workbench.onnx.io import load_onnx, save_onnx

    check_output_file(output_path, what="The fused model's path")
    started = time.perf_counter()
    original = load_onnx(model_path)
    fused, fused_ops = fuse_proto(original, config)
    max_abs_diff = None
    if check_feeds:
        max_abs_diff = max_output_difference(original, fused, check_feeds)
        if max_abs_diff > config.atol:
            raise WorkbenchError(
                f"The fused model differs from its input by {max_abs_diff:.3g} max abs (atol {config.atol:g}); "
                "it was not written.",
                fix="pass the right num_heads / hidden_size, or a looser FusionConfig.atol if the difference is "
                "expected",
            )
    save_onnx(fused, output_path)
    return FusionResult(
        path=Path(output_path),
        config=config,
        fused_ops=fused_ops,
        op_counts_before=_op_counts(original),
        op_counts_after=_op_counts(fused),
        max_abs_diff=max_abs_diff,
        seconds=time.perf_counter() - started,
    )
