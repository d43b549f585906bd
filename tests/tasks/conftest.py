"""Fixtures of the task tests: tiny random-init token-classification and question-answering models of four
architectures (built once per session, and exported to ONNX once), and the transformers 4.x reference."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tasks.tiny_heads import build_tiny_head, export_tiny_head

REPOSITORY = Path(__file__).resolve().parents[2]
#: transformers 5 removed QuestionAnsweringPipeline; the reference runs a 4.x install in a subprocess.
TRANSFORMERS4 = Path(os.environ.get("WORKBENCH_TRANSFORMERS4", REPOSITORY / ".cache" / "transformers4"))
TRANSFORMERS4_INSTALL = (
    "pip install --target .cache/transformers4 --no-deps transformers==4.57.3 "
    "huggingface_hub==0.36.0 tokenizers==0.22.1"
)


@pytest.fixture(scope="session")
def tiny_head(tmp_path_factory: pytest.TempPathFactory):
    """Factory: (kind, head) -> folder of a tiny random-init Hugging Face model with that head."""
    cache: dict[tuple[str, str], Path] = {}

    def get(kind: str, head: str) -> Path:
        if (kind, head) not in cache:
            cache[kind, head] = build_tiny_head(kind, head, tmp_path_factory.mktemp(f"tiny-{kind}-{head}"))
        return cache[kind, head]

    return get


@pytest.fixture(scope="session")
def tiny_head_onnx(tiny_head, tmp_path_factory: pytest.TempPathFactory):
    """Factory: (kind, head) -> that tiny model exported to ONNX (once per session)."""
    cache: dict[tuple[str, str], Path] = {}

    def get(kind: str, head: str) -> Path:
        if (kind, head) not in cache:
            folder = tmp_path_factory.mktemp(f"onnx-{kind}-{head}")
            cache[kind, head] = export_tiny_head(tiny_head(kind, head), head, folder / "model.onnx")
        return cache[kind, head]

    return get


@pytest.fixture(scope="session")
def transformers4() -> Path:
    """The folder holding transformers 4.x (for its QuestionAnsweringPipeline), or a skip that says how to get it."""
    if not (TRANSFORMERS4 / "transformers" / "pipelines" / "question_answering.py").is_file():
        pytest.skip(
            f"transformers 5 has no QuestionAnsweringPipeline and no 4.x copy is at {TRANSFORMERS4}; from "
            f"the repository root run: {TRANSFORMERS4_INSTALL} (or set WORKBENCH_TRANSFORMERS4)"
        )
    return TRANSFORMERS4
