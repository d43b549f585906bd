"""Tiny random-init token-classification and question-answering models, built from configs (nothing downloaded).

Four architectures, each saved as a complete Hugging Face folder (config with its head's architecture, weights,
tokenizer) so the workbench loads it exactly as it loads a user's model:

- bert, distilbert, electra: the bundled MiniLM's WordPiece tokenizer (word-aware: `continuing_subword_prefix`);
- roberta: a byte-level BPE tokenizer trained here on the bundled sentences, as RoBERTa checkpoints ship one
  (no continuing-subword prefix, so transformers' pipeline falls back to its whitespace heuristic for
  sub-words, and offsets are trimmed of the leading space): decoding must follow that path too.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

WORDPIECE_VOCAB_SIZE = 30522  # the bundled MiniLM tokenizer's vocabulary
BPE_VOCAB_SIZE = 2000
#: CoNLL-style labels: O and B-/I- of four entity types, so that every aggregation strategy has groups to form.
NER_LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
KINDS = ("bert", "distilbert", "roberta", "electra")
HEADS = ("token-classification", "question-answering")


def _bert(transformers: Any, vocab_size: int) -> Any:
    return transformers.BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
    )


def _distilbert(transformers: Any, vocab_size: int) -> Any:
    return transformers.DistilBertConfig(
        vocab_size=vocab_size, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=512
    )


def _roberta(transformers: Any, vocab_size: int) -> Any:
    # RoBERTa offsets positions by padding_idx + 1, so it needs 2 extra position slots
    return transformers.RobertaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=514,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        type_vocab_size=1,
    )


def _electra(transformers: Any, vocab_size: int) -> Any:
    return transformers.ElectraConfig(
        vocab_size=vocab_size,
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
    )


CONFIGS: dict[str, Callable[[Any, int], Any]] = {
    "bert": _bert,
    "distilbert": _distilbert,
    "roberta": _roberta,
    "electra": _electra,
}


def _training_texts() -> list[str]:
    import json

    from workbench.data import default_data_dir

    folder = default_data_dir()
    texts = [
        line
        for name in ("calibration.txt", "evaluation.txt")
        for line in (folder / name).read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    for name in ("qa_calibration.jsonl", "qa_evaluation.jsonl"):
        path = folder / name
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    record = json.loads(line)
                    texts += [record["question"], record["context"]]
    return texts


def bpe_tokenizer(folder: Path) -> Any:
    """A RoBERTa-style byte-level BPE tokenizer trained on the bundled texts, saved in `folder` and loaded back."""
    import json

    import transformers
    from tokenizers import ByteLevelBPETokenizer

    trained = ByteLevelBPETokenizer(add_prefix_space=False, trim_offsets=True)
    trained.train_from_iterator(
        _training_texts(),
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=2,
        show_progress=False,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    )
    folder.mkdir(parents=True, exist_ok=True)
    trained.save_model(str(folder))
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    merges = [
        tuple(line.split(" "))
        for line in (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    tokenizer = transformers.RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=512)
    tokenizer.save_pretrained(folder)
    return transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


def build_tiny_head(kind: str, head: str, folder: Path, *, seed: int = 0) -> Path:
    """Save a tiny random-init `kind` model with a `head` ("token-classification" or "question-answering") and
    its tokenizer into `folder`."""
    import torch
    import transformers

    from workbench.models import bundled_model_path

    if kind not in CONFIGS or head not in HEADS:
        raise ValueError(f"unknown tiny model {kind!r} / head {head!r}: kinds {KINDS}, heads {HEADS}")
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "roberta":
        with tempfile.TemporaryDirectory(prefix="tiny-bpe-") as scratch:
            tokenizer = bpe_tokenizer(Path(scratch))
    else:  # DistilBERT checkpoints ship a tokenizer without token_type_ids
        names = {"model_input_names": ["input_ids", "attention_mask"]} if kind == "distilbert" else {}
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(bundled_model_path()), local_files_only=True, **names
        )
    config = CONFIGS[kind](transformers, len(tokenizer))
    if head == "token-classification":
        config.num_labels = len(NER_LABELS)
        config.id2label = dict(enumerate(NER_LABELS))
        config.label2id = {label: i for i, label in enumerate(NER_LABELS)}
        auto = transformers.AutoModelForTokenClassification
    else:
        auto = transformers.AutoModelForQuestionAnswering
    torch.manual_seed(seed)
    model = auto.from_config(config, attn_implementation="eager").eval()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def export_tiny_head(folder: Path, head: str, onnx_path: Path) -> Path:
    """Export a tiny head model to ONNX as the pipeline does: load_model (the task from config.json, its auto class
    and outputs) and the export stage (dynamic batch and sequence axes, checked against PyTorch)."""
    from workbench.models import load_model
    from workbench.stages.export import export_onnx

    source = load_model(folder)
    if source.task.name != head:
        raise ValueError(f"{folder} loads as a {source.task.name} model, not {head}")
    return export_onnx(source, onnx_path).path


def build_keyword_qa(folder: Path, keyword: str, *, seed: int = 0) -> Path:
    """A tiny BERT question-answering model that answers `keyword` wherever the context holds it.

    Random weights, except that the keyword's word embedding points far along one hidden direction and the QA head
    reads start and end logits along that direction: the residual stream carries it through both layers, so the
    keyword's position gets by far the largest start and end logits. A model that knows one answer lets a test
    check that the served model finds it in whichever window holds it.
    """
    import torch
    import transformers

    from workbench.models import bundled_model_path

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(bundled_model_path()), local_files_only=True)
    ids = tokenizer(keyword, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"{keyword!r} is {len(ids)} word pieces; pick a word that is one")
    torch.manual_seed(seed)
    model = transformers.AutoModelForQuestionAnswering.from_config(
        _bert(transformers, len(tokenizer)), attn_implementation="eager"
    ).eval()
    with torch.no_grad():
        direction = torch.zeros(model.config.hidden_size)
        direction[0] = 1.0
        model.bert.embeddings.word_embeddings.weight[ids[0]] = 40.0 * direction
        model.qa_outputs.weight.zero_()
        model.qa_outputs.weight[:, 0] = 4.0
        model.qa_outputs.bias.zero_()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def damage_head(model: Any, width: int, *, factor: float, column: int) -> str:
    """Scale one output column of the head's projection (the last MatMul whose weight is an initializer [hidden,
    width]) by `factor`, in place; returns the initializer's name. A deliberately damaged candidate."""
    from onnx import numpy_helper

    weights = {t.name: t for t in model.graph.initializer}
    matmuls = [
        n
        for n in model.graph.node
        if n.op_type in ("MatMul", "Gemm")
        and len(n.input) > 1
        and n.input[1] in weights
        and list(weights[n.input[1]].dims)[-1:] == [width]
    ]
    if not matmuls:
        raise ValueError(f"no MatMul with a [hidden, {width}] weight in the graph")
    weight = weights[matmuls[-1].input[1]]
    array = numpy_helper.to_array(weight).copy()
    array[:, column] *= factor
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    return weight.name
