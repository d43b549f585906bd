"""provenance.json and README.md of an exported Triton repository: where the model came from and how it was chosen."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.errors import ConfigError
from workbench.triton.config import ENSEMBLE_TEXT_INPUT, TritonConfig

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    pass


README_FILENAME = "README.md"
PROVENANCE_FILENAME = "provenance.json"
PROVENANCE_FORMAT = "workbench-triton-provenance/1"
_COMPUTED_PROVENANCE_KEYS = (
    "format",
    "created_utc",
    "ensemble",
    "models",
    "onnx_model",
    "tokenizer",
    "sequence_length",
    "postprocessing",
    "triton_config",
    "libraries",
    "hardware",
    "padding",
)
_LIBRARIES = (
    "inference-workbench",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "tokenizers",
    "transformers",
    "torch",
    "numpy",
    "protobuf",
    "tritonclient",
    "nvidia-pytriton",
)


def _plain_json(value: Any, where: str) -> Any:
    """`value` as plain JSON data: objects with to_dict() and dataclasses become dicts, paths strings."""
    import dataclasses
    import json

    if isinstance(value, Mapping):
        return {str(k): _plain_json(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict):
        return _plain_json(to_dict(), where)
    to_json = getattr(value, "to_json", None)
    if callable(to_json):
        return _plain_json(json.loads(to_json()), where)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _plain_json(dataclasses.asdict(value), where)
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and getattr(value, "shape", None) == ():
        return _plain_json(item(), where)
    raise ConfigError(
        f"provenance{where} is a {type(value).__name__}, which cannot be written to provenance.json.",
        expected="JSON data (dicts, lists, strings, numbers), or objects with to_dict() / to_json()",
        fix="pass plain values, for example plan.to_dict() or a dict of figures",
    )


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _provenance_record(
    *,
    names: dict[str, str],
    onnx_path: Path,
    tokenizer_dir: Path,
    tokenizer_json: str,
    sequence_length: int,
    postprocessing: Any,
    config: TritonConfig,
    provided: Mapping[str, Any] | None,
    padding: Any = None,
) -> dict[str, Any]:
    import datetime
    import hashlib

    from workbench._lazy import installed_distribution
    from workbench.machine import machine_info

    tokenizer_sha256 = hashlib.sha256(tokenizer_json.encode("utf-8")).hexdigest()
    record: dict[str, Any] = {
        "format": PROVENANCE_FORMAT,
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "ensemble": names["ensemble"],
        "models": dict(names),
        "onnx_model": {"source_path": str(onnx_path), "sha256": _sha256(onnx_path), "bytes": onnx_path.stat().st_size},
        "tokenizer": {"source_path": str(tokenizer_dir), "tokenizer_json_sha256": tokenizer_sha256},
        "sequence_length": sequence_length,
        "postprocessing": None
        if postprocessing is None
        else {
            "model": postprocessing.source,
            "outputs": [o.name for o in postprocessing.outputs],
            "parameters": dict(postprocessing.parameters),
        },
        "triton_config": config.to_dict(),
        "padding": (
            {**padding.to_dict(), "buckets": list(padding.bucket_lengths), "description": padding.describe()}
            if padding is not None
            else None
        ),
        "libraries": {n: v for n in _LIBRARIES if (v := installed_distribution(n))},
        "hardware": machine_info(),
    }
    if provided is not None:
        if not isinstance(provided, Mapping):
            raise ConfigError(
                f"provenance must be a mapping, not {type(provided).__name__}.",
                fix="pass a dict such as {'source_model': ..., 'precision_plan': plan, 'accuracy': ..., 'speed': ...}",
            )
        clashes = sorted(set(map(str, provided)) & set(_COMPUTED_PROVENANCE_KEYS))
        if clashes:
            raise ConfigError(
                f"provenance keys {clashes} are written by the export itself.",
                expected=f"other keys than {list(_COMPUTED_PROVENANCE_KEYS)}, for example source_model, "
                "precision_plan, accuracy, speed",
                fix="rename those keys (for example 'benchmark_hardware' for the machine the speed was measured on)",
            )
        for key, value in provided.items():
            record[str(key)] = _plain_json(value, f"[{key!r}]")
    return record


def _readme_text(
    result_names: dict[str, str],
    *,
    sequence_length: int,
    postprocessing: Any,
    output_names: tuple[str, ...],
    config: TritonConfig,
    model_cfg: Any,
    provided: list[str],
    padding: Any = None,
) -> str:
    ensemble = result_names["ensemble"]
    padded = padding.describe() if padding is not None else f"texts padded to {sequence_length} tokens"
    if padding is not None and padding.batching == "bls":
        return _bls_readme_text(
            result_names, padded=padded, output_names=output_names, config=config, provided=provided
        )
    steps = [
        f"`{result_names['tokenizer']}` (Python backend: `tokenizers`, texts truncated to "
        f"{sequence_length} tokens; {padded})",
        f"`{result_names['model']}` (ONNX Runtime, dynamic batching up to {config.max_batch_size}, "
        f"{config.instance_count} x {config.instance_kind}"
        + (", TensorRT FP16 accelerator" if config.ort_gpu_tensorrt_fp16 else "")
        + ")",
    ]
    if postprocessing is not None:
        described = {
            "pooling_model.py": "attention-mask-aware mean pooling, L2-normalised",
            "labels_model.py": "the label (id2label) and the class probabilities",
        }.get(postprocessing.source, f"the task's post-processing ({postprocessing.source})")
        steps.append(f"`{result_names[postprocessing.suffix.lstrip('_')]}` (Python backend, numpy: {described})")
    from workbench.triton.python_models.tokenizer_model import MAX_TEXT_BYTES as max_text_bytes

    outputs = ", ".join(f"`{n}`" for n in output_names)
    model_inputs = ", ".join(f"`{t.name}`" for t in model_cfg.input)
    return f"""# Triton model repository: `{ensemble}`

Written by the Inference Workbench (`export_triton_ensemble`). Send texts, get {outputs} back.

`{ensemble}` (platform `ensemble`) runs, per request:

1. {steps[0]}
2. {steps[1]}{chr(10) + "3. " + steps[2] if len(steps) > 2 else ""}

The ONNX model can also be called directly with {model_inputs} (int, [batch, tokens]).
`provenance.json` records the ONNX model's hash, the Triton settings, library versions and the exporting
machine{", and " + ", ".join(f"`{k}`" for k in provided) if provided else ""}.

## Serve

```
tritonserver --model-repository=$PWD --model-control-mode=explicit --load-model={ensemble}
```

The server's Python environment needs `numpy` and `tokenizers` (the Python-backend steps import them); the ONNX
model needs Triton's onnxruntime backend (in the NGC `tritonserver` container). Loading the ensemble loads its
steps.

## What the server accepts

Each request holds one or more texts (`{ENSEMBLE_TEXT_INPUT}`, BYTES, shape [batch, 1], batch at most
{config.max_batch_size}), each UTF-8 of at most {max_text_bytes} bytes (the tokenizer's `max_text_bytes`); longer texts
are truncated to {sequence_length} tokens. A request with a text that is empty (or only white space), not UTF-8,
too long or not a string gets an error response that names the text;
the other requests, even those in the same dynamic batch, get their results.

## Query

```python
import numpy as np
import tritonclient.http as http

client = http.InferenceServerClient("127.0.0.1:8000")
texts = np.array([[b"A man is playing a guitar."], [b"A woman reads."]], dtype=object)  # [batch, 1]
request = http.InferInput("{ENSEMBLE_TEXT_INPUT}", texts.shape, "BYTES")
request.set_data_from_numpy(texts)
result = client.infer("{ensemble}", [request])
print(result.as_numpy("{output_names[0]}").shape)
```
"""


def _bls_readme_text(
    names: dict[str, str], *, padded: str, output_names: tuple[str, ...], config: TritonConfig, provided: list[str]
) -> str:
    ensemble = names["ensemble"]
    called = [role for role in names if role not in ("model", "ensemble", "tokenizer")]
    post = "".join(f" and `{names[role]}`" for role in called)
    outputs = ", ".join(f"`{n}`" for n in output_names)
    load = " ".join(f"--load-model={names[role]}" for role in ("model", *called, "ensemble"))
    return f"""# Triton model repository: `{ensemble}`

Written by the Inference Workbench (`export_triton_ensemble`). Send texts, get {outputs} back.

`{ensemble}` is a Python-backend model (business-logic scripting) behind Triton's dynamic batcher (up to
{config.max_batch_size} texts, {config.max_queue_delay_us} us queue delay, {config.instance_count} instance(s)).
For each batch it tokenizes every text with `tokenizers` ({padded}) and, per padded length, calls `{names["model"]}`
(ONNX Runtime){post} once{"" if called else ", then post-processes the outputs itself"}. Its input and outputs are
those of the ensemble the workbench writes with fixed padding, so clients do not change with the padding policy.

`provenance.json` records the padding policy, the ONNX model's hash, the Triton settings, library versions and the
exporting machine{", and " + ", ".join(f"`{k}`" for k in provided) if provided else ""}.

## Serve

```
tritonserver --model-repository=$PWD --model-control-mode=explicit {load}
```

With explicit model control `{ensemble}` also loads the models it calls when it starts. The server's Python
environment needs `numpy` and `tokenizers`; the ONNX model needs Triton's onnxruntime backend.

## Query

```python
import numpy as np
import tritonclient.http as http

client = http.InferenceServerClient("127.0.0.1:8000")
texts = np.array([[b"A man is playing a guitar."], [b"A woman reads."]], dtype=object)  # [batch, 1]
request = http.InferInput("{ENSEMBLE_TEXT_INPUT}", texts.shape, "BYTES")
request.set_data_from_numpy(texts)
result = client.infer("{ensemble}", [request])
print(result.as_numpy("{output_names[0]}").shape)
```
"""
