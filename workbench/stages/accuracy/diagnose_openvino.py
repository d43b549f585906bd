"""Diagnosis of OpenVINO IR candidates (NNCF INT8) against their FP32 ONNX reference.

OpenVINO's ONNX frontend keeps the ONNX tensor names on its ops' outputs and the ONNX node names as op names,
and NNCF keeps both when it inserts its quantizers, so an IR quantized from an ONNX export is matched with that
export by name: tensors for the error along the graph, ops for the quantized nodes (a pin names the same op in
both).

A quantized op's own error is measured on a cut-out piece of the INT8 graph: every activation input of the op is
traced up through what NNCF inserted (FakeQuantize, SmoothQuant's Multiply) to the first tensor the reference
also has; there the piece gets a Parameter, fed the reference's FP32 values. Weights (NNCF's INT8 constants and
their dequantization) stay as they are. All pieces are one model, compiled once, that outputs every quantized
op's result.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from workbench.errors import WorkbenchError

#: Ops NNCF puts between a tensor the reference has and the op that reads it: followed up along input 0.
_INSERTED_TYPES = ("FakeQuantize", "Multiply", "Convert", "Reshape")


class OpenVINOCandidate:
    """An OpenVINO IR candidate for diagnosis (see the module docstring)."""

    def __init__(self, candidate: str | os.PathLike[str] | Any) -> None:
        from workbench.engines.openvino import read_model

        self.path = Path(candidate) if isinstance(candidate, (str, os.PathLike)) else None
        self.model: Any = read_model(candidate) if self.path is not None else candidate
        self._constant: dict[str, bool] = {}

    # ------------------------------------------------------------------------------------------ tensors

    def _ports(self, model: Any) -> dict[str, Any]:
        """Tensor name -> output port, for every op output that is not a constant."""
        ports: dict[str, Any] = {}
        for op in model.get_ordered_ops():
            if op.get_type_name() in ("Constant", "Result"):
                continue
            for output in op.outputs():
                for name in output.get_names():
                    ports.setdefault(name, output)
        return ports

    def tensor_names(self) -> set[str]:
        return set(self._ports(self.model))

    @contextlib.contextmanager
    def session(self, names: Sequence[str]) -> Iterator[Any]:
        """Yields feed dict -> the named tensors of the candidate (a copy of it with those tensors as outputs)."""
        from workbench.engines.openvino import OpenVINORunner

        exposed = self.model.clone()
        ports = self._ports(exposed)
        exposed.add_outputs([ports[name] for name in names])
        with OpenVINORunner(exposed, name="candidate", output_names=list(names)) as runner:
            yield _checked(runner)

    # ------------------------------------------------------------------------------------------ quantized ops

    def quantized_nodes(self, reference: Any) -> list[str]:
        """Reference node names whose OpenVINO op reads a FakeQuantize or INT8 weights, in graph order."""
        from workbench.engines.openvino import ir_precisions

        int8 = {name for name, precision in ir_precisions(self.model).items() if precision == "int8"}
        return [node.name for node in reference.graph.node if node.name in int8]

    def _is_constant(self, node: Any) -> bool:
        """Whether `node` computes from constants only (weights and their dequantization)."""
        key = node.get_friendly_name()
        if key not in self._constant:
            kind = node.get_type_name()
            if kind == "Constant":
                self._constant[key] = True
            elif kind == "Parameter" or node.get_input_size() == 0:
                self._constant[key] = False
            else:
                self._constant[key] = all(self._is_constant(i.get_source_output().get_node()) for i in node.inputs())
        return self._constant[key]

    def _cuts(self, op: Any, reference_tensors: set[str]) -> list[tuple[Any, str]] | None:
        """(The input to feed, the reference tensor it gets) for each activation input of `op`; None if one cannot
        be traced to a tensor of the reference."""
        cuts = []
        for port in op.inputs():
            consumer = port
            source = port.get_source_output()
            node = source.get_node()
            if self._is_constant(node):
                continue  # a weight: it stays as NNCF quantized it
            for _ in range(8):
                named = sorted(set(source.get_names()) & reference_tensors)
                if named:
                    cuts.append((consumer, named[0]))
                    break
                if node.get_type_name() not in _INSERTED_TYPES:
                    return None
                consumer = node.input(0)
                source = consumer.get_source_output()
                node = source.get_node()
            else:
                return None
        return cuts

    def boundaries(self, reference: Any, nodes: Sequence[str]) -> dict[str, tuple[list[str], str]]:
        """Node -> (the reference tensors its quantized piece reads, the reference tensor it replaces)."""
        reference_tensors = {o for n in reference.graph.node for o in n.output if o} | {
            i.name for i in reference.graph.input
        }
        ops = {op.get_friendly_name(): op for op in self.model.get_ordered_ops()}
        found = {}
        for name in nodes:
            op = ops.get(name)
            if op is None:
                continue
            outputs = sorted(set(op.output(0).get_names()) & reference_tensors)
            cuts = self._cuts(op, reference_tensors)
            if outputs and cuts:
                found[name] = ([tensor for _, tensor in cuts], outputs[0])
        return found

    def produce(
        self,
        reference: Any,
        boundaries: Mapping[str, tuple[list[str], str]],
        values: Sequence[Mapping[str, np.ndarray]],
    ) -> dict[str, list[np.ndarray]]:
        """Node -> its INT8 piece's output on each feed of `values` (the reference's FP32 boundary tensors)."""
        from workbench.engines.openvino import OpenVINORunner, require_openvino

        ov = require_openvino("Diagnosing OpenVINO models")
        if not boundaries:
            return {}
        reference_tensors = {t for inputs, _ in boundaries.values() for t in inputs}
        pieces = self.model.clone()
        self._constant = {}
        ops = {op.get_friendly_name(): op for op in pieces.get_ordered_ops()}
        cuts = {name: self._cuts(ops[name], reference_tensors) for name in boundaries}
        parameters: dict[str, Any] = {}
        for node_cuts in cuts.values():
            for consumer, tensor in node_cuts or ():
                parameter = parameters.get(tensor)
                if parameter is None:
                    source = consumer.get_source_output()
                    parameter = ov.opset13.parameter(
                        ov.PartialShape.dynamic(source.get_partial_shape().rank),
                        source.get_element_type(),
                        name=f"boundary_{len(parameters)}",
                    )
                    parameter.output(0).set_names({_boundary(tensor)})
                    parameters[tensor] = parameter
                consumer.replace_source_output(parameter.output(0))
        outputs = {name: ops[name].output(0) for name in boundaries if cuts[name]}
        piece_model = ov.Model(list(outputs.values()), list(parameters.values()), "quantized_pieces")
        output_names = {name: boundaries[name][1] for name in outputs}
        produced: dict[str, list[np.ndarray]] = {name: [] for name in outputs}
        with OpenVINORunner(piece_model, name="quantized_pieces", output_names=list(output_names.values())) as runner:
            run = _checked(runner)
            for value in values:
                results = run({_boundary(tensor): value[tensor] for tensor in parameters})
                for name, tensor in output_names.items():
                    produced[name].append(results[tensor])
        return produced


def _boundary(tensor: str) -> str:
    return f"workbench_boundary:{tensor}"


def _checked(runner: Any) -> Any:
    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return runner.infer(dict(feeds))
        except Exception as exc:
            raise WorkbenchError(
                f"OpenVINO could not run {runner.name!r} for diagnosis: {type(exc).__name__}: {exc}",
                fix="check the feeds' names, dtypes and shapes against the model's inputs",
            ) from exc

    return run
