"""Shape inference that never writes into the working directory.

onnxruntime's SymbolicShapeInference saves `sym_shape_infer_temp.onnx` into the current directory whenever
inference is incomplete (it then raises). Every call in the workbench goes through here, which runs it inside a
temporary directory so no such file is left behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from workbench._lazy import require


@contextlib.contextmanager
def inside_temporary_directory() -> Iterator[None]:
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="workbench-shapes-") as folder:
        os.chdir(folder)
        try:
            yield
        finally:
            os.chdir(previous)


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
    with inside_temporary_directory():
        if not all(hasattr(engine_type, step) for step in ("_preprocess", "_infer_impl", "_update_output_from_vi")):
            return engine_type.infer_shapes(copy, auto_merge=True), True
        engine = engine_type(2**31 - 1, True, False, 0)  # int_max, auto_merge, guess_output_rank, verbose
        engine._preprocess(copy)
        complete = False
        while engine.run_:
            complete = engine._infer_impl()
        engine._update_output_from_vi()
    return engine.out_mp_, bool(complete)


def best_effort_shape_inference(model: Any) -> Any:
    """Symbolic inference when it completes (it knows onnxruntime's fused ops), else ONNX's own, on a copy."""
    onnx = require("onnx", purpose="Shape inference")
    try:
        return symbolic_shape_inference(model)
    except Exception:  # symbolic inference does not know every graph: plain ONNX inference is the fallback
        return onnx.shape_inference.infer_shapes(copy_model(model))
