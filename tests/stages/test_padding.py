"""The served padding policy: validation, the arithmetic both sides share, `encode` equal to what the server
computes, and the repositories each design exports (configs, parameters, provenance)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from workbench.data import read_sentences
from workbench.errors import ConfigError, DataError, TritonExportError
from workbench.models import bundled_model_path, load_model
from workbench.triton.padding import PaddingPolicy, default_buckets
from workbench.triton.python_models import bls_model, tokenizer_model

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient is not installed (the [triton] extra)")

TEXTS = [
    "A man is playing a guitar.",
    "short",
    "",
    "Ünïcödé and émojis 🙂 too.",
    " ".join(["A sentence longer than the sequence length is truncated."] * 12),
    "How do I reset my password if I no longer have access to the e-mail address on the account?",
]
INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


@pytest.fixture(scope="module")
def tokenizer():
    return load_model(bundled_model_path()).load_tokenizer()


@pytest.fixture(scope="module")
def served_tokenizer(tmp_path_factory):
    """The server's `tokenizers` tokenizer of the same tokenizer.json, without fixed padding."""
    path = bundled_model_path() / "tokenizer.json"
    return tokenizer_model.load_tokenizer(path, sequence_length=32, pad_id=0, pad_token="[PAD]", padding="buckets")


@pytest.mark.parametrize(
    "changes",
    [
        {"mode": "zeros"},
        {"batching": "grpc"},
        {"max_length": 1},
        {"max_length": 64.0},
        {"buckets": (16, 32)},  # does not end at max_length
        {"buckets": (64, 32, 128)},
        {"buckets": (0, 128)},
        {"buckets": (16, 16, 128)},
        {"mode": "fixed", "buckets": (64, 128)},
        {"mode": "longest", "batching": "ensemble"},
    ],
)
def test_invalid_policies_are_config_errors(changes):
    with pytest.raises(ConfigError):
        PaddingPolicy(**changes)


def test_default_buckets_double_up_to_max_length():
    assert default_buckets(128) == (16, 32, 64, 128)
    assert default_buckets(100) == (16, 32, 64, 100)
    assert default_buckets(16) == (16,)
    assert PaddingPolicy().bucket_lengths == (16, 32, 64, 128)
    assert PaddingPolicy.fixed(48).bucket_lengths == (48,)
    assert PaddingPolicy(mode="longest", batching="bls").bucket_lengths == ()
    assert PaddingPolicy.from_json(PaddingPolicy(buckets=(8, 128)).to_json()) == PaddingPolicy(buckets=(8, 128))


@pytest.mark.parametrize("preset", sorted(PaddingPolicy.PRESETS))
def test_workbench_and_server_pad_to_the_same_lengths(preset):
    policy = PaddingPolicy.preset(preset, max_length=100)
    for tokens in range(1, 140):
        assert policy.padded_length(tokens) == tokenizer_model.padded_length(
            tokens, policy.mode, policy.max_length, tokenizer_model.parse_buckets(policy.to_parameters()["buckets"])
        )
    assert policy.padded_length(3) >= 3 and policy.padded_length(1000) == 100


def test_buckets_split_a_dynamic_batch_into_one_call_per_bucket():
    policy = PaddingPolicy(max_length=128)
    lengths = [5, 40, 17, 130, 12, 33, 70, 2, 9, 100]
    calls = policy.batches(lengths, 8)
    # every text exactly once, in calls of at most one dynamic batch, each padded to a bucket that holds it
    assert sorted(i for indices, _ in calls for i in indices) == list(range(len(lengths)))
    assert [(indices, length) for indices, length in calls] == [
        ((0, 4, 7), 16),
        ((1, 5), 64),
        ((2,), 32),
        ((3, 6), 128),
        ((8,), 16),
        ((9,), 128),
    ]
    # the BLS model groups one dynamic batch the same way
    for start in (0, 8):
        chunk = lengths[start : start + 8]
        groups = bls_model.group_rows([min(n, 128) for n in chunk], "buckets", 128, policy.bucket_lengths)
        expected = [
            (tuple(i - start for i in indices), length)
            for indices, length in calls
            if all(start <= i < start + 8 for i in indices)
        ]
        assert [(tuple(v), k) for k, v in groups.items()] == expected
    longest = PaddingPolicy.preset("bls_longest")
    assert longest.batches(lengths, 8) == [(tuple(range(8)), 128), ((8, 9), 100)]
    assert bls_model.group_rows([5, 40, 17], "longest", 128, ()) == {40: [0, 1, 2]}
    assert PaddingPolicy.fixed(128).batches([5, 40], 8) == [((0, 1), 128)]
    with pytest.raises(DataError):
        policy.batches(lengths, 0)


@pytest.mark.parametrize("preset", ["fixed", "ensemble_buckets", "bls_longest"])
def test_encode_gives_exactly_what_the_server_computes(preset, tokenizer, served_tokenizer):
    policy = PaddingPolicy.preset(preset, max_length=32)
    feeds = policy.encode(tokenizer, TEXTS, 4, input_names=INPUTS)
    calls = policy.batches(policy.token_lengths(tokenizer, TEXTS), 4)
    assert len(feeds) == len(calls)
    pad = {"direction": "right", "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"}
    for (indices, length), feed in zip(calls, feeds):
        served = tokenizer_model.encode(
            served_tokenizer, [TEXTS[i] for i in indices], dict.fromkeys(INPUTS, np.int64), length=length, pad=pad
        )
        for name in INPUTS:
            assert feed[name].shape == (len(indices), length)
            np.testing.assert_array_equal(feed[name], served[name])
    assert {f["input_ids"].shape[1] for f in feeds} <= ({32} if preset == "fixed" else set(range(1, 33)))


def test_buckets_compute_a_fraction_of_fixed_paddings_tokens(tokenizer):
    from workbench.data import default_data_dir

    sentences = read_sentences(default_data_dir() / "evaluation.txt")
    fixed, buckets = PaddingPolicy.fixed(128), PaddingPolicy(max_length=128)
    lengths = buckets.token_lengths(tokenizer, sentences)
    fixed_computed, real = fixed.padded_tokens(lengths, 8)
    bucket_computed, same_real = buckets.padded_tokens(lengths, 8)
    assert fixed_computed == 128 * len(sentences) and same_real == real
    assert real / fixed_computed < 0.3  # most of fixed padding's work is padding (measured-facts: about 77%)
    assert bucket_computed < 0.4 * fixed_computed


# ----------------------------------------------------------------------------------------------- the exports


def _export(onnx_path, tokenizer_dir, repository, preset, **kwargs):
    from workbench.triton.config import TritonConfig
    from workbench.triton.ensemble import export_triton_ensemble

    config = kwargs.pop(
        "config", TritonConfig(model_name="tiny", max_queue_delay_us=3000, instance_count=2, preferred_batch_sizes=(4,))
    )
    padding = PaddingPolicy.preset(preset, max_length=32) if preset is not None else None
    return export_triton_ensemble(
        onnx_path, repository, tokenizer_dir, config, sequence_length=32, padding=padding, **kwargs
    )


def test_the_bls_bucket_design(tiny_bert_onnx, tiny_model_dir, tmp_path):
    from workbench.triton.config import parse_model_config

    result = _export(tiny_bert_onnx, tiny_model_dir("bert"), tmp_path / "repo", "bls_buckets")
    assert result.padding == PaddingPolicy(max_length=32, batching="bls")
    # no tokenizer model (the BLS model tokenizes) and no pooling model (mean pooling runs inside it)
    assert result.model_names == ("tiny", "tiny_ensemble")
    entry = parse_model_config(result.models["ensemble"].config_text)
    engine = parse_model_config(result.models["model"].config_text)
    assert entry.backend == "python" and entry.platform == ""
    assert [(i.name, list(i.dims)) for i in entry.input] == [("TEXT", [1])]
    assert [(o.name, list(o.dims)) for o in entry.output] == [("EMBEDDING", [32])]
    # the entry forms the batches (delay, preferred sizes, instances); the engine is called with formed batches
    assert entry.dynamic_batching.max_queue_delay_microseconds == 3000
    assert list(entry.dynamic_batching.preferred_batch_size) == [4]
    assert entry.instance_group[0].count == 2 and engine.instance_group[0].count == 2
    assert engine.dynamic_batching.max_queue_delay_microseconds == 0
    assert not engine.dynamic_batching.preferred_batch_size
    assert [list(i.dims) for i in engine.input] == [[-1]] * 3
    parameters = {k: v.string_value for k, v in entry.parameters.items()}
    assert parameters["padding"] == "buckets" and parameters["buckets"] == "16,32"
    assert parameters["batching"] == "bls" and parameters["engine_model"] == "tiny"
    assert json.loads(parameters["engine_inputs"]) == {n: "TYPE_INT64" for n in INPUTS}
    assert json.loads(parameters["engine_outputs"]) == ["last_hidden_state"]
    assert parameters["postprocess_model"] == "" and parameters["postprocess_inline"] == "true"
    assert json.loads(parameters["postprocess_inputs"]) == ["last_hidden_state", "attention_mask"]
    assert json.loads(parameters["postprocess_parameters"]) == {"normalize": "true"}
    assert PaddingPolicy.from_json(parameters["padding_policy"]) == result.padding
    version = result.repository / "tiny_ensemble" / "1"
    assert {"model.py", "tokenizer.json", "tokenizer_model.py"} <= {p.name for p in version.iterdir()}
    from workbench.triton.python_models import BLS_MODEL, POOLING_MODEL, TOKENIZER_MODEL

    assert (version / "model.py").read_text() == BLS_MODEL.read_text()
    assert (version / "tokenizer_model.py").read_text() == TOKENIZER_MODEL.read_text()
    assert (version / "postprocess_model.py").read_text() == POOLING_MODEL.read_text()
    record = json.loads(result.provenance.read_text())
    assert record["padding"]["mode"] == "buckets" and record["padding"]["buckets"] == [16, 32]
    assert record["padding"]["batching"] == "bls" and "BLS" in record["padding"]["description"]
    assert record["models"] == {"model": "tiny", "ensemble": "tiny_ensemble"}
    readme = result.readme.read_text()
    assert "business-logic scripting" in readme and "--load-model=tiny_ensemble" in readme
    assert result.to_dict()["padding"]["mode"] == "buckets"


def test_the_default_export_is_the_bucket_ensemble_and_records_the_policy(tiny_bert_onnx, tiny_model_dir, tmp_path):
    from workbench.triton.config import parse_model_config

    result = _export(tiny_bert_onnx, tiny_model_dir("bert"), tmp_path / "repo", None)
    assert result.padding == PaddingPolicy(max_length=32) == PaddingPolicy.preset("ensemble_buckets", max_length=32)
    assert result.model_names == ("tiny", "tiny_tokenizer", "tiny_pooling", "tiny_ensemble")
    tokenizer = parse_model_config(result.models["tokenizer"].config_text)
    engine = parse_model_config(result.models["model"].config_text)
    assert {o.name: list(o.dims) for o in tokenizer.output} == {n: [-1] for n in INPUTS}
    parameters = {k: v.string_value for k, v in tokenizer.parameters.items()}
    assert (parameters["padding"], parameters["buckets"], parameters["batching"]) == ("buckets", "16,32", "ensemble")
    assert parameters["sequence_length"] == "32"
    # the engine's dynamic batcher forms the batches here: it keeps the configured delay and preferred sizes
    assert engine.dynamic_batching.max_queue_delay_microseconds == 3000
    assert list(engine.dynamic_batching.preferred_batch_size) == [4]
    assert parse_model_config(result.models["ensemble"].config_text).platform == "ensemble"
    assert json.loads(result.provenance.read_text())["padding"]["batching"] == "ensemble"


def test_the_in_process_post_processing_is_the_pooling_models():
    from workbench.triton.python_models import POOLING_MODEL, pooling_model
    from workbench.triton.served import inline_postprocessing

    rng = np.random.default_rng(0)
    hidden, mask = rng.normal(size=(3, 5, 4)), np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    out = pooling_model.postprocess(
        {"last_hidden_state": hidden, "attention_mask": mask}, {"normalize": "true"}, ["EMBEDDING"]
    )
    np.testing.assert_allclose(out["EMBEDDING"], pooling_model.mean_pool(hidden, mask, True))
    raw = pooling_model.postprocess({"h": hidden, "attention_mask": mask}, {"normalize": "false"}, ["E"])["E"]
    np.testing.assert_allclose(raw[2], hidden[2, 0])
    assert inline_postprocessing(POOLING_MODEL) and not inline_postprocessing(None)


def test_bls_follows_int32_engine_inputs(tiny_model_dir, tmp_path):
    from onnx import TensorProto, helper, save

    from workbench.triton.config import TritonConfig, parse_model_config

    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["input_ids", "attention_mask"], ["masked"]),
            helper.make_node("Cast", ["masked"], ["as_float"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["as_float", "axes"], ["token_vectors"]),
        ],
        "int32_inputs",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT32, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT32, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("token_vectors", TensorProto.FLOAT, ["batch", "sequence", 1])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [2])],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "i32.onnx")
    from workbench.triton.ensemble import export_triton_ensemble

    result = export_triton_ensemble(
        tmp_path / "i32.onnx",
        tmp_path / "repo",
        tiny_model_dir("bert"),
        TritonConfig(model_name="i32"),
        sequence_length=8,
        padding=PaddingPolicy(max_length=8, batching="bls"),
    )
    entry = parse_model_config(result.models["ensemble"].config_text)
    assert json.loads(entry.parameters["engine_inputs"].string_value) == {
        "input_ids": "TYPE_INT32",
        "attention_mask": "TYPE_INT32",
    }
    assert json.loads(entry.parameters["engine_outputs"].string_value) == ["token_vectors"]


def test_exports_refuse_what_a_policy_cannot_serve(tiny_bert_onnx, tiny_model_dir, tmp_path):
    from workbench.triton.config import TritonConfig
    from workbench.triton.ensemble import export_triton_ensemble

    tokenizer_dir = tiny_model_dir("bert")
    with pytest.raises(ConfigError, match="max_length"):
        export_triton_ensemble(
            tiny_bert_onnx,
            tmp_path / "a",
            tokenizer_dir,
            TritonConfig(model_name="t"),
            sequence_length=32,
            padding=PaddingPolicy(max_length=64),
        )
    with pytest.raises(ConfigError, match="PaddingPolicy"):
        export_triton_ensemble(
            tiny_bert_onnx,
            tmp_path / "a",
            tokenizer_dir,
            TritonConfig(model_name="t"),
            sequence_length=32,
            padding="buckets",
        )
    # the BLS model cannot return token-level outputs (the texts of a request may get different lengths)
    with pytest.raises(TritonExportError, match="variable"):
        export_triton_ensemble(
            tiny_bert_onnx,
            tmp_path / "a",
            tokenizer_dir,
            TritonConfig(model_name="t"),
            sequence_length=32,
            postprocess=False,
            padding=PaddingPolicy(max_length=32, batching="bls"),
        )
    assert not (tmp_path / "a").exists()
    # without pooling, the bucket ensemble serves them (one shape per request)
    raw = export_triton_ensemble(
        tiny_bert_onnx,
        tmp_path / "b",
        tokenizer_dir,
        TritonConfig(model_name="t"),
        sequence_length=32,
        postprocess=False,
    )
    assert raw.output_names[0] == "last_hidden_state"
