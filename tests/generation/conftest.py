"""Fixtures of the generation tests: tiny random-init decoders (tests/generation/tiny_decoders.py), exported once
per session, and a runner that counts forward passes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from tests.generation.tiny_decoders import build_tiny_decoder

KINDS = ("gpt2", "llama")


@pytest.fixture(scope="session")
def tiny_decoder_dir(tmp_path_factory: pytest.TempPathFactory):
    """Factory: kind ("gpt2" or "llama") -> folder of a tiny random-init causal LM with its BPE tokenizer."""
    cache: dict[str, Path] = {}

    def get(kind: str = "gpt2") -> Path:
        if kind not in cache:
            cache[kind] = build_tiny_decoder(kind, tmp_path_factory.mktemp(f"decoder-{kind}"))
        return cache[kind]

    return get


@pytest.fixture(scope="session")
def exported_decoder(tiny_decoder_dir, tmp_path_factory: pytest.TempPathFactory):
    """Factory: kind -> the DecoderExportResult of that tiny decoder (exported once per session)."""
    from workbench.stages.generation.export import export_decoder

    cache: dict[str, object] = {}

    def get(kind: str = "gpt2"):
        if kind not in cache:
            folder = tmp_path_factory.mktemp(f"onnx-{kind}")
            cache[kind] = export_decoder(tiny_decoder_dir(kind), folder / "decoder.onnx")
        return cache[kind]

    return get


@pytest.fixture(scope="session")
def fused_decoder(exported_decoder, tiny_decoder_dir, tmp_path_factory: pytest.TempPathFactory):
    """Factory: kind -> the FusionResult of the exported tiny decoder."""
    import json

    from workbench.stages.generation.fusion import decoder_fusion_config, fuse_decoder

    cache: dict[str, object] = {}

    def get(kind: str = "gpt2"):
        if kind not in cache:
            config = decoder_fusion_config(json.loads((tiny_decoder_dir(kind) / "config.json").read_text()))
            cache[kind] = fuse_decoder(
                exported_decoder(kind).path, tmp_path_factory.mktemp(f"fused-{kind}") / "decoder.onnx", config
            )
        return cache[kind]

    return get


@dataclass
class CountingRunner:
    """Wraps a runner; counts its forward passes and the input_ids length of each."""

    runner: object
    calls: int = 0
    fed_lengths: list[int] = field(default_factory=list)
    name: str = "counting"

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.calls += 1
        self.fed_lengths.append(int(np.asarray(feeds["input_ids"]).shape[1]))
        return self.runner.infer(feeds)
