"""TensorRT runner and onnxruntime's GPU providers: honest errors where TensorRT or a GPU is missing.

The runner's construction, its errors and the provider list run here; running an engine needs TensorRT and a
GPU, and those tests skip where they are missing (always, on this project's machines).
"""

from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest

from workbench.engines import tensorrt as backend
from workbench.engines.base import Runner
from workbench.engines.tensorrt import (
    ProviderWithOptions,
    TensorRTRunner,
    gpu_status,
    ort_gpu_providers,
    require_tensorrt,
    tensorrt_status,
)
from workbench.errors import DeviceUnavailable, MissingDependency, ModelSourceError

trt_backend = pytest.importorskip("polygraphy.backend.trt")
common = pytest.importorskip("polygraphy.backend.common")

TRT_INSTALLED = importlib.util.find_spec("tensorrt") is not None
needs_no_tensorrt = pytest.mark.skipif(TRT_INSTALLED, reason="checks behaviour where TensorRT is not installed")


def _feeds(batch=2, seq=16):
    ids = np.random.default_rng(0).integers(1000, 2000, size=(batch, seq), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


@pytest.fixture
def fake_tensorrt_without_gpu(monkeypatch):
    """tensorrt 'installed' (a stand-in module) on a machine without a GPU."""
    fake = types.ModuleType("tensorrt")
    fake.__version__ = "10.99.0-fake"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(backend, "gpu_status", lambda: (False, "nvidia-smi is not on PATH (simulated)"))
    return fake


# ------------------------------------------------------------------------------------------------- runner


def test_runner_constructs_polygraphy_loaders_without_tensorrt(tmp_path):
    path = tmp_path / "minilm_fp16.plan"
    runner = TensorRTRunner(path, output_names=["last_hidden_state"])
    assert isinstance(runner, Runner) and runner.name == "minilm_fp16" and not runner.is_active
    assert isinstance(runner.loader, trt_backend.EngineFromBytes)
    assert isinstance(runner.loader._serialized_engine, common.BytesFromPath)  # Polygraphy's private attribute
    assert runner.loader._serialized_engine._path == str(path)
    with pytest.raises(RuntimeError, match="not active"):
        runner.infer(_feeds())


def test_runner_accepts_a_loader_chain():
    def chain():  # stands in for build_loaders(...): a callable that returns an engine
        return None

    runner = TensorRTRunner(chain, name="fp16")
    assert runner.loader is chain and runner.path is None and runner.name == "fp16"


@needs_no_tensorrt
def test_activating_without_tensorrt_names_the_gpu_extra(tmp_path):
    runner = TensorRTRunner(tmp_path / "model.plan")
    with pytest.raises(MissingDependency, match=r"\[gpu\]") as info:
        runner.activate()
    assert "tensorrt" in str(info.value) and "NVIDIA GPU" in str(info.value)
    assert not runner.is_active and runner.runner is None
    with pytest.raises(MissingDependency), runner:
        pass


def test_activating_with_tensorrt_but_no_gpu_is_device_unavailable(tmp_path, fake_tensorrt_without_gpu):
    runner = TensorRTRunner(tmp_path / "model.plan")
    with pytest.raises(DeviceUnavailable, match="needs an NVIDIA GPU") as info:
        runner.activate()
    assert "simulated" in str(info.value) and not runner.is_active


def test_a_missing_engine_file_is_reported_once_tensorrt_and_a_gpu_are_there(
    tmp_path, monkeypatch, fake_tensorrt_without_gpu
):
    monkeypatch.setattr(backend, "gpu_status", lambda: (True, "GPU 0 (simulated)"))
    with pytest.raises(ModelSourceError, match="does not exist"):
        TensorRTRunner(tmp_path / "missing.plan").activate()


def test_a_module_that_only_shadows_the_name_is_not_tensorrt(monkeypatch, tmp_path):
    """bench/tensorrt.py run as a script puts bench/ first on sys.path, where `import tensorrt` finds itself."""
    shadow = types.ModuleType("tensorrt")
    shadow.__file__ = str(tmp_path / "tensorrt.py")
    monkeypatch.setitem(sys.modules, "tensorrt", shadow)
    available, reason = tensorrt_status()
    assert not available and "not installed" in reason and "shadows" in reason
    with pytest.raises(MissingDependency, match="not it"):
        require_tensorrt("Running a TensorRT engine")


def test_feeds_are_cast_to_the_engine_input_types():
    from workbench.engines.tensorrt import _cast

    ids = np.arange(6, dtype=np.int64).reshape(2, 3)
    assert _cast(ids, np.dtype(np.int32)).dtype == np.int32
    assert _cast(ids, np.dtype(np.int64)) is ids
    assert _cast(ids, np.dtype(np.float32)) is ids  # a kind change is not ours to make: Polygraphy reports it
    assert _cast(ids, None) is ids


# ---------------------------------------------------------------------------------------- device status


def test_gpu_status_is_a_pair_with_a_reason():
    has_gpu, reason = gpu_status()
    assert isinstance(has_gpu, bool) and isinstance(reason, str) and reason
    if not has_gpu:
        assert "nvidia-smi" in reason


@needs_no_tensorrt
def test_tensorrt_status_on_this_machine():
    available, reason = tensorrt_status()
    assert available is False
    assert "'tensorrt' is not installed" in reason and "inference-workbench[gpu]" in reason


# ------------------------------------------------------------------------------ onnxruntime GPU providers


@pytest.mark.parametrize("fp16", [True, False])
def test_ort_gpu_providers_in_priority_order(fp16):
    providers = ort_gpu_providers(fp16)
    assert providers == ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    trt_ep = providers[0]
    assert isinstance(trt_ep, tuple) and trt_ep[0] == "TensorrtExecutionProvider"
    assert trt_ep[1] == {"trt_fp16_enable": fp16}


def test_ort_gpu_providers_engine_cache(tmp_path):
    [trt_ep, *_] = ort_gpu_providers(True, cache_dir=tmp_path)
    assert trt_ep[1] == {
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(tmp_path),
    }
    assert repr(trt_ep).startswith("TensorrtExecutionProvider(trt_fp16_enable=True")


def test_provider_with_options_compares_like_its_name():
    provider = ProviderWithOptions("CUDAExecutionProvider", {"device_id": 0})
    assert provider == "CUDAExecutionProvider" and provider in ["CPUExecutionProvider", "CUDAExecutionProvider"]
    assert provider not in ["CPUExecutionProvider"] and provider != "CPUExecutionProvider"
    assert provider == ("CUDAExecutionProvider", {"device_id": 0}) and provider.name == "CUDAExecutionProvider"
    assert provider in {"CUDAExecutionProvider"}  # hashes like its name too


def test_onnxruntime_runner_reports_missing_gpu_providers(tiny_bert_onnx):
    ort = pytest.importorskip("onnxruntime")
    from workbench.engines.onnxruntime import OnnxRuntimeRunner

    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu with TensorRT is installed: nothing falls back here")
    with pytest.raises(DeviceUnavailable, match="TensorrtExecutionProvider") as info:
        OnnxRuntimeRunner(tiny_bert_onnx, providers=ort_gpu_providers(True)).activate()
    assert "[gpu]" in str(info.value)


def test_onnxruntime_runner_accepts_a_provider_with_options_it_has(tiny_bert_onnx):
    """The runner's fallback check recognises a (name, options) entry: no false DeviceUnavailable."""
    pytest.importorskip("onnxruntime")
    from workbench.engines.onnxruntime import OnnxRuntimeRunner

    providers = [ProviderWithOptions("CPUExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"})]
    with OnnxRuntimeRunner(tiny_bert_onnx, providers=providers, intra_op_threads=1) as runner:
        assert runner.infer(_feeds())["last_hidden_state"].shape == (2, 16, 32)


# ------------------------------------------------------------------------------ with TensorRT and a GPU


@pytest.mark.gpu
def test_fp16_engine_matches_onnxruntime(tiny_bert_onnx, tmp_path):
    pytest.importorskip(
        "tensorrt",
        reason="TensorRT is not installed: it needs NVIDIA's package index and a GPU, "
        "neither available on this machine",
    )
    has_gpu, why = gpu_status()
    if not has_gpu:
        pytest.skip(f"TensorRT is installed but there is no NVIDIA GPU: {why}")
    from workbench.engines.onnxruntime import OnnxRuntimeRunner
    from workbench.stages.accuracy.compare import mean_pooled_embeddings
    from workbench.stages.tensorrt import TensorRTConfig, build_engine, profile_for

    profile = profile_for(["input_ids", "attention_mask", "token_type_ids"], 1, 2, 8, 8, 16, 64)
    engine = build_engine(
        tiny_bert_onnx, TensorRTConfig.preset("tensorrt_fp16", profiles=(profile,)), engine_path=tmp_path / "fp16.plan"
    )
    assert engine.path.is_file() and engine.size_mb > 0
    with engine.runner() as trt_runner, OnnxRuntimeRunner(tiny_bert_onnx) as ort_runner:
        specs = trt_runner.input_specs()
        assert set(specs) == {"input_ids", "attention_mask", "token_type_ids"}
        for batch, seq in [(2, 16), (1, 8), (8, 64)]:  # opt, min, max of the profile
            feeds = _feeds(batch, seq)
            first = trt_runner.infer(feeds)["last_hidden_state"]
            kept = first.copy()
            trt_runner.infer(_feeds(batch, seq) | {"input_ids": feeds["input_ids"] + 1})
            assert np.array_equal(first, kept)  # outputs are copies: the next run did not overwrite them
            got = first.astype(np.float64)
            expected = ort_runner.infer(feeds)["last_hidden_state"].astype(np.float64)
            assert got.shape == expected.shape == (batch, seq, 32)
            flat_cosine = got.ravel() @ expected.ravel() / (np.linalg.norm(got) * np.linalg.norm(expected))
            assert flat_cosine > 0.999
            pooled = np.sum(
                mean_pooled_embeddings(got, feeds["attention_mask"])
                * mean_pooled_embeddings(expected, feeds["attention_mask"]),
                axis=1,
            )
            assert pooled.min() > 0.999
    assert not trt_runner.is_active and trt_runner.runner is None
