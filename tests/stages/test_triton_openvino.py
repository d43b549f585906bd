"""OpenVINO IR models in Triton repositories: a complete `backend: "openvino"` config that parses strictly, the IR
in the version folder, the backend's thread/stream parameters; and on the real server (through the Python-based
`openvino` stand-in) the served embeddings are the library's own."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient is not installed (the [triton] extra)")
pytest.importorskip("openvino", reason="openvino is not installed (the [openvino] extra)")

from workbench.engines.base import Candidate
from workbench.engines.openvino import OpenVINORunner, convert_to_openvino
from workbench.errors import ConfigError, TritonExportError
from workbench.triton.config import TritonConfig, parse_model_config
from workbench.triton.ensemble import export_triton_ensemble
from workbench.triton.model import engine_model, export_triton_model

SEQUENCE_LENGTH = 32
TEXTS = (
    "A man is playing a guitar.",
    "The new movie is awesome!",
    "a",
    "short",
    " ".join(["A sentence longer than the sequence length is truncated."] * 20),
)


@pytest.fixture(scope="module")
def tiny_ir(tiny_bert_onnx, tmp_path_factory):
    return convert_to_openvino(tiny_bert_onnx, tmp_path_factory.mktemp("ir") / "tiny.xml").path


def test_openvino_model_config_is_complete_and_parses_strictly(tiny_ir, tmp_path):
    config = TritonConfig(model_name="tiny_ov", max_batch_size=8, openvino_threads=2, openvino_streams=1, warmup=True)
    result = export_triton_model(tiny_ir, tmp_path / "repo", config)
    text = result.config_path.read_text()
    cfg = parse_model_config(text)
    assert cfg.backend == "openvino" and not cfg.platform and cfg.max_batch_size == 8
    assert {t.name for t in cfg.input} == {"input_ids", "attention_mask", "token_type_ids"}
    assert [(t.name, list(t.dims)) for t in cfg.output] == [("last_hidden_state", [-1, 32])]
    assert {k: v.string_value for k, v in cfg.parameters.items()} == {
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_NUM_THREADS": "2",
        "NUM_STREAMS": "1",
        "INFERENCE_PRECISION_HINT": "f32",  # stated: OpenVINO would pick bf16 on a CPU that has it
    }
    assert cfg.dynamic_batching.max_queue_delay_microseconds == config.max_queue_delay_us
    assert [s.batch_size for s in cfg.model_warmup] == [1, 8]
    files = sorted(p.relative_to(result.model_dir).as_posix() for p in result.files)
    assert files == ["1/model.bin", "1/model.xml", "config.pbtxt"]
    assert (result.model_dir / "1" / "model.bin").read_bytes() == tiny_ir.with_suffix(".bin").read_bytes()


def test_a_candidate_picks_its_engine_and_onnx_models_keep_their_backend(tiny_ir, tiny_bert_onnx):
    cfg, _ = engine_model(Candidate("tiny", tiny_ir, "openvino", "fp32"), TritonConfig(model_name="x"))
    assert cfg.backend == "openvino"
    cfg, _ = engine_model(tiny_bert_onnx, TritonConfig(model_name="x"))
    assert cfg.backend == "onnxruntime" and cfg.platform == "onnxruntime_onnx"


def test_options_of_another_backend_are_config_errors(tiny_ir, tiny_bert_onnx):
    with pytest.raises(ConfigError, match="TensorRT"):
        engine_model(tiny_ir, TritonConfig.preset("gpu_tensorrt_fp16", model_name="x"))
    with pytest.raises(ConfigError, match="openvino backend"):
        engine_model(tiny_bert_onnx, TritonConfig(model_name="x", openvino_threads=2))
    with pytest.raises(ConfigError):
        TritonConfig(openvino_hint="FASTEST")
    with pytest.raises(ConfigError):
        TritonConfig(openvino_threads=0)


def test_a_static_batch_is_refused_and_a_failed_export_leaves_nothing(tiny_ir, tmp_path):
    import openvino as ov

    from workbench.engines.openvino import read_model, save_model

    model = read_model(tiny_ir)
    model.reshape({name: ov.PartialShape([1, 16]) for name in ("input_ids", "attention_mask", "token_type_ids")})
    static = save_model(model, tmp_path / "static.xml")
    with pytest.raises(TritonExportError, match="static batch"):
        export_triton_model(static, tmp_path / "repo", TritonConfig(model_name="static"))
    assert not (tmp_path / "repo").exists()
    static.with_suffix(".bin").unlink()  # an IR without its weights: nothing is written either
    with pytest.raises(Exception, match="weights"):
        export_triton_model(static, tmp_path / "repo", TritonConfig(model_name="static"))
    assert not (tmp_path / "repo").exists()


# ------------------------------------------------------------------------------------------------ real server


def _library_embeddings(model_xml, tokenizer_dir, texts):
    from workbench.data import tokenize_batches
    from workbench.models import load_model
    from workbench.stages.accuracy.compare import mean_pooled_embeddings

    tokenizer = load_model(tokenizer_dir).load_tokenizer()
    with OpenVINORunner(model_xml) as runner:
        feeds = tokenize_batches(
            tokenizer,
            list(texts),
            batch_size=1,
            sequence_length=SEQUENCE_LENGTH,
            input_names=list(runner.input_specs()),
        )
        return np.concatenate(
            [mean_pooled_embeddings(runner.infer(f)["last_hidden_state"], f["attention_mask"]) for f in feeds]
        )


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("pytriton") is None, reason="nvidia-pytriton is not installed (the [triton] extra)"
)
@pytest.mark.parametrize("precision", ["fp32", "int8_nncf"])
def test_the_real_server_serves_an_openvino_ensemble(precision, tiny_ir, tiny_bert_onnx, tiny_model_dir, tmp_path):
    from tritonclient import http

    from workbench.data import tokenize_batches
    from workbench.models import load_model
    from workbench.stages.precision.plan import PrecisionPlan
    from workbench.triton.server import TritonServer

    model = tiny_ir
    if precision == "int8_nncf":  # the INT8 IR NNCF writes is what ships
        tokenizer = load_model(tiny_model_dir("bert")).load_tokenizer()
        feeds = tokenize_batches(tokenizer, list(TEXTS) * 2, batch_size=1, sequence_length=SEQUENCE_LENGTH)
        model = (
            PrecisionPlan.preset("cpu_int8_nncf")
            .convert(tiny_bert_onnx, tmp_path / "int8.xml", calibration_feeds=feeds)
            .path
        )
    config = TritonConfig(
        model_name="tinyov", max_batch_size=8, max_queue_delay_us=20_000, openvino_threads=1, warmup=True
    )
    exported = export_triton_ensemble(
        model, tmp_path / "repo", tiny_model_dir("bert"), config, sequence_length=SEQUENCE_LENGTH
    )
    assert parse_model_config(exported.models["model"].config_text).backend == "openvino"
    expected = _library_embeddings(model, tiny_model_dir("bert"), TEXTS)
    with TritonServer(exported.repository, models=[exported.ensemble_name]) as server:
        array = np.array([[t.encode("utf-8")] for t in TEXTS], dtype=object)
        request = http.InferInput("TEXT", list(array.shape), "BYTES")
        request.set_data_from_numpy(array)
        served = server.client.infer(exported.ensemble_name, [request]).as_numpy("EMBEDDING")
        one = server.client.infer(exported.ensemble_name, [request]).as_numpy("EMBEDDING")
    similarity = (served.astype(np.float64) * expected).sum(axis=1) / (
        np.linalg.norm(served, axis=1) * np.linalg.norm(expected, axis=1)
    )
    assert served.shape == (len(TEXTS), 32)
    assert similarity.min() >= 0.9999, similarity
    np.testing.assert_allclose(one, served, atol=1e-6)  # static shapes, per-request runs: deterministic
