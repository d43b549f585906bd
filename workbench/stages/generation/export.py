"""Export of causal LMs with their key/value cache: one ONNX decoder for the prompt and for every decode step.

Design (measured, see docs/generation.md): one graph whose past-length axis may be 0. The prompt step feeds an
empty cache, each decode step feeds one token and the previous step's `present.*`. This is what Optimum's
current ONNX export of decoders does too, without the `use_cache_branch` If node of its older "merged" decoder:
with transformers 5's DynamicCache the traced graph already handles a zero-length past, so one set of weights
serves both phases (a prompt model + a decode model would hold the weights twice), and onnxruntime's optimizer
and quantizers, which do not descend into If subgraphs, see every node. A `logit_positions` input says which
positions' logits to compute: generation asks for the last one only (the vocabulary projection of a long prompt
would otherwise cost as much as the rest of the prompt step), teacher-forced evaluation for all.

The export is checked against transformers at several batch sizes, prompt lengths and cache lengths (prompt
step, then a step on top of the cache it produced, left padding included); if anything differs the file is
not written. The decoder's spec (cache geometry, special tokens, max positions) is stored in the ONNX file's
metadata (`workbench.decoder`), which fusion and quantization keep.
"""

from __future__ import annotations

import inspect
import os
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from workbench._lazy import require
from workbench.config import StageConfig, check_choice, check_positive
from workbench.decoding import (
    LOGIT_POSITIONS,
    SPEC_METADATA_KEY,
    DecoderSpec,
    position_ids,
    prompt_feeds,
)
from workbench.errors import ConfigError, ExportError, ModelSourceError
from workbench.models import HFModelSource
from workbench.onnx.decoder import read_decoder_spec  # noqa: F401  (re-exported: the stage's reader)

EXPORTERS = ("torchscript", "dynamo")
CAUSAL_LM_SUFFIXES = ("ForCausalLM", "LMHeadModel")


@dataclass(frozen=True)
class DecoderExportConfig(StageConfig):
    """How to export a causal LM with its cache, and how strictly to check it.

    Attributes:
        exporter: "torchscript" (torch.onnx.export with dynamo=False, the project's default: its graph is the one
            onnxruntime's transformer optimizer fuses) or "dynamo".
        opset: ONNX opset.
        check_batch_sizes: Batch sizes checked (batches > 1 have a left-padded row).
        check_prompt_lengths: Lengths of the step checked on top of each cache length.
        check_past_lengths: Cache lengths the step is checked on (0: the prompt step itself).
        atol: Largest allowed absolute difference from transformers, any logit or cache element.
        min_cosine: Smallest allowed cosine between ONNX and transformers outputs, per output.
    """

    exporter: str = "torchscript"
    opset: int = 17
    check_batch_sizes: tuple[int, ...] = (1, 3)
    check_prompt_lengths: tuple[int, ...] = (1, 6, 17)
    check_past_lengths: tuple[int, ...] = (0, 5, 23)
    atol: float = 1e-3
    min_cosine: float = 0.99999

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        "dynamo": {"exporter": "dynamo", "opset": 18},
        "thorough": {
            "check_batch_sizes": (1, 2, 5),
            "check_prompt_lengths": (1, 2, 9, 33, 64),
            "check_past_lengths": (0, 1, 7, 40, 100),
        },
    }

    def __post_init__(self) -> None:
        check_choice(self, "exporter", EXPORTERS)
        check_positive(self, "check_batch_sizes", "check_prompt_lengths", "atol")
        if not self.check_past_lengths or any(not isinstance(p, int) or p < 0 for p in self.check_past_lengths):
            raise ConfigError(
                f"DecoderExportConfig.check_past_lengths must be integers >= 0, got {self.check_past_lengths!r}."
            )
        if not 14 <= self.opset <= 23:
            raise ConfigError(f"DecoderExportConfig.opset = {self.opset} is outside 14..23 (decoders need >= 14).")
        if self.exporter == "dynamo" and self.opset < 18:
            raise ConfigError(
                f"The dynamo exporter needs opset >= 18, got {self.opset}.",
                fix="use DecoderExportConfig.preset('dynamo')",
            )
        if not 0.0 < self.min_cosine <= 1.0:
            raise ConfigError(f"DecoderExportConfig.min_cosine must be in (0, 1], got {self.min_cosine}.")


@dataclass(frozen=True)
class DecoderCheck:
    """One output compared with transformers at one (batch, cache length, step length)."""

    batch: int
    past: int
    sequence: int
    output: str
    max_abs: float
    cosine: float
    passed: bool


@dataclass(frozen=True)
class DecoderExportResult:
    """The exported decoder, its spec, and how closely it matches transformers."""

    path: Path
    spec: DecoderSpec
    config: DecoderExportConfig
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    checks: tuple[DecoderCheck, ...]
    op_counts: dict[str, int]
    seconds: float
    source_name: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def max_abs_error(self) -> float:
        return max((c.max_abs for c in self.checks), default=0.0)

    @property
    def min_cosine(self) -> float:
        return min((c.cosine for c in self.checks), default=1.0)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "spec": dict(vars(self.spec)),
            "config": self.config.to_dict(),
            "input_names": list(self.input_names),
            "output_names": list(self.output_names),
            "max_abs_error": self.max_abs_error,
            "min_cosine": self.min_cosine,
            "seconds": self.seconds,
            "nodes": sum(self.op_counts.values()),
            "checks": [dict(vars(c)) for c in self.checks],
            "notes": list(self.notes),
        }

    def _repr_html_(self) -> str:
        shapes = sorted({(c.batch, c.past, c.sequence) for c in self.checks})
        return (
            f"<b>Exported decoder</b> {self.source_name} ({self.spec.model_type}, {self.spec.num_layers} layers, "
            f"{self.spec.num_kv_heads} kv heads x {self.spec.head_dim}) to <code>{self.path}</code> with "
            f"{self.config.exporter}, opset {self.config.opset}, in {self.seconds:.1f} s. Checked against "
            f"transformers at {len(shapes)} (batch, cache, step) shapes: max abs error {self.max_abs_error:.2e} "
            f"(atol {self.config.atol:g}), min cosine {self.min_cosine:.6f}."
        )


# ---------------------------------------------------------------------------------------------------------------
# loading


def _resolve(source: HFModelSource | str | os.PathLike[str]) -> HFModelSource:
    if isinstance(source, HFModelSource):
        return source
    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if (folder / "config.json").is_file():
            return HFModelSource(folder, attn_implementation="eager")
        raise ModelSourceError(
            f"{folder} is not a Hugging Face model folder (no config.json).",
            fix="pass the folder written by model.save_pretrained()",
        )
    raise ModelSourceError(
        f"export_decoder() takes a Hugging Face model folder, not {type(source).__name__}.",
        fix="pass load_model(PATH) or the folder itself",
    )


def is_causal_lm(config: dict[str, Any]) -> bool:
    """Whether a config.json describes a causal LM checkpoint (`*ForCausalLM`, `*LMHeadModel`)."""
    return any(str(a).endswith(CAUSAL_LM_SUFFIXES) for a in config.get("architectures") or [])


def load_causal_lm(source: HFModelSource | str | os.PathLike[str]) -> tuple[Any, Any]:
    """(The PyTorch causal LM in eval mode with eager attention, its tokenizer), offline.

    Raises:
        ModelSourceError: Not a causal LM checkpoint, or it does not load.
    """
    source = _resolve(source)
    if not is_causal_lm(source.config):
        raise ModelSourceError(
            f"{source.path} is a {source.config.get('architectures')} checkpoint, not a causal LM, so it has no "
            "language-modelling head to generate with.",
            expected=f"architectures ending in {' or '.join(CAUSAL_LM_SUFFIXES)}",
            fix="pass a *ForCausalLM / *LMHeadModel checkpoint, or export this one with export_onnx()",
        )
    transformers = require("transformers", purpose="Loading a causal LM")
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(source.path), local_files_only=True, trust_remote_code=False, attn_implementation="eager"
        )
        tokenizer = source.load_tokenizer()
    except Exception as exc:
        raise ModelSourceError(
            f"Could not load the causal LM in {source.path}: {type(exc).__name__}: {exc}",
            fix="check that the folder was written by save_pretrained() with its tokenizer",
        ) from exc
    return model.eval(), tokenizer


def _token_ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


def decoder_spec_of(model: Any, tokenizer: Any = None) -> DecoderSpec:
    """The spec of a transformers causal LM: cache geometry read from a real forward pass, special tokens from
    its generation config (then its config, then the tokenizer)."""
    torch = require("torch", purpose="Reading a decoder's cache geometry")
    config = model.config
    layer_types = set(getattr(config, "layer_types", None) or ["full_attention"])
    if layer_types != {"full_attention"} or getattr(config, "sliding_window", None):
        raise ExportError(
            f"{type(model).__name__} has sliding-window or non-standard attention layers ({sorted(layer_types)}), "
            "whose cache the decoder export does not handle.",
            fix="export a model whose layers all use full attention (GPT-2, Llama and most causal LMs)",
        )
    with torch.inference_mode():
        out = model(
            input_ids=torch.zeros((1, 2), dtype=torch.long),
            attention_mask=torch.ones((1, 2), dtype=torch.long),
            use_cache=True,
        )
    layers = list(out.cache.layers)
    keys = layers[0].keys
    max_positions = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if not max_positions:
        raise ExportError(
            f"{type(model).__name__}'s config has no max_position_embeddings.",
            fix="set config.max_position_embeddings and save the model again",
        )
    generation = getattr(model, "generation_config", None)
    eos = (
        _token_ids(getattr(generation, "eos_token_id", None))
        or _token_ids(config.eos_token_id)
        or _token_ids(getattr(tokenizer, "eos_token_id", None))
    )
    pad = getattr(generation, "pad_token_id", None)
    pad = pad if pad is not None else getattr(config, "pad_token_id", None)
    pad = pad if pad is not None else getattr(tokenizer, "pad_token_id", None)
    pad = pad if pad is not None else (eos[0] if eos else 0)
    bos = getattr(generation, "bos_token_id", None)
    bos = bos if bos is not None else getattr(config, "bos_token_id", None)
    parameters = inspect.signature(model.forward).parameters
    return DecoderSpec(
        num_layers=len(layers),
        num_kv_heads=int(keys.shape[1]),
        head_dim=int(keys.shape[3]),
        vocab_size=int(out.logits.shape[-1]),
        max_positions=int(max_positions),
        eos_token_ids=eos,
        pad_token_id=int(pad if not isinstance(pad, (list, tuple)) else pad[0]),
        bos_token_id=None if bos is None else int(bos if not isinstance(bos, (list, tuple)) else bos[0]),
        has_position_ids="position_ids" in parameters,
        cache_dtype="float32",
        model_type=str(getattr(config, "model_type", "")),
    )


# ---------------------------------------------------------------------------------------------------------------
# the traced module


def _wrapper(model: Any, spec: DecoderSpec) -> Any:
    """A module whose forward takes the decoder's flat inputs by name and returns (logits, present...).

    forward() has one named parameter per input (generated), because the dynamo exporter maps dynamic shapes to
    parameters by name and cannot see through *args.
    """
    torch = require("torch", purpose="Exporting a decoder")
    transformers = require("transformers", purpose="Exporting a decoder")
    names = [n.replace(".", "_") for n in spec.input_names()]
    with_positions = spec.has_position_ids
    layers = spec.num_layers

    class Decoder(torch.nn.Module):  # type: ignore[name-defined]  # torch is imported lazily
        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def _run(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
            values = dict(zip(names, args))
            cache = transformers.DynamicCache(
                ddp_cache_data=[
                    (values[f"past_key_values_{i}_key"], values[f"past_key_values_{i}_value"]) for i in range(layers)
                ]
            )
            outputs = self.inner(
                input_ids=values["input_ids"],
                attention_mask=values["attention_mask"],
                position_ids=values["position_ids"] if with_positions else None,
                cache=cache,
                use_cache=True,
                logits_to_keep=values[LOGIT_POSITIONS],
            )
            flat = [outputs.logits]
            for layer in outputs.cache.layers:
                flat += [layer.keys, layer.values]
            return tuple(flat)

    parameters = ", ".join(names)
    namespace: dict[str, Any] = {}
    exec(f"def forward(self, {parameters}):\n    return self._run(({parameters},))\n", namespace)  # noqa: S102
    Decoder.forward = namespace["forward"]
    return Decoder().eval()


def _dynamic_axes(spec: DecoderSpec) -> dict[str, dict[int, str]]:
    axes: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "sequence"},
        "attention_mask": {0: "batch", 1: "total_sequence"},
        LOGIT_POSITIONS: {0: "kept"},
        "logits": {0: "batch", 1: "kept"},
    }
    if spec.has_position_ids:
        axes["position_ids"] = {0: "batch", 1: "sequence"}
    for name in spec.past_names():
        axes[name] = {0: "batch", 2: "past_sequence"}
    for name in spec.present_names():
        axes[name] = {0: "batch", 2: "total_sequence"}
    return axes


def _example(spec: DecoderSpec, batch: int = 2, past: int = 4, sequence: int = 3) -> dict[str, np.ndarray]:
    # a non-empty past, so that the traced graph keeps the cache concatenation general
    rng = np.random.default_rng(0)
    feeds = {
        "input_ids": rng.integers(0, spec.vocab_size, (batch, sequence)).astype(np.int64),
        "attention_mask": np.ones((batch, past + sequence), np.int64),
    }
    if spec.has_position_ids:
        feeds["position_ids"] = np.tile(np.arange(past, past + sequence, dtype=np.int64), (batch, 1))
    feeds[LOGIT_POSITIONS] = np.arange(sequence, dtype=np.int64)
    for name in spec.past_names():
        feeds[name] = rng.standard_normal((batch, spec.num_kv_heads, past, spec.head_dim)).astype(np.float32)
    return feeds


def _export(wrapper: Any, spec: DecoderSpec, path: Path, config: DecoderExportConfig) -> None:
    torch = require("torch", purpose="Exporting a decoder")
    example = _example(spec)
    args = tuple(torch.from_numpy(example[name]) for name in spec.input_names())
    kwargs: dict[str, Any] = {
        "input_names": spec.input_names(),
        "output_names": spec.output_names(),
        "opset_version": config.opset,
    }
    if config.exporter == "dynamo":
        dims = {
            "batch": torch.export.Dim("batch", min=1),
            "sequence": torch.export.Dim("sequence", min=1),
            "past": torch.export.Dim("past_sequence", min=0),
            "kept": torch.export.Dim("kept", min=1),
            "total": torch.export.Dim("total_sequence", min=1),
        }
        shapes: dict[str, Any] = {}
        for name in spec.input_names():
            key = name.replace(".", "_")
            if name == "input_ids" or name == "position_ids":
                shapes[key] = {0: dims["batch"], 1: dims["sequence"]}
            elif name == "attention_mask":
                shapes[key] = {0: dims["batch"], 1: dims["total"]}
            elif name == LOGIT_POSITIONS:
                shapes[key] = {0: dims["kept"]}
            else:
                shapes[key] = {0: dims["batch"], 2: dims["past"]}
        kwargs.update(dynamo=True, dynamic_shapes=shapes)
    else:
        kwargs.update(dynamo=False, dynamic_axes=_dynamic_axes(spec))
    try:
        torch.onnx.export(wrapper, args, str(path), **kwargs)
    except Exception as exc:
        raise ExportError(
            f"torch.onnx.export ({config.exporter}) of the decoder failed: {type(exc).__name__}: {exc}",
            fix="try the other exporter (DecoderExportConfig.preset('dynamo') or the default torchscript); the "
            "model must load with attn_implementation='eager'",
        ) from exc


# ---------------------------------------------------------------------------------------------------------------
# the check against transformers


def _check_cases(spec: DecoderSpec, config: DecoderExportConfig) -> list[tuple[int, int, int]]:
    cases = [
        (b, p, s)
        for b in config.check_batch_sizes
        for p in config.check_past_lengths
        for s in config.check_prompt_lengths
        if p + s <= spec.max_positions
    ]
    if not cases:
        raise ExportError(
            f"No check shape fits the model's {spec.max_positions} positions.",
            fix="pass smaller DecoderExportConfig.check_past_lengths / check_prompt_lengths",
        )
    return cases


def _case_feeds(
    spec: DecoderSpec, batch: int, past: int, sequence: int, rng: np.random.Generator
) -> tuple[dict[str, np.ndarray] | None, np.ndarray]:
    """(The prefix step's feeds, or None without a past; the next step's token ids). Row 0 of a batch is
    left-padded when the prefix is long enough."""
    tokens = rng.integers(0, spec.vocab_size, (batch, past + sequence)).astype(np.int64)
    if past == 0:
        return None, tokens
    pad = 2 if batch > 1 and past > 2 else 0
    prompts = [list(tokens[row, pad if row == 0 else 0 : past]) for row in range(batch)]
    prefix = prompt_feeds(spec, prompts, all_logits=True)
    return prefix, tokens[:, past:]


def _compare(expected: np.ndarray, actual: np.ndarray) -> tuple[float, float]:
    a = np.asarray(expected, np.float64).ravel()
    b = np.asarray(actual, np.float64).ravel()
    if a.shape != b.shape:
        return float("inf"), 0.0
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    cosine = float(np.dot(a, b) / norms) if norms else (1.0 if np.array_equal(a, b) else 0.0)
    return float(np.max(np.abs(a - b), initial=0.0)), cosine


def check_against_transformers(
    model: Any,
    spec: DecoderSpec,
    onnx_path: Path,
    config: DecoderExportConfig,
) -> list[DecoderCheck]:
    """Run transformers and the ONNX decoder on the same prefixes and steps; one check per output and shape."""
    torch = require("torch", purpose="Checking a decoder export")
    transformers = require("transformers", purpose="Checking a decoder export")
    from workbench.engines.onnxruntime import OnnxRuntimeRunner

    rng = np.random.default_rng(1234)
    checks: list[DecoderCheck] = []

    def reference(feeds: dict[str, np.ndarray], cache: Any) -> tuple[np.ndarray, Any]:
        with torch.inference_mode():
            out = model(
                input_ids=torch.from_numpy(feeds["input_ids"]),
                attention_mask=torch.from_numpy(feeds["attention_mask"]),
                position_ids=torch.from_numpy(feeds["position_ids"]) if spec.has_position_ids else None,
                cache=cache,
                use_cache=True,
            )
        return out.logits.numpy(), out.cache

    def record(
        batch: int, past: int, sequence: int, expected: dict[str, np.ndarray], actual: dict[str, np.ndarray]
    ) -> None:
        for name in spec.output_names():
            max_abs, cosine = _compare(expected[name], actual[name])
            checks.append(
                DecoderCheck(
                    batch, past, sequence, name, max_abs, cosine, max_abs <= config.atol and cosine >= config.min_cosine
                )
            )

    # spinning off: onnxruntime's idle pool threads would otherwise take the cores torch runs on in between
    with OnnxRuntimeRunner(onnx_path, output_names=spec.output_names(), allow_spinning=False) as runner:
        for batch, past, sequence in _check_cases(spec, config):
            prefix, step_tokens = _case_feeds(spec, batch, past, sequence, rng)
            cache = transformers.DynamicCache()
            if prefix is None:
                mask = np.zeros((batch, 0), np.int64)
                past_feeds = spec.empty_cache(batch)
                last_positions = np.full((batch, 1), -1, np.int64)
            else:
                expected_logits, cache = reference(prefix, cache)
                actual = runner.infer(prefix)
                expected = {"logits": expected_logits}
                expected.update(_cache_arrays(cache, spec))
                record(batch, 0, past, expected, actual)
                mask = prefix["attention_mask"]
                past_feeds = {p: actual[q] for p, q in zip(spec.past_names(), spec.present_names())}
                last_positions = prefix.get("position_ids", position_ids(mask))[:, -1:]
            step = {
                "input_ids": step_tokens,
                "attention_mask": np.concatenate([mask, np.ones((batch, sequence), np.int64)], axis=1),
            }
            if spec.has_position_ids:
                step["position_ids"] = last_positions + 1 + np.arange(sequence, dtype=np.int64)[None, :]
            expected_logits, cache = reference(step, cache)
            step[LOGIT_POSITIONS] = np.arange(sequence, dtype=np.int64)
            step.update(past_feeds)
            actual = runner.infer(step)
            expected = {"logits": expected_logits}
            expected.update(_cache_arrays(cache, spec))
            record(batch, past, sequence, expected, actual)
    return checks


def _cache_arrays(cache: Any, spec: DecoderSpec) -> dict[str, np.ndarray]:
    values: dict[str, np.ndarray] = {}
    for index, layer in enumerate(cache.layers):
        values[spec.present_names()[2 * index]] = layer.keys.numpy()
        values[spec.present_names()[2 * index + 1]] = layer.values.numpy()
    return values


# ---------------------------------------------------------------------------------------------------------------
# the stage


def export_decoder(
    source: HFModelSource | str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    config: DecoderExportConfig = DecoderExportConfig(),
) -> DecoderExportResult:
    """Export a causal LM to one ONNX decoder with cache inputs and outputs, checked against transformers.

    The graph takes `input_ids`, `attention_mask`, `position_ids` (when the model has them), `logit_positions`
    and `past_key_values.{i}.key/value`, and returns `logits` and `present.{i}.key/value`; batch, sequence, past
    length (0 for the prompt) and the number of kept logit positions are dynamic. The file appears at
    `output_path` only if every check passes; its metadata holds the decoder's spec.

    Args:
        source: A Hugging Face causal-LM folder (or load_model(folder)).
        output_path: Where to write the .onnx file.
        config: Exporter, opset and checks.

    Raises:
        ModelSourceError: Not a causal LM, or it does not load.
        ExportError: The exporter failed, or an output differs from transformers beyond the tolerance.
    """
    onnx = require("onnx", purpose="Saving an ONNX decoder")
    from workbench.onnx.io import save_onnx

    started = time.perf_counter()
    resolved = _resolve(source)
    model, tokenizer = load_causal_lm(resolved)
    spec = decoder_spec_of(model, tokenizer)
    if not {"logits_to_keep"} <= set(inspect.signature(model.forward).parameters):
        raise ExportError(
            f"{type(model).__name__}.forward has no logits_to_keep argument, which the decoder "
            "export uses to compute only the logits it needs.",
            fix="upgrade transformers (every causal LM of transformers 5 has it)",
        )
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".export-decoder.", suffix=".partial", dir=output_path.parent))
    try:
        staged = staging / "decoder.onnx"
        _export(_wrapper(model, spec), spec, staged, config)
        checks = check_against_transformers(model, spec, staged, config)
        failures = [c for c in checks if not c.passed]
        if failures:
            worst = max(failures, key=lambda c: c.max_abs)
            raise ExportError(
                f"ONNX decoder output {worst.output!r} differs from transformers: max abs {worst.max_abs:.3e} "
                f"(atol {config.atol:g}), cosine {worst.cosine:.6f} (min {config.min_cosine}) at batch "
                f"{worst.batch}, cache length {worst.past}, step length {worst.sequence}; {len(failures)} of "
                f"{len(checks)} checks failed. No model was written.",
                expected="the decoder to reproduce transformers at every checked batch, cache and step length",
                fix="load the model with attn_implementation='eager' (export_decoder does), try the other exporter "
                "(DecoderExportConfig.preset('dynamo')), or report the model type",
            )
        exported = onnx.load(str(staged), load_external_data=True)
        onnx.helper.set_model_props(
            exported, {**{p.key: p.value for p in exported.metadata_props}, SPEC_METADATA_KEY: spec.to_json()}
        )
        save_onnx(exported, output_path)
        op_counts = dict(Counter(node.op_type for node in exported.graph.node))
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return DecoderExportResult(
        path=output_path,
        spec=spec,
        config=config,
        input_names=tuple(spec.input_names()),
        output_names=tuple(spec.output_names()),
        checks=tuple(checks),
        op_counts=op_counts,
        seconds=time.perf_counter() - started,
        source_name=resolved.name,
    )
