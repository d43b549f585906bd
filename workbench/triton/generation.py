"""A Triton repository that takes text and streams generated text back: one decoupled Python-backend model that
runs the decoding loop over an exported decoder with its key/value cache.

Layout, for `config.model_name` = NAME, all or nothing::

    <repository>/
        NAME/
            config.pbtxt        # backend "python", decoupled, request inputs and streamed outputs
            1/
                model.py        # python_models/generation_model.py
                decoding.py     # workbench/decoding.py: the library's loop, so a stream is its tokens
                decoder.onnx    # the exported (fused, quantized) decoder; its spec is in its metadata
                tokenizer.json  # and the tokenizer's other files
        README.md  provenance.json

Why onnxruntime inside the Python model rather than BLS: see generation_model.py (the cache stays in the
model's process between steps; BLS would copy it through the server twice per token). The config is built with
tritonclient's `model_config_pb2` and parsed back strictly before anything is written; the served tokenizer
(`tokenizers` reading tokenizer.json) is checked to encode prompts and decode continuations exactly as the
workbench's tokenizer does.
"""

from __future__ import annotations

import html
import json
import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from workbench.config import StageConfig
from workbench.errors import (
    ConfigError,
    ModelSourceError,
    TritonExportError,
    WorkbenchError,
)
from workbench.triton.config import (
    CONFIG_FILENAME,
    _check_int,
    _check_model_name,
    _model_config_pb2,
    parse_model_config,
    render_model_config,
)
from workbench.triton.model import TritonExportResult, written_model
from workbench.triton.provenance import (
    _LIBRARIES,
    PROVENANCE_FILENAME,
    README_FILENAME,
    _plain_json,
)
from workbench.triton.writer import Entry, write_repository

GENERATION_MODEL_FILE = "decoder.onnx"
TOKENIZER_FILE = "tokenizer.json"
INPUTS = (
    ("TEXT", "TYPE_STRING", False),
    ("MAX_NEW_TOKENS", "TYPE_INT32", True),
    ("DO_SAMPLE", "TYPE_BOOL", True),
    ("TEMPERATURE", "TYPE_FP32", True),
    ("TOP_K", "TYPE_INT32", True),
    ("TOP_P", "TYPE_FP32", True),
    ("SEED", "TYPE_INT64", True),
)
OUTPUTS = (("TEXT_OUTPUT", "TYPE_STRING"), ("TOKEN_ID", "TYPE_INT64"), ("FINISH_REASON", "TYPE_STRING"))
#: Prompts the export encodes (and continuations it decodes) both ways to prove the served tokenizer agrees.
_CHECK_TEXTS = (
    "Hello world!",
    "Ünïcödé, café, naïve — and émojis 🙂",
    "  leading spaces and\ttabs",
    "def add(a, b):\n    return a + b",
    "SELECT 1;",
    "a",
)
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
)


@dataclass(frozen=True)
class GenerationServingConfig(StageConfig):
    """How the generation model is served.

    Attributes:
        model_name: The model's folder and its name in Triton's API.
        version: The version folder.
        max_new_tokens_default: MAX_NEW_TOKENS when a request does not send it.
        max_new_tokens_limit: The most MAX_NEW_TOKENS a request may ask for (larger: an error response).
        workers: Requests generated at the same time, each on a thread of its own with its own cache (more wait).
        intra_op_threads: onnxruntime threads per forward pass; 0: onnxruntime's default (all cores).
    """

    model_name: str = "generator"
    version: int = 1
    max_new_tokens_default: int = 64
    max_new_tokens_limit: int = 512
    workers: int = 4
    intra_op_threads: int = 0

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {"default": {}, "cpu": {"workers": 2, "intra_op_threads": 1}}

    def __post_init__(self) -> None:
        _check_model_name(self.model_name)
        for name, minimum in (
            ("version", 1),
            ("max_new_tokens_default", 1),
            ("max_new_tokens_limit", 1),
            ("workers", 1),
            ("intra_op_threads", 0),
        ):
            _check_int(self, name, minimum=minimum)
        if self.max_new_tokens_default > self.max_new_tokens_limit:
            raise ConfigError(
                f"GenerationServingConfig.max_new_tokens_default ({self.max_new_tokens_default}) is above "
                f"max_new_tokens_limit ({self.max_new_tokens_limit}), so a request without MAX_NEW_TOKENS would be "
                "refused.",
                fix="lower the default or raise the limit",
            )


@dataclass(frozen=True)
class TritonGenerationResult:
    """The generation repository written.

    Attributes:
        repository: The model repository.
        model: The generation model's folder (config text, files).
        readme: `<repository>/README.md`.
        provenance: `<repository>/provenance.json`.
        spec: The decoder's spec (its geometry, special tokens and positions).
    """

    repository: Path
    model: TritonExportResult
    readme: Path
    provenance: Path
    spec: Any

    @property
    def model_name(self) -> str:
        return self.model.model_name

    @property
    def model_names(self) -> tuple[str, ...]:
        return (self.model.model_name,)

    def to_dict(self) -> dict[str, Any]:
        return {
            "repository": str(self.repository),
            "model_name": self.model_name,
            "model": self.model.to_dict(),
            "readme": str(self.readme),
            "provenance": str(self.provenance),
            "spec": dict(vars(self.spec)),
        }

    def _repr_html_(self) -> str:
        return (
            f"<b>Triton generation model</b> <code>{html.escape(self.model_name)}</code> (TEXT &rarr; streamed "
            f"TEXT_OUTPUT, decoupled) in <code>{html.escape(str(self.repository))}</code>; serve it with "
            f"<code>tritonserver --model-repository={html.escape(str(self.repository))}</code> and a streaming "
            f"gRPC client.<pre>{html.escape(self.model.config_text)}</pre>"
        )


def generation_model_config(config: GenerationServingConfig) -> Any:
    """The generation model's config (tritonclient's ModelConfig): Python backend, decoupled, no batching
    (each request streams on its own)."""
    pb2 = _model_config_pb2("Writing a Triton model config")
    cfg = pb2.ModelConfig(name=config.model_name, backend="python", max_batch_size=0)
    cfg.model_transaction_policy.decoupled = True
    for name, data_type, optional in INPUTS:
        cfg.input.add(name=name, data_type=pb2.DataType.Value(data_type), dims=[1], optional=optional)
    for name, data_type in OUTPUTS:
        cfg.output.add(name=name, data_type=pb2.DataType.Value(data_type), dims=[1])
    cfg.instance_group.add(count=1, kind=pb2.ModelInstanceGroup.Kind.Value("KIND_CPU"))
    for key, value in {
        "model_file": GENERATION_MODEL_FILE,
        "tokenizer_file": TOKENIZER_FILE,
        "max_new_tokens_default": config.max_new_tokens_default,
        "max_new_tokens_limit": config.max_new_tokens_limit,
        "workers": config.workers,
        "intra_op_thread_count": config.intra_op_threads,
    }.items():
        cfg.parameters[key].string_value = str(value)
    return cfg


def check_served_tokenizer(tokenizer_dir: Path, json_text: str) -> Any:
    """Load the workbench's tokenizer and prove that `tokenizers` reading `json_text` encodes prompts and decodes
    continuations the same way; returns the workbench's tokenizer.

    Raises:
        TritonExportError: They differ.
    """
    from tokenizers import Tokenizer

    from workbench.models import _load_tokenizer

    try:
        tokenizer = _load_tokenizer(tokenizer_dir)
    except WorkbenchError:
        raise
    except Exception as exc:
        raise ModelSourceError(
            f"Could not load a tokenizer from {tokenizer_dir}: {type(exc).__name__}: {exc}",
            fix="pass the Hugging Face model folder, which holds the tokenizer files",
        ) from exc
    served = Tokenizer.from_str(json_text)
    expected = [list(map(int, tokenizer(t, add_special_tokens=True)["input_ids"])) for t in _CHECK_TEXTS]
    problems = []
    for text, ids in zip(_CHECK_TEXTS, expected):
        got = served.encode(text, add_special_tokens=True).ids
        if got != ids:
            problems.append(f"{text!r} encodes to {got[:8]} served, {ids[:8]} here")
        if served.decode(ids, skip_special_tokens=True) != tokenizer.decode(ids, skip_special_tokens=True):
            problems.append(f"{text!r}'s ids decode differently")
    if problems:
        raise TritonExportError(
            f"The served tokenizer (tokenizer.json read by `tokenizers`) disagrees with the workbench's tokenizer of "
            f"{tokenizer_dir}: {'; '.join(problems[:3])}. The server would generate from other ids than the ones "
            "the workbench checked.",
            fix="save the tokenizer again with a current transformers (tokenizer.save_pretrained(DIR)), which "
            "writes a tokenizer.json that matches it",
        )
    return tokenizer


def _readme(config: GenerationServingConfig, spec: Any) -> str:
    inputs = ", ".join(f"`{n}` ({t}{', optional' if o else ''})" for n, t, o in INPUTS)
    return f"""# Triton generation model `{config.model_name}`

Text in, generated text streamed back, one response per token (a decoupled Python-backend model). The model
runs the workbench's decoding loop over `decoder.onnx` (a {spec.model_type} decoder, {spec.num_layers} layers,
{spec.max_positions} positions) with onnxruntime, keeping each stream's key/value cache in memory between steps.

- Inputs, shape [1]: {inputs}.
- Outputs per response: `TEXT_OUTPUT` (the text the token completes, possibly empty), `TOKEN_ID`,
  `FINISH_REASON` ("" until the last token, then "stop", "length" or "max_positions"); then an empty final
  response (ask for it with `enable_empty_final_response=True`).
- Defaults: MAX_NEW_TOKENS {config.max_new_tokens_default} (at most {config.max_new_tokens_limit}), greedy
  (DO_SAMPLE false); SEED makes sampling reproducible. Invalid requests (MAX_NEW_TOKENS < 1, a prompt longer than
  {spec.max_positions} tokens) get an error response; other requests are not affected.

```python
import tritonclient.grpc as grpcclient
client = grpcclient.InferenceServerClient("127.0.0.1:8001")
client.start_stream(callback=lambda result, error: print(error or result.as_numpy("TEXT_OUTPUT")))
text = grpcclient.InferInput("TEXT", [1], "BYTES"); text.set_data_from_numpy(np.array([b"Once upon a time"], object))
client.async_stream_infer("{config.model_name}", [text], enable_empty_final_response=True)
```
"""


def export_triton_generation(
    onnx_path: str | os.PathLike[str],
    repository: str | os.PathLike[str],
    tokenizer_dir: str | os.PathLike[str],
    config: GenerationServingConfig = GenerationServingConfig(),
    *,
    provenance: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> TritonGenerationResult:
    """Write a Triton repository that streams generated text from an exported decoder (all or nothing).

    Args:
        onnx_path: The decoder (export_decoder, fuse_decoder or a weight-only candidate); its spec is read from
            its metadata.
        repository: The model repository; created if missing. Other models in it are left alone.
        tokenizer_dir: The Hugging Face model folder with the tokenizer files.
        config: Name, limits, workers, threads.
        provenance: Extra provenance.json entries (e.g. the chosen candidate, its accuracy and speed).
        overwrite: Replace an existing NAME/, README.md and provenance.json (only once the new ones are complete).

    Raises:
        ModelSourceError: The decoder or the tokenizer is missing or invalid (no decoder spec).
        TritonExportError: The served tokenizer would differ, an entry exists without overwrite, or writing failed.
        ConfigError: Bad arguments.
    """
    from workbench.onnx.decoder import read_decoder_spec
    from workbench.onnx.io import load_onnx
    from workbench.triton.python_models import FOLDER as PYTHON_MODELS

    if not isinstance(config, GenerationServingConfig):
        raise ConfigError(f"export_triton_generation() takes a GenerationServingConfig, not {type(config).__name__}.")
    onnx_path, repository, tokenizer_dir = Path(onnx_path), Path(repository), Path(tokenizer_dir)
    if repository.exists() and not repository.is_dir():
        raise TritonExportError(
            f"The model repository {repository} is a file, not a folder.",
            fix="pass a folder (it may already hold other models)",
        )
    names = [config.model_name, README_FILENAME, PROVENANCE_FILENAME]
    existing = [n for n in names if (repository / n).exists() or (repository / n).is_symlink()]
    if existing and not overwrite:
        raise TritonExportError(
            f"{', '.join(str(repository / n) for n in existing)} already exist(s) in the "
            "repository; nothing was changed.",
            fix="pass overwrite=True, or choose another GenerationServingConfig.model_name",
        )
    spec = read_decoder_spec(onnx_path)
    if not (tokenizer_dir / TOKENIZER_FILE).is_file():
        raise ModelSourceError(
            f"{tokenizer_dir} has no {TOKENIZER_FILE}, which the served model reads with the `tokenizers` package.",
            fix="save a fast tokenizer: tokenizer.save_pretrained(DIR)",
        )
    json_text = (tokenizer_dir / TOKENIZER_FILE).read_text(encoding="utf-8")
    check_served_tokenizer(tokenizer_dir, json_text)
    if config.max_new_tokens_default >= spec.max_positions:
        raise ConfigError(
            f"max_new_tokens_default {config.max_new_tokens_default} is not below the model's "
            f"{spec.max_positions} positions.",
            fix="lower GenerationServingConfig.max_new_tokens_default",
        )
    cfg = generation_model_config(config)
    text = render_model_config(cfg)
    if parse_model_config(text) != cfg:
        raise TritonExportError(
            "The rendered Triton config does not parse back to the config it was rendered from.",
            fix="report this as a workbench bug",
        )
    model = load_onnx(onnx_path)  # with its weights: the version folder gets one self-contained file

    def model_folder(folder: Path) -> None:
        from workbench.onnx.io import save_onnx

        version = folder / str(config.version)
        version.mkdir(parents=True)
        (folder / CONFIG_FILENAME).write_text(text, encoding="utf-8")
        shutil.copyfile(PYTHON_MODELS / "generation_model.py", version / "model.py")
        shutil.copyfile(Path(__file__).resolve().parents[1] / "decoding.py", version / "decoding.py")
        save_onnx(model, version / GENERATION_MODEL_FILE)
        (version / TOKENIZER_FILE).write_text(json_text, encoding="utf-8")
        for name in _TOKENIZER_FILES:
            if name != TOKENIZER_FILE and (tokenizer_dir / name).is_file():
                shutil.copyfile(tokenizer_dir / name, version / name)

    record = _plain_json(
        {
            "format": "workbench-triton-generation/1",
            "model": config.model_name,
            "decoder": str(onnx_path),
            "decoder_spec": dict(vars(spec)),
            "tokenizer": str(tokenizer_dir),
            "serving": config.to_dict(),
            "libraries": _library_versions(),
            **dict(provenance or {}),
        },
        "",
    )

    def text_file(content: str) -> Callable[[Path], None]:
        def write(target: Path) -> None:
            target.write_text(content, encoding="utf-8")

        return write

    entries = [
        Entry(config.model_name, model_folder),
        Entry(README_FILENAME, text_file(_readme(config, spec))),
        Entry(PROVENANCE_FILENAME, text_file(json.dumps(record, indent=2) + "\n")),
    ]
    write_repository(
        repository,
        entries,
        overwrite=overwrite,
        what=f"the generation repository {repository}",
        fix="check free disk space and permissions",
    )
    return TritonGenerationResult(
        repository=repository,
        model=written_model(repository, config.model_name, text),
        readme=repository / README_FILENAME,
        provenance=repository / PROVENANCE_FILENAME,
        spec=spec,
    )


def _library_versions() -> dict[str, str]:
    from workbench._lazy import installed_distribution

    return {name: v for name in _LIBRARIES if (v := installed_distribution(name))}
