"""The generation loop over an engine's runner: FP32 greedy equals transformers' generate token for token, the
cache is used (one forward pass per new token), sampling is seeded, stops and limits are honoured, bad input is
refused before any work."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from tests.generation.conftest import KINDS, CountingRunner
from workbench.engines.base import get_engine
from workbench.errors import ConfigError, DataError, WorkbenchError
from workbench.stages.generation.export import load_causal_lm
from workbench.stages.generation.generate import (
    GenerationConfig,
    encode_prompts,
    generate,
    generate_tokens,
    stream,
)

NEW_TOKENS = 32
PROMPTS = ("The", "Preheat the oven to 220°C and", " ".join(["The committee reviewed every proposal."] * 3))


@pytest.fixture(scope="module")
def models(tiny_decoder_dir):
    return {kind: load_causal_lm(tiny_decoder_dir(kind)) for kind in KINDS}


def _runner(exported):
    return get_engine("onnxruntime").runner(exported.path, threads=1)


def _hf_greedy(model, prompt_ids, new_tokens=NEW_TOKENS):
    ids = torch.tensor([prompt_ids])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens, do_sample=False)
    return out[0, len(prompt_ids) :].tolist()


@pytest.mark.parametrize("kind", KINDS)
def test_fp32_greedy_equals_transformers_generate_with_one_pass_per_token(models, exported_decoder, kind):
    model, tokenizer = models[kind]
    spec = exported_decoder(kind).spec
    prompts = encode_prompts(tokenizer, PROMPTS)
    assert sorted({len(p) for p in prompts}) == [len(p) for p in prompts]  # several prompt lengths
    with _runner(exported_decoder(kind)) as runner:
        for prompt in prompts:
            counting = CountingRunner(runner)
            result = generate_tokens(counting, spec, [prompt], GenerationConfig(max_new_tokens=NEW_TOKENS))
            expected = _hf_greedy(model, prompt)
            assert list(result.tokens[0]) == expected
            assert len(expected) == NEW_TOKENS and result.finish_reasons == ("length",)
            # the cache is used: one pass per new token, the prompt fed once and then one token per pass
            assert counting.calls == result.forward_passes == NEW_TOKENS
            assert counting.fed_lengths == [len(prompt)] + [1] * (NEW_TOKENS - 1)


@pytest.mark.parametrize("kind", KINDS)
def test_a_left_padded_batch_generates_what_each_prompt_generates_alone(models, exported_decoder, kind):
    _, tokenizer = models[kind]
    spec = exported_decoder(kind).spec
    config = GenerationConfig(max_new_tokens=12, stop_token_ids=())
    with _runner(exported_decoder(kind)) as runner:
        batch = generate(runner, spec, tokenizer, list(PROMPTS), config)
        alone = [generate(runner, spec, tokenizer, [p], config) for p in PROMPTS]
    assert batch.tokens == tuple(a.tokens[0] for a in alone)
    assert batch.texts == tuple(a.texts[0] for a in alone)
    assert batch.forward_passes == 12


def test_transformers_batched_generate_agrees_with_the_batched_loop(models, exported_decoder):
    model, tokenizer = models["gpt2"]
    prompts = encode_prompts(tokenizer, PROMPTS[:2])
    width = max(map(len, prompts))
    ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    expected = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False)[:, width:]
    with _runner(exported_decoder("gpt2")) as runner:
        result = generate_tokens(runner, exported_decoder("gpt2").spec, prompts, GenerationConfig(max_new_tokens=10))
    for row, tokens in enumerate(result.tokens):
        assert list(tokens) == expected[row, : len(tokens)].tolist()


def test_stop_tokens_end_a_sequence_and_are_kept(exported_decoder, models):
    _, tokenizer = models["gpt2"]
    spec = exported_decoder("gpt2").spec
    with _runner(exported_decoder("gpt2")) as runner:
        free = generate(runner, spec, tokenizer, [PROMPTS[1]], GenerationConfig(max_new_tokens=10, stop_token_ids=()))
        stop = free.tokens[0][3]
        first = free.tokens[0].index(stop)
        stopped = generate(
            runner, spec, tokenizer, [PROMPTS[1]], GenerationConfig(max_new_tokens=10, stop_token_ids=(stop,))
        )
    assert stopped.tokens[0] == free.tokens[0][: first + 1]
    assert stopped.finish_reasons == ("stop",) and stopped.forward_passes == first + 1


def test_seeded_sampling_is_reproducible_and_top_k_1_is_greedy(exported_decoder, models):
    _, tokenizer = models["llama"]
    spec = exported_decoder("llama").spec
    sample = GenerationConfig.preset("sampling", max_new_tokens=16, stop_token_ids=(), seed=3)
    with _runner(exported_decoder("llama")) as runner:
        once = generate(runner, spec, tokenizer, [PROMPTS[1]], sample)
        again = generate(runner, spec, tokenizer, [PROMPTS[1]], sample)
        others = {generate(runner, spec, tokenizer, [PROMPTS[1]], sample.replace(seed=s)).tokens for s in (4, 5, 6)}
        greedy = generate(runner, spec, tokenizer, [PROMPTS[1]], GenerationConfig(max_new_tokens=16, stop_token_ids=()))
        top1 = generate(runner, spec, tokenizer, [PROMPTS[1]], sample.replace(top_k=1))
        # a batch does not change a row's sample stream: the same prompt and seed give the same text
        batch = generate(runner, spec, tokenizer, [PROMPTS[0], PROMPTS[1]], sample)
    assert once.tokens == again.tokens
    assert others - {once.tokens}  # another seed samples something else
    assert top1.tokens == greedy.tokens != once.tokens
    assert batch.tokens[1] == once.tokens[0]


def test_stream_yields_each_token_and_its_text(exported_decoder, models):
    _, tokenizer = models["gpt2"]
    spec = exported_decoder("gpt2").spec
    config = GenerationConfig(max_new_tokens=20, stop_token_ids=())
    with _runner(exported_decoder("gpt2")) as runner:
        events = list(stream(runner, spec, tokenizer, PROMPTS[2], config))
        whole = generate(runner, spec, tokenizer, [PROMPTS[2]], config)
    assert tuple(e.token for e in events) == whole.tokens[0]
    assert "".join(e.text for e in events) == whole.texts[0]
    assert [e.finish_reason for e in events] == [None] * 19 + ["length"]


def test_bad_requests_are_refused_before_any_work(exported_decoder, models):
    _, tokenizer = models["gpt2"]
    spec = exported_decoder("gpt2").spec
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ConfigError, match="max_new_tokens must be an integer"):
            GenerationConfig(max_new_tokens=bad)
    with pytest.raises(ConfigError, match="temperature"):
        GenerationConfig(do_sample=True, temperature=0.0)
    counting = CountingRunner(runner=None)  # never reached: a forward pass would fail on the missing runner
    too_long = [[5] * (spec.max_positions + 1)]
    with pytest.raises(
        DataError, match=f"has {spec.max_positions + 1} tokens but the model has only {spec.max_positions} positions"
    ):
        generate_tokens(counting, spec, too_long, GenerationConfig())
    with pytest.raises(DataError, match="longer than|positions"):
        next(stream(counting, spec, tokenizer, "word " * (2 * spec.max_positions), GenerationConfig()))
    with pytest.raises(DataError, match="outside the vocabulary"):
        generate_tokens(counting, spec, [[spec.vocab_size + 1]], GenerationConfig())
    with pytest.raises(WorkbenchError, match="no tokens"):
        generate_tokens(counting, spec, [[]], GenerationConfig())
    assert counting.calls == 0


def test_generation_stops_when_the_positions_run_out(exported_decoder):
    spec = exported_decoder("gpt2").spec
    with _runner(exported_decoder("gpt2")) as runner:
        full = generate_tokens(runner, spec, [[7] * spec.max_positions], GenerationConfig(stop_token_ids=()))
        near = generate_tokens(runner, spec, [[7] * (spec.max_positions - 3)], GenerationConfig(stop_token_ids=()))
    assert len(full.tokens[0]) == 1 and full.finish_reasons == ("max_positions",)
    assert len(near.tokens[0]) == 4 and near.finish_reasons == ("max_positions",)
