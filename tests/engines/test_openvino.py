"""The OpenVINO engine: registry entry, IR conversion (FP32, atomic), the runner (threads, hint, reshape, input
specs, Polygraphy through the comparison stage) and the precisions read back from a compiled model or the IR."""

from __future__ import annotations

import numpy as np
import pytest

ov = pytest.importorskip("openvino", reason="openvino is not installed (the [openvino] extra)")

from workbench.engines.base import Candidate, engine_for_path, get_engine
from workbench.engines.onnxruntime import OnnxRuntimeRunner, max_abs_difference
from workbench.engines.openvino import (
    OpenVINORunner,
    convert_to_openvino,
    ir_precisions,
    op_precisions,
)
from workbench.errors import ConfigError, ModelSourceError


@pytest.fixture(scope="module")
def tiny_ir(tiny_bert_onnx, tmp_path_factory):
    return convert_to_openvino(tiny_bert_onnx, tmp_path_factory.mktemp("ir") / "model.xml")


@pytest.fixture(scope="module")
def tiny_feeds(tiny_model_dir):
    from workbench.data import tokenize_batches
    from workbench.models import load_model

    tokenizer = load_model(tiny_model_dir("bert")).load_tokenizer()
    return tokenize_batches(
        tokenizer,
        ["the cat sat on the mat", "revenue grew 12%", "how do I reset it?", "x"],
        batch_size=2,
        sequence_length=16,
    )


def test_the_engine_is_registered_with_its_triton_backend():
    engine = get_engine("openvino")
    assert engine_for_path("some/model.xml") is engine
    assert engine.precisions == ("fp32", "int8_nncf") and engine.extra == "openvino"
    assert engine.triton_backend == "openvino" and engine.model_files == ("model.xml", "model.bin")
    status = engine.availability()
    assert status and status.version and status.version in status.reason


def test_conversion_keeps_fp32_weights_and_writes_only_the_two_files(tiny_bert_onnx, tiny_ir, tmp_path):
    assert tiny_ir.path.name == "model.xml" and tiny_ir.weights == tiny_ir.path.with_suffix(".bin")
    assert sorted(p.name for p in tiny_ir.path.parent.iterdir()) == ["model.bin", "model.xml"]
    model = ov.Core().read_model(str(tiny_ir.path))
    constants = {
        op.get_output_element_type(0).get_type_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() == "Constant"
    }
    assert "f16" not in constants and "f32" in constants
    assert tiny_ir.size_mb == pytest.approx(tiny_bert_onnx.stat().st_size / 1e6, rel=0.1)
    half = convert_to_openvino(tiny_bert_onnx, tmp_path / "half.xml", compress_to_fp16=True)
    assert half.size_mb < 0.7 * tiny_ir.size_mb


def test_a_failed_conversion_leaves_nothing(tmp_path):
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a model")
    with pytest.raises(ModelSourceError):
        convert_to_openvino(broken, tmp_path / "out" / "model.xml")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    with pytest.raises(ModelSourceError):
        convert_to_openvino(tmp_path / "missing.onnx", tmp_path / "out2" / "model.xml")
    with pytest.raises(ConfigError, match=".xml"):
        convert_to_openvino(broken, tmp_path / "model.onnx")


def test_runner_matches_onnxruntime_with_explicit_threads_and_hint(tiny_bert_onnx, tiny_ir, tiny_feeds):
    with (
        OnnxRuntimeRunner(tiny_bert_onnx) as reference,
        get_engine("openvino").runner(tiny_ir.path, name="ov", threads=1) as runner,
    ):
        assert runner.compiled.get_property("INFERENCE_NUM_THREADS") == 1
        assert str(runner.compiled.get_property("PERFORMANCE_HINT")) in ("LATENCY", "PerformanceMode.LATENCY")
        specs = runner.input_specs()
        assert set(specs) == {"input_ids", "attention_mask", "token_type_ids"}
        assert specs["input_ids"] == (np.dtype("int64"), [None, None])
        for feed in tiny_feeds:
            expected, actual = reference.infer(feed), runner.infer(feed)
            assert max_abs_difference(expected["last_hidden_state"], actual["last_hidden_state"], feed) < 1e-4
        first = runner.infer(tiny_feeds[0])["last_hidden_state"]
        runner.infer(tiny_feeds[1])
        assert np.array_equal(first, runner.infer(tiny_feeds[0])["last_hidden_state"]), "outputs are copies"


def test_reshaped_static_shapes_and_throughput_hint(tiny_ir, tiny_feeds):
    shapes = {name: [2, 16] for name in ("input_ids", "attention_mask", "token_type_ids")}
    with OpenVINORunner(tiny_ir.path, shapes=shapes, hint="THROUGHPUT", streams=2, threads=2) as runner:
        assert runner.input_specs()["input_ids"][1] == [2, 16]
        assert runner.compiled.get_property("NUM_STREAMS") == 2
        assert runner.infer(tiny_feeds[0])["last_hidden_state"].shape == (2, 16, 32)
    with pytest.raises(ConfigError, match="does not have"), OpenVINORunner(tiny_ir.path, shapes={"ids": [1, 4]}):
        pass
    with pytest.raises(ConfigError):
        OpenVINORunner(tiny_ir.path, hint="FAST")
    with pytest.raises(ConfigError):
        OpenVINORunner(tiny_ir.path, threads=0)


def test_candidates_run_through_polygraphy_in_the_comparison(tiny_bert_onnx, tiny_ir, tiny_feeds):
    from workbench.stages.accuracy.compare import compare_candidates

    candidate = Candidate("ov_fp32", tiny_ir.path, "openvino", "fp32")
    report = compare_candidates(tiny_bert_onnx, {candidate.name: candidate.path}, tiny_feeds)
    accuracy = report[candidate.name]
    assert accuracy and accuracy.embedding_cosine_min > 0.99999
    assert accuracy.outputs["last_hidden_state"]["cosine_min"] > 0.9999


def test_an_fp32_ir_runs_every_compute_op_in_fp32(tiny_ir):
    static = ir_precisions(tiny_ir.path)
    assert static and set(static.values()) == {"fp32"}
    runtime = op_precisions(tiny_ir.path)
    dense = [n for n in static if n.endswith("dense/MatMul")]
    assert dense and all(runtime[n] == "f32" for n in dense)


def _has_bf16() -> bool:
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def test_a_candidates_float_precision_reaches_the_compiled_model(tiny_ir, tiny_feeds):
    fp32 = Candidate("ov", tiny_ir.path, engine="openvino")
    with fp32.runner(threads=1) as runner:
        # explicit f32: OpenVINO's own default is bf16 on CPUs that have it
        assert str(runner.compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'float32'>"
        want = [runner.infer(f)["last_hidden_state"] for f in tiny_feeds]
    assert fp32.to_dict()["float_precision"] == "fp32"
    bf16 = Candidate("ov_bf16", tiny_ir.path, engine="openvino", float_precision="bf16")
    if not _has_bf16():
        from workbench.errors import DeviceUnavailable

        with pytest.raises(DeviceUnavailable, match="bfloat16"), bf16.runner(threads=1):
            pass
        return
    with bf16.runner(threads=1) as runner:
        assert str(runner.compiled.get_property("INFERENCE_PRECISION_HINT")) == "<Type: 'bfloat16'>"
        got = [runner.infer(f)["last_hidden_state"] for f in tiny_feeds]
    differences = [float(np.abs(g - w).max()) for g, w in zip(got, want)]
    assert 0 < max(differences) < 0.1, differences  # bf16 rounding: close to FP32, not identical


def test_bf16_is_refused_for_engines_that_run_fp32_only_and_unknown_precisions(tiny_bert_onnx):
    with pytest.raises(ConfigError, match="ONNX Runtime does not run floating-point ops in 'bf16'"):
        Candidate("ort", tiny_bert_onnx, engine="onnxruntime", float_precision="bf16").runner()
    with pytest.raises(ConfigError, match="float_precision 'fp8'"):
        Candidate("x", tiny_bert_onnx, float_precision="fp8")


def test_the_triton_config_always_states_the_float_precision(tiny_ir, tmp_path):
    from workbench.triton.config import TritonConfig, parse_model_config
    from workbench.triton.model import export_triton_model

    plain = export_triton_model(tiny_ir.path, tmp_path / "a", TritonConfig(model_name="m"))
    assert parse_model_config(plain.config_text).parameters["INFERENCE_PRECISION_HINT"].string_value == "f32"
    candidate = Candidate("ov_bf16", tiny_ir.path, engine="openvino", float_precision="bf16")
    served = export_triton_model(candidate, tmp_path / "b", TritonConfig(model_name="m"))
    assert parse_model_config(served.config_text).parameters["INFERENCE_PRECISION_HINT"].string_value == "bf16"
    with pytest.raises(ConfigError, match="openvino_float_precision"):
        TritonConfig(openvino_float_precision="f16")
