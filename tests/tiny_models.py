"""A registry of tiny random-init transformers built from configs (nothing is downloaded).

Each builder saves a complete Hugging Face model directory (config, weights, tokenizer) so that the workbench
loads it exactly as it loads a user's model. The tokenizer is the bundled MiniLM's WordPiece tokenizer, whose
vocabulary every tiny model shares.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

VOCAB_SIZE = 30522  # the bundled MiniLM tokenizer's vocabulary


def _bert_config(transformers: Any) -> Any:
    return transformers.BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
    )


def _distilbert_config(transformers: Any) -> Any:
    return transformers.DistilBertConfig(
        vocab_size=VOCAB_SIZE, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=512
    )


def _roberta_config(transformers: Any) -> Any:
    # RoBERTa offsets positions by padding_idx + 1, so it needs 2 extra position slots
    return transformers.RobertaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=514,
        pad_token_id=0,
        type_vocab_size=1,
    )


TINY_CONFIGS: dict[str, Callable[[Any], Any]] = {
    "bert": _bert_config,
    "distilbert": _distilbert_config,
    "roberta": _roberta_config,
}


def build_tiny_model(kind: str, folder: Path, *, seed: int = 0, classifier: bool = False) -> Path:
    """Save a tiny random-init model of `kind` (see TINY_CONFIGS) with a tokenizer into `folder`."""
    import torch
    import transformers

    from workbench.models import bundled_model_path

    torch.manual_seed(seed)
    config = TINY_CONFIGS[kind](transformers)
    auto = transformers.AutoModelForSequenceClassification if classifier else transformers.AutoModel
    if classifier:
        config.num_labels = 3
    model = auto.from_config(config, attn_implementation="eager").eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(bundled_model_path()), local_files_only=True)
    tokenizer.save_pretrained(folder)
    return folder


def build_wide_bert(folder: Path, *, seed: int = 0) -> Path:
    """A tiny BERT whose weights are drawn wider than usual (initializer_range 0.2), so that its activations differ
    from token to token as a trained model's do (dynamic INT8 then depends visibly on batch-mates), with the
    bundled MiniLM tokenizer."""
    import torch
    import transformers

    from workbench.models import bundled_model_path

    torch.manual_seed(seed)
    config = transformers.BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=512,
        initializer_range=0.2,
    )
    model = transformers.AutoModel.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        # sharp attention, as a trained model's: near one-hot softmax makes the scores sensitive to the per-tensor
        # scale dynamic INT8 takes from the whole batch. Without it the batch-mate effect depends on the CPU's INT8
        # kernels (min cosine 0.9998 with AVX-512 VNNI, under 0.999 without); with it 0.996 there
        for layer in model.encoder.layer:
            layer.attention.self.query.weight *= 4.0
            layer.attention.self.key.weight *= 4.0
    model.save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(str(bundled_model_path()), local_files_only=True).save_pretrained(folder)
    return folder
