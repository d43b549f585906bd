"""NNCF INT8 as a PrecisionPlan method: calibrated on the same feeds, a pin by ONNX node name keeps that op in FP32
(read back from the compiled model and from the IR), smoothing becomes NNCF's SmoothQuant alphas, and the
autofix searches OpenVINO INT8 the way it searches onnxruntime's."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

pytest.importorskip("openvino", reason="openvino is not installed (the [openvino] extra)")
pytest.importorskip("nncf", reason="nncf is not installed (the [openvino] extra)")
onnx = pytest.importorskip("onnx")

from workbench.engines.openvino import ir_precisions, is_int8, op_precisions
from workbench.errors import AccuracyError, ConfigError, DataError, QuantizationError
from workbench.stages.accuracy.autofix import AutofixConfig, autofix, trial_budget
from workbench.stages.accuracy.compare import AccuracyBudget, compare_candidates
from workbench.stages.accuracy.diagnose import diagnose, quantized_nodes
from workbench.stages.precision.nncf import NncfQuantConfig, smoothquant_alphas
from workbench.stages.precision.plan import PrecisionPlan
from workbench.stages.precision.smooth import SmoothingConfig

TEXTS = [
    "the cat sat on the mat",
    "revenue grew 12%",
    "how do I reset my password?",
    "SELECT 1;",
    "a much longer sentence about nothing in particular",
    "ok",
]


@pytest.fixture(scope="module")
def data(tiny_model_dir):
    from workbench.data import tokenize_batches
    from workbench.models import load_model

    tokenizer = load_model(tiny_model_dir("bert")).load_tokenizer()
    calibration = tokenize_batches(tokenizer, TEXTS * 2, batch_size=1, sequence_length=16)
    evaluation = tokenize_batches(tokenizer, TEXTS, batch_size=3, sequence_length=16)
    return calibration, evaluation


@pytest.fixture(scope="module")
def dense_nodes(tiny_bert_onnx):
    """ONNX node names of the plain export's dense MatMuls (what a user pins)."""
    return [
        n.name
        for n in onnx.load(str(tiny_bert_onnx)).graph.node
        if n.op_type == "MatMul" and n.name.endswith("dense/MatMul")
    ]


@pytest.fixture(scope="module")
def int8(tiny_bert_onnx, data, tmp_path_factory):
    calibration, _ = data
    return PrecisionPlan.preset("cpu_int8_nncf").convert(
        tiny_bert_onnx, tmp_path_factory.mktemp("nncf") / "int8.xml", calibration_feeds=calibration
    )


def test_a_pin_by_onnx_node_name_keeps_that_op_fp32(tiny_bert_onnx, data, dense_nodes, int8, tmp_path):
    calibration, _ = data
    pinned, other = dense_nodes[0], dense_nodes[-1]
    plan = PrecisionPlan.preset("cpu_int8_nncf").pin([pinned])
    result = plan.convert(tiny_bert_onnx, tmp_path / "pinned.xml", calibration_feeds=calibration)
    assert result.keep_fp32 == (pinned,) and result.path.with_suffix(".bin").is_file()
    runtime = op_precisions(result.path)  # what the compiled model really runs
    assert runtime[pinned] == "f32"
    assert is_int8(runtime[other])
    assert is_int8(op_precisions(int8.path)[pinned]), "unpinned, the same op runs in INT8"
    static = ir_precisions(result.path)  # and the saved IR says the same
    assert static[pinned] == "fp32" and static[other] == "int8"


def test_pins_that_name_no_op_are_refused_before_any_work(tiny_bert_onnx, data, tmp_path):
    calibration, _ = data
    with pytest.raises(QuantizationError, match="not in the OpenVINO model"):
        PrecisionPlan.preset("cpu_int8_nncf").pin(["no/such/MatMul"]).convert(
            tiny_bert_onnx, tmp_path / "x.xml", calibration_feeds=calibration
        )
    with pytest.raises(DataError, match="calibration"):
        PrecisionPlan.preset("cpu_int8_nncf").convert(tiny_bert_onnx, tmp_path / "x.xml")
    with pytest.raises(ConfigError, match=".xml"):
        PrecisionPlan.preset("cpu_int8_nncf").convert(
            tiny_bert_onnx, tmp_path / "x.onnx", calibration_feeds=calibration
        )
    assert list(tmp_path.iterdir()) == []


def test_smoothing_maps_to_nncf_smoothquant_alphas(tiny_bert_onnx, data, int8, tmp_path):
    assert smoothquant_alphas(None) == {"convolution": -1.0, "matmul": -1.0}
    assert smoothquant_alphas(SmoothingConfig(alpha=0.6)) == {"convolution": -1.0, "matmul": 0.6}
    per_type = SmoothingConfig(alpha=0.6, op_alphas=(("MatMul", 0.8),))
    assert smoothquant_alphas(per_type)["matmul"] == 0.8
    assert smoothquant_alphas(SmoothingConfig(op_types=("Attention",)))["matmul"] == -1.0
    plan = PrecisionPlan.preset("cpu_int8_nncf")
    assert plan.smoothing.alpha == 0.95 and plan.engine == "openvino"
    assert PrecisionPlan.from_json(plan.to_json()) == plan
    assert PrecisionPlan.from_json(replace(plan, smoothing=per_type).to_json()).smoothing == per_type

    def smoothquant_muls(path):
        import openvino as ov

        return [
            op
            for op in ov.Core().read_model(str(path)).get_ordered_ops()
            if "nncf_smooth_quant" in op.get_friendly_name() and op.get_type_name() == "Multiply"
        ]

    assert smoothquant_muls(int8.path)
    calibration, _ = data
    off = PrecisionPlan.preset("cpu_int8_nncf_no_smoothing").convert(
        tiny_bert_onnx, tmp_path / "off.xml", calibration_feeds=calibration
    )
    assert off.notes == ("SmoothQuant off",) and not smoothquant_muls(off.path)
    with pytest.raises(ConfigError):
        NncfQuantConfig(scheme="fastest")


def test_diagnosis_reads_openvino_candidates(tiny_bert_onnx, data, int8, dense_nodes):
    _, evaluation = data
    quantized = quantized_nodes(tiny_bert_onnx, int8.path)
    assert set(dense_nodes) <= set(quantized)
    result = diagnose(tiny_bert_onnx, int8.path, evaluation)
    ranked = [name for name, _ in result.sensitivity()]
    assert set(dense_nodes) <= set(ranked) <= set(quantized)
    assert all(n.relative_error > 0 for n in result.nodes if n.name in dense_nodes)
    identical = diagnose(tiny_bert_onnx, tiny_bert_onnx, evaluation[:1])
    assert all(n.relative_error == 0.0 for n in identical.nodes)


def test_autofix_meets_a_strict_budget_for_openvino_int8(tiny_bert_onnx, data, tmp_path):
    calibration, evaluation = data
    plan = PrecisionPlan.preset("cpu_int8_nncf_no_smoothing")
    start = plan.convert(tiny_bert_onnx, tmp_path / "start.xml", calibration_feeds=calibration)
    accuracy = compare_candidates(tiny_bert_onnx, {"c": start.path}, evaluation)["c"]
    budget = AccuracyBudget(
        embedding_cosine_mean=1 - (1 - accuracy.embedding_cosine_mean) / 4,
        embedding_cosine_min=1 - (1 - accuracy.embedding_cosine_min) / 4,
    )
    result = autofix(
        tiny_bert_onnx,
        plan,
        evaluation,
        tmp_path / "fix",
        budget=budget,
        calibration_feeds=calibration,
        config=AutofixConfig(try_smoothing=False, latency_iterations=2, max_prune_trials=3),
    )
    assert not result.start.meets_budget and result.best.meets_budget and result.best.pins
    n = len(quantized_nodes(tiny_bert_onnx, start.path))
    assert len(result.trials) <= trial_budget(n, 3) <= 2 * math.log2(n) + 10
    assert result.path.name == "fixed.xml" and result.path.with_suffix(".bin").is_file()
    assert all(t.path.suffix == ".xml" for t in result.trials)
    fixed = compare_candidates(tiny_bert_onnx, {"fixed": result.path}, evaluation, budget=budget)["fixed"]
    assert fixed, "the fixed IR written to disk must meet the budget"
    assert set(result.plan.keep_fp32) == set(result.best.pins)
    precisions = op_precisions(result.path)
    assert all(precisions.get(p, "f32") == "f32" for p in result.best.pins if p.endswith("MatMul"))
    assert PrecisionPlan.load(tmp_path / "fix" / "fixed_plan.json") == result.plan


def test_autofix_tunes_the_smoothquant_alpha_before_pinning(tiny_bert_onnx, data, tmp_path):
    calibration, evaluation = data
    plan = PrecisionPlan.preset("cpu_int8_nncf")
    start = plan.convert(tiny_bert_onnx, tmp_path / "start.xml", calibration_feeds=calibration)
    accuracy = compare_candidates(tiny_bert_onnx, {"c": start.path}, evaluation)["c"]
    budget = AccuracyBudget(embedding_cosine_mean=1.0, embedding_cosine_min=1.0)  # unreachable
    events = []
    with pytest.raises(AccuracyError):
        autofix(
            tiny_bert_onnx,
            plan,
            evaluation,
            tmp_path / "fix",
            budget=budget,
            calibration_feeds=calibration,
            config=AutofixConfig(latency_iterations=1, smoothing_alphas=(0.5, 0.95)),
            progress=events.append,
        )
    seen = [event.item for event in events if event.item is not None]  # the trials, as each completed
    assert [t.stage for t in seen[:2]] == ["start", "alpha"]
    assert seen[0].smoothing_alpha == 0.95 and seen[1].smoothing_alpha == 0.5, "its own alpha is not tried again"
    assert seen[0].cosine_mean == pytest.approx(accuracy.embedding_cosine_mean)
    assert seen[2].stage == "all pinned"
    closer = seen[1] if seen[1].cosine_min + seen[1].cosine_mean > seen[0].cosine_min + seen[0].cosine_mean else seen[0]
    assert seen[2].smoothing_alpha == closer.smoothing_alpha, "the search goes on from the closer alpha"
