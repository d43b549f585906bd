"""Fusion of exported decoders: onnxruntime's transformer optimizer (its GPT-2 optimizer, which also handles the
RMSNorm / rotary decoders of the Llama family), with a report of op counts before and after.

Measured with transformers 5 exports (docs/generation.md): LayerNormalization / SkipLayerNormalization and
FastGelu fuse for GPT-2, SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization for Llama. Attention
does not: the optimizer's GPT-2 attention patterns match the cache layout of transformers 4 exports (one
`past_i` tensor per layer), not the per-layer key and value tensors of transformers 5's DynamicCache, and its
rotary-attention fusion does not match either. The report says which fused and which did not.

After fusing, the few projections the exporter wrote as Gemm are rewritten as MatMul + Add, so that weight-only
and dynamic quantizers (which quantize MatMul weights) see every projection of the model. An RMSNorm that fused
on its own (not into a residual Add) becomes onnxruntime's SimplifiedLayerNormalization, an op onnxruntime
registers in the standard ONNX domain, where the ONNX checker (and every other runtime) does not know it: those
few are expanded back into standard ops, so the fused file stays a valid ONNX model.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from workbench._lazy import require
from workbench.decoding import DecoderSpec, prompt_feeds
from workbench.errors import WorkbenchError
from workbench.stages.fusion import FusionConfig, FusionResult, fuse_proto

#: Hugging Face model types whose decoders onnxruntime's GPT-2 optimizer fuses (norms, GELU).
DECODER_MODEL_TYPES = ("gpt2", "llama", "mistral", "qwen2", "qwen3", "phi3", "gemma")


def decoder_fusion_config(hf_config: dict[str, Any], **overrides: Any) -> FusionConfig:
    """The fusion config of a causal LM from its config.json: the optimizer's "gpt2" family with its heads and
    width (GPT-2 names them n_head / n_embd)."""
    heads = hf_config.get("num_attention_heads", hf_config.get("n_head")) or 0
    hidden = hf_config.get("hidden_size", hf_config.get("n_embd")) or 0
    return FusionConfig(**{"model_type": "gpt2", "num_heads": int(heads), "hidden_size": int(hidden), **overrides})


def gemm_to_matmul(model: Any) -> tuple[Any, int]:
    """Rewrite Gemm nodes with a constant weight as MatMul (+ Add for the bias), on a copy.

    The MatMul keeps the Gemm's name, so a plan that pins it by name still finds it. Only the plain case is
    rewritten (alpha = beta = 1, A not transposed); a transposed weight is transposed once, here.

    Returns:
        (The rewritten copy, how many Gemm nodes were rewritten.)
    """
    onnx = require("onnx", purpose="Rewriting Gemm nodes")
    from onnx import numpy_helper

    from workbench.onnx.shapes import copy_model

    rewritten = copy_model(model)
    graph = rewritten.graph
    initializers = {t.name: t for t in graph.initializer}
    nodes, count = [], 0
    for node in graph.node:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        plain = (
            node.op_type == "Gemm"
            and node.input[1] in initializers
            and attributes.get("transA", 0) == 0
            and attributes.get("alpha", 1.0) == 1.0
            and attributes.get("beta", 1.0) == 1.0
        )
        if not plain:
            nodes.append(node)
            continue
        weight = node.input[1]
        if attributes.get("transB", 0):
            transposed = numpy_helper.to_array(initializers[weight]).T.copy()
            weight = f"{weight}_transposed"
            graph.initializer.append(numpy_helper.from_array(transposed, weight))
        has_bias = len(node.input) > 2 and node.input[2]
        product = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(onnx.helper.make_node("MatMul", [node.input[0], weight], [product], name=node.name))
        if has_bias:
            nodes.append(
                onnx.helper.make_node("Add", [product, node.input[2]], [node.output[0]], name=f"{node.name}_bias")
            )
        count += 1
    graph.ClearField("node")
    graph.node.extend(nodes)
    return rewritten, count


def expand_simplified_layer_norm(model: Any) -> tuple[Any, int]:
    """Replace standard-domain SimplifiedLayerNormalization nodes by the standard ops of RMSNorm, on a copy:
    y = x * 1 / sqrt(mean(x * x, last axis) + epsilon) * scale.

    Returns:
        (The rewritten copy, how many nodes were expanded.)
    """
    onnx = require("onnx", purpose="Rewriting SimplifiedLayerNormalization nodes")
    from onnx import numpy_helper

    from workbench.onnx.shapes import copy_model

    rewritten = copy_model(model)
    graph = rewritten.graph
    opset = next((o.version for o in rewritten.opset_import if o.domain in ("", "ai.onnx")), 17)
    nodes, count = [], 0
    for node in graph.node:
        if (
            node.op_type != "SimplifiedLayerNormalization"
            or node.domain not in ("", "ai.onnx")
            or len(node.output) > 1
            and node.output[1]
        ):
            nodes.append(node)
            continue
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        axis, epsilon = int(attributes.get("axis", -1)), float(attributes.get("epsilon", 1e-5))
        x, scale, y, base = node.input[0], node.input[1], node.output[0], node.name
        graph.initializer.append(numpy_helper.from_array(np.array(epsilon, np.float32), f"{base}_epsilon"))
        if opset >= 18:
            graph.initializer.append(numpy_helper.from_array(np.array([axis], np.int64), f"{base}_axes"))
            mean = onnx.helper.make_node(
                "ReduceMean", [f"{base}_square", f"{base}_axes"], [f"{base}_mean"], name=f"{base}_mean", keepdims=1
            )
        else:
            mean = onnx.helper.make_node(
                "ReduceMean", [f"{base}_square"], [f"{base}_mean"], name=f"{base}_mean", axes=[axis], keepdims=1
            )
        nodes += [
            onnx.helper.make_node("Mul", [x, x], [f"{base}_square"], name=f"{base}_square"),
            mean,
            onnx.helper.make_node(
                "Add", [f"{base}_mean", f"{base}_epsilon"], [f"{base}_variance"], name=f"{base}_variance"
            ),
            onnx.helper.make_node("Sqrt", [f"{base}_variance"], [f"{base}_std"], name=f"{base}_std"),
            onnx.helper.make_node("Reciprocal", [f"{base}_std"], [f"{base}_inv_std"], name=f"{base}_inv_std"),
            onnx.helper.make_node("Mul", [x, f"{base}_inv_std"], [f"{base}_normed"], name=f"{base}_normed"),
            onnx.helper.make_node("Mul", [f"{base}_normed", scale], [y], name=base),
        ]
        count += 1
    graph.ClearField("node")
    graph.node.extend(nodes)
    return rewritten, count


def decoder_check_feeds(spec: DecoderSpec, *, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Feeds that exercise both phases: a left-padded prompt batch with all logits, and a decode step on top of
    a random cache."""
    rng = np.random.default_rng(seed)
    length = min(12, spec.max_positions)
    prompts = [list(rng.integers(0, spec.vocab_size, length)), list(rng.integers(0, spec.vocab_size, length - 3))]
    first = prompt_feeds(spec, prompts, all_logits=True)
    past = min(9, spec.max_positions - 1)
    step = {
        "input_ids": rng.integers(0, spec.vocab_size, (2, 1)).astype(np.int64),
        "attention_mask": np.ones((2, past + 1), np.int64),
    }
    if spec.has_position_ids:
        step["position_ids"] = np.full((2, 1), past, np.int64)
    step["logit_positions"] = np.zeros(1, np.int64)
    for name in spec.past_names():
        step[name] = rng.standard_normal((2, spec.num_kv_heads, past, spec.head_dim)).astype(np.float32)
    return [first, step]


def fuse_decoder(
    model_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    config: FusionConfig | None = None,
    *,
    spec: DecoderSpec | None = None,
) -> FusionResult:
    """Fuse an exported decoder with onnxruntime's transformer optimizer, checked against the input model.

    The fused model is run against the input on a prompt step and a decode step; it is written only if they
    agree within `config.atol`. The decoder spec in the metadata is kept. The input file is not modified.

    Args:
        model_path: The decoder from export_decoder().
        output_path: Where to write the fused decoder.
        config: The optimizer's settings; default: the "gpt2" family with the spec's geometry left to detect.
        spec: The decoder spec; default: the one in the model's metadata.

    Returns:
        A FusionResult: fused op counts (the optimizer's statistics, plus "MatMul from Gemm"), op counts before
        and after, and the largest difference from the input model.

    Raises:
        WorkbenchError: The optimizer failed, or the fused model differs from the input.
    """
    from workbench.engines.onnxruntime import max_output_difference
    from workbench.onnx.decoder import read_decoder_spec
    from workbench.onnx.io import load_onnx, save_onnx

    started = time.perf_counter()
    spec = spec or read_decoder_spec(model_path)
    config = config or FusionConfig(model_type="gpt2")
    original = load_onnx(model_path)
    fused, fused_ops = fuse_proto(original, config)
    fused, rewritten = gemm_to_matmul(fused)
    fused, expanded = expand_simplified_layer_norm(fused)
    fused_ops = {**fused_ops, "MatMul from Gemm": rewritten}
    if expanded:  # expanded again: count only what stays fused
        fused_ops["SimplifiedLayerNormalization"] = max(0, fused_ops.get("SimplifiedLayerNormalization", 0) - expanded)
    difference = max_output_difference(original, fused, decoder_check_feeds(spec))
    if not difference <= config.atol:
        raise WorkbenchError(
            f"The fused decoder differs from its input by {difference:.3g} max abs (atol {config.atol:g}); it was "
            "not written.",
            fix="pass the model's num_heads / hidden_size (decoder_fusion_config(config.json)), or skip fusion",
        )
    save_onnx(fused, output_path)
    return FusionResult(
        path=Path(output_path),
        config=config,
        fused_ops=fused_ops,
        op_counts_before=dict(Counter(n.op_type for n in original.graph.node)),
        op_counts_after=dict(Counter(n.op_type for n in fused.graph.node)),
        max_abs_diff=difference,
        seconds=time.perf_counter() - started,
    )


def fusion_report(result: FusionResult) -> dict[str, Any]:
    """What fused and what did not, for the summary and the README: op counts before and after, every op type
    whose count changed, and the fused ops the optimizer looked for but did not find."""
    before, after = result.op_counts_before, result.op_counts_after
    changed = {
        op: {"before": before.get(op, 0), "after": after.get(op, 0)}
        for op in sorted(set(before) | set(after))
        if before.get(op, 0) != after.get(op, 0)
    }
    return {
        "nodes_before": result.nodes_before,
        "nodes_after": result.nodes_after,
        "fused": {op: n for op, n in result.fused_ops.items() if n},
        "not_fused": sorted(op for op, n in result.fused_ops.items() if not n),
        "changed_op_counts": changed,
        "max_abs_diff": result.max_abs_diff,
    }
