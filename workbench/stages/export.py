"""Export stage: PyTorch / Hugging Face model -> ONNX with dynamic axes, checked against PyTorch."""

from __future__ import annotations

import inspect
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from workbench._files import check_output_file, disk_full_error, is_disk_full, staging_directory
from workbench._lazy import require
from workbench.config import StageConfig, check_choice, check_positive
from workbench.errors import ConfigError, ExportError
from workbench.models import HFModelSource, ModelSource, ModuleSource, OnnxSource

EXPORTERS = ("torchscript", "dynamo")

# Short, varied texts used when the caller gives none; the long one makes truncation and full-length
# sequences part of every check.
DEFAULT_CHECK_TEXTS = (
    "Hello!",
    "The quarterly report shows revenue grew 12% to $4.5 million.",
    "How do I reset my password if I no longer have access to my email?",
    "def add(a, b): return a + b  # a tiny function",
    " ".join(["The committee reviewed every proposal carefully before the vote."] * 20),
    "São Paulo, café, naïve: accents too.",
    "Short one.",
    "Patients received 5 mg twice daily for 14 days, and no serious adverse events were reported.",
)


@dataclass(frozen=True)
class ExportConfig(StageConfig):
    """How to export and how strictly to check the export.

    Attributes:
        exporter: "torchscript" (torch.onnx.export with dynamo=False) or "dynamo". TorchScript with eager
            attention is the default because it is the only path whose graph onnxruntime's BERT optimizer fuses
            fully (Attention, EmbedLayerNormalization), which gives the fastest final model (bench/exporters.py).
        opset: ONNX opset version.
        check_batch_sizes: Batch sizes the export is checked at.
        check_sequence_lengths: Padded sequence lengths the export is checked at (short texts are padded).
        atol: Largest allowed absolute difference from PyTorch, any output element. FP32 exports of MiniLM
            differ by about 1e-4 at batch 8, sequence 128 (reordered float sums); real export bugs show up as
            differences of 1e-2 and more.
        min_cosine: Smallest allowed cosine similarity between the flattened ONNX and PyTorch outputs.
    """

    exporter: str = "torchscript"
    opset: int = 17
    check_batch_sizes: tuple[int, ...] = (1, 8)
    check_sequence_lengths: tuple[int, ...] = (16, 128)
    atol: float = 1e-3
    min_cosine: float = 0.99999

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "default": {},
        "dynamo": {"exporter": "dynamo", "opset": 18},
        "thorough": {"check_batch_sizes": (1, 4, 8), "check_sequence_lengths": (8, 64, 128, 256, 512)},
    }

    def __post_init__(self) -> None:
        check_choice(self, "exporter", EXPORTERS)
        check_positive(self, "check_batch_sizes", "check_sequence_lengths", "atol")
        if not 7 <= self.opset <= 23:
            raise ConfigError(f"ExportConfig.opset = {self.opset} is outside the supported range 7..23.")
        if self.exporter == "dynamo" and self.opset < 18:
            raise ConfigError(
                f"The dynamo exporter needs opset >= 18, got {self.opset}.", fix="use ExportConfig.preset('dynamo')"
            )
        if not 0.0 < self.min_cosine <= 1.0:
            raise ConfigError(f"ExportConfig.min_cosine must be in (0, 1], got {self.min_cosine}.")


@dataclass(frozen=True)
class ExportCheck:
    """One output compared at one input shape."""

    batch: int
    sequence: int | None
    output: str
    max_abs: float
    cosine: float
    passed: bool


@dataclass(frozen=True)
class ExportResult:
    """The exported model and how closely it matches PyTorch."""

    path: Path
    config: ExportConfig
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    checks: tuple[ExportCheck, ...]
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
            "config": self.config.to_dict(),
            "input_names": list(self.input_names),
            "output_names": list(self.output_names),
            "max_abs_error": self.max_abs_error,
            "min_cosine": self.min_cosine,
            "seconds": self.seconds,
            "checks": [c.__dict__ for c in self.checks],
        }

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{c.batch}</td><td>{c.sequence}</td><td>{c.output}</td><td>{c.max_abs:.2e}</td>"
            f"<td>{c.cosine:.6f}</td><td>{'ok' if c.passed else 'FAIL'}</td></tr>"
            for c in self.checks
        )
        return (
            f"<b>Exported</b> {self.source_name} to <code>{self.path}</code> with {self.config.exporter}, "
            f"opset {self.config.opset}, in {self.seconds:.1f} s. Max abs error {self.max_abs_error:.2e} "
            f"(atol {self.config.atol:g}), min cosine {self.min_cosine:.6f}."
            "<table><tr><th>batch</th><th>seq</th><th>output</th><th>max abs</th><th>cosine</th><th></th></tr>"
            f"{rows}</table>"
        )


def _tuple_outputs_module(module: Any, input_names: tuple[str, ...], output_names: tuple[str, ...]) -> Any:
    """Wrap `module` so forward takes the inputs positionally, by name, and returns a tuple of named outputs.

    forward() gets one named parameter per input (generated), because the dynamo exporter maps dynamic axes to
    parameters by name and cannot see through *args.
    """
    torch = require("torch", purpose="Exporting a PyTorch model")
    bad = [name for name in input_names if not name.isidentifier()]
    if bad:
        raise ExportError(
            f"Input names {bad} are not Python identifiers, so they cannot be forward() parameters.",
            fix="rename the inputs, e.g. 'input-ids' -> 'input_ids'",
        )

    class TupleOutputs(torch.nn.Module):  # type: ignore[name-defined]  # torch is imported lazily
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def _run(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
            outputs = self.inner(**dict(zip(input_names, args)))
            if isinstance(outputs, torch.Tensor):
                return (outputs,)
            if isinstance(outputs, dict):  # transformers' ModelOutput
                return tuple(outputs[name] for name in output_names)
            return tuple(outputs)[: len(output_names)]

    parameters = ", ".join(input_names)
    namespace: dict[str, Any] = {}
    exec(f"def forward(self, {parameters}):\n    return self._run(({parameters},))\n", namespace)  # noqa: S102
    TupleOutputs.forward = namespace["forward"]
    return TupleOutputs()


def _hf_input_names(module: Any, tokenizer: Any) -> tuple[str, ...]:
    # The tokenizer's outputs that forward() accepts, in forward()'s order (DistilBERT has no token_type_ids).
    produced = set(tokenizer(["probe"], return_tensors="np").keys())
    parameters = inspect.signature(module.forward).parameters
    return tuple(name for name in parameters if name in produced)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    denominator = np.linalg.norm(a) * np.linalg.norm(b)
    if denominator == 0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.dot(a, b) / denominator)


#: Hugging Face config keys that give the number of positions a model has embeddings for.
_POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "n_ctx")


def max_sequence_length(source: ModelSource) -> int | None:
    """The longest sequence (tokens, special tokens included) the model has position embeddings for, or None.

    Read from the Hugging Face config (RoBERTa-style models offset positions by padding_idx + 1, so they take
    that many fewer); None for sources without a config.json (an nn.Module, an .onnx file).
    """
    if not isinstance(source, HFModelSource):
        return None
    try:
        config = source.config
    except (OSError, ValueError):
        return None
    for key in _POSITION_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            offset = 0
            if config.get("model_type") in ("roberta", "xlm-roberta", "camembert", "longformer"):
                offset = int(config.get("pad_token_id", 1) or 0) + 1
            return value - offset
    return None


def check_sequence_length(source: ModelSource, length: int, *, what: str = "sequence_length") -> None:
    """Raise ConfigError before any work if `length` tokens do not fit the model's position embeddings."""
    limit = max_sequence_length(source)
    if limit is not None and length > limit:
        raise ConfigError(
            f"{what} = {length} is longer than {source.name} can take: it has position embeddings for {limit} tokens.",
            expected=f"{what} between 8 and {limit}",
            fix=f"pass {what}={min(limit, 512)} or less (texts longer than that are truncated)",
        )


def export_onnx(
    source: ModelSource,
    output_path: str | os.PathLike[str],
    config: ExportConfig = ExportConfig(),
    *,
    check_texts: tuple[str, ...] | list[str] | None = None,
    check_feeds: list[dict[str, np.ndarray]] | None = None,
) -> ExportResult:
    """Export a model to ONNX with dynamic batch and sequence axes, then check it against PyTorch.

    The check runs PyTorch and onnxruntime on the same inputs: for Hugging Face models, real tokenized texts
    at every batch size and padded sequence length in the config; for a ModuleSource, `check_feeds` or its
    example inputs. The model file appears at `output_path` only if the check passes. The source model is
    not changed (its train/eval modes are restored).

    Args:
        source: A HFModelSource or ModuleSource (an OnnxSource is already exported).
        output_path: Where to write the .onnx file.
        config: Exporter, opset and check tolerances.
        check_texts: Texts for the check (Hugging Face sources); default: a built-in varied set.
        check_feeds: Feed dicts of numpy arrays for the check (any source); override the texts.

    Raises:
        ExportError: The exporter failed, or an output differs from PyTorch beyond the config's tolerance.
        ConfigError: A checked sequence length is longer than the model's position embeddings.
        OutputFolderError: `output_path` cannot be written (checked first); DiskFullError: the disk filled up.
    """
    if isinstance(source, OnnxSource):
        raise ExportError(
            f"{source.path} is already an ONNX model; there is nothing to export.",
            fix="pass it straight to the next stage (fusion, quantization), or load the PyTorch model instead",
        )
    check_output_file(output_path, what="The ONNX model's path")
    for length in config.check_sequence_lengths:
        check_sequence_length(source, length, what="ExportConfig.check_sequence_lengths")
    torch = require("torch", purpose="Exporting a PyTorch model")
    from workbench.data import tokenize_batches
    from workbench.engines.onnxruntime import OnnxRuntimeRunner
    from workbench.engines.pytorch import PyTorchRunner
    from workbench.onnx.io import save_onnx

    started = time.perf_counter()
    module = source.load_module()
    if isinstance(source, HFModelSource):
        tokenizer = source.load_tokenizer()
        input_names = _hf_input_names(module, tokenizer)
        output_names = source.output_names
        dynamic_axes: dict[str, dict[int, str]] = {name: {0: "batch", 1: "sequence"} for name in input_names}
        for name in output_names:
            dynamic_axes[name] = {0: "batch", 1: "sequence"} if name == "last_hidden_state" else {0: "batch"}
        if check_feeds is None:
            texts = list(check_texts or DEFAULT_CHECK_TEXTS)
            check_feeds = []
            for batch in config.check_batch_sizes:
                for length in config.check_sequence_lengths:
                    chosen = [texts[i % len(texts)] for i in range(batch)]
                    check_feeds += tokenize_batches(
                        tokenizer, chosen, batch_size=batch, sequence_length=length, input_names=input_names
                    )
        example = check_feeds[0]
    else:
        assert isinstance(source, ModuleSource)
        input_names = tuple(source.example_inputs)
        output_names = tuple(source.output_names)
        dynamic_axes = {k: dict(v) for k, v in (source.dynamic_axes or {}).items()} or {
            name: {0: "batch"} for name in (*input_names, *output_names)
        }
        example = {
            k: np.asarray(v.detach().cpu() if hasattr(v, "detach") else v) for k, v in source.example_inputs.items()
        }
        if check_feeds is None:
            check_feeds = [example]

    wrapper = _tuple_outputs_module(module, input_names, output_names)
    training_modes = {m: m.training for m in module.modules()}
    try:
        with staging_directory(Path(output_path).parent, "export") as staging:
            wrapper.eval()  # export traces eval mode; a wrapper left in train mode flips the model back afterwards
            staged = staging / "model.onnx"
            args = tuple(torch.from_numpy(example[name]) for name in input_names)
            try:
                torch.onnx.export(
                    wrapper,
                    args,
                    str(staged),
                    input_names=list(input_names),
                    output_names=list(output_names),
                    dynamic_axes=dynamic_axes,
                    opset_version=config.opset,
                    dynamo=config.exporter == "dynamo",
                )
            except Exception as exc:
                if is_disk_full(exc, staging):  # not the exporter's fault: say so, not "try the other exporter"
                    raise disk_full_error(exc, output_path, "Exporting the model to") from exc
                raise ExportError(
                    f"torch.onnx.export ({config.exporter}) failed: {type(exc).__name__}: {exc}",
                    fix="try the other exporter (ExportConfig(exporter='dynamo', opset=18) or 'torchscript'), "
                    "or load the model with attn_implementation='eager'",
                ) from exc

            checks = []
            with (
                PyTorchRunner(module, output_names=output_names, name="pytorch") as reference,
                OnnxRuntimeRunner(staged, output_names=output_names) as exported,
            ):
                for feeds in check_feeds:
                    expected = reference.infer(feeds)
                    actual = exported.infer(feeds)
                    batch, sequence = _shape_of(feeds)
                    for name in output_names:
                        max_abs = float(np.max(np.abs(actual[name].astype(np.float64) - expected[name])))
                        cosine = _cosine(actual[name], expected[name])
                        passed = max_abs <= config.atol and cosine >= config.min_cosine
                        checks.append(ExportCheck(batch, sequence, name, max_abs, cosine, passed))
            failures = [c for c in checks if not c.passed]
            if failures:
                worst = max(failures, key=lambda c: c.max_abs)
                raise ExportError(
                    f"ONNX output {worst.output!r} differs from PyTorch: max abs {worst.max_abs:.3e} "
                    f"(atol {config.atol:g}), cosine {worst.cosine:.6f} (min {config.min_cosine}) at batch "
                    f"{worst.batch}, seq {worst.sequence}; {len(failures)} of {len(checks)} checks failed. No model "
                    "was written.",
                    expected="the ONNX model to reproduce PyTorch within the tolerance at every checked shape",
                    fix="a shape-dependent branch or a fixed-size mask was probably traced: load the model with "
                    'attn_implementation="eager", try the other exporter, or check the shapes your forward() '
                    "depends on",
                )
            onnx = require("onnx", purpose="Saving an ONNX model")
            save_onnx(onnx.load(str(staged), load_external_data=True), output_path)
    finally:
        for submodule, was_training in training_modes.items():  # the source model leaves as it came
            submodule.train(was_training)
    return ExportResult(
        path=Path(output_path),
        config=config,
        input_names=tuple(input_names),
        output_names=tuple(output_names),
        checks=tuple(checks),
        seconds=time.perf_counter() - started,
        source_name=source.name,
    )


def _shape_of(feeds: dict[str, np.ndarray]) -> tuple[int, int | None]:
    first = next(iter(feeds.values()))
    return int(first.shape[0]) if first.ndim else 1, int(first.shape[1]) if first.ndim > 1 else None
