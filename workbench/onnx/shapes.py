"""Shape inference that never writes into the working directory.

onnxruntime's `SymbolicShapeInference.infer_shapes` saves `sym_shape_infer_temp.onnx` into the current directory
whenever inference is incomplete (it then raises), and onnxruntime's quantization pre-processing and FP16
conversion call it. The workbench never calls that method: it runs the same steps itself
(:func:`partial_symbolic_shape_inference`), which write nothing, and hands the annotated model to those tools
with their own symbolic inference switched off. No working-directory changes (no os.chdir) are needed.
"""

from __future__ import annotations

from typing import Any

from workbench._lazy import require


def copy_model(model: Any) -> Any:
    """A deep copy of an ONNX ModelProto."""
    onnx = require("onnx", purpose="Editing ONNX graphs")
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    return copy


def symbolic_shape_inference(model: Any) -> Any:
    """onnxruntime's symbolic shape inference (auto_merge on) on a copy of `model`; raises if incomplete."""
    inferred, complete = partial_symbolic_shape_inference(model)
    if not complete:
        raise ValueError("Incomplete symbolic shape inference: a node's output shape could not be inferred")
    return inferred


def partial_symbolic_shape_inference(model: Any) -> tuple[Any, bool]:
    """(copy of `model` annotated with every shape symbolic inference found, whether it found them all).

    Runs the steps of `SymbolicShapeInference.infer_shapes(model, auto_merge=True)` one by one, because that
    call throws away what it inferred when it stops at a node it cannot follow. If onnxruntime's internals
    change, the public call is used instead (then an incomplete inference raises).
    """
    symbolic = require("onnxruntime.tools.symbolic_shape_infer", purpose="Symbolic shape inference")
    engine_type = symbolic.SymbolicShapeInference
    copy = copy_model(model)
    if not all(hasattr(engine_type, step) for step in ("_preprocess", "_infer_impl", "_update_output_from_vi")):
        # onnxruntime's internals changed: its public call would write a file into the cwd when incomplete
        raise ValueError("This onnxruntime's SymbolicShapeInference lacks the steps the workbench runs one by one")
    engine = engine_type(2**31 - 1, True, False, 0)  # int_max, auto_merge, guess_output_rank, verbose
    engine._preprocess(copy)
    complete = False
    while engine.run_:
        complete = engine._infer_impl()
    engine._update_output_from_vi()
    return engine.out_mp_, bool(complete)


def with_inferred_types(model: Any) -> Any:
    """A copy of `model` whose value_info carries the element type (not the shape) of every tensor symbolic
    inference could follow: what onnxruntime's FP16 converter needs, without its own symbolic inference."""
    onnx = require("onnx", purpose="Shape inference")
    inferred, _ = partial_symbolic_shape_inference(model)
    copy = copy_model(model)
    known = {vi.name for vi in copy.graph.value_info}
    for vi in inferred.graph.value_info:
        if vi.name and vi.name not in known and vi.type.tensor_type.elem_type != onnx.TensorProto.UNDEFINED:
            typed = onnx.ValueInfoProto()
            typed.CopyFrom(vi)
            typed.type.tensor_type.ClearField("shape")  # auto_merge may merge dims wrongly: keep types only
            copy.graph.value_info.append(typed)
    return copy


def best_effort_shape_inference(model: Any) -> Any:
    """Symbolic inference when it completes (it knows onnxruntime's fused ops), else ONNX's own, on a copy."""
    onnx = require("onnx", purpose="Shape inference")
    try:
        return symbolic_shape_inference(model)
    except Exception:  # symbolic inference does not know every graph: plain ONNX inference is the fallback
        return onnx.shape_inference.infer_shapes(copy_model(model))
