"""Graph edits: small, pure functions from ONNX model to ONNX model, each a frozen, serialisable config.

Every edit's `apply(model)` returns a new model and never changes the one it is given. Edits that change the
model's interface (rename, cast, extract, static shapes) also say how to feed the edited model
(`adapt_feeds`) and which tensors of the input model its outputs must reproduce (`compare_pairs`), so that
`workbench.stages.surgery.run.apply_edit` can check every edit numerically.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from workbench._lazy import require
from workbench.config import StageConfig
from workbench.engines.onnxruntime import run_model
from workbench.errors import ConfigError, WorkbenchError
from workbench.onnx.shapes import (
    best_effort_shape_inference,
    copy_model,
    symbolic_shape_inference,
)

DTYPES = {"float32": 1, "uint8": 2, "int8": 3, "int32": 6, "int64": 7, "bool": 9, "float16": 10, "float64": 11}
_BYPASSABLE_OP_TYPES = ("Identity", "Dropout")


class GraphEditError(WorkbenchError):
    """An edit cannot be applied to this graph (a name that is not there, a shape that cannot hold...)."""


_copy = copy_model


def _gs() -> Any:
    return require("onnx_graphsurgeon", purpose="Editing ONNX graphs")


def _import(model: Any) -> Any:
    return _gs().import_onnx(_copy(model))


def _export(graph: Any, like: Any) -> Any:
    exported = _gs().export_onnx(graph, do_type_check=False)
    # keep what graphsurgeon does not carry over: the producer and the opset imports of other domains
    exported.producer_name, exported.producer_version = like.producer_name, like.producer_version
    exported.ir_version = like.ir_version
    known = {o.domain for o in exported.opset_import}
    for opset in like.opset_import:
        if opset.domain not in known:
            exported.opset_import.append(opset)
    return exported


def _tensor_names(model: Any) -> set[str]:
    names = {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
    names |= {t.name for t in model.graph.initializer}
    for node in model.graph.node:
        names.update(n for n in node.input if n)
        names.update(n for n in node.output if n)
    return names


def _require_names(model: Any, names: Any, what: str, pool: set[str] | None = None) -> None:
    pool = _tensor_names(model) if pool is None else pool
    missing = [n for n in names if n not in pool]
    if missing:
        examples = sorted(pool)[:8]
        raise GraphEditError(
            f"{what}: {missing} not in the graph.",
            expected=f"names from this model, e.g. {examples}",
            fix="look the names up with workbench.stages.surgery.inspect.node_table(model) (names change after fusion)",
        )


class Edit(StageConfig):
    """Base of every edit. Subclasses are frozen dataclasses with a `kind` and an `apply`."""

    kind: ClassVar[str] = ""
    #: False for edits whose outputs may legitimately differ (a lossy cast): the check reports, never raises.
    preserves_outputs: ClassVar[bool] = True
    #: True when the input model also accepts the adapted feeds (new static shapes), so both run on them.
    reference_takes_adapted_feeds: ClassVar[bool] = False

    def apply(self, model: Any) -> Any:
        raise NotImplementedError

    def adapt_feeds(self, feeds: dict[str, np.ndarray], model: Any) -> dict[str, np.ndarray]:
        """Feeds for the edited model, from feeds for the input `model`."""
        return dict(feeds)

    def compare_pairs(self, before: Any, after: Any) -> list[tuple[str, str]]:
        """(tensor of the input model, output of the edited model) pairs that must agree."""
        after_outputs = {o.name for o in after.graph.output}
        return [(o.name, o.name) for o in before.graph.output if o.name in after_outputs]

    def describe(self) -> str:
        values = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"{self.kind}({values})"

    def to_plan_entry(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.to_dict()}


@dataclass(frozen=True)
class FoldConstants(Edit):
    """Evaluate every subgraph whose inputs are constants (shape arithmetic, mask math) into initializers."""

    kind: ClassVar[str] = "fold_constants"
    fold_shapes: bool = True

    def apply(self, model: Any) -> Any:
        require("onnxruntime", purpose="Constant folding")  # graphsurgeon evaluates constants with onnxruntime
        graph = _import(model)
        graph.fold_constants(fold_shapes=self.fold_shapes, error_ok=False).cleanup()
        return _export(graph, model)


@dataclass(frozen=True)
class Cleanup(Edit):
    """Remove nodes whose outputs reach no graph output, and initializers nothing uses."""

    kind: ClassVar[str] = "cleanup"
    remove_unused_inputs: bool = False

    def apply(self, model: Any) -> Any:
        graph = _import(model)
        graph.cleanup(remove_unused_graph_inputs=self.remove_unused_inputs, remove_unused_node_outputs=False)
        return _export(graph, model)

    def adapt_feeds(self, feeds: dict[str, np.ndarray], model: Any) -> dict[str, np.ndarray]:
        kept = {i.name for i in self.apply(model).graph.input} if self.remove_unused_inputs else set(feeds)
        return {k: v for k, v in feeds.items() if k in kept}


@dataclass(frozen=True)
class TopologicalSort(Edit):
    """Order nodes so every node comes after the nodes it reads from."""

    kind: ClassVar[str] = "toposort"

    def apply(self, model: Any) -> Any:
        graph = _import(model)
        graph.toposort()
        return _export(graph, model)


@dataclass(frozen=True)
class InferShapes(Edit):
    """Annotate tensors with shapes and types: ONNX's inference, or onnxruntime's symbolic inference, which
    also understands transformer graphs' fused ops and symbolic dims."""

    kind: ClassVar[str] = "infer_shapes"
    symbolic: bool = False

    def apply(self, model: Any) -> Any:
        if self.symbolic:
            try:
                return symbolic_shape_inference(model)
            except Exception as exc:
                raise GraphEditError(
                    f"Symbolic shape inference failed: {type(exc).__name__}: {exc}",
                    fix="try InferShapes(symbolic=False), or fold constants first",
                ) from exc
        onnx = require("onnx", purpose="Shape inference")
        try:
            return onnx.shape_inference.infer_shapes(_copy(model), strict_mode=True)
        except Exception as exc:
            raise GraphEditError(
                f"ONNX shape inference failed: {exc}",
                fix="try InferShapes(symbolic=True) for graphs with onnxruntime's fused ops",
            ) from exc


@dataclass(frozen=True)
class FuseTransformer(Edit):
    """onnxruntime's transformer optimizer (see workbench.stages.fusion.FusionConfig for the fields)."""

    kind: ClassVar[str] = "fuse_transformer"
    model_type: str = "bert"
    num_heads: int = 0
    hidden_size: int = 0
    opt_level: int = 0

    def apply(self, model: Any) -> Any:
        from workbench.stages.fusion import FusionConfig, fuse_proto

        config = FusionConfig(
            model_type=self.model_type, num_heads=self.num_heads, hidden_size=self.hidden_size, opt_level=self.opt_level
        )
        return fuse_proto(model, config)[0]


@dataclass(frozen=True)
class OverrideInputShapes(Edit):
    """Set input dims: an int makes a dim static, a string renames a symbolic dim.

    Example: OverrideInputShapes({"input_ids": [1, 128]}) for an engine built for batch 1, sequence 128.
    """

    kind: ClassVar[str] = "override_input_shapes"
    reference_takes_adapted_feeds: ClassVar[bool] = True
    shapes: Mapping[str, tuple[int | str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.shapes:
            raise ConfigError("OverrideInputShapes needs at least one input shape.")
        object.__setattr__(self, "shapes", {k: tuple(v) for k, v in self.shapes.items()})  # JSON gives lists
        for name, dims in self.shapes.items():
            for dim in dims:
                if (
                    isinstance(dim, bool)
                    or not isinstance(dim, (int, str))
                    or (isinstance(dim, int) and dim < 1)
                    or (isinstance(dim, str) and not dim)
                ):
                    raise ConfigError(
                        f"Input {name!r}: dim {dim!r} is not a positive int or a symbolic name.",
                        fix="use e.g. [1, 128] for static dims or ['batch', 'sequence'] for symbolic ones",
                    )

    def apply(self, model: Any) -> Any:
        inputs = {i.name: i for i in model.graph.input}
        _require_names(model, self.shapes, "OverrideInputShapes names inputs", set(inputs))
        edited = _copy(model)
        for graph_input in edited.graph.input:
            if graph_input.name not in self.shapes:
                continue
            dims = self.shapes[graph_input.name]
            shape = graph_input.type.tensor_type.shape
            if len(shape.dim) != len(dims):
                raise GraphEditError(
                    f"Input {graph_input.name!r} has rank {len(shape.dim)}, but the override gives {len(dims)} dims.",
                    fix=f"give exactly {len(shape.dim)} dims",
                )
            for dim, new in zip(shape.dim, dims):
                if dim.HasField("dim_value") and isinstance(new, int) and dim.dim_value != new:
                    raise GraphEditError(
                        f"Input {graph_input.name!r} has a fixed dim {dim.dim_value}; it cannot become {new}.",
                        fix="only symbolic dims can be overridden; re-export with that axis dynamic",
                    )
                if isinstance(new, int):
                    dim.dim_value = new
                else:
                    dim.dim_param = new
        return edited

    def adapt_feeds(self, feeds: dict[str, np.ndarray], model: Any) -> dict[str, np.ndarray]:
        # inputs that share the overridden input's shape (ids, mask, token types) must change alike
        like = {feeds[name].shape: dims for name, dims in self.shapes.items() if name in feeds}
        adapted = {}
        for name, array in feeds.items():
            dims = self.shapes.get(name) or like.get(array.shape)
            adapted[name] = _resize(array, dims) if dims else array
        return adapted


def _resize(array: np.ndarray, dims: tuple[int | str, ...]) -> np.ndarray:
    """Tile, then cut, the sample data along each axis given a static size: real values at the new size."""
    for axis, dim in enumerate(dims):
        if isinstance(dim, int) and array.shape[axis] != dim:
            reps = [1] * array.ndim
            reps[axis] = -(-dim // array.shape[axis])
            array = np.take(np.tile(array, reps), range(dim), axis=axis)
    return np.ascontiguousarray(array)


@dataclass(frozen=True)
class RenameTensors(Edit):
    """Rename tensors, typically graph inputs and outputs: {"old": "new"}."""

    kind: ClassVar[str] = "rename_tensors"
    mapping: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.mapping:
            raise ConfigError("RenameTensors needs at least one old -> new name.")
        if len(set(self.mapping.values())) != len(self.mapping) or any(not v for v in self.mapping.values()):
            raise ConfigError(f"RenameTensors maps to empty or duplicate names: {dict(self.mapping)}.")

    def apply(self, model: Any) -> Any:
        names = _tensor_names(model)
        _require_names(model, self.mapping, "RenameTensors renames tensors", names)
        clashes = [new for old, new in self.mapping.items() if new in names and new not in self.mapping]
        if clashes:
            raise GraphEditError(
                f"RenameTensors: {clashes} already name other tensors in the graph.",
                fix="choose names that are not used yet",
            )
        edited = _copy(model)
        rename = dict(self.mapping)
        for collection in (edited.graph.input, edited.graph.output, edited.graph.value_info, edited.graph.initializer):
            for item in collection:
                item.name = rename.get(item.name, item.name)
        for node in edited.graph.node:
            for i, name in enumerate(node.input):
                node.input[i] = rename.get(name, name)
            for i, name in enumerate(node.output):
                node.output[i] = rename.get(name, name)
        return edited

    def adapt_feeds(self, feeds: dict[str, np.ndarray], model: Any) -> dict[str, np.ndarray]:
        return {self.mapping.get(k, k): v for k, v in feeds.items()}

    def compare_pairs(self, before: Any, after: Any) -> list[tuple[str, str]]:
        return [(o.name, self.mapping.get(o.name, o.name)) for o in before.graph.output]


@dataclass(frozen=True)
class CastIO(Edit):
    """Change the dtype of graph inputs and outputs, with a Cast inside the graph (e.g. int64 ids -> int32).

    Casting a float output to a narrower float loses precision: such an edit reports its difference but
    does not fail on it.
    """

    kind: ClassVar[str] = "cast_io"
    inputs: Mapping[str, str] = field(default_factory=dict)
    outputs: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.inputs and not self.outputs:
            raise ConfigError("CastIO needs at least one input or output to cast.")
        for name, dtype in {**self.inputs, **self.outputs}.items():
            if dtype not in DTYPES:
                raise ConfigError(f"CastIO: {name!r} -> {dtype!r} is not a dtype.", expected=f"one of {sorted(DTYPES)}")

    def apply(self, model: Any) -> Any:
        onnx = require("onnx", purpose="Editing ONNX graphs")
        _require_names(model, self.inputs, "CastIO casts inputs", {i.name for i in model.graph.input})
        _require_names(model, self.outputs, "CastIO casts outputs", {o.name for o in model.graph.output})
        edited = _copy(model)
        new_nodes = []
        for graph_input in edited.graph.input:
            if graph_input.name not in self.inputs:
                continue
            original_type = graph_input.type.tensor_type.elem_type
            inner = f"{graph_input.name}__as_{_dtype_name(original_type)}"
            for node in edited.graph.node:
                for i, name in enumerate(node.input):
                    if name == graph_input.name:
                        node.input[i] = inner
            new_nodes.append(
                onnx.helper.make_node(
                    "Cast", [graph_input.name], [inner], to=original_type, name=f"cast_input_{graph_input.name}"
                )
            )
            graph_input.type.tensor_type.elem_type = DTYPES[self.inputs[graph_input.name]]
        for graph_output in edited.graph.output:
            if graph_output.name not in self.outputs:
                continue
            original_type = graph_output.type.tensor_type.elem_type
            inner = f"{graph_output.name}__as_{_dtype_name(original_type)}"
            for node in edited.graph.node:
                for i, name in enumerate(node.output):
                    if name == graph_output.name:
                        node.output[i] = inner
                for i, name in enumerate(node.input):
                    if name == graph_output.name:
                        node.input[i] = inner
            edited.graph.node.append(
                onnx.helper.make_node(
                    "Cast",
                    [inner],
                    [graph_output.name],
                    to=DTYPES[self.outputs[graph_output.name]],
                    name=f"cast_output_{graph_output.name}",
                )
            )
            graph_output.type.tensor_type.elem_type = DTYPES[self.outputs[graph_output.name]]
        for node in reversed(new_nodes):
            edited.graph.node.insert(0, node)
        return edited

    @property
    def lossy(self) -> bool:
        return any(dtype in ("float16", "int8", "uint8", "int32") for dtype in self.outputs.values())

    def adapt_feeds(self, feeds: dict[str, np.ndarray], model: Any) -> dict[str, np.ndarray]:
        return {k: v.astype(self.inputs[k]) if k in self.inputs else v for k, v in feeds.items()}


def _dtype_name(elem_type: int) -> str:
    return next((name for name, value in DTYPES.items() if value == elem_type), f"type{elem_type}")


@dataclass(frozen=True)
class AddOutputs(Edit):
    """Expose intermediate tensors as graph outputs (their types and shapes come from shape inference)."""

    kind: ClassVar[str] = "add_outputs"
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.names:
            raise ConfigError("AddOutputs needs at least one tensor name.")

    def apply(self, model: Any) -> Any:
        onnx = require("onnx", purpose="Editing ONNX graphs")
        produced = {n for node in model.graph.node for n in node.output if n}
        _require_names(model, self.names, "AddOutputs names tensors", produced | {i.name for i in model.graph.input})
        existing = {o.name for o in model.graph.output}
        types = tensor_types(model)
        edited = _copy(model)
        for name in self.names:
            if name in existing:
                continue
            if name not in types:
                raise GraphEditError(
                    f"AddOutputs: the dtype of {name!r} is unknown even after shape inference.",
                    fix="run InferShapes(symbolic=True) first, or pick a neighbouring tensor",
                )
            elem_type, dims = types[name]
            edited.graph.output.append(onnx.helper.make_tensor_value_info(name, elem_type, dims))
        return edited


def tensor_types(model: Any) -> dict[str, tuple[int, list[Any] | None]]:
    """Tensor name -> (ONNX elem type, dims or None where the rank is unknown) for every tensor shape inference
    can type."""
    inferred = best_effort_shape_inference(model)
    found: dict[str, tuple[int, list[Any] | None]] = {}
    for info in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        tensor_type = info.type.tensor_type
        if tensor_type.elem_type:
            dims = (
                [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in tensor_type.shape.dim]
                if tensor_type.HasField("shape")
                else None
            )
            found[info.name] = (tensor_type.elem_type, dims)
    for initializer in model.graph.initializer:
        found[initializer.name] = (initializer.data_type, list(initializer.dims))
    return found


@dataclass(frozen=True)
class RemoveOutputs(Edit):
    """Drop graph outputs (and the nodes only they needed), e.g. an unused pooler_output."""

    kind: ClassVar[str] = "remove_outputs"
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.names:
            raise ConfigError("RemoveOutputs needs at least one output name.")

    def apply(self, model: Any) -> Any:
        outputs = {o.name for o in model.graph.output}
        _require_names(model, self.names, "RemoveOutputs names outputs", outputs)
        if outputs <= set(self.names):
            raise GraphEditError("RemoveOutputs would remove every output of the graph.", fix="keep at least one")
        graph = _import(model)
        graph.outputs = [o for o in graph.outputs if o.name not in self.names]
        graph.cleanup()
        return _export(graph, model)


@dataclass(frozen=True)
class ExtractSubgraph(Edit):
    """Keep only the part of the graph between the named input and output tensors."""

    kind: ClassVar[str] = "extract_subgraph"
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.inputs or not self.outputs:
            raise ConfigError("ExtractSubgraph needs input and output tensor names.")

    def apply(self, model: Any) -> Any:
        onnx = require("onnx", purpose="Extracting a subgraph")
        _require_names(model, (*self.inputs, *self.outputs), "ExtractSubgraph names tensors")
        typed = AddOutputs(tuple(self.inputs) + tuple(self.outputs)).apply(model)  # types for the boundary
        # the Extractor needs every boundary tensor typed in value_info
        known = {vi.name for vi in typed.graph.value_info} | {i.name for i in typed.graph.input}
        for output in typed.graph.output:
            if output.name not in known:
                typed.graph.value_info.append(output)
        try:
            extracted = onnx.utils.Extractor(typed).extract_model(list(self.inputs), list(self.outputs))
        except Exception as exc:
            raise GraphEditError(
                f"Extracting {list(self.inputs)} -> {list(self.outputs)} failed: {exc}",
                fix="the outputs must be computable from the inputs (and constants)",
            ) from exc
        missing = _dangling_inputs(extracted)
        if missing:
            raise GraphEditError(
                f"The outputs {list(self.outputs)} also depend on {missing}, which are not among the inputs.",
                fix=f"add {missing} to ExtractSubgraph.inputs",
            )
        extracted.producer_name, extracted.producer_version = model.producer_name, model.producer_version
        return extracted

    def adapt_feeds(self, feeds: dict[str, np.ndarray], model: Any) -> dict[str, np.ndarray]:
        from workbench.stages.surgery.edits import run_tensors

        return run_tensors(model, feeds, self.inputs)

    def compare_pairs(self, before: Any, after: Any) -> list[tuple[str, str]]:
        return [(name, name) for name in self.outputs]


def _dangling_inputs(model: Any) -> list[str]:
    """Tensors that nodes read but nothing in the graph provides (the Extractor leaves them dangling)."""
    available = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer}
    available |= {n for node in model.graph.node for n in node.output}
    return sorted({n for node in model.graph.node for n in node.input if n and n not in available})


@dataclass(frozen=True)
class RemoveNodes(Edit):
    """Bypass pass-through nodes (Identity, inference-mode Dropout): consumers read the node's input instead."""

    kind: ClassVar[str] = "remove_nodes"
    op_types: tuple[str, ...] = _BYPASSABLE_OP_TYPES
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unsupported = [op for op in self.op_types if op not in _BYPASSABLE_OP_TYPES]
        if unsupported:
            raise ConfigError(
                f"RemoveNodes cannot bypass op types {unsupported}: only pass-through ops can be removed.",
                expected=f"op types among {list(_BYPASSABLE_OP_TYPES)}",
                fix="use ExtractSubgraph to cut a graph, or leave these nodes in",
            )

    def apply(self, model: Any) -> Any:
        by_name = {n.name: n for n in model.graph.node}
        _require_names(model, self.names, "RemoveNodes names nodes", set(by_name))
        unsupported = sorted({by_name[n].op_type for n in self.names} - set(_BYPASSABLE_OP_TYPES))
        if unsupported:
            raise GraphEditError(
                f"RemoveNodes cannot bypass {unsupported} nodes: they change their input, so removing them "
                "would change the model's outputs.",
                expected=f"nodes of op types {list(_BYPASSABLE_OP_TYPES)}",
                fix="remove only pass-through nodes, or cut the graph with ExtractSubgraph",
            )
        edited = _copy(model)
        graph_outputs = {o.name for o in edited.graph.output}
        graph_inputs = {i.name for i in edited.graph.input}
        targets = [
            n for n in edited.graph.node if n.name in self.names or (not self.names and n.op_type in self.op_types)
        ]
        for node in targets:
            if (
                node.op_type == "Dropout"
                and len(node.output) > 1
                and node.output[1]
                and _is_used(edited, node.output[1])
            ):
                raise GraphEditError(f"Dropout {node.name!r}'s mask output is used; it cannot be bypassed.")
            source, target = node.input[0], node.output[0]
            if target in graph_outputs and source in graph_inputs:
                continue  # input passed straight to output: the node is the only thing that names it
            if target in graph_outputs:
                # keep the output's name: the producer of `source` writes `target` directly
                _rename_everywhere(edited, source, target, skip=node)
            else:
                for consumer in edited.graph.node:
                    for i, name in enumerate(consumer.input):
                        if name == target:
                            consumer.input[i] = source
            edited.graph.node.remove(node)
        return edited


def _is_used(model: Any, name: str) -> bool:
    return any(name in node.input for node in model.graph.node) or name in {o.name for o in model.graph.output}


def _rename_everywhere(model: Any, old: str, new: str, skip: Any) -> None:
    for node in model.graph.node:
        if node is skip:
            continue
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


@dataclass(frozen=True)
class ConvertOpset(Edit):
    """Convert the model to another opset of the default domain with ONNX's version converter."""

    kind: ClassVar[str] = "convert_opset"
    version: int = 17

    def __post_init__(self) -> None:
        if not 7 <= self.version <= 23:
            raise ConfigError(f"ConvertOpset.version {self.version} is outside 7..23.")

    def apply(self, model: Any) -> Any:
        onnx = require("onnx", purpose="Opset conversion")
        try:
            converted = onnx.version_converter.convert_version(_copy(model), self.version)
        except Exception as exc:
            raise GraphEditError(
                f"Converting to opset {self.version} failed: {type(exc).__name__}: {exc}",
                fix="convert before fusing (onnxruntime's fused ops have no opset adapters), or pick a closer opset",
            ) from exc
        return converted


EDIT_TYPES: dict[str, type[Edit]] = {
    cls.kind: cls
    for cls in (
        FoldConstants,
        Cleanup,
        TopologicalSort,
        InferShapes,
        FuseTransformer,
        OverrideInputShapes,
        RenameTensors,
        CastIO,
        AddOutputs,
        RemoveOutputs,
        ExtractSubgraph,
        RemoveNodes,
        ConvertOpset,
    )
}


def edit_from_dict(entry: Mapping[str, Any]) -> Edit:
    """Rebuild an edit from its plan entry {"kind": ..., **fields}."""
    entry = dict(entry)
    kind = entry.pop("kind", None)
    if kind not in EDIT_TYPES:
        raise ConfigError(f"Unknown edit kind {kind!r}.", expected=f"one of {sorted(EDIT_TYPES)}")
    return EDIT_TYPES[kind].from_dict(entry)


@dataclass(frozen=True)
class SurgeryPlan:
    """An ordered list of edits; serialisable to JSON and back."""

    edits: tuple[Edit, ...] = ()

    def __post_init__(self) -> None:
        bad = [e for e in self.edits if not isinstance(e, Edit)]
        if bad:
            raise ConfigError(f"SurgeryPlan takes Edit objects, got {bad}.")

    def then(self, edit: Edit) -> SurgeryPlan:
        return SurgeryPlan((*self.edits, edit))

    def to_json(self) -> str:
        return json.dumps([e.to_plan_entry() for e in self.edits], indent=2)

    @classmethod
    def from_json(cls, text: str) -> SurgeryPlan:
        return cls(tuple(edit_from_dict(entry) for entry in json.loads(text)))

    def __len__(self) -> int:
        return len(self.edits)

    def _repr_html_(self) -> str:
        items = "".join(f"<li><code>{e.describe()}</code></li>" for e in self.edits)
        return f"<b>Surgery plan</b><ol>{items}</ol>"


def run_tensors(model: Any, feeds: dict[str, np.ndarray], names: Any) -> dict[str, np.ndarray]:
    """Values of any tensors of `model` (graph inputs, intermediates or outputs) on one feed dict."""
    from workbench.stages.surgery.edits import AddOutputs

    names = list(names)
    values = {n: feeds[n] for n in names if n in feeds}
    wanted = [n for n in names if n not in feeds]
    if wanted:
        exposed = AddOutputs(tuple(wanted)).apply(model)
        (outputs,), _ = run_model(exposed, [feeds], wanted)
        values.update(outputs)
    return values
