"""Graph inspection (part of the graph-surgery step): what an ONNX model holds, node by node.

`inspect_model` summarises a model: opsets, inputs and outputs, op counts, parameters and bytes by dtype, the
largest weights, and the parts that do nothing (unused initializers and inputs, dead nodes). `node_table` lists
every node with the shapes and dtypes of its outputs from shape inference, filterable by name and op type.

Neither function modifies the model it is given; shape inference always runs on a copy. onnx, onnxruntime and
plotly are imported inside the functions that need them, so importing this module stays light.
"""

from __future__ import annotations

import html
import math
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workbench._lazy import require
from workbench.errors import ConfigError, MissingDependency, ModelSourceError
from workbench.models import check_onnx_file
from workbench.onnx.shapes import partial_symbolic_shape_inference

# A dimension: an int (fixed), a str (symbolic, by name) or None (unknown). A shape is None when even the
# rank is unknown.
Dim = int | str | None
Shape = list | None

DEFAULT_DOMAIN = "ai.onnx"  # the empty domain "" and "ai.onnx" are the same opset; reports use the name
TOP_INITIALIZERS = 10
HTML_MAX_ROWS = 200

# onnx's TensorProto type names -> (dtype string in reports, bits per element). Looked up by name so that
# types an older onnx lacks are simply absent.
_DTYPES: dict[str, tuple[str, float]] = {
    "FLOAT": ("float32", 32),
    "DOUBLE": ("float64", 64),
    "FLOAT16": ("float16", 16),
    "BFLOAT16": ("bfloat16", 16),
    "INT8": ("int8", 8),
    "UINT8": ("uint8", 8),
    "INT16": ("int16", 16),
    "UINT16": ("uint16", 16),
    "INT32": ("int32", 32),
    "UINT32": ("uint32", 32),
    "INT64": ("int64", 64),
    "UINT64": ("uint64", 64),
    "BOOL": ("bool", 8),
    "STRING": ("string", 0),
    "COMPLEX64": ("complex64", 64),
    "COMPLEX128": ("complex128", 128),
    "FLOAT8E4M3FN": ("float8e4m3fn", 8),
    "FLOAT8E4M3FNUZ": ("float8e4m3fnuz", 8),
    "FLOAT8E5M2": ("float8e5m2", 8),
    "FLOAT8E5M2FNUZ": ("float8e5m2fnuz", 8),
    "FLOAT8E8M0": ("float8e8m0", 8),
    "INT4": ("int4", 4),
    "UINT4": ("uint4", 4),
    "FLOAT4E2M1": ("float4e2m1", 4),
    "INT2": ("int2", 2),
    "UINT2": ("uint2", 2),
    "FLOAT6E2M3": ("float6e2m3", 6),
    "FLOAT6E3M2": ("float6e3m2", 6),
    "UNDEFINED": ("undefined", 0),
}


def _onnx() -> Any:
    return require("onnx", purpose="Inspecting an ONNX model")


# ---------------------------------------------------------------------------------------------------------------
# Result types
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """A graph input or output.

    Attributes:
        name: Tensor name.
        dtype: Element type, e.g. "int64", "float32"; for non-tensor values the kind ("sequence", "map", ...).
        shape: One entry per dimension: int (fixed), str (symbolic, by name) or None (unknown); None when the
            rank itself is unknown.
    """

    name: str
    dtype: str
    shape: Shape

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": None if self.shape is None else list(self.shape)}


@dataclass(frozen=True)
class InitializerInfo:
    """One weight tensor (graph initializer)."""

    name: str
    dtype: str
    shape: list
    parameters: int
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "parameters": self.parameters,
            "bytes": self.bytes,
        }


@dataclass(frozen=True)
class GraphSummary:
    """What an ONNX model holds, from `inspect_model`.

    Attributes:
        path: The .onnx file, or None for an in-memory model.
        opset: The default-domain (ai.onnx) opset version; None if the model imports none.
        opset_imports: Every imported opset: domain ("ai.onnx" for the default domain) -> version.
        ir_version: The ONNX IR version.
        producer_name, producer_version: Who wrote the model (e.g. "pytorch", "2.13.0").
        inputs: Graph inputs the caller feeds (initializers listed as inputs by old exporters are left out).
        outputs: Graph outputs.
        op_counts: op_type -> number of nodes in the main graph, most frequent first.
        node_count: Nodes in the main graph (subgraphs of If/Loop/Scan not included).
        parameters_by_dtype, bytes_by_dtype: Elements and bytes of the weights (initializers and Constant
            nodes' tensors) per dtype, largest first.
        initializer_parameters: Elements in initializers only.
        constant_parameters: Elements in Constant nodes' tensors only (shape constants and the like).
        total_parameters, total_bytes: Both together.
        largest_initializers: The biggest initializers by bytes (at most 10).
        unused_initializers: Initializers that no node reads (nor any graph output).
        unused_inputs: Graph inputs that no node reads (nor any graph output).
        dead_nodes: Nodes whose outputs reach no graph output, by name ("<op_type #index>" if unnamed).
        has_external_data: Whether any weight is stored outside the .onnx file (a .data file beside it).
    """

    path: Path | None
    opset: int | None
    opset_imports: dict[str, int]
    ir_version: int
    producer_name: str
    producer_version: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    op_counts: dict[str, int]
    node_count: int
    parameters_by_dtype: dict[str, int]
    bytes_by_dtype: dict[str, int]
    initializer_parameters: int
    constant_parameters: int
    total_parameters: int
    total_bytes: int
    largest_initializers: tuple[InitializerInfo, ...]
    unused_initializers: tuple[str, ...]
    unused_inputs: tuple[str, ...]
    dead_nodes: tuple[str, ...]
    has_external_data: bool

    @property
    def has_unused_parts(self) -> bool:
        return bool(self.unused_initializers or self.unused_inputs or self.dead_nodes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": None if self.path is None else str(self.path),
            "opset": self.opset,
            "opset_imports": dict(self.opset_imports),
            "ir_version": self.ir_version,
            "producer_name": self.producer_name,
            "producer_version": self.producer_version,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "op_counts": dict(self.op_counts),
            "node_count": self.node_count,
            "parameters_by_dtype": dict(self.parameters_by_dtype),
            "bytes_by_dtype": dict(self.bytes_by_dtype),
            "initializer_parameters": self.initializer_parameters,
            "constant_parameters": self.constant_parameters,
            "total_parameters": self.total_parameters,
            "total_bytes": self.total_bytes,
            "largest_initializers": [i.to_dict() for i in self.largest_initializers],
            "unused_initializers": list(self.unused_initializers),
            "unused_inputs": list(self.unused_inputs),
            "dead_nodes": list(self.dead_nodes),
            "has_external_data": self.has_external_data,
        }

    def op_histogram_figure(self) -> Any:
        """Plotly bar chart: how many nodes of each op type, most frequent first."""
        go = require("plotly.graph_objects", purpose="Plotting op counts")
        figure = go.Figure()
        figure.add_bar(
            x=list(self.op_counts),
            y=list(self.op_counts.values()),
            hovertemplate="%{x}: %{y} nodes<extra></extra>",
            name="nodes",
        )
        figure.update_layout(
            title=f"Op types ({self.node_count} nodes)", xaxis_title="op type", yaxis_title="nodes", xaxis_tickangle=-45
        )
        return figure

    def weight_size_figure(self) -> Any:
        """Plotly horizontal bar chart of the largest initializers, in MB, biggest on top."""
        go = require("plotly.graph_objects", purpose="Plotting weight sizes")
        weights = list(reversed(self.largest_initializers))  # plotly draws the first bar at the bottom
        figure = go.Figure()
        figure.add_bar(
            y=[w.name for w in weights],
            x=[w.bytes / 1e6 for w in weights],
            orientation="h",
            name="weights",
            customdata=[[w.dtype, "x".join(str(d) for d in w.shape) or "scalar", f"{w.parameters:,}"] for w in weights],
            hovertemplate="%{y}<br>%{customdata[0]} [%{customdata[1]}]<br>%{customdata[2]} parameters"
            "<br>%{x:.3f} MB<extra></extra>",
        )
        title = (
            f"Largest weights (all weights: {_format_count(self.total_parameters)} parameters, "
            f"{_format_bytes(self.total_bytes)})"
        )
        figure.update_layout(title=title, xaxis_title="MB", yaxis_title="initializer")
        if not weights:
            figure.add_annotation(text="no initializers", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
        return figure

    def _repr_html_(self) -> str:
        e = html.escape
        where = "in-memory model" if self.path is None else f"<code>{e(str(self.path))}</code>"
        opsets = ", ".join(f"{e(d)} {v}" for d, v in self.opset_imports.items())
        producer = e(f"{self.producer_name} {self.producer_version}".strip()) or "unknown"
        by_dtype = ", ".join(f"{e(d)} {_format_count(n)}" for d, n in self.parameters_by_dtype.items())
        facts = [
            f"opset {self.opset} ({opsets}), IR {self.ir_version}, producer {producer}",
            f"{self.node_count} nodes, {len(self.op_counts)} op types",
            f"{_format_count(self.total_parameters)} parameters ({by_dtype or 'none'}), "
            f"{_format_bytes(self.total_bytes)}" + (", external data" if self.has_external_data else ""),
        ]
        if self.has_unused_parts:
            facts.append(
                "<span style='color:#b35900'>unused: "
                f"{len(self.unused_initializers)} initializers, {len(self.unused_inputs)} inputs, "
                f"{len(self.dead_nodes)} dead nodes</span>"
            )
        io_rows = "".join(
            f"<tr><td>{kind}</td><td>{e(t.name)}</td><td>{e(t.dtype)}</td><td>{e(_format_shape(t.shape))}</td></tr>"
            for kind, tensors in (("input", self.inputs), ("output", self.outputs))
            for t in tensors
        )
        op_rows = "".join(f"<tr><td>{e(op)}</td><td>{n}</td></tr>" for op, n in self.op_counts.items())
        return (
            f"<div><b>ONNX graph</b> {where}<br>"
            + "<br>".join(facts)
            + "<div style='display:flex;gap:2em;align-items:flex-start'>"
            f"<table><tr><th></th><th>name</th><th>dtype</th><th>shape</th></tr>{io_rows}</table>"
            f"<table><tr><th>op type</th><th>nodes</th></tr>{op_rows}</table>"
            "</div></div>"
        )


@dataclass(frozen=True)
class NodeRow:
    """One node, with the shapes and dtypes of its outputs (None where shape inference could not tell)."""

    index: int
    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    output_shapes: tuple[Shape, ...]
    output_dtypes: tuple[str | None, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "op_type": self.op_type,
            "domain": self.domain,
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "output_shapes": [None if s is None else list(s) for s in self.output_shapes],
            "output_dtypes": list(self.output_dtypes),
        }


@dataclass(frozen=True)
class NodeTable:
    """Nodes of a graph in graph order, from `node_table`.

    Attributes:
        rows: The nodes that passed the filters.
        total_nodes: Nodes in the main graph before filtering.
        shape_inference: Where output shapes came from: "onnxruntime-symbolic", "onnx" or "none".
        notes: What happened during shape inference (fallbacks, failures), for the reader.
    """

    rows: tuple[NodeRow, ...]
    total_nodes: int
    shape_inference: str = "none"
    notes: tuple[str, ...] = field(default=())

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[NodeRow]:
        return iter(self.rows)

    def __getitem__(self, position: int) -> NodeRow:
        return self.rows[position]

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per node (pandas.DataFrame(table.to_rows()) gives a data frame)."""
        return [row.to_dict() for row in self.rows]

    def filter(self, *, name_contains: str = "", op_types: Sequence[str] | str = ()) -> NodeTable:
        """A new table with the rows whose name contains `name_contains` and whose op type is in `op_types`.

        Both match case-insensitively; empty means "no filter". An op type that does not occur gives an empty
        table, not an error.

        Raises:
            ConfigError: `name_contains` is not a string, or `op_types` holds something that is not a string.
        """
        needle, wanted = _check_filters(name_contains, op_types)
        rows = tuple(
            row for row in self.rows if needle in row.name.lower() and (not wanted or row.op_type.lower() in wanted)
        )
        return NodeTable(
            rows=rows, total_nodes=self.total_nodes, shape_inference=self.shape_inference, notes=self.notes
        )

    def _repr_html_(self) -> str:
        e = html.escape
        shown = self.rows[:HTML_MAX_ROWS]
        body = "".join(
            f"<tr><td>{row.index}</td><td>{e(row.name)}</td><td>{e(row.op_type)}</td>"
            f"<td>{e(', '.join(row.inputs))}</td><td>{e(', '.join(row.outputs))}</td>"
            f"<td>{e('; '.join(_format_shape(s) for s in row.output_shapes))}</td>"
            f"<td>{e(', '.join(d or '?' for d in row.output_dtypes))}</td></tr>"
            for row in shown
        )
        more = (
            f"<div>... {len(self.rows) - len(shown)} more (use .filter(...) or .to_rows())</div>"
            if len(self.rows) > len(shown)
            else ""
        )
        notes = "".join(f"<br><i>{e(note)}</i>" for note in self.notes)
        return (
            f"<div><b>Nodes</b>: {len(self.rows)} of {self.total_nodes}; shapes from {e(self.shape_inference)}"
            f"{notes}<table><tr><th>#</th><th>name</th><th>op type</th><th>inputs</th><th>outputs</th>"
            f"<th>output shapes</th><th>output dtypes</th></tr>{body}</table>{more}</div>"
        )


# ---------------------------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------------------------


def inspect_model(model: str | os.PathLike[str] | Any) -> GraphSummary:
    """Summarise an ONNX model: opsets, IO, op counts, weights by dtype, largest weights, unused parts.

    Args:
        model: An .onnx file (or a folder holding model.onnx), or an onnx.ModelProto. Weights stored as
            external data are counted from their shapes; the data file is not read. The model is not modified.

    Raises:
        ModelSourceError: The file does not exist, is truncated or corrupt, or `model` is neither a path nor
            an onnx.ModelProto.
    """
    proto, path = _load(model)
    onnx = _onnx()
    graph = proto.graph

    opset_imports = {(o.domain or DEFAULT_DOMAIN): int(o.version) for o in proto.opset_import}
    initializer_names = {t.name for t in graph.initializer}

    params: Counter[str] = Counter()
    nbytes: Counter[str] = Counter()
    initializers = []
    external = False
    for tensor in graph.initializer:
        info = _initializer_info(tensor)
        initializers.append(info)
        params[info.dtype] += info.parameters
        nbytes[info.dtype] += info.bytes
        external = external or tensor.data_location == onnx.TensorProto.EXTERNAL
    constant_parameters = 0
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", DEFAULT_DOMAIN):
            for dtype, count, size, is_external in _constant_tensors(node):
                params[dtype] += count
                nbytes[dtype] += size
                constant_parameters += count
                external = external or is_external

    used = _names_used(graph)
    output_names = {o.name for o in graph.output}
    reachable = used | output_names
    largest = sorted(initializers, key=lambda i: (-i.bytes, i.name))[:TOP_INITIALIZERS]
    op_counts = Counter(node.op_type for node in graph.node)
    return GraphSummary(
        path=path,
        opset=opset_imports.get(DEFAULT_DOMAIN),
        opset_imports=opset_imports,
        ir_version=int(proto.ir_version),
        producer_name=proto.producer_name,
        producer_version=proto.producer_version,
        inputs=tuple(_tensor_info(v) for v in graph.input if v.name not in initializer_names),
        outputs=tuple(_tensor_info(v) for v in graph.output),
        op_counts=_sorted_counts(op_counts),
        node_count=len(graph.node),
        parameters_by_dtype=_sorted_counts(params),
        bytes_by_dtype=_sorted_counts(nbytes),
        initializer_parameters=sum(i.parameters for i in initializers),
        constant_parameters=constant_parameters,
        total_parameters=sum(params.values()),
        total_bytes=sum(nbytes.values()),
        largest_initializers=tuple(largest),
        unused_initializers=tuple(t.name for t in graph.initializer if t.name not in reachable),
        unused_inputs=tuple(v.name for v in graph.input if v.name not in initializer_names and v.name not in reachable),
        dead_nodes=tuple(_node_label(graph.node[i], i) for i in _dead_node_indices(graph)),
        has_external_data=external,
    )


def node_table(
    model: str | os.PathLike[str] | Any,
    *,
    name_contains: str = "",
    op_types: Sequence[str] | str = (),
    infer_shapes: bool = True,
) -> NodeTable:
    """Every node of the main graph in graph order, with its outputs' shapes and dtypes.

    Shapes come from onnx's shape inference on a copy of the model. Where that leaves node outputs untyped
    (contrib ops such as com.microsoft Attention) or with anonymous dims ("unk__3" instead of "batch"),
    onnxruntime's symbolic shape inference is tried too and its answers take precedence; if it fails or
    onnxruntime is not installed, onnx's answers stay and `notes` says why.

    Args:
        model: An .onnx file (or a folder holding model.onnx), or an onnx.ModelProto; it is not modified.
        name_contains: Keep nodes whose name contains this, case-insensitively ("" keeps all).
        op_types: Keep nodes of these op types, case-insensitively (empty keeps all; a single string is one op
            type). An op type that does not occur gives an empty table.
        infer_shapes: False skips shape inference (shapes and dtypes only where the model already records them).

    Raises:
        ModelSourceError: The file does not exist or is truncated or corrupt.
        ConfigError: `name_contains` is not a string, or `op_types` holds something that is not a string.
    """
    _check_filters(name_contains, op_types)  # fail on bad filters before any work
    proto, _ = _load(model)
    notes: list[str] = []
    if infer_shapes:
        types, source = _inferred_types(proto, notes)
    else:
        types, source = _recorded_types(proto.graph), "none"
    rows = []
    for index, node in enumerate(proto.graph.node):
        shapes, dtypes = [], []
        for name in node.output:
            value = types.get(name) if name else None
            shapes.append(None if value is None else value.shape)
            dtypes.append(None if value is None or value.dtype == "undefined" else value.dtype)
        rows.append(
            NodeRow(
                index=index,
                name=node.name,
                op_type=node.op_type,
                domain=node.domain or DEFAULT_DOMAIN,
                inputs=tuple(node.input),
                outputs=tuple(node.output),
                output_shapes=tuple(shapes),
                output_dtypes=tuple(dtypes),
            )
        )
    table = NodeTable(rows=tuple(rows), total_nodes=len(rows), shape_inference=source, notes=tuple(notes))
    return table.filter(name_contains=name_contains, op_types=op_types)


# ---------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------


def _load(model: Any) -> tuple[Any, Path | None]:
    """(ModelProto, path or None). A path is checked with check_onnx_file; external data is not loaded."""
    onnx = _onnx()
    if isinstance(model, onnx.ModelProto):
        return model, None
    if not isinstance(model, (str, os.PathLike)):
        raise ModelSourceError(
            f"Cannot inspect a {type(model).__name__}: expected a path to an .onnx file or an onnx.ModelProto.",
            fix="pass the .onnx path (for a stage result: result.path), or onnx.load(path)",
        )
    path = Path(model).expanduser()
    if path.is_dir() and (path / "model.onnx").is_file():
        path = path / "model.onnx"
    if not path.is_file():
        raise ModelSourceError(
            f"ONNX model {str(model)!r} does not exist" + (" (a folder without model.onnx)." if path.is_dir() else "."),
            expected="an .onnx file, or a folder holding model.onnx",
            fix="check the path; export the model first if it has not been exported yet",
        )
    check_onnx_file(path)  # raises ModelSourceError for a truncated or corrupt file
    return onnx.load(str(path), load_external_data=False), path


def _dtype_name(elem_type: int) -> str:
    onnx = _onnx()
    try:
        key = onnx.TensorProto.DataType.Name(elem_type)
    except ValueError:
        return f"type{elem_type}"
    return _DTYPES.get(key, (key.lower(), 0))[0]


def _dtype_bits(elem_type: int) -> float:
    onnx = _onnx()
    try:
        key = onnx.TensorProto.DataType.Name(elem_type)
    except ValueError:
        return 0
    return _DTYPES.get(key, (key.lower(), 0))[1]


def _shape_of(tensor_type: Any) -> Shape:
    if not tensor_type.HasField("shape"):
        return None
    dims: list[Dim] = []
    for dim in tensor_type.shape.dim:
        kind = dim.WhichOneof("value")
        dims.append(int(dim.dim_value) if kind == "dim_value" else dim.dim_param if kind == "dim_param" else None)
    return dims


def _tensor_info(value: Any) -> TensorInfo:
    kind = value.type.WhichOneof("value")
    if kind == "tensor_type":
        tensor_type = value.type.tensor_type
        return TensorInfo(value.name, _dtype_name(tensor_type.elem_type), _shape_of(tensor_type))
    if kind == "sparse_tensor_type":
        tensor_type = value.type.sparse_tensor_type
        return TensorInfo(value.name, f"sparse {_dtype_name(tensor_type.elem_type)}", _shape_of(tensor_type))
    return TensorInfo(value.name, (kind or "undefined").replace("_type", ""), None)


def _tensor_size(tensor: Any) -> tuple[str, int, int]:
    """(dtype, elements, bytes) of a TensorProto, from its dims (its data may be external)."""
    dtype = _dtype_name(tensor.data_type)
    count = math.prod(int(d) for d in tensor.dims)
    if dtype == "string":
        size = sum(len(s) for s in tensor.string_data)
    else:
        size = math.ceil(count * _dtype_bits(tensor.data_type) / 8)
    return dtype, count, size


def _initializer_info(tensor: Any) -> InitializerInfo:
    dtype, count, size = _tensor_size(tensor)
    return InitializerInfo(tensor.name, dtype, [int(d) for d in tensor.dims], count, size)


def _constant_tensors(node: Any) -> Iterator[tuple[str, int, int, bool]]:
    """(dtype, elements, bytes, external) of the value a Constant node holds."""
    onnx = _onnx()
    for attribute in node.attribute:
        if attribute.name == "value" and attribute.HasField("t"):
            dtype, count, size = _tensor_size(attribute.t)
            yield dtype, count, size, attribute.t.data_location == onnx.TensorProto.EXTERNAL
        elif attribute.name == "sparse_value" and attribute.HasField("sparse_tensor"):
            dtype, count, size = _tensor_size(attribute.sparse_tensor.values)
            yield dtype, count, size, False
        elif attribute.name == "value_float":
            yield "float32", 1, 4, False
        elif attribute.name == "value_floats":
            yield "float32", len(attribute.floats), 4 * len(attribute.floats), False
        elif attribute.name == "value_int":
            yield "int64", 1, 8, False
        elif attribute.name == "value_ints":
            yield "int64", len(attribute.ints), 8 * len(attribute.ints), False
        elif attribute.name == "value_string":
            yield "string", 1, len(attribute.s), False
        elif attribute.name == "value_strings":
            yield "string", len(attribute.strings), sum(len(s) for s in attribute.strings), False


def _subgraphs(node: Any) -> Iterator[Any]:
    for attribute in node.attribute:
        if attribute.HasField("g"):
            yield attribute.g
        yield from attribute.graphs


def _names_read_by(node: Any) -> set[str]:
    """Tensor names a node reads: its inputs, plus outer-scope names its subgraphs (If/Loop/Scan) read."""
    names = {name for name in node.input if name}
    for graph in _subgraphs(node):
        names |= _names_used(graph)
    return names


def _names_used(graph: Any) -> set[str]:
    """Every tensor name a node of `graph` (or of its subgraphs) reads, plus the names `graph` returns."""
    names = {o.name for o in graph.output}  # a subgraph may return an outer-scope tensor as it is
    for node in graph.node:
        names |= _names_read_by(node)
    return names


def _dead_node_indices(graph: Any) -> list[int]:
    """Indices of nodes none of whose outputs reach a graph output (walking back from the outputs)."""
    producer = {name: index for index, node in enumerate(graph.node) for name in node.output if name}
    live: set[int] = set()
    pending = [producer[o.name] for o in graph.output if o.name in producer]
    while pending:
        index = pending.pop()
        if index in live:
            continue
        live.add(index)
        pending.extend(producer[name] for name in _names_read_by(graph.node[index]) if name in producer)
    return [index for index in range(len(graph.node)) if index not in live]


def _node_label(node: Any, index: int) -> str:
    return node.name or f"<{node.op_type} #{index}>"


def _sorted_counts(counts: Counter[str]) -> dict[str, int]:
    return {key: int(value) for key, value in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}


def _check_filters(name_contains: Any, op_types: Any) -> tuple[str, frozenset[str]]:
    if not isinstance(name_contains, str):
        raise ConfigError(
            f"name_contains must be a string, got {type(name_contains).__name__}.",
            fix='pass a substring of the node names, e.g. name_contains="attention"',
        )
    if isinstance(op_types, str):
        op_types = (op_types,) if op_types else ()
    try:
        values = list(op_types)
    except TypeError:
        raise ConfigError(
            f"op_types must be a sequence of op type names, got {type(op_types).__name__}.",
            fix='pass e.g. op_types=["MatMul", "Gemm"]',
        ) from None
    bad = [v for v in values if not isinstance(v, str)]
    if bad:
        raise ConfigError(
            f"op_types must hold op type names (strings); got {bad!r}.", fix='pass e.g. op_types=["MatMul", "Gemm"]'
        )
    return name_contains.lower(), frozenset(v.lower() for v in values)


def _recorded_types(graph: Any) -> dict[str, TensorInfo]:
    """Types the graph records: initializers, inputs, outputs and value_info (later entries win)."""
    types = {t.name: TensorInfo(t.name, _dtype_name(t.data_type), [int(d) for d in t.dims]) for t in graph.initializer}
    for value in [*graph.input, *graph.value_info, *graph.output]:
        if value.type.WhichOneof("value") is not None:
            types[value.name] = _tensor_info(value)
    return types


def _is_vague(info: TensorInfo | None) -> bool:
    """True when a node output has no dtype, no rank, or a dimension shape inference could not name."""
    if info is None or info.dtype == "undefined" or info.shape is None:
        return True
    return any(d is None or (isinstance(d, str) and d.startswith("unk__")) for d in info.shape)


def _inferred_types(proto: Any, notes: list[str]) -> tuple[dict[str, TensorInfo], str]:
    """Output types from onnx's shape inference, improved by onnxruntime's symbolic inference where needed."""
    onnx = _onnx()
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    source = "onnx"
    try:
        inferred = onnx.shape_inference.infer_shapes(copy, data_prop=True)
    except Exception as exc:  # onnx raises InferenceError and others for graphs it cannot follow
        notes.append(f"onnx shape inference failed ({type(exc).__name__}: {exc}); shapes are those recorded.")
        inferred, source = copy, "none"
    types = _recorded_types(inferred.graph)
    outputs = [name for node in proto.graph.node for name in node.output if name]
    vague = [name for name in outputs if _is_vague(types.get(name))]
    if not vague:
        return types, source
    opset = next((o.version for o in proto.opset_import if o.domain in ("", DEFAULT_DOMAIN)), 0)
    if opset < 7:
        notes.append(
            f"{len(vague)} node outputs lack a full shape from onnx's inference; onnxruntime's symbolic "
            f"shape inference needs opset 7 or later (the model has {opset or 'none'})."
        )
        return types, source
    try:
        better, complete = partial_symbolic_shape_inference(proto)
    except MissingDependency:
        notes.append(
            f"{len(vague)} node outputs lack a full shape from onnx's inference; onnxruntime (for "
            "symbolic shape inference) is not installed."
        )
        return types, source
    except Exception as exc:  # symbolic inference raises plain Exceptions on graphs it cannot follow
        notes.append(
            f"{len(vague)} node outputs lack a full shape from onnx's inference; onnxruntime's symbolic "
            f"shape inference failed too ({type(exc).__name__}: {exc})."
        )
        return types, source
    for name, info in _recorded_types(better.graph).items():
        if info.dtype != "undefined" and info.shape is not None and (not _is_vague(info) or _is_vague(types.get(name))):
            types[name] = info
    still = sum(1 for name in outputs if _is_vague(types.get(name)))
    notes.append(
        f"onnx's shape inference left {len(vague)} node outputs untyped or with unnamed dims; "
        "onnxruntime's symbolic shape inference filled them in"
        + ("" if complete else " as far as it could (it stopped at a node it cannot follow)")
        + (f"; {still} outputs still lack a full shape." if still else ".")
    )
    return types, "onnxruntime-symbolic"


def _format_shape(shape: Shape) -> str:
    if shape is None:
        return "?"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _format_count(count: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return str(count)


def _format_bytes(size: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.2f} {unit}"
    return f"{size} B"
