"""Shape inference never leaves files in the working directory (onnxruntime's symbolic inference would)."""

from __future__ import annotations

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper  # noqa: E402

from workbench.onnx.shapes import best_effort_shape_inference, symbolic_shape_inference  # noqa: E402
from workbench.stages.surgery.edits import GraphEditError, InferShapes  # noqa: E402


def _unknown_op_model():
    """A custom-domain op that symbolic inference cannot type, so its inference is incomplete."""
    graph = helper.make_graph(
        [helper.make_node("FooBar", ["x"], ["y"], domain="custom.ops"), helper.make_node("Relu", ["y"], ["z"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.ops", 1)])


def test_incomplete_symbolic_inference_raises_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = _unknown_op_model()
    with pytest.raises(Exception, match="Incomplete"):
        symbolic_shape_inference(model)
    with pytest.raises(GraphEditError, match="Symbolic shape inference failed"):
        InferShapes(symbolic=True).apply(model)
    inferred = best_effort_shape_inference(model)  # falls back to ONNX's inference
    assert inferred is not model and len(inferred.graph.node) == 2
    assert list(tmp_path.iterdir()) == []
