"""Export stage: tiny models of each family export with dynamic axes and match PyTorch; mismatches fail."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from workbench.errors import ExportError  # noqa: E402
from workbench.models import ModuleSource, OnnxSource, load_model  # noqa: E402
from workbench.stages.export import ExportConfig, export_onnx  # noqa: E402


def _dims(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def test_tiny_models_export_with_dynamic_axes_and_match_pytorch(tiny_model_dir, tiny_kind, tmp_path):
    source = load_model(tiny_model_dir(tiny_kind))
    result = export_onnx(
        source, tmp_path / "model.onnx", ExportConfig(check_batch_sizes=(1, 3), check_sequence_lengths=(8, 40))
    )
    assert result.passed and result.path.is_file()
    assert len(result.checks) == 4  # 2 batch sizes x 2 lengths x 1 output
    assert {(c.batch, c.sequence) for c in result.checks} == {(1, 8), (1, 40), (3, 8), (3, 40)}
    assert result.max_abs_error <= 1e-3 and result.min_cosine >= 0.99999
    model = onnx.load(str(result.path))
    inputs = {i.name: _dims(i) for i in model.graph.input}
    expected_inputs = {"input_ids", "attention_mask"} | (set() if tiny_kind == "distilbert" else {"token_type_ids"})
    assert set(inputs) == expected_inputs  # inputs follow forward(): DistilBERT takes no token_type_ids
    assert all(dims == ["batch", "sequence"] for dims in inputs.values())
    assert _dims(model.graph.output[0])[:2] == ["batch", "sequence"]


def test_export_keeps_the_source_model_unchanged(tiny_model_dir, tmp_path):
    module = load_model(tiny_model_dir("bert")).load_module().train()  # a user's model may be in train mode
    before = {k: v.clone() for k, v in module.state_dict().items()}
    source = ModuleSource(
        module,
        example_inputs={"input_ids": torch.ones(2, 6, dtype=torch.long)},
        output_names=("last_hidden_state",),
        dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}},
    )
    result = export_onnx(source, tmp_path / "m.onnx")
    assert result.passed  # exported and checked in eval mode (dropout off), the mode inference runs in
    assert module.training, "export must restore the module's train/eval mode"
    assert all(torch.equal(before[k], v) for k, v in module.state_dict().items())


class Branchy(torch.nn.Module):
    """Tracing bakes in the branch taken by the example input, so other inputs disagree with PyTorch."""

    def forward(self, x):
        if x.sum() > 0:
            return x * 2.0
        return x * 3.0


def test_export_check_fails_when_onnx_differs_from_pytorch(tmp_path):
    positive = torch.ones(2, 4)
    source = ModuleSource(Branchy(), example_inputs={"x": positive}, output_names=("y",))
    output = tmp_path / "branchy.onnx"
    feeds = [{"x": positive.numpy()}, {"x": -np.ones((3, 4), dtype=np.float32)}]
    with pytest.raises(ExportError) as caught:
        export_onnx(source, output, check_feeds=feeds)
    message = str(caught.value)
    assert "differs from PyTorch" in message and "Fix:" in message and "'y'" in message
    assert not output.exists(), "a failed export must not leave a model behind"
    assert list(tmp_path.iterdir()) == [], "nor any temporary file"
    assert export_onnx(source, output).passed  # the example input alone takes the traced branch


def test_export_of_an_onnx_source_is_an_error(tmp_path):
    with pytest.raises(ExportError, match="already an ONNX model"):
        export_onnx(OnnxSource(tmp_path / "x.onnx"), tmp_path / "y.onnx")


def test_dynamo_exporter_is_selectable(tiny_model_dir, tmp_path):
    source = load_model(tiny_model_dir("bert"))
    config = ExportConfig.preset("dynamo", check_batch_sizes=(2,), check_sequence_lengths=(12,))
    result = export_onnx(source, tmp_path / "dynamo.onnx", config)
    assert result.passed and result.config.exporter == "dynamo"
    assert not (tmp_path / "dynamo.onnx.data").exists()  # small models are saved as one file


@pytest.mark.slow
def test_minilm_export_matches_pytorch_on_real_text(tmp_path):
    from workbench.data import load_sentence_splits

    source = load_model()
    texts = load_sentence_splits(max_eval=16).evaluation
    result = export_onnx(source, tmp_path / "minilm.onnx", check_texts=texts)
    assert result.passed
    assert result.input_names == ("input_ids", "attention_mask", "token_type_ids")
    assert result.max_abs_error < 1e-3
