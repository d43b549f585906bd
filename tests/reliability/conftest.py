"""Fixtures of the reliability suite: a tiny exported ensemble, its Python models run in-process with a fake
`triton_python_backend_utils`, and helpers that snapshot folders."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.reliability import fake_pb_utils

SEQUENCE_LENGTH = 16


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Relative path -> (size, mtime_ns) of everything under `folder`, hidden entries included."""
    found = {}
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(root) / name
            stat = path.lstat()
            found[str(path.relative_to(folder))] = (stat.st_size if name in files else -1, stat.st_mtime_ns)
    return found


def leftovers(folder: Path) -> list[str]:
    """Temporary or partial entries under `folder`: hidden names, *.partial, *.tmp, *-inferred.onnx, locks."""
    bad = []
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            if name.startswith(".") or name.endswith((".partial", ".tmp", ".old")) or "-inferred" in name:
                bad.append(str((Path(root) / name).relative_to(folder)))
    return sorted(bad)


@pytest.fixture(scope="session")
def tiny_ensemble(tiny_bert_onnx, tiny_model_dir, tmp_path_factory):
    """The tiny BERT as a text-in, embedding-out Triton ensemble (dynamic batching, batches of up to 8)."""
    pytest.importorskip(
        "tritonclient.grpc.model_config_pb2", reason="tritonclient is not installed (the [triton] extra)"
    )
    from workbench.triton.config import TritonConfig
    from workbench.triton.ensemble import export_triton_ensemble

    config = TritonConfig(model_name="tiny", max_batch_size=8, max_queue_delay_us=2000)
    return export_triton_ensemble(
        tiny_bert_onnx,
        tmp_path_factory.mktemp("ensemble") / "repo",
        tiny_model_dir("bert"),
        config,
        sequence_length=SEQUENCE_LENGTH,
    )


@pytest.fixture
def pb_utils(monkeypatch):
    """A fake `triton_python_backend_utils` module, importable by the models' execute()."""
    module = fake_pb_utils.make_module()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", module)
    return module


def load_python_model(model_dir: Path, source: Path, *, parameters: dict[str, str] | None = None) -> Any:
    """Import `source` (a model.py) as Triton does and initialize it with `model_dir`'s config.pbtxt."""
    from workbench.triton.config import parse_model_config

    cfg = parse_model_config((model_dir / "config.pbtxt").read_text())
    for key, value in (parameters or {}).items():
        cfg.parameters[key].string_value = value
    return initialize_served(source, model_dir, cfg, module_name=f"served_{model_dir.name}")


def initialize_served(source: Path, model_dir: Path, cfg: Any, *, module_name: str) -> Any:
    """Import `source` under `module_name` and initialize its TritonPythonModel with the ModelConfig `cfg`, as
    Triton's Python backend does (the config as JSON, the repository folder, version 1). Imports no workbench
    module, so the round-1 checks can use it too."""
    from google.protobuf import json_format

    spec = importlib.util.spec_from_file_location(module_name, source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    model.initialize(
        {
            "model_config": json.dumps(json_format.MessageToDict(cfg, preserving_proto_field_name=True)),
            "model_repository": str(model_dir),
            "model_version": "1",
        }
    )
    return model


def int32_id_model(source: Path, path: Path) -> Path:
    """`source` (an ONNX model) with its int64 inputs declared int32, each cast back to int64 first; saved to
    `path`. Imports no workbench module."""
    import onnx

    model = onnx.load(str(source))
    casts = []
    for graph_input in model.graph.input:
        if graph_input.type.tensor_type.elem_type == onnx.TensorProto.INT64:
            for node in model.graph.node:
                node.input[:] = [f"{i}_64" if i == graph_input.name else i for i in node.input]
            casts.append(
                onnx.helper.make_node("Cast", [graph_input.name], [f"{graph_input.name}_64"], to=onnx.TensorProto.INT64)
            )
            graph_input.type.tensor_type.elem_type = onnx.TensorProto.INT32
    for cast in reversed(casts):
        model.graph.node.insert(0, cast)
    onnx.save(model, path)
    return path
