"""Load and save ONNX models, with external data when they are too large for one protobuf."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from workbench._lazy import require
from workbench.errors import ModelSourceError

# Protobuf's hard limit is 2 GiB; stay well below it so graph metadata never tips a model over.
EXTERNAL_DATA_THRESHOLD_BYTES = 1_800_000_000


def stage_model(path: str | os.PathLike[str], folder: str | os.PathLike[str]) -> Path:
    """Show the model at `path` (and its external data files) inside `folder`, without copying where possible.

    onnxruntime's tools write files next to the model they are given (quantize_dynamic writes
    `<model>-inferred.onnx` beside it): given this staged path, they write into `folder` instead, which the
    calling step owns, and never beside its input (which may be read-only, or on a full disk).
    """
    from workbench._files import link_or_copy

    onnx = require("onnx", purpose="Reading an ONNX model")
    source, folder = Path(path), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staged = folder / source.name
    link_or_copy(source, staged)
    model = onnx.load(str(source), load_external_data=False)
    locations = {
        entry.value
        for tensor in _all_tensors(model.graph)
        if tensor.data_location == onnx.TensorProto.EXTERNAL
        for entry in tensor.external_data
        if entry.key == "location"
    }
    for location in sorted(locations):
        target = folder / location
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            link_or_copy(source.parent / location, target)
    return staged


def _all_tensors(graph: Any) -> Any:
    yield from graph.initializer
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for subgraph in (*([attribute.g] if attribute.HasField("g") else []), *attribute.graphs):
                yield from _all_tensors(subgraph)


def load_onnx(path: str | os.PathLike[str]) -> Any:
    """Load an ONNX model with its external data, after checking that the file is complete."""
    onnx = require("onnx", purpose="Reading an ONNX model")
    check_onnx_file(Path(path))
    return onnx.load(str(path), load_external_data=True)


def save_onnx(model: Any, path: str | os.PathLike[str]) -> Path:
    """Save `model` to `path` atomically: nothing appears at `path` unless the whole save succeeds.

    Models at or above ~1.8 GB are written with their weights in `<name>.data` beside the .onnx file.
    """
    from workbench._files import FILE_MODE, disk_errors, staging_directory

    onnx = require("onnx", purpose="Saving an ONNX model")
    path = Path(path)
    data_name = f"{path.name}.data"
    if path.is_dir():
        from workbench.errors import OutputFolderError

        raise OutputFolderError(
            f"Cannot write the model to {path}: it is a folder.",
            fix="pass the path of an .onnx file inside it, for example model.onnx",
        )
    with staging_directory(path.parent, path.name) as staging, disk_errors(path, "Saving the model to"):
        external = model.ByteSize() >= EXTERNAL_DATA_THRESHOLD_BYTES if _has_no_external(model) else True
        staged = staging / path.name
        if external:
            # save_model moves the weights out of the proto it is given: save a copy, keep the caller's intact
            copy = onnx.ModelProto()
            copy.CopyFrom(model)
            onnx.save_model(
                copy,
                str(staged),
                save_as_external_data=True,
                all_tensors_to_one_file=True,
                location=data_name,
                size_threshold=1024,
            )
        else:
            onnx.save_model(model, str(staged))
        for written in staging.iterdir():
            os.chmod(written, FILE_MODE)
        # weights first, so a reader never sees a model whose data file is missing
        if (staging / data_name).exists():
            os.replace(staging / data_name, path.parent / data_name)
        elif (path.parent / data_name).exists():
            (path.parent / data_name).unlink()  # a stale data file from an earlier, larger save
        os.replace(staged, path)
    return path


def _has_no_external(model: Any) -> bool:
    # ByteSize() is only meaningful when every tensor is inline.
    onnx = require("onnx", purpose="Saving an ONNX model")
    return not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def model_size_mb(path: str | os.PathLike[str]) -> float:
    """Size on disk of an ONNX model and its external data file, in MB (10^6 bytes)."""
    path = Path(path)
    total = path.stat().st_size
    data = path.parent / f"{path.name}.data"
    if data.exists():
        total += data.stat().st_size
    return total / 1e6


def check_onnx_file(path: Path) -> None:
    """Raise ModelSourceError unless `path` is a complete, valid ONNX model file."""
    onnx = require("onnx", purpose="Reading an ONNX model")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends: the file is truncated or not ONNX at all
        raise ModelSourceError(
            f"{path} is not a readable ONNX model ({type(exc).__name__}: {exc}); the file is truncated or corrupt.",
            expected="a complete .onnx file written by onnx.save or torch.onnx.export",
            fix="export or copy the model again; if it has external data, keep its .data file beside it",
        ) from exc
    if not model.graph.node or not model.graph.output:
        raise ModelSourceError(
            f"{path} parsed as ONNX but has {len(model.graph.node)} nodes and {len(model.graph.output)} outputs.",
            expected="a graph with at least one node and one output",
            fix="export the model again; an empty graph usually means a truncated or wrong file",
        )
    initializers = {t.name for t in model.graph.initializer}
    if not [i for i in model.graph.input if i.name not in initializers]:
        raise ModelSourceError(
            f"{path} has no inputs (every graph input is a weight), so there is nothing to feed it.",
            expected="a model with at least one real input (input_ids, for a text model)",
            fix="export the model with its inputs (torch.onnx.export(..., input_names=[...])), not a constant graph",
        )
    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise ModelSourceError(
            f"{path} fails the ONNX checker: {exc}",
            fix="export the model again, or repair the graph before using it",
        ) from exc
