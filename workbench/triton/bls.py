"""Tasks served by one Python front model that calls the engine model through BLS: a Triton model repository with
the ONNX engine model and, beside it, a Python-backend model that clients call (text in, entities out; question +
context in, answer span out), all written or none.

Some tasks do not fit an ensemble's fixed tokenizer -> model -> post-processing chain: question answering splits
one context into a variable number of windows, and decoding needs the tokenizer's offsets and words next to the
model's outputs. Their front model (:class:`workbench.tasks.base.FrontModel`, declared by the task's
`front_model()`) tokenizes, calls the engine model with Triton's business-logic scripting
(`pb_utils.InferenceRequest(...).exec()`, in batches of at most the engine's max_batch_size), and decodes, in one
self-contained `model.py` (numpy and `tokenizers` only).

Before anything is written, the export proves that the served code computes what the workbench measured: it runs
the front model's own pure `run()` on the task's check samples, with the ONNX model run by onnxruntime, and
compares the answers with the task's library decoding (`Task.served_outputs`); spans, labels and words must be
equal, scores equal to float32 precision.
"""

from __future__ import annotations

import html
import importlib.util
import json
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from workbench._lazy import require
from workbench.errors import (
    ConfigError,
    ModelSourceError,
    TritonExportError,
    WorkbenchError,
)
from workbench.triton.config import (
    CONFIG_FILENAME,
    TritonConfig,
    _check_model_name,
    _is_int,
    _model_config_pb2,
)
from workbench.triton.model import (
    TritonExportResult,
    _config_from_model,
    _load_checked,
    _onnx_files_writer,
    written_model,
)
from workbench.triton.provenance import (
    PROVENANCE_FILENAME,
    README_FILENAME,
    _plain_json,
    _sha256,
)
from workbench.triton.writer import Entry, checked_text, write_repository

#: The engine inputs a front model's tokenizer produces.
TOKENIZER_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_INTEGER_TYPES = ("TYPE_INT64", "TYPE_INT32")
_PROVENANCE_FORMAT = "workbench-triton-bls-provenance/1"
_SCORE_RTOL = 1e-5
_COMPUTED_KEYS = (
    "format",
    "created_utc",
    "task",
    "models",
    "onnx_model",
    "tokenizer",
    "sequence_length",
    "triton_config",
    "front_parameters",
    "libraries",
    "hardware",
)


@dataclass(frozen=True)
class TritonBlsResult:
    """An engine model and its BLS front model written into a Triton model repository.

    Attributes:
        repository: The model repository.
        task: The task's name.
        front_name: The model clients call (its inputs and outputs are the task's, e.g. TEXT -> ENTITIES).
        models: Role ("model", "front") -> the folder written for it.
        readme: `<repository>/README.md`.
        provenance: `<repository>/provenance.json`.
        sequence_length: Tokens per engine row (a text, or a window of a context).
        input_names: The front model's inputs.
        output_names: The front model's outputs.
        checked: How many check samples the served code and the library answered alike.
    """

    repository: Path
    task: str
    front_name: str
    models: dict[str, TritonExportResult]
    readme: Path
    provenance: Path
    sequence_length: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    checked: int

    @property
    def model_name(self) -> str:
        """The name clients call (the front model's)."""
        return self.front_name

    @property
    def model_names(self) -> tuple[str, ...]:
        """Every model, the engine first: load them in this order (a BLS caller does not load its callee)."""
        return (self.models["model"].model_name, self.front_name)

    @property
    def files(self) -> tuple[Path, ...]:
        return tuple(f for result in self.models.values() for f in result.files) + (self.readme, self.provenance)

    def to_dict(self) -> dict[str, Any]:
        return {
            "repository": str(self.repository),
            "task": self.task,
            "front_name": self.front_name,
            "models": {role: result.to_dict() for role, result in self.models.items()},
            "readme": str(self.readme),
            "provenance": str(self.provenance),
            "sequence_length": self.sequence_length,
            "input_names": list(self.input_names),
            "output_names": list(self.output_names),
            "checked": self.checked,
        }

    def _repr_html_(self) -> str:
        return (
            f"<b>Triton BLS front model</b> <code>{html.escape(self.front_name)}</code> ({html.escape(self.task)}: "
            f"{html.escape(', '.join(self.input_names))} &rarr; {html.escape(', '.join(self.output_names))}) "
            f"calling <code>{html.escape(self.models['model'].model_name)}</code> in "
            f"<code>{html.escape(str(self.repository))}</code>; {self.checked} check samples answered alike "
            "by the served code and the workbench."
        )


@dataclass(frozen=True)
class _Tokenizer:
    tokenizer: Any  # the transformers tokenizer the workbench measured with
    json_text: str  # its backend, as the server loads it
    parameters: dict[str, str]


def _load_tokenizer(tokenizer_dir: Path, task: Any) -> _Tokenizer:
    from workbench.models import _load_tokenizer as load

    if not tokenizer_dir.is_dir():
        raise ModelSourceError(
            f"Tokenizer folder {tokenizer_dir} {'is a file' if tokenizer_dir.exists() else 'does not exist'}.",
            expected="a folder written by tokenizer.save_pretrained() (tokenizer.json, tokenizer_config.json ...)",
            fix="pass the Hugging Face model folder, which holds the tokenizer files",
        )
    try:
        tokenizer = load(tokenizer_dir)
    except WorkbenchError:
        raise
    except Exception as exc:
        raise ModelSourceError(
            f"Could not load a tokenizer from {tokenizer_dir}: {type(exc).__name__}: {exc}",
            fix="pass a folder written by tokenizer.save_pretrained()",
        ) from exc
    task.check_tokenizer(tokenizer, model_path=str(tokenizer_dir))  # fast, padded: what the task needs
    # the backend the workbench's tokenizer runs (tokenizer.json as loaded), so the server tokenizes alike
    json_text = tokenizer.backend_tokenizer.to_str()
    cls_id = getattr(tokenizer, "cls_token_id", None)
    return _Tokenizer(
        tokenizer,
        json_text,
        {
            "tokenizer_file": "tokenizer.json",
            "pad_id": str(tokenizer.pad_token_id),
            "pad_token": str(tokenizer.pad_token),
            "pad_type_id": str(int(getattr(tokenizer, "pad_token_type_id", 0) or 0)),
            "padding_side": str(tokenizer.padding_side),
            "truncation_side": str(tokenizer.truncation_side),
            "cls_token_id": "" if cls_id is None else str(cls_id),
        },
    )


def _served_module(source: str) -> Any:
    """The front model's model.py, imported from workbench/triton/python_models/ under a private name."""
    from workbench.triton.python_models import FOLDER

    path = FOLDER / source
    if not path.is_file():
        raise TritonExportError(
            f"The task's front model source {source!r} is not in {FOLDER}.", fix="report this as a workbench bug"
        )
    spec = importlib.util.spec_from_file_location(f"_workbench_served_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _differences(expected: Any, served: Any, where: str = "") -> list[str]:
    """Where two decoded answers differ: exact for everything but scores (float32-close)."""
    if isinstance(expected, Mapping) and isinstance(served, Mapping):
        if set(expected) != set(served):
            return [f"{where} has keys {sorted(served)}, expected {sorted(expected)}"]
        found = []
        for key in expected:
            found += _differences(expected[key], served[key], f"{where}.{key}")
        return found
    if isinstance(expected, (list, tuple)) and isinstance(served, (list, tuple)):
        if len(expected) != len(served):
            return [f"{where} has {len(served)} entries, expected {len(expected)}"]
        found = []
        for i, (a, b) in enumerate(zip(expected, served)):
            found += _differences(a, b, f"{where}[{i}]")
        return found
    if where.endswith(".score") and isinstance(expected, float) and isinstance(served, float):
        return (
            []
            if abs(expected - served) <= _SCORE_RTOL * max(abs(expected), 1e-12)
            else [f"{where} is {served!r}, expected {expected!r}"]
        )
    return [] if expected == served else [f"{where} is {served!r}, expected {expected!r}"]


def _front_config(pb2: Any, name: str, front: Any, config: TritonConfig, parameters: Mapping[str, str]) -> Any:
    cfg = pb2.ModelConfig(name=name, backend="python", max_batch_size=config.max_batch_size)
    for spec, target in [(t, cfg.input) for t in front.inputs] + [(t, cfg.output) for t in front.outputs]:
        target.add(name=spec.name, data_type=pb2.DataType.Value(spec.data_type), dims=list(spec.dims))
    if config.dynamic_batching:
        cfg.dynamic_batching.SetInParent()
    # the front model runs numpy and tokenizers: one CPU instance, whatever the engine runs on. No warmup: its
    # zero-data samples would be empty texts, which a question-answering front model rightly refuses.
    cfg.instance_group.add(count=1, kind=pb2.ModelInstanceGroup.Kind.Value("KIND_CPU"))
    for key, value in parameters.items():
        cfg.parameters[key].string_value = str(value)
    return cfg


def _readme(task: Any, names: dict[str, str], front: Any, sequence_length: int, config: TritonConfig) -> str:
    inputs = ", ".join(f"`{t.name}`" for t in front.inputs)
    outputs = ", ".join(f"`{t.name}`" for t in front.outputs)
    arrays = "\n".join(f'{t.name.lower()} = np.array([[b"..."]], dtype=object)  # [batch, 1]' for t in front.inputs)
    requests = "\n".join(
        f'inputs.append(http.InferInput("{t.name}", [1, 1], "BYTES")); inputs[-1].set_data_from_numpy({t.name.lower()})'
        for t in front.inputs
    )
    return f"""# Triton model repository: `{names["front"]}` ({task.title})

Written by the Inference Workbench (`export_triton_bls`). Send {inputs}, get {outputs} back.

- `{names["front"]}` (Python backend, numpy + `tokenizers`): tokenizes ({sequence_length} tokens per engine row),
  calls `{names["model"]}` through BLS, decodes exactly as the workbench measured accuracy (transformers'
  pipeline decoding). It runs on the CPU, one instance.
- `{names["model"]}` (ONNX Runtime, dynamic batching up to {config.max_batch_size}, {config.instance_count} x
  {config.instance_kind}). Clients may call it directly with the token ids.

`provenance.json` records the ONNX model's hash, the tokenizer, the decoding parameters, library versions and
the exporting machine.

## Serve

```
tritonserver --model-repository=$PWD --model-control-mode=explicit --load-model={names["model"]} \\
    --load-model={names["front"]}
```

Load the engine model too: a BLS caller does not load the model it calls. The server's Python environment needs
`numpy` and `tokenizers`.

## Query

```python
import numpy as np
import tritonclient.http as http

client = http.InferenceServerClient("127.0.0.1:8000")
{arrays}
inputs = []
{requests}
result = client.infer("{names["front"]}", inputs)
print(result.as_numpy("{front.outputs[0].name}"))
```
"""


def export_triton_bls(
    onnx_path: str | os.PathLike[str],
    repository: str | os.PathLike[str],
    tokenizer_dir: str | os.PathLike[str],
    config: TritonConfig = TritonConfig(),  # noqa: B008 - frozen, as export_triton_ensemble takes it
    *,
    task: str | Any,
    sequence_length: int,
    model_config: Mapping[str, Any] | None = None,
    check_samples: Sequence[Any] | None = None,
    infer: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]] | None = None,
    provenance: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> TritonBlsResult:
    """Write a model repository that Triton serves as the task's front model (BLS) calling the ONNX engine model.

    With `config.model_name` = NAME it writes, all or nothing: `NAME/` (the ONNX model, as export_triton writes
    it: dynamic batching, instances, warmup and accelerators from `config`), `NAME<suffix>/` (the task's front
    model: `model.py` and `tokenizer.json` in its version folder, decoding parameters in its config), README.md
    and provenance.json.

    Before anything is written, both configs are rendered and parsed back strictly, and the served code answers
    the check samples exactly as the workbench's decoding does (module docstring).

    Args:
        onnx_path: The .onnx engine model (inputs among input_ids, attention_mask, token_type_ids).
        repository: The model repository folder; created if missing.
        tokenizer_dir: The folder with the model's tokenizer files (a Hugging Face model folder).
        config: Name, batching, instances, warmup, accelerators of the engine model; the front model gets one
            CPU instance, the same max_batch_size and dynamic batching.
        task: The task (or its name); it must declare a front model (token-classification, question-answering).
        sequence_length: Tokens per engine row: texts are truncated and padded to it, contexts windowed at it.
        model_config: The checkpoint's config.json (labels...); default: `tokenizer_dir`/config.json if present.
        check_samples: Inputs of the agreement check; default: the task's own.
        infer: Runs the engine on one feed dict for the check; default: onnxruntime on `onnx_path`.
        provenance: Extra provenance.json entries (source model, precision plan, accuracy, speed...).
        overwrite: Replace existing entries (only once all new ones are complete).

    Raises:
        ModelSourceError: The ONNX file or the tokenizer is missing or unusable for the task.
        TritonExportError: The task has no front model, the model's inputs or outputs do not fit it, the served
            code disagrees with the workbench, an entry exists and overwrite is False, or writing failed.
        ConfigError: Invalid arguments.
    """
    from workbench.tasks.base import Task, get_task

    if not isinstance(config, TritonConfig):
        raise ConfigError(
            f"export_triton_bls() takes a TritonConfig, not {type(config).__name__}.",
            fix="pass TritonConfig(...) or TritonConfig.preset('cpu')",
        )
    if not _is_int(sequence_length) or sequence_length < 8:
        raise ConfigError(
            f"sequence_length must be an integer >= 8, got {sequence_length!r}.",
            fix="pass the sequence length the model was measured at (384 for question answering)",
        )
    task = task if isinstance(task, Task) else get_task(str(task))
    repository, tokenizer_dir = Path(repository), Path(tokenizer_dir)
    if repository.exists() and not repository.is_dir():
        raise TritonExportError(
            f"The model repository {repository} is a file, not a folder.",
            fix="pass a folder (it may already hold other models)",
        )
    onnx = require("onnx", purpose="Exporting an ONNX model to Triton")
    pb2 = _model_config_pb2("Writing a Triton model config")
    path, model = _load_checked(onnx_path)
    model_cfg = _config_from_model(model, config, path, warmup_length=sequence_length)
    output_dims = {t.name: tuple(t.dims) for t in model_cfg.output}
    if model_config is None:
        beside = tokenizer_dir / "config.json"
        model_config = json.loads(beside.read_text(encoding="utf-8")) if beside.is_file() else {}
    front = task.front_model(
        model_config=model_config,
        output_names=tuple(output_dims),
        output_dims=output_dims,
        sequence_length=sequence_length,
    )
    if front is None:
        raise TritonExportError(
            f"Task {task.name!r} is served as an ensemble, not through a BLS front model.",
            fix="use workbench.triton.ensemble.export_triton_ensemble for this model",
        )
    names = {"model": config.model_name, "front": config.model_name + front.suffix}
    for name in names.values():
        _check_model_name(name)
    entry_names = [*names.values(), README_FILENAME, PROVENANCE_FILENAME]
    existing = [n for n in entry_names if (repository / n).exists() or (repository / n).is_symlink()]
    if existing and not overwrite:
        raise TritonExportError(
            f"{', '.join(str(repository / n) for n in existing)} already exist in the repository; nothing was changed.",
            fix="pass overwrite=True to replace them, or choose another TritonConfig.model_name",
        )

    engine_inputs = []
    for tensor in model_cfg.input:
        type_name = pb2.DataType.Name(tensor.data_type)
        if tensor.name not in TOKENIZER_INPUTS or type_name not in _INTEGER_TYPES:
            raise TritonExportError(
                f"{path} takes input {tensor.name!r} ({type_name}), which the front model's tokenizer does not "
                "produce.",
                expected=f"inputs among {list(TOKENIZER_INPUTS)}, of type {' or '.join(_INTEGER_TYPES)}",
                fix="serve this model with export_triton() and tokenize on the client instead",
            )
        if list(tensor.dims) not in ([-1], [sequence_length]):
            raise TritonExportError(
                f"{path} input {tensor.name!r} has dims {list(tensor.dims)} after the batch dimension, which does "
                f"not take {sequence_length} tokens.",
                fix="export the model with a dynamic sequence axis, or pass that fixed length as sequence_length",
            )
        engine_inputs.append([tensor.name, type_name])
    missing = [o for o in front.engine_outputs if o not in output_dims]
    if missing:
        raise TritonExportError(
            f"{path} has no outputs {missing}, which the {task.name} front model decodes "
            f"(its outputs: {sorted(output_dims)}).",
            fix=f"export the model with the task's outputs {list(task.outputs)}",
        )

    plan = _load_tokenizer(tokenizer_dir, task)
    parameters = {
        **plan.parameters,
        "sequence_length": str(sequence_length),
        "engine_model": names["model"],
        "engine_inputs": json.dumps(engine_inputs),
        "engine_max_batch": str(config.max_batch_size),
        **{k: str(v) for k, v in front.parameters.items()},
    }
    front_cfg = _front_config(pb2, names["front"], front, config, parameters)
    texts = {names["model"]: checked_text(model_cfg), names["front"]: checked_text(front_cfg)}

    checked = _check_agreement(
        task,
        front,
        plan,
        parameters,
        path,
        sequence_length,
        model_config,
        check_samples,
        infer,
        [n for n, _ in engine_inputs],
    )
    record = _provenance(task, names, path, tokenizer_dir, plan, sequence_length, config, parameters, provenance)
    readme = _readme(task, names, front, sequence_length, config)

    from workbench.triton.python_models import FOLDER

    def engine_folder(folder: Path) -> None:
        folder.mkdir()
        (folder / CONFIG_FILENAME).write_text(texts[names["model"]], encoding="utf-8")
        _onnx_files_writer(onnx, model, path, config.version)(folder)

    def front_folder(folder: Path) -> None:
        folder.mkdir()
        (folder / CONFIG_FILENAME).write_text(texts[names["front"]], encoding="utf-8")
        version_dir = folder / str(config.version)
        version_dir.mkdir()
        shutil.copyfile(FOLDER / front.source, version_dir / "model.py")
        (version_dir / "tokenizer.json").write_text(plan.json_text, encoding="utf-8")

    def text_file(content: str) -> Callable[[Path], None]:
        def write(target: Path) -> None:
            target.write_text(content, encoding="utf-8")

        return write

    entries = [
        Entry(names["model"], engine_folder),
        Entry(names["front"], front_folder),
        Entry(README_FILENAME, text_file(readme)),
        Entry(PROVENANCE_FILENAME, text_file(json.dumps(record, indent=2) + "\n")),
    ]
    write_repository(
        repository,
        entries,
        overwrite=overwrite,
        what=f"the Triton repository {repository}",
        fix="check free disk space and permissions on the repository",
    )

    return TritonBlsResult(
        repository=repository,
        task=task.name,
        front_name=names["front"],
        models={role: written_model(repository, name, texts[name]) for role, name in names.items()},
        readme=repository / README_FILENAME,
        provenance=repository / PROVENANCE_FILENAME,
        sequence_length=sequence_length,
        input_names=tuple(t.name for t in front.inputs),
        output_names=tuple(t.name for t in front.outputs),
        checked=checked,
    )


def _check_agreement(
    task: Any,
    front: Any,
    plan: _Tokenizer,
    parameters: Mapping[str, str],
    onnx_path: Path,
    sequence_length: int,
    model_config: Mapping[str, Any],
    samples: Sequence[Any] | None,
    infer: Callable[..., Mapping[str, np.ndarray]] | None,
    input_names: list[str],
) -> int:
    """Run the check samples through the served `run()` and the task's library decoding; raise if they differ."""
    import tempfile

    samples = list(samples if samples is not None else front.check_samples)
    if not samples:
        return 0
    module = _served_module(front.source)
    with tempfile.TemporaryDirectory(prefix="workbench-bls-") as folder:
        tokenizer_file = Path(folder) / "tokenizer.json"
        tokenizer_file.write_text(plan.json_text, encoding="utf-8")
        served_tokenizer = module.tokenizer_from(tokenizer_file, parameters)  # as its initialize() does

    def checked_run(run: Callable[[Any], Any]) -> Any:
        if infer is not None:
            return run(infer)
        from workbench.engines.onnxruntime import OnnxRuntimeRunner

        with OnnxRuntimeRunner(onnx_path, output_names=list(front.engine_outputs)) as runner:
            return run(runner.infer)

    rows = samples
    served = checked_run(lambda f: module.run(served_tokenizer, rows, f, parameters))
    expected = checked_run(
        lambda f: task.served_outputs(
            plan.tokenizer,
            samples,
            f,
            sequence_length=sequence_length,
            input_names=input_names,
            model_config=model_config,
            parameters=parameters,
        )
    )
    problems = _differences(_plain_json(expected, ""), _plain_json(served, ""), "answers")
    if problems:
        raise TritonExportError(
            f"The served {task.name} model would not answer as the workbench measured: {'; '.join(problems[:5])}"
            f"{' ...' if len(problems) > 5 else ''}.",
            fix="save the tokenizer again with a current transformers (tokenizer.save_pretrained(DIR)); if it "
            "persists, report it as a workbench bug with the model",
        )
    return len(samples)


def _provenance(
    task: Any,
    names: dict[str, str],
    onnx_path: Path,
    tokenizer_dir: Path,
    plan: _Tokenizer,
    sequence_length: int,
    config: TritonConfig,
    parameters: Mapping[str, str],
    provided: Mapping[str, Any] | None,
) -> dict[str, Any]:
    import datetime
    import hashlib

    from workbench._lazy import installed_distribution
    from workbench.machine import machine_info
    from workbench.triton.provenance import _LIBRARIES

    record: dict[str, Any] = {
        "format": _PROVENANCE_FORMAT,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "task": task.name,
        "models": dict(names),
        "onnx_model": {"source_path": str(onnx_path), "sha256": _sha256(onnx_path), "bytes": onnx_path.stat().st_size},
        "tokenizer": {
            "source_path": str(tokenizer_dir),
            "tokenizer_json_sha256": hashlib.sha256(plan.json_text.encode("utf-8")).hexdigest(),
        },
        "sequence_length": sequence_length,
        "triton_config": config.to_dict(),
        "front_parameters": dict(parameters),
        "libraries": {n: v for n in _LIBRARIES if (v := installed_distribution(n))},
        "hardware": machine_info(),
    }
    if provided is not None:
        if not isinstance(provided, Mapping):
            raise ConfigError(f"provenance must be a mapping, not {type(provided).__name__}.")
        clashes = sorted(set(map(str, provided)) & set(_COMPUTED_KEYS))
        if clashes:
            raise ConfigError(
                f"provenance keys {clashes} are written by the export itself.",
                fix="rename those keys (for example 'benchmark_hardware')",
            )
        for key, value in provided.items():
            record[str(key)] = _plain_json(value, f"[{key!r}]")
    return record
