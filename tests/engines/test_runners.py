"""Runners: one protocol, usable as context managers; a provider that is not there is reported, not ignored."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from workbench.engines.base import Runner  # noqa: E402
from workbench.engines.onnxruntime import OnnxRuntimeRunner  # noqa: E402
from workbench.engines.pytorch import PyTorchRunner  # noqa: E402
from workbench.errors import DeviceUnavailable  # noqa: E402
from workbench.models import load_model  # noqa: E402


def _feeds(batch=2, seq=7):
    ids = np.random.default_rng(0).integers(1000, 2000, size=(batch, seq), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def test_pytorch_and_onnxruntime_runners_agree(tiny_model_dir, tiny_bert_onnx):
    module = load_model(tiny_model_dir("bert")).load_module()
    with PyTorchRunner(module) as torch_runner, OnnxRuntimeRunner(tiny_bert_onnx, intra_op_threads=1) as ort_runner:
        assert isinstance(torch_runner, Runner) and isinstance(ort_runner, Runner)
        expected = torch_runner.infer(_feeds())["last_hidden_state"]
        actual = ort_runner.infer(_feeds())["last_hidden_state"]
    assert actual.shape == expected.shape == (2, 7, 32)
    np.testing.assert_allclose(actual, expected, atol=1e-4)
    assert ort_runner.session is None and not ort_runner.is_active  # deactivated on exit


def test_onnxruntime_runner_describes_its_inputs(tiny_bert_onnx):
    with OnnxRuntimeRunner(tiny_bert_onnx) as runner:
        specs = runner.input_specs()
    assert list(specs) == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(dtype == np.int64 and shape == ["batch", "sequence"] for dtype, shape in specs.values())


def test_infer_before_activate_is_an_error(tiny_bert_onnx):
    with pytest.raises(RuntimeError, match="not active"):
        OnnxRuntimeRunner(tiny_bert_onnx).infer(_feeds())


def test_missing_gpu_provider_is_reported_not_silently_replaced(tiny_bert_onnx):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this machine has the CUDA provider; the fallback cannot be shown here")
    runner = OnnxRuntimeRunner(tiny_bert_onnx, providers=("CUDAExecutionProvider", "CPUExecutionProvider"))
    with pytest.raises(DeviceUnavailable) as caught:
        runner.activate()
    assert "CUDAExecutionProvider" in str(caught.value) and "[gpu]" in str(caught.value)
    assert not runner.is_active
