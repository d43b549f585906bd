"""Generation over any engine's runner: greedy and seeded sampling, the cache kept between steps.

The loop is the one the Triton generation model runs (`workbench/triton/python_models/decoding.py`): one forward
pass per new token, the prompt's pass included, with the previous step's `present.*` fed back as the cache. It
calls only `runner.infer(feeds)` (numpy in, numpy out), so it runs the same over the ONNX Runtime runner, the
OpenVINO one, or any other :class:`~workbench.engines.base.Runner`.

Every argument is checked before the first forward pass: max_new_tokens <= 0, a prompt longer than the model's
positions, a prompt with no tokens and bad sampling settings raise a :class:`~workbench.errors.WorkbenchError`.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from workbench.config import StageConfig
from workbench.decoding import (
    DecoderSpec,
    DecodeState,
    Sampling,
    TextStream,
    max_new_tokens_problem,
    prompt_problem,
)
from workbench.engines.base import Runner
from workbench.errors import ConfigError, DataError


@dataclass(frozen=True)
class GenerationConfig(StageConfig):
    """How to generate.

    Attributes:
        max_new_tokens: The most tokens generated per prompt (>= 1).
        do_sample: Sample (else greedy: what transformers' `generate(do_sample=False)` does).
        temperature: Sampling temperature (> 0).
        top_k: Sample among the k most likely tokens (0: no limit).
        top_p: Nucleus sampling mass (1.0: no limit).
        seed: Seed of each row's random generator (the same prompt and seed give the same text in any batch).
        stop_token_ids: Tokens that end a sequence; None: the model's eos tokens; (): none (always
            max_new_tokens, or until the model's positions run out).
    """

    max_new_tokens: int = 32
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0
    stop_token_ids: tuple[int, ...] | None = None

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "greedy": {},
        "sampling": {"do_sample": True, "temperature": 0.8, "top_p": 0.95},
    }

    def __post_init__(self) -> None:
        problem = max_new_tokens_problem(self.max_new_tokens)
        if problem:
            raise ConfigError(f"GenerationConfig.{problem}.", fix="ask for at least one new token")
        if not isinstance(self.do_sample, bool):
            raise ConfigError(f"GenerationConfig.do_sample must be True or False, got {self.do_sample!r}.")
        problems = self.sampling.problems()
        if problems:
            raise ConfigError(f"GenerationConfig: {'; '.join(problems)}.")
        if self.stop_token_ids is not None:
            stops = tuple(self.stop_token_ids)
            if any(isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 0 for t in stops):
                raise ConfigError(f"GenerationConfig.stop_token_ids must be token ids >= 0, got {stops!r}.")
            object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in stops))

    @property
    def sampling(self) -> Sampling:
        return Sampling(
            do_sample=self.do_sample, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, seed=self.seed
        )

    def stops_for(self, spec: DecoderSpec) -> tuple[int, ...]:
        return spec.eos_token_ids if self.stop_token_ids is None else self.stop_token_ids


@dataclass(frozen=True)
class GenerationResult:
    """What one batch generated, and how long it took.

    Attributes:
        prompts: Token ids of each prompt.
        tokens: The generated token ids of each prompt (a stop token, when one ended it, included).
        finish_reasons: Per prompt: "stop" (a stop token), "length" (max_new_tokens) or "max_positions" (the
            model's positions ran out).
        forward_passes: Forward passes run: the number of new tokens of the longest continuation, not the sum of
            the prompt and continuation lengths (the cache is kept).
        first_token_s: Seconds from the start to the first token (the prompt's pass).
        step_s: Seconds of each later pass (inter-token latencies).
        texts: The decoded continuations (special tokens skipped), when a tokenizer was given.
    """

    prompts: tuple[tuple[int, ...], ...]
    tokens: tuple[tuple[int, ...], ...]
    finish_reasons: tuple[str, ...]
    forward_passes: int
    first_token_s: float
    step_s: tuple[float, ...]
    texts: tuple[str, ...] | None = None

    @property
    def new_tokens(self) -> int:
        return sum(len(t) for t in self.tokens)

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompts": [list(p) for p in self.prompts],
            "tokens": [list(t) for t in self.tokens],
            "finish_reasons": list(self.finish_reasons),
            "forward_passes": self.forward_passes,
            "first_token_s": self.first_token_s,
            "step_s": list(self.step_s),
            "texts": list(self.texts) if self.texts is not None else None,
        }


def encode_prompts(tokenizer: Any, texts: Sequence[str]) -> list[list[int]]:
    """Token ids of each text as the model's tokenizer encodes a prompt (its special tokens, such as Llama's
    <s>, added; no padding, no truncation)."""
    if isinstance(texts, str):
        raise DataError("Pass a list of prompts, not one string.", fix="wrap it: [text]")
    return [list(map(int, tokenizer(str(text), add_special_tokens=True)["input_ids"])) for text in texts]


def check_prompts(spec: DecoderSpec, prompts: Sequence[Sequence[int]]) -> None:
    """Raise DataError (before any work) when a prompt is empty or longer than the model's positions."""
    if not prompts:
        raise DataError("No prompts to generate from.", fix="pass at least one prompt")
    for index, prompt in enumerate(prompts):
        problem = prompt_problem(len(prompt), spec.max_positions)
        if problem:
            raise DataError(
                f"Prompt {index}: {problem}.",
                expected=f"1..{spec.max_positions} tokens",
                fix="shorten the prompt (or truncate its tokens from the left to keep the end)",
            )
        bad = [t for t in prompt if not 0 <= int(t) < spec.vocab_size]
        if bad:
            raise DataError(
                f"Prompt {index} has token ids outside the vocabulary (0..{spec.vocab_size - 1}): {bad[:5]}.",
                fix="encode prompts with the model's own tokenizer",
            )


def _steps(
    runner: Runner, spec: DecoderSpec, prompts: Sequence[Sequence[int]], config: GenerationConfig
) -> Iterator[tuple[DecodeState, list[int | None], float]]:
    """Run the loop; yield (state, each row's new token or None, seconds this pass took)."""
    state = DecodeState(
        spec, [list(p) for p in prompts], config.max_new_tokens, config.stops_for(spec), config.sampling
    )
    while not state.done:
        started = time.perf_counter()
        outputs = runner.infer(state.feeds())
        emitted = state.advance(outputs)
        yield state, emitted, time.perf_counter() - started


def generate_tokens(
    runner: Runner, spec: DecoderSpec, prompts: Sequence[Sequence[int]], config: GenerationConfig = GenerationConfig()
) -> GenerationResult:
    """Generate from token-id prompts (one batch, left-padded) with an active runner of an exported decoder.

    Raises:
        DataError: A prompt is empty, longer than the model's positions, or has ids outside the vocabulary.
    """
    check_prompts(spec, prompts)
    timings: list[float] = []
    state: DecodeState | None = None
    for step_state, _, seconds in _steps(runner, spec, prompts, config):
        state = step_state
        timings.append(seconds)
    assert state is not None
    return GenerationResult(
        prompts=tuple(tuple(int(t) for t in p) for p in prompts),
        tokens=tuple(tuple(g) for g in state.generated),
        finish_reasons=tuple(str(r) for r in state.finish_reasons),
        forward_passes=state.forward_passes,
        first_token_s=timings[0],
        step_s=tuple(timings[1:]),
    )


def _decoder(tokenizer: Any) -> Any:
    return lambda ids: tokenizer.decode(ids, skip_special_tokens=True)


def generate(
    runner: Runner,
    spec: DecoderSpec,
    tokenizer: Any,
    texts: Sequence[str],
    config: GenerationConfig = GenerationConfig(),
) -> GenerationResult:
    """Generate continuations of `texts` (one batch) and decode them.

    Raises:
        DataError: A prompt is empty after tokenization or longer than the model's positions.
    """
    result = generate_tokens(runner, spec, encode_prompts(tokenizer, texts), config)
    decode = _decoder(tokenizer)
    return replace(result, texts=tuple(decode(list(t)) for t in result.tokens))


@dataclass(frozen=True)
class StreamEvent:
    """One generated token of a stream, and the text it completes (possibly empty: a character may need more
    than one token)."""

    token: int
    text: str
    index: int
    finish_reason: str | None = None
    seconds: float = 0.0


def stream(
    runner: Runner, spec: DecoderSpec, tokenizer: Any, text: str, config: GenerationConfig = GenerationConfig()
) -> Iterator[StreamEvent]:
    """Generate from one prompt, yielding each token as soon as its forward pass is done (what the Triton model
    streams). The events' texts joined are the decoded continuation.

    Raises:
        DataError: The prompt is empty after tokenization or longer than the model's positions (raised on the
            first next(), before any forward pass).
    """
    prompts = encode_prompts(tokenizer, [text])
    check_prompts(spec, prompts)
    pieces = TextStream(_decoder(tokenizer))
    for index, (state, emitted, seconds) in enumerate(_steps(runner, spec, prompts, config)):
        token = emitted[0]
        assert token is not None
        reason = state.finish_reasons[0]
        piece = pieces.push(token) + (pieces.flush() if reason is not None else "")
        yield StreamEvent(token=token, text=piece, index=index, finish_reason=reason, seconds=seconds)
