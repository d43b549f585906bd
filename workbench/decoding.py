"""Decoder feeds and the decoding loop of an exported causal LM with a key/value cache: numpy only, shared by the
workbench and the Triton generation model.

This one module is what the library's generation (`workbench.stages.generation.generate`), the text-generation
task's feeds (`workbench.tasks.generation`) and the served model (`triton/python_models/generation_model.py`,
which gets a copy of this file beside it in the repository) run, so a served stream is the library's loop token
for token. It imports only the standard library and numpy: the server's Python environment need not have the
workbench, and `import workbench` stays light.

The exported decoder (`workbench.stages.generation.export.export_decoder`) is one ONNX graph that serves both the
prompt and every decode step:

    inputs   input_ids [batch, sequence] int64, attention_mask [batch, past + sequence] int64,
             position_ids [batch, sequence] int64 (when the model takes them),
             logit_positions [kept] int64: the positions of `sequence` whose logits are returned,
             past_key_values.{i}.key / .value [batch, kv_heads, past, head_dim] float (past may be 0)
    outputs  logits [batch, kept, vocab], present.{i}.key / .value [batch, kv_heads, past + sequence, head_dim]

The prompt step feeds an empty cache (past length 0) and asks for the last position's logits only; each decode
step feeds one token per row and the previous step's `present.*` as `past_key_values.*`. Prompts of one batch
are left-padded; position ids count the real tokens (as transformers' `generate` computes them), so a padded row
generates what it would alone.

Written by hand: the loop is small, and the libraries that run one (transformers' `generate`, Optimum's
ORTModelForCausalLM, onnxruntime-genai) each belong to one runtime, while this loop must run over any engine's
runner and inside a Triton Python model.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

#: The ONNX metadata_props key under which the export stores the decoder's spec (JSON).
SPEC_METADATA_KEY = "workbench.decoder"
PAST_NAME = "past_key_values.{layer}.{kind}"
PRESENT_NAME = "present.{layer}.{kind}"
LOGIT_POSITIONS = "logit_positions"
FINISH_STOP, FINISH_LENGTH, FINISH_POSITIONS = "stop", "length", "max_positions"
_NUMPY_DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass(frozen=True)
class DecoderSpec:
    """What the loop needs to know about an exported decoder: its cache geometry and its special tokens.

    Attributes:
        num_layers: Decoder layers (one key and one value cache tensor each).
        num_kv_heads: Key/value heads per layer (fewer than the attention heads with grouped-query attention).
        head_dim: Size of one head.
        vocab_size: Width of the logits.
        max_positions: The most positions the model has (a prompt plus its continuation cannot exceed it).
        eos_token_ids: Tokens that end a sequence.
        pad_token_id: The token fed to finished rows and used to left-pad prompts.
        bos_token_id: The beginning-of-sequence token, when the model has one.
        has_position_ids: Whether the graph takes position_ids.
        cache_dtype: "float32" (or "float16") of the cache tensors.
        model_type: The Hugging Face model_type ("gpt2", "llama", ...), for reports.
    """

    num_layers: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_positions: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    bos_token_id: int | None = None
    has_position_ids: bool = True
    cache_dtype: str = "float32"
    model_type: str = ""

    def past_names(self) -> list[str]:
        return [PAST_NAME.format(layer=i, kind=kind) for i in range(self.num_layers) for kind in ("key", "value")]

    def present_names(self) -> list[str]:
        return [PRESENT_NAME.format(layer=i, kind=kind) for i in range(self.num_layers) for kind in ("key", "value")]

    def input_names(self) -> list[str]:
        names = ["input_ids", "attention_mask"]
        if self.has_position_ids:
            names.append("position_ids")
        return [*names, LOGIT_POSITIONS, *self.past_names()]

    def output_names(self) -> list[str]:
        return ["logits", *self.present_names()]

    def empty_cache(self, batch: int) -> dict[str, np.ndarray]:
        """Past tensors of length 0: what the prompt step is fed."""
        dtype = _NUMPY_DTYPES[self.cache_dtype]
        shape = (batch, self.num_kv_heads, 0, self.head_dim)
        return {name: np.zeros(shape, dtype=dtype) for name in self.past_names()}

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DecoderSpec:
        values = json.loads(text)
        values["eos_token_ids"] = tuple(int(t) for t in values.get("eos_token_ids") or ())
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in values.items() if k in known})


def prompt_feeds(
    spec: DecoderSpec, prompts: Sequence[Sequence[int]], *, all_logits: bool = False
) -> dict[str, np.ndarray]:
    """Feeds of a prompt step: `prompts` left-padded to one length, an empty cache.

    Args:
        spec: The decoder.
        prompts: Token ids, one list per row (each non-empty).
        all_logits: Ask for the logits of every position (teacher-forced evaluation) instead of only the last one
            (generation).
    """
    length = max(len(p) for p in prompts)
    input_ids = np.full((len(prompts), length), spec.pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((len(prompts), length), dtype=np.int64)
    for row, tokens in enumerate(prompts):
        if len(tokens):
            input_ids[row, length - len(tokens) :] = tokens
            attention_mask[row, length - len(tokens) :] = 1
    feeds = {"input_ids": input_ids, "attention_mask": attention_mask}
    if spec.has_position_ids:
        feeds["position_ids"] = position_ids(attention_mask)
    keep = np.arange(length) if all_logits else np.array([length - 1])
    feeds[LOGIT_POSITIONS] = keep.astype(np.int64)
    feeds.update(spec.empty_cache(len(prompts)))
    return feeds


def position_ids(attention_mask: np.ndarray) -> np.ndarray:
    """Positions that count real tokens only (transformers' generate: cumsum(mask) - 1, 0 on padding)."""
    positions = np.cumsum(attention_mask, axis=-1) - 1
    return np.where(attention_mask == 0, 0, positions).astype(np.int64)


# ---------------------------------------------------------------------------------------------------------------
# choosing the next token


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen.

    Attributes:
        do_sample: Sample from the distribution (else greedy: the most likely token).
        temperature: Divides the logits before sampling (> 0).
        top_k: Sample among the k most likely tokens only (0: all).
        top_p: Sample among the most likely tokens whose probabilities add up to top_p (1.0: all).
        seed: Seeds each row's random generator: the same prompt with the same seed gives the same text, whatever
            else is in the batch.
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def problems(self) -> list[str]:
        """What is wrong with these settings, as readable lines (empty: they are valid)."""
        found = []
        if not (isinstance(self.temperature, (int, float)) and np.isfinite(self.temperature) and self.temperature > 0):
            found.append(f"temperature must be > 0, got {self.temperature!r}")
        if not isinstance(self.top_k, (int, np.integer)) or self.top_k < 0:
            found.append(f"top_k must be an integer >= 0 (0: no limit), got {self.top_k!r}")
        if not (isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0):
            found.append(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            found.append(f"seed must be an integer >= 0, got {self.seed!r}")
        return found


def choose(logits: np.ndarray, sampling: Sampling, generators: Sequence[np.random.Generator]) -> np.ndarray:
    """The next token of each row from its last-position logits [batch, vocab]."""
    if not sampling.do_sample:
        return np.argmax(logits, axis=-1).astype(np.int64)  # first maximum, as torch.argmax
    chosen = np.empty(len(logits), dtype=np.int64)
    for row, generator in enumerate(generators):
        scores = logits[row].astype(np.float64) / sampling.temperature
        order = np.argsort(-scores, kind="stable")
        if sampling.top_k:
            order = order[: sampling.top_k]
        probabilities = np.exp(scores[order] - scores[order[0]])
        probabilities /= probabilities.sum()
        if sampling.top_p < 1.0:  # keep the smallest head of the sorted list whose mass reaches top_p
            cumulative = np.cumsum(probabilities)
            keep = int(np.searchsorted(cumulative, sampling.top_p) + 1)
            order, probabilities = order[:keep], probabilities[:keep] / probabilities[:keep].sum()
        index = min(int(np.searchsorted(np.cumsum(probabilities), generator.random())), len(order) - 1)
        chosen[row] = order[index]
    return chosen


# ---------------------------------------------------------------------------------------------------------------
# the loop


@dataclass
class DecodeState:
    """One batch being generated: its tokens, its cache, which rows are finished and why.

    Attributes:
        spec: The decoder.
        prompts: Token ids of each row's prompt.
        max_new_tokens: The most tokens a row generates.
        stop_token_ids: Tokens that finish a row (kept in its output, as transformers' generate keeps eos).
        sampling: How tokens are chosen.
    """

    spec: DecoderSpec
    prompts: list[list[int]]
    max_new_tokens: int
    stop_token_ids: tuple[int, ...]
    sampling: Sampling = field(default_factory=Sampling)
    generated: list[list[int]] = field(default_factory=list)
    finish_reasons: list[str | None] = field(default_factory=list)
    forward_passes: int = 0
    _feeds: dict[str, np.ndarray] = field(default_factory=dict)
    _generators: list[np.random.Generator] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.prompts = [list(map(int, p)) for p in self.prompts]
        self.generated = [[] for _ in self.prompts]
        self.finish_reasons = [None] * len(self.prompts)
        self._generators = [np.random.default_rng(self.sampling.seed) for _ in self.prompts]
        self._feeds = prompt_feeds(self.spec, self.prompts)

    @property
    def done(self) -> bool:
        return all(reason is not None for reason in self.finish_reasons)

    def feeds(self) -> dict[str, np.ndarray]:
        """The inputs of the next forward pass."""
        return self._feeds

    def advance(self, outputs: Mapping[str, np.ndarray]) -> list[int | None]:
        """Take one forward pass's outputs: choose each row's token, finish rows, build the next feeds.

        Returns:
            The token each row generated in this step (None for rows that had finished before it).
        """
        self.forward_passes += 1
        logits = np.asarray(outputs["logits"])[:, -1, :]
        tokens = choose(logits, self.sampling, self._generators)
        emitted: list[int | None] = []
        lengths = self._feeds["attention_mask"].sum(axis=-1)  # real tokens fed so far, per row
        for row, token in enumerate(tokens.tolist()):
            if self.finish_reasons[row] is not None:
                emitted.append(None)
                continue
            self.generated[row].append(token)
            emitted.append(token)
            if token in self.stop_token_ids:
                self.finish_reasons[row] = FINISH_STOP
            elif len(self.generated[row]) >= self.max_new_tokens:
                self.finish_reasons[row] = FINISH_LENGTH
            elif int(lengths[row]) >= self.spec.max_positions:  # its next token would need a position it lacks
                self.finish_reasons[row] = FINISH_POSITIONS
        if not self.done:
            self._feeds = self._step_feeds(outputs, tokens)
        return emitted

    def _step_feeds(self, outputs: Mapping[str, np.ndarray], tokens: np.ndarray) -> dict[str, np.ndarray]:
        previous = self._feeds
        finished = np.array([r is not None for r in self.finish_reasons])
        fed = np.where(finished, self.spec.pad_token_id, tokens).astype(np.int64)[:, None]
        batch = len(self.prompts)
        attention_mask = np.concatenate([previous["attention_mask"], np.ones((batch, 1), np.int64)], axis=1)
        feeds = {"input_ids": fed, "attention_mask": attention_mask}
        if self.spec.has_position_ids:
            # a finished row keeps being fed padding; its positions must stay inside the model's table
            positions = np.minimum(previous["position_ids"][:, -1:] + 1, self.spec.max_positions - 1)
            feeds["position_ids"] = positions.astype(np.int64)
        feeds[LOGIT_POSITIONS] = np.zeros(1, dtype=np.int64)
        for past, present in zip(self.spec.past_names(), self.spec.present_names()):
            feeds[past] = outputs[present]
        return feeds


def run(
    state: DecodeState, forward: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]]
) -> Iterator[list[int | None]]:
    """Run the loop: one forward pass per generated token (the prompt's pass yields the first token).

    Yields:
        The tokens of each step, one entry per row (None for finished rows).
    """
    while not state.done:
        yield state.advance(forward(state.feeds()))


def prompt_problem(length: int, max_positions: int) -> str | None:
    """Why a prompt of `length` tokens cannot be generated from, or None."""
    if length < 1:
        return "the prompt has no tokens (an empty text with a tokenizer that adds none)"
    if length > max_positions:
        return (
            f"the prompt has {length} tokens but the model has only {max_positions} positions; shorten it to "
            f"at most {max_positions - 1} tokens to leave room for the continuation"
        )
    return None


def max_new_tokens_problem(value: object) -> str | None:
    """Why `value` is not a valid max_new_tokens, or None."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        return f"max_new_tokens must be an integer >= 1, got {value!r}"
    return None


# ---------------------------------------------------------------------------------------------------------------
# streaming text


class TextStream:
    """Turns generated tokens into text pieces as they arrive, never splitting a character.

    The usual incremental detokenization (Hugging Face text-generation-inference, vLLM): decode a short window of
    recent tokens with and without the new one and emit the difference, holding text back while it ends in an
    incomplete UTF-8 sequence (decoded as U+FFFD). The pieces joined are the decoded text of all tokens.

    Args:
        decode: Token ids -> text (special tokens skipped), e.g. `tokenizer.decode(ids, skip_special_tokens=True)`.
    """

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self.decode = decode
        self.tokens: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0

    def push(self, token: int) -> str:
        """Add one token; returns the text it completes (possibly empty)."""
        self.tokens.append(int(token))
        before = self.decode(self.tokens[self.prefix_offset : self.read_offset])
        after = self.decode(self.tokens[self.prefix_offset :])
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)
            return after[len(before) :]
        return ""

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end)."""
        before = self.decode(self.tokens[self.prefix_offset : self.read_offset])
        after = self.decode(self.tokens[self.prefix_offset :])
        self.prefix_offset = self.read_offset = len(self.tokens)
        return after[len(before) :] if len(after) > len(before) else ""
