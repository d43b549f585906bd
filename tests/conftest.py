"""Shared fixtures: tiny models built once per session, the bundled MiniLM, and a temporary run folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.tiny_models import TINY_CONFIGS, build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    """Factory: kind -> folder of a tiny random-init Hugging Face model (built once per kind)."""
    cache: dict[str, Path] = {}

    def get(kind: str = "bert") -> Path:
        if kind not in cache:
            cache[kind] = build_tiny_model(kind, tmp_path_factory.mktemp(f"tiny-{kind}"))
        return cache[kind]

    return get


@pytest.fixture(scope="session")
def tiny_bert_onnx(tiny_model_dir, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT exported to ONNX once per session."""
    from workbench.models import load_model
    from workbench.stages.export import export_onnx

    path = tmp_path_factory.mktemp("tiny-bert-onnx") / "model.onnx"
    return export_onnx(load_model(tiny_model_dir("bert")), path).path


@pytest.fixture(params=sorted(TINY_CONFIGS))
def tiny_kind(request: pytest.FixtureRequest) -> str:
    return request.param


FUSED_TINY_TEXTS = ["the cat sat on the mat", "revenue grew 12%", "how do I reset my password?", "SELECT 1;"]


@pytest.fixture(scope="session")
def fused_tiny(tiny_model_dir, tiny_bert_onnx, tmp_path_factory: pytest.TempPathFactory):
    """(The tiny BERT fused as the pipeline fuses it, calibration-style feeds: batch 1, 16 tokens)."""
    from workbench.data import tokenize_batches
    from workbench.models import load_model
    from workbench.stages.fusion import FusionConfig, fuse_transformer

    source = load_model(tiny_model_dir("bert"))
    path = fuse_transformer(
        tiny_bert_onnx, tmp_path_factory.mktemp("fused") / "fused.onnx", FusionConfig.for_source(source)
    ).path
    feeds = tokenize_batches(source.load_tokenizer(), FUSED_TINY_TEXTS, batch_size=1, sequence_length=16)
    return path, feeds
