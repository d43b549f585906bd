"""Layer-by-layer diagnosis: where along the graph does a candidate lose accuracy?

Both models run on the same evaluation batches with their intermediate tensors exposed; tensors are matched
by name (quantizers keep the names of the tensors they replace, and a QDQ candidate built from the same fused
graph keeps every FP32 tensor name). Each node of the reference is scored by the error it *adds*: the relative
error of its output minus the largest relative error already present at its inputs. Ranking by added error
points at the nodes whose own precision loses the accuracy, not at every node downstream of them.

The reference is always an ONNX model run by onnxruntime. The candidate is read through a view of its engine
(`CANDIDATE_VIEWS`, by the engine that loads its file): an ONNX candidate here, an OpenVINO IR in
`diagnose_openvino`. A view says which tensors the candidate has, runs it with some of them exposed, names its
quantized nodes, and computes each quantized node's output from the reference's FP32 inputs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from workbench.errors import DataError, WorkbenchError

_FLOAT = 1  # onnx.TensorProto.FLOAT


@dataclass(frozen=True)
class NodeError:
    """One reference node's error on the candidate, in graph order."""

    index: int
    name: str
    op_type: str
    output: str
    relative_error: float  # ||candidate - reference|| / ||reference|| of the node's output, over all batches
    cosine: float
    input_error: float  # the largest relative error among the node's inputs
    added_error: float  # relative_error - input_error
    inputs: tuple[str, ...] = ()
    local_error: float | None = None  # quantized nodes: channel-relative error of the node alone on FP32 inputs
    impact: float | None = None  # quantized nodes: output error when only this node is quantized

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Diagnosis:
    """Per-node errors of a candidate against its reference, and the ranking by added error."""

    reference: Path
    candidate: Path
    nodes: tuple[NodeError, ...]
    unmatched: tuple[str, ...]  # reference tensors with no counterpart in the candidate
    samples: int
    seconds: float

    def worst(self, count: int = 10, op_types: Sequence[str] = ()) -> list[NodeError]:
        """The nodes that add the most error (optionally only of some op types), worst first."""
        pool = [n for n in self.nodes if not op_types or n.op_type in op_types]
        return sorted(pool, key=lambda n: n.added_error, reverse=True)[:count]

    def ranking(self, op_types: Sequence[str] = ()) -> list[str]:
        """Node names, most error added first."""
        return [n.name for n in self.worst(len(self.nodes), op_types)]

    def sensitivity(self) -> list[tuple[str, float]]:
        """Quantized nodes ranked by the output error each causes on its own, worst first.

        The score is `impact` (the model's output error when only that node is quantized) where it was
        measured, else the node's local error.
        """
        scored = [
            (n.name, float(n.impact if n.impact is not None else n.local_error))  # type: ignore[arg-type]
            for n in self.nodes
            if n.local_error is not None or n.impact is not None
        ]
        return sorted(scored, key=lambda item: item[1], reverse=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": str(self.reference),
            "candidate": str(self.candidate),
            "samples": self.samples,
            "seconds": self.seconds,
            "unmatched": list(self.unmatched),
            "nodes": [n.to_dict() for n in self.nodes],
        }

    def figure(self) -> Any:
        """Relative error along the graph order, coloured by op type (plotly)."""
        import plotly.graph_objects as go

        figure = go.Figure()
        for op_type in sorted({n.op_type for n in self.nodes}):
            nodes = [n for n in self.nodes if n.op_type == op_type]
            figure.add_scatter(
                x=[n.index for n in nodes],
                y=[max(n.relative_error, 1e-9) for n in nodes],
                mode="markers",
                name=op_type,
                text=[n.name for n in nodes],
                customdata=[n.added_error for n in nodes],
                hovertemplate="%{text}<br>relative error %{y:.2e}<br>added %{customdata:.2e}",
            )
        figure.update_layout(
            title="Error along the graph",
            xaxis_title="node (graph order)",
            yaxis_title="relative error of the node's output",
            yaxis_type="log",
        )
        return figure

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{n.index}</td><td><code>{n.name}</code></td><td>{n.op_type}</td><td>{n.relative_error:.2e}</td>"
            f"<td>{n.added_error:+.2e}</td><td>{n.cosine:.5f}</td></tr>"
            for n in self.worst(15)
        )
        return (
            f"<b>Diagnosis</b> of <code>{self.candidate.name}</code> vs <code>{self.reference.name}</code> on "
            f"{self.samples} batches ({self.seconds:.1f} s): the nodes that add the most error"
            "<table><tr><th>#</th><th>node</th><th>op</th><th>relative error</th><th>added</th><th>cosine</th>"
            f"</tr>{rows}</table>"
        )


def _expose_as_float(model: Any, names: Sequence[str]) -> Any:
    """Mark `names` as float outputs of a copy of `model`, shapes left open.

    Shape inference cannot type every tensor of a quantized graph (QAttention, DynamicQuantizeMatMul...), but
    each matched tensor is float32 in the reference, and onnxruntime needs no shape for a graph output.
    """
    from workbench._lazy import require
    from workbench.onnx.shapes import copy_model

    onnx = require("onnx", purpose="Diagnosis")
    exposed = copy_model(model)
    existing = {o.name for o in exposed.graph.output}
    for name in names:
        if name not in existing:
            exposed.graph.output.append(onnx.helper.make_tensor_value_info(name, _FLOAT, None))
    return exposed


def diagnose(
    reference: str | os.PathLike[str],
    candidate: str | os.PathLike[str],
    feeds: Sequence[Mapping[str, np.ndarray]],
    *,
    local_batches: int = 2,
    task: Any = None,
) -> Diagnosis:
    """Compare every intermediate tensor of `candidate` with `reference` in one pass over `feeds`.

    Also measures each quantized node's local error: the node's quantized form, cut out of the candidate, fed
    the reference's FP32 inputs and compared with the reference's output. Error that merely flows through a
    node (or that a GELU amplifies) does not count there, so it ranks the nodes whose own precision hurts.

    Args:
        reference: The FP32 model the candidate was converted from (the fused graph, for a fused candidate).
        candidate: The converted model.
        feeds: Evaluation feed dicts.
        local_batches: How many of the feed dicts the local errors are measured on.
        task: The task (a workbench.tasks Task or its name) whose primary cosine measures a node's impact;
            None: found from the reference's outputs (the channel-relative output error where none matches).

    Raises:
        DataError: No feeds.
        WorkbenchError: No tensor of the reference could be matched in the candidate.
    """
    from workbench.engines.onnxruntime import model_session
    from workbench.onnx.io import load_onnx
    from workbench.stages.surgery.edits import AddOutputs, tensor_types

    if not feeds:
        raise DataError("No evaluation inputs to diagnose on.", fix="pass feed dicts from tokenize_batches()")
    started = time.perf_counter()
    reference_model = load_onnx(reference)
    view = candidate_view(candidate)
    types = tensor_types(reference_model)
    ref_nodes = [n for n in reference_model.graph.node if n.output and n.output[0]]
    float_outputs = [n.output[0] for n in ref_nodes if types.get(n.output[0], (0,))[0] == _FLOAT]
    candidate_tensors = view.tensor_names()
    matched = [name for name in float_outputs if name in candidate_tensors]
    unmatched = tuple(name for name in float_outputs if name not in candidate_tensors)
    if not matched:
        raise WorkbenchError(
            f"No tensor of {Path(reference).name} is found by name in {Path(candidate).name}.",
            fix="diagnose a candidate against the FP32 model it was converted from (same fused graph)",
        )
    reference_run = AddOutputs(tuple(matched)).apply(reference_model)
    squared_error = dict.fromkeys(matched, 0.0)
    squared_norm = dict.fromkeys(matched, 0.0)
    candidate_norm = dict.fromkeys(matched, 0.0)
    dot = dict.fromkeys(matched, 0.0)
    with model_session(reference_run, matched) as run_reference, view.session(matched) as run_candidate:
        for feed in feeds:  # one batch at a time: memory holds one batch's tensors, not the whole set
            expected, actual = run_reference(feed), run_candidate(feed)
            for name in matched:
                a = expected[name].astype(np.float64).ravel()
                b = actual[name].astype(np.float64).ravel()
                squared_error[name] += float(np.dot(a - b, a - b))
                squared_norm[name] += float(np.dot(a, a))
                candidate_norm[name] += float(np.dot(b, b))
                dot[name] += float(np.dot(a, b))
    relative = {
        n: float(np.sqrt(squared_error[n] / squared_norm[n]))
        if squared_norm[n] > 0
        else float(np.sqrt(squared_error[n]))
        for n in matched
    }
    cosine = {
        n: dot[n] / np.sqrt(squared_norm[n] * candidate_norm[n]) if squared_norm[n] * candidate_norm[n] > 0 else 1.0
        for n in matched
    }
    errors = []
    for index, node in enumerate(ref_nodes):
        output = node.output[0]
        if output not in relative:
            continue
        input_error = max((relative.get(i, 0.0) for i in node.input if i), default=0.0)
        errors.append(
            NodeError(
                index,
                node.name,
                node.op_type,
                output,
                relative[output],
                float(cosine[output]),
                input_error,
                relative[output] - input_error,
                tuple(i for i in node.input if i),
            )
        )
    local, impact = _local_errors(
        reference_model,
        view,
        _task_or_none(task, reference_model),
        view.quantized_nodes(reference_model),
        feeds[:local_batches],
    )
    errors = [replace(e, local_error=local.get(e.name), impact=impact.get(e.name)) for e in errors]
    return Diagnosis(
        Path(reference), Path(candidate), tuple(errors), unmatched, len(feeds), time.perf_counter() - started
    )


def quantized_nodes(reference: Any, candidate: Any) -> list[str]:
    """Names of the reference's nodes that the candidate quantized, in graph order.

    An ONNX node is quantized if the candidate no longer has it as the same op (dynamic INT8 and QOperator replace
    it), or if one of its inputs comes from a DequantizeLinear (QDQ). An OpenVINO IR's op is quantized if it
    reads a FakeQuantize or INT8 weights (`diagnose_openvino`).

    Args:
        reference: The FP32 ONNX model (a path or a ModelProto).
        candidate: The converted model: a path (of any engine's file) or an ONNX ModelProto.
    """
    from workbench.onnx.io import load_onnx

    reference = load_onnx(reference) if isinstance(reference, (str, os.PathLike)) else reference
    view = candidate_view(candidate) if isinstance(candidate, (str, os.PathLike)) else OnnxCandidate(candidate)
    return view.quantized_nodes(reference)


#: Engine name -> "module:class" of the view diagnosis reads that engine's candidates through (imported on use).
CANDIDATE_VIEWS = {
    "onnxruntime": "workbench.stages.accuracy.diagnose:OnnxCandidate",
    "openvino": "workbench.stages.accuracy.diagnose_openvino:OpenVINOCandidate",
}


def candidate_view(candidate: str | os.PathLike[str]) -> Any:
    """The view of `candidate` for its engine (by file suffix, through the engine registry).

    Raises:
        WorkbenchError: Diagnosis cannot read that engine's models.
    """
    import importlib

    from workbench.engines.base import engine_for_path

    engine = engine_for_path(candidate)
    where = CANDIDATE_VIEWS.get(engine.name)
    if where is None:
        raise WorkbenchError(
            f"Layer-by-layer diagnosis cannot read {engine.title} models ({Path(candidate).name}).",
            expected=f"a model of an engine among {sorted(CANDIDATE_VIEWS)}",
        )
    module, name = where.split(":")
    return getattr(importlib.import_module(module), name)(candidate)


class OnnxCandidate:
    """An ONNX candidate (dynamic INT8, QOperator or QDQ static INT8, FP16) for diagnosis."""

    def __init__(self, candidate: Any) -> None:
        from workbench.onnx.io import load_onnx

        self.model = load_onnx(candidate) if isinstance(candidate, (str, os.PathLike)) else candidate

    def tensor_names(self) -> set[str]:
        return {o for n in self.model.graph.node for o in n.output if o}

    def session(self, names: Sequence[str]) -> Any:
        """A context manager yielding feed dict -> the named tensors."""
        from workbench.engines.onnxruntime import model_session

        return model_session(_expose_as_float(self.model, names), list(names))

    def quantized_nodes(self, reference: Any) -> list[str]:
        by_name = {n.name: n for n in self.model.graph.node}
        dequantized = {n.output[0] for n in self.model.graph.node if n.op_type == "DequantizeLinear"}
        initializers = {t.name for t in reference.graph.initializer}
        found = []
        for node in reference.graph.node:
            if not any(i in initializers for i in node.input):
                continue  # nodes without weights (Softmax, Add of two activations) are never what a quantizer replaces
            twin = by_name.get(node.name)
            if twin is None or twin.op_type != node.op_type or any(i in dequantized for i in twin.input):
                found.append(node.name)
        return found

    def boundaries(self, reference: Any, nodes: Sequence[str]) -> dict[str, tuple[list[str], str]]:
        """Node -> (the reference tensors its quantized form reads, the reference tensor it replaces)."""
        initializers = {t.name for t in reference.graph.initializer}
        by_name = {n.name: n for n in reference.graph.node}
        return {
            name: ([i for i in by_name[name].input if i and i not in initializers], by_name[name].output[0])
            for name in nodes
        }

    def produce(
        self,
        reference: Any,
        boundaries: Mapping[str, tuple[list[str], str]],
        values: Sequence[Mapping[str, np.ndarray]],
    ) -> dict[str, list[np.ndarray]]:
        """Node -> its quantized form's output on each feed of `values` (the reference's FP32 boundary tensors).

        The node's quantized form is cut out of the candidate with onnx's Extractor; in QDQ its output is itself
        quantized (Q -> DQ) before its consumers read it, so that pair is included.
        """
        from workbench._lazy import require
        from workbench.engines.onnxruntime import run_model
        from workbench.onnx.shapes import copy_model
        from workbench.stages.surgery.edits import tensor_types

        onnx = require("onnx", purpose="Diagnosis")
        requantized = _requantized_outputs(self.model)
        needed = {t for inputs, output in boundaries.values() for t in (*inputs, output)}
        # the Extractor needs a type for every boundary tensor; a quantized graph defeats shape inference, so
        # take the types from the reference (shapes left open)
        types = tensor_types(reference)
        typed = copy_model(self.model)
        known = {v.name for v in typed.graph.value_info} | {i.name for i in typed.graph.input}
        for tensor in sorted(needed):
            if tensor not in known and tensor in types:
                typed.graph.value_info.append(onnx.helper.make_tensor_value_info(tensor, types[tensor][0], None))
        for original, dequantized in requantized.items():  # DequantizeLinear outputs: the original's type
            if dequantized not in known and original in types:
                typed.graph.value_info.append(onnx.helper.make_tensor_value_info(dequantized, types[original][0], None))
        extractor = onnx.utils.Extractor(typed)
        produced = {}
        for name, (inputs, output) in boundaries.items():
            quantized_output = requantized.get(output, output)
            try:
                piece = extractor.extract_model(inputs, [quantized_output])
                results, _ = run_model(piece, [{i: v[i] for i in inputs} for v in values], [quantized_output])
            except Exception:  # noqa: BLE001, S112 - a node whose quantized form cannot be cut out on its own: no local error
                continue
            produced[name] = [r[quantized_output] for r in results]
        return produced


def _task_or_none(task: Any, reference: Any) -> Any:
    """The task whose primary cosine scores a node's impact, or None (then the channel-relative error does)."""
    from workbench.errors import ConfigError
    from workbench.stages.accuracy.compare import resolve_task

    ranks = {
        o.name: len(o.type.tensor_type.shape.dim) if o.type.tensor_type.HasField("shape") else None
        for o in reference.graph.output
    }
    try:
        return resolve_task(task, ranks)
    except ConfigError:
        if task is not None:
            raise
        return None


def _local_errors(
    reference: Any,
    view: Any,
    task: Any,
    nodes: Sequence[str],
    feeds: Sequence[Mapping[str, np.ndarray]],
    impact_batches: int = 1,
) -> tuple[dict[str, float], dict[str, float]]:
    """Per quantized node: (its local error, its impact on the output) when only it is quantized.

    The node's quantized form (from the candidate's view) is fed the reference's FP32 inputs; its output is
    compared with the reference's (local error) and fed to the rest of the FP32 reference (impact).
    """
    from workbench.engines.onnxruntime import run_model
    from workbench.stages.surgery.edits import AddOutputs

    if not nodes:
        return {}, {}
    boundaries = view.boundaries(reference, nodes)
    if not boundaries:
        return {}, {}
    needed = sorted({t for inputs, output in boundaries.values() for t in (*inputs, output)})
    graph_inputs = {i.name for i in reference.graph.input}
    fetched = [t for t in needed if t not in graph_inputs]
    exposed = AddOutputs(tuple(fetched)).apply(reference)
    values, _ = run_model(exposed, [dict(f) for f in feeds], fetched)
    values = [{**dict(feed), **value} for feed, value in zip(feeds, values)]
    produced = view.produce(reference, boundaries, values)
    errors, impacts = {}, {}
    exact, _ = run_model(reference, [dict(f) for f in feeds[:impact_batches]], [o.name for o in reference.graph.output])
    for name, outputs in produced.items():
        output = boundaries[name][1]
        errors[name] = channel_relative_error([v[output] for v in values], outputs)
        impacts[name] = _impact(reference, task, output, outputs[:impact_batches], feeds[:impact_batches], exact)
    return errors, impacts


def _requantized_outputs(candidate: Any) -> dict[str, str]:
    """Tensor -> the DequantizeLinear output that consumers read instead, where a QDQ pair follows it."""
    dequantize_of = {n.input[0]: n.output[0] for n in candidate.graph.node if n.op_type == "DequantizeLinear"}
    return {
        n.input[0]: dequantize_of[n.output[0]]
        for n in candidate.graph.node
        if n.op_type == "QuantizeLinear" and n.output[0] in dequantize_of
    }


def _impact(
    reference: Any,
    task: Any,
    tensor: str,
    replacement: Sequence[np.ndarray],
    feeds: Sequence[Mapping[str, np.ndarray]],
    exact: Sequence[Mapping[str, np.ndarray]],
) -> float:
    """The reference model's output error when `tensor` takes the quantized node's values and all else is FP32.

    The tensor becomes a graph input of a copy of the reference (its producer's output is renamed away and
    pruned by onnxruntime), so the rest of the FP32 graph runs on the quantized node's output. The error is
    measured on the task: 1 - its primary cosine (mean plus worst sample; for embeddings the cosine of
    mean-pooled sentence embeddings); without a task, the channel-relative error of the graph outputs.
    """
    from workbench._lazy import require
    from workbench.engines.onnxruntime import run_model
    from workbench.onnx.shapes import copy_model
    from workbench.stages.surgery.edits import tensor_types

    onnx = require("onnx", purpose="Diagnosis")
    cut = copy_model(reference)
    for node in cut.graph.node:
        for i, name in enumerate(node.output):
            if name == tensor:
                node.output[i] = f"{tensor}__replaced"
    elem_type, _ = tensor_types(reference).get(tensor, (_FLOAT, None))
    cut.graph.input.append(onnx.helper.make_tensor_value_info(tensor, elem_type, None))
    outputs = [o.name for o in reference.graph.output]
    with_q, _ = run_model(cut, [{**dict(f), tensor: r} for f, r in zip(feeds, replacement)], outputs)
    if task is not None:
        values = task.metrics(list(exact), list(with_q), list(feeds)).values
        mean, low = (values.get(name) for name in task.primary_cosine)
        if mean is not None and low is not None:
            return float((1.0 - mean) + (1.0 - low))
    return max(channel_relative_error([e[o] for e in exact], [q[o] for q in with_q]) for o in outputs)


def channel_relative_error(expected: Sequence[np.ndarray], actual: Sequence[np.ndarray]) -> float:
    """Root mean over channels (last axis) of each channel's squared error relative to its own energy.

    Each channel counts alike. A plain relative L2 over the whole tensor is dominated by a transformer's few
    outlier channels, which INT8 represents well, and misses the error in every other channel, which is the
    error that survives layer normalisation into the embedding (on MiniLM it ranked the quantized node that
    mattered most 33rd of 38).
    """
    error: Any = None
    energy: Any = None
    for a, b in zip(expected, actual):
        a64 = np.asarray(a, np.float64).reshape(-1, a.shape[-1]) if a.ndim else np.asarray(a, np.float64).reshape(1, 1)
        b64 = np.asarray(b, np.float64).reshape(a64.shape)
        e, n = ((a64 - b64) ** 2).sum(axis=0), (a64**2).sum(axis=0)
        error, energy = (e, n) if error is None else (error + e, energy + n)
    if error is None:
        return 0.0
    live = energy > 0
    if not live.any():
        return float(np.sqrt(error.mean()))
    return float(np.sqrt(np.mean(error[live] / energy[live])))
