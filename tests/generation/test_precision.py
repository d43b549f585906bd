"""Precision for decoders: weight-only INT4/INT8 through PrecisionPlan, the generation metrics of the candidates,
the diagnosis and the auto-fix on the generation budget."""

from __future__ import annotations

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from workbench.errors import ConfigError, QuantizationError
from workbench.models import load_model
from workbench.stages.generation.accuracy import (
    autofix_decoder,
    diagnose_decoder,
    evaluate_generation,
)
from workbench.stages.generation.export import read_decoder_spec
from workbench.stages.precision.plan import PrecisionPlan
from workbench.stages.precision.weight_only import (
    WeightOnlyQuantConfig,
    nncf_available,
    weight_matmuls,
)
from workbench.tasks.generation import GenerationBudget

TEXTS_LIMIT = 24
SETTINGS = {"sequence_length": 40, "greedy_tokens": 12}


@pytest.fixture(scope="module")
def gpt2(fused_decoder, tiny_decoder_dir):
    fused = fused_decoder("gpt2").path
    tokenizer = load_model(tiny_decoder_dir("gpt2")).load_tokenizer()
    from workbench.tasks.generation import TextGeneration, load_prompts

    texts = TextGeneration().load_samples(None, max_eval=TEXTS_LIMIT).evaluation
    return fused, tokenizer, list(texts), list(load_prompts(limit=6))


@pytest.fixture(scope="module")
def candidates(gpt2, tmp_path_factory):
    fused, *_ = gpt2
    folder = tmp_path_factory.mktemp("decoder-candidates")
    return {
        preset: PrecisionPlan.preset(preset).convert(fused, folder / f"{preset}.onnx")
        for preset in ("cpu_int4_weight_only", "cpu_int8_weight_only", "cpu_int8_dynamic")
    }


def test_weight_only_plans_quantize_every_matmul_weight_and_keep_the_spec(gpt2, candidates):
    fused, *_ = gpt2
    weights = weight_matmuls(onnx.load(str(fused)))
    for preset in ("cpu_int4_weight_only", "cpu_int8_weight_only"):
        result = candidates[preset]
        model = onnx.load(str(result.path))
        nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
        assert len(nbits) == len(weights) == result.quantized_ops["MatMulNBits"]
        assert {a.i for n in nbits for a in n.attribute if a.name == "bits"} == {4 if "int4" in preset else 8}
        assert read_decoder_spec(result.path) == read_decoder_spec(fused)
    assert candidates["cpu_int4_weight_only"].size_mb < candidates["cpu_int8_weight_only"].size_mb


def test_pins_stay_fp32_and_unknown_pins_are_refused(gpt2, tmp_path):
    fused, *_ = gpt2
    weights = weight_matmuls(onnx.load(str(fused)))
    plan = PrecisionPlan.preset("cpu_int4_weight_only").pin([weights[0], weights[-1]])
    result = plan.convert(fused, tmp_path / "pinned.onnx")
    model = onnx.load(str(result.path))
    kept = {n.name for n in model.graph.node if n.op_type == "MatMul"}
    assert {weights[0], weights[-1]} <= kept
    assert result.quantized_ops["MatMulNBits"] == len(weights) - 2
    with pytest.raises(QuantizationError, match="not in the graph"):
        PrecisionPlan.preset("cpu_int8_weight_only").pin(["no_such_node"]).convert(fused, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_weight_only_settings_are_validated_and_round_trip():
    with pytest.raises(ConfigError, match="power of two"):
        WeightOnlyQuantConfig(block_size=24)
    with pytest.raises(ConfigError, match="accuracy_level"):
        WeightOnlyQuantConfig(accuracy_level=7)
    plan = PrecisionPlan.preset("cpu_int4_weight_only_fp32_compute").pin(["a"])
    assert PrecisionPlan.from_json(plan.to_json()) == plan
    assert plan.default_precision == "int4" and plan.options.accuracy_level == 0
    assert PrecisionPlan.preset("cpu_int8_weight_only").options.accuracy_level == 4


def test_generation_metrics_rank_the_candidates(gpt2, candidates):
    fused, tokenizer, texts, prompts = gpt2
    report = evaluate_generation(
        fused,
        {"fp32": fused, **{k: v.path for k, v in candidates.items()}},
        tokenizer,
        texts=texts,
        prompts=prompts,
        **SETTINGS,
    )
    fp32 = report["fp32"].values
    assert fp32["next_token_agreement"] == 1.0 and fp32["perplexity_ratio"] == pytest.approx(1.0)
    assert fp32["greedy_agreement"] == 1.0 and report["fp32"].greedy_prefixes == (12,) * len(prompts)
    int8, int4 = report["cpu_int8_weight_only"], report["cpu_int4_weight_only"]
    assert 1.0 > int8.values["next_token_agreement"] > int4.values["next_token_agreement"]
    assert int8.values["logits_cosine_mean"] > int4.values["logits_cosine_mean"]
    assert int8.values["greedy_agreement"] >= int4.values["greedy_agreement"]
    # the default budget (agreement >= 0.95, perplexity ratio <= 1.05) passes INT8 and fails INT4 here
    assert int8.meets_budget and not int4.meets_budget
    assert any("next-token agreement" in f for f in int4.failures)
    assert report.to_dict()["candidates"]["cpu_int4_weight_only"]["meets_budget"] is False


def test_diagnosis_ranks_the_quantized_matmuls(gpt2, candidates):
    fused, tokenizer, texts, _ = gpt2
    diagnosis = diagnose_decoder(fused, candidates["cpu_int4_weight_only"].path, tokenizer, texts=texts, batches=3)
    ranking = diagnosis.sensitivity()
    assert {name for name, _ in ranking} == set(weight_matmuls(onnx.load(str(fused))))
    assert [score for _, score in ranking] == sorted((score for _, score in ranking), reverse=True)
    assert ranking[0][1] > ranking[-1][1] > 0


def test_autofix_pins_few_matmuls_to_meet_the_generation_budget(gpt2, tmp_path):
    fused, tokenizer, texts, _ = gpt2
    plan = PrecisionPlan.preset("cpu_int4_weight_only")
    budget = GenerationBudget(next_token_agreement_min=0.9)
    result = autofix_decoder(
        fused,
        plan,
        tmp_path,
        tokenizer,
        budget=budget,
        texts=texts,
        diagnosis_batches=3,
        max_prune_trials=2,
        **SETTINGS,
    )
    quantized = len(weight_matmuls(onnx.load(str(fused))))
    assert not result.start.meets_budget and result.best.meets_budget
    assert 0 < len(result.best.pins) < quantized
    assert set(result.plan.keep_fp32) == set(result.best.pins)
    assert len(result.trials) <= 2 + (quantized - 1).bit_length() + 2
    assert result.path.is_file() and (tmp_path / "fixed_plan.json").is_file()
    assert PrecisionPlan.load(tmp_path / "fixed_plan.json") == result.plan
    fixed = evaluate_generation(
        fused, {"fixed": result.path}, tokenizer, texts=texts, prompts=(), budget=budget, **SETTINGS
    )
    assert fixed["fixed"].meets_budget


@pytest.mark.skipif(not nncf_available()[0], reason=f"NNCF weight compression: {nncf_available()[1]}")
def test_nncf_weight_compression_writes_an_openvino_model(gpt2, tmp_path):
    fused, *_ = gpt2
    result = PrecisionPlan.preset("openvino_int8_weight_only").convert(fused, tmp_path / "int8" / "model.xml")
    assert result.path.is_file() and result.path.with_suffix(".bin").is_file()


def test_nncf_methods_say_what_is_missing(gpt2, tmp_path):
    available, reason = nncf_available()
    if available:
        pytest.skip("openvino and nncf are installed here")
    from workbench.errors import MissingDependency

    fused, *_ = gpt2
    with pytest.raises(MissingDependency, match="openvino|nncf"):
        PrecisionPlan.preset("openvino_int4_weight_only").convert(fused, tmp_path / "model.xml")
    assert "not installed" in reason
