"""Tiny random-init decoders (GPT-2 and Llama architectures) built from configs; nothing is downloaded.

Each builder saves a complete Hugging Face model folder (config, weights, tokenizer) so that the workbench loads
it exactly as it loads a user's checkpoint. The tokenizers are real byte-level BPE tokenizers, trained in well
under a second with the `tokenizers` package on the repository's data/calibration.txt:

- GPT-2: `<|endoftext|>` is bos, eos and pad (what GPT-2 checkpoints use), no special tokens added to a text;
- Llama: `<unk>`, `<s>`, `</s>`; a post-processor adds `<s>` in front of every text (as Llama tokenizers do);
  pad is `</s>`, the usual choice for Llama checkpoints without a pad token.

`initializer_range` is raised above the architectures' 0.02 so that a random model's next-token distribution is
peaked enough for greedy decoding to be decided by the weights rather than by float rounding, and so that
quantization visibly changes some predictions (the precision tests need both).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[2]
TOKENIZER_TEXT = REPOSITORY / "data" / "calibration.txt"
VOCAB_SIZE = 512
MAX_POSITIONS = 96  # small, so that the "prompt longer than the model's positions" tests are cheap


def build_bpe_tokenizer(
    folder: Path, *, style: str, vocab_size: int = VOCAB_SIZE, max_positions: int = MAX_POSITIONS
) -> Any:
    """Train a byte-level BPE tokenizer on data/calibration.txt and save it as a transformers fast tokenizer."""
    import transformers
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    specials = ["<|endoftext|>"] if style == "gpt2" else ["<unk>", "<s>", "</s>"]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train([str(TOKENIZER_TEXT)], trainer)
    if style == "gpt2":
        tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
        special = {
            "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
        }
    else:
        bos = tokenizer.token_to_id("<s>")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
        )
        special = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>"}
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, model_max_length=max_positions, padding_side="left", **special
    )
    fast.save_pretrained(folder)
    return fast


def _gpt2(transformers: Any, tokenizer: Any, **sizes: Any) -> Any:
    eos = tokenizer.eos_token_id
    return transformers.GPT2Config(
        vocab_size=sizes.get("vocab_size", len(tokenizer)),
        n_positions=sizes.get("max_positions", MAX_POSITIONS),
        n_embd=sizes.get("hidden", 64),
        n_layer=sizes.get("layers", 2),
        n_head=sizes.get("heads", 4),
        initializer_range=sizes.get("init", 0.2),
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        architectures=["GPT2LMHeadModel"],
    )


def _llama(transformers: Any, tokenizer: Any, **sizes: Any) -> Any:
    hidden = sizes.get("hidden", 64)
    return transformers.LlamaConfig(
        vocab_size=sizes.get("vocab_size", len(tokenizer)),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=sizes.get("layers", 2),
        num_attention_heads=sizes.get("heads", 4),
        num_key_value_heads=sizes.get("kv_heads", 2),
        max_position_embeddings=sizes.get("max_positions", MAX_POSITIONS),
        initializer_range=sizes.get("init", 0.2),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    )


TINY_DECODERS: dict[str, Callable[..., Any]] = {"gpt2": _gpt2, "llama": _llama}


def build_tiny_decoder(kind: str, folder: Path, *, seed: int = 0, **sizes: Any) -> Path:
    """Save a random-init causal LM of `kind` ("gpt2" or "llama") with its BPE tokenizer into `folder`.

    `sizes` overrides hidden, layers, heads, kv_heads (Llama), max_positions, init (initializer_range) and
    vocab_size (default: the tokenizer's; larger gives a realistic output layer whose extra ids never decode).
    """
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = build_bpe_tokenizer(folder, style=kind, max_positions=sizes.get("max_positions", MAX_POSITIONS))
    torch.manual_seed(seed)
    config = TINY_DECODERS[kind](transformers, tokenizer, **sizes)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(folder)
    return folder
