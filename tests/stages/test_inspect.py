"""Graph inspection: summary facts, unused parts, the node table with inferred shapes, figures, and errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from workbench.errors import ConfigError, ModelSourceError, WorkbenchError  # noqa: E402
from workbench.stages.surgery.inspect import GraphSummary, NodeTable, inspect_model, node_table  # noqa: E402

BERT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _snapshot(model) -> bytes:
    return model.SerializeToString(deterministic=True)


def _constant_sizes(model) -> int:
    return sum(
        numpy_helper.to_array(a.t).size
        for n in model.graph.node
        if n.op_type == "Constant"
        for a in n.attribute
        if a.name == "value"
    )


def _graph_with_unused_parts():
    """x -> Relu -> y. Plus: initializer `spare` nobody reads, input `ignored` nobody reads, and a Neg node
    (reading `w`) whose output reaches no graph output."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
    ignored = helper.make_tensor_value_info("ignored", TensorProto.INT64, [None, 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])
    w = numpy_helper.from_array(np.ones((4,), np.float32), "w")
    spare = numpy_helper.from_array(np.zeros((3, 5), np.float16), "spare")
    nodes = [
        helper.make_node("Relu", ["x"], ["y"], name="relu"),
        helper.make_node("Neg", ["w"], ["w_neg"], name="orphan_neg"),
    ]
    graph = helper.make_graph(nodes, "unused", [x, ignored], [y], initializer=[w, spare])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="hand")


def _chain(n_nodes: int):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info(f"t{n_nodes}", TensorProto.FLOAT, [2, 3])
    nodes = [
        helper.make_node("Relu" if i % 2 else "Abs", ["x" if i == 0 else f"t{i}"], [f"t{i + 1}"], name=f"Step_{i}")
        for i in range(n_nodes)
    ]
    graph = helper.make_graph(nodes, "chain", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.fixture(scope="module")
def bert_model(tiny_bert_onnx):
    return onnx.load(str(tiny_bert_onnx))


@pytest.fixture(scope="module")
def bert_summary(tiny_bert_onnx) -> GraphSummary:
    return inspect_model(tiny_bert_onnx)


@pytest.fixture(scope="module")
def bert_table(tiny_bert_onnx) -> NodeTable:
    return node_table(tiny_bert_onnx)


# --- inspect_model ---------------------------------------------------------------------------------------------


def test_tiny_bert_header_and_io(bert_summary, tiny_bert_onnx):
    s = bert_summary
    assert s.path == tiny_bert_onnx
    assert s.opset == 17 and s.opset_imports == {"ai.onnx": 17}
    assert s.producer_name == "pytorch" and s.producer_version
    assert s.ir_version >= 7
    assert [(t.name, t.dtype, t.shape) for t in s.inputs] == [(n, "int64", ["batch", "sequence"]) for n in BERT_INPUTS]
    assert [(t.name, t.dtype, t.shape) for t in s.outputs] == [
        ("last_hidden_state", "float32", ["batch", "sequence", 32])
    ]
    assert not s.has_external_data
    assert not s.has_unused_parts


def test_tiny_bert_op_counts(bert_summary, bert_model):
    s = bert_summary
    assert sum(s.op_counts.values()) == s.node_count == len(bert_model.graph.node)
    assert s.op_counts["MatMul"] > 0
    counts = list(s.op_counts.values())
    assert counts == sorted(counts, reverse=True)


def test_tiny_bert_parameters_match_numpy(bert_summary, bert_model):
    s = bert_summary
    arrays = [numpy_helper.to_array(t) for t in bert_model.graph.initializer]
    initializer_sum = sum(a.size for a in arrays)
    assert s.initializer_parameters == initializer_sum
    assert s.constant_parameters == _constant_sizes(bert_model)
    assert s.total_parameters == initializer_sum + s.constant_parameters == sum(s.parameters_by_dtype.values())
    assert s.bytes_by_dtype["float32"] == 4 * s.parameters_by_dtype["float32"]
    assert s.total_bytes == sum(s.bytes_by_dtype.values())
    assert sum(a.nbytes for a in arrays if a.dtype == np.float32) <= s.bytes_by_dtype["float32"]


def test_tiny_bert_largest_initializer_is_the_word_embedding(bert_summary):
    largest = bert_summary.largest_initializers
    assert 0 < len(largest) <= 10
    top = largest[0]
    assert "word_embeddings" in top.name
    assert (top.dtype, top.shape, top.parameters, top.bytes) == ("float32", [30522, 32], 30522 * 32, 30522 * 32 * 4)
    assert [w.bytes for w in largest] == sorted((w.bytes for w in largest), reverse=True)


def test_summary_to_dict_is_json_and_html_renders(bert_summary):
    d = json.loads(json.dumps(bert_summary.to_dict()))
    assert d["inputs"][0] == {"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}
    assert d["node_count"] == bert_summary.node_count and d["path"] == str(bert_summary.path)
    page = bert_summary._repr_html_()
    assert "opset 17" in page and "input_ids" in page and "last_hidden_state" in page and "MatMul" in page
    assert "<table>" in page


def test_unused_initializer_input_and_dead_node_are_reported():
    s = inspect_model(_graph_with_unused_parts())
    assert s.path is None and s.producer_name == "hand"
    assert s.unused_initializers == ("spare",)  # `w` is read (by the dead node), so it is not "unused"
    assert s.unused_inputs == ("ignored",)
    assert s.dead_nodes == ("orphan_neg",)
    assert s.has_unused_parts
    assert [t.shape for t in s.inputs] == [["batch", 4], [None, 2]]
    assert s.parameters_by_dtype == {"float16": 15, "float32": 4} and s.bytes_by_dtype == {"float16": 30, "float32": 16}
    assert "dead nodes" in s._repr_html_()


def test_a_clean_graph_reports_nothing_unused():
    s = inspect_model(_chain(3))
    assert (s.unused_initializers, s.unused_inputs, s.dead_nodes) == ((), (), ())
    assert s.total_parameters == 0 and s.largest_initializers == ()
    assert len(s.weight_size_figure().data) == 1  # an empty chart, not an error


def test_outer_scope_reads_from_subgraphs_count_as_uses():
    # an If whose branches read the initializer `w` and the input `x` from the outer graph
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])
    out = helper.make_tensor_value_info("out", TensorProto.FLOAT, [4])
    w = numpy_helper.from_array(np.ones((4,), np.float32), "w")

    def branch(op: str):
        result = helper.make_tensor_value_info(f"{op}_out", TensorProto.FLOAT, [4])
        return helper.make_graph([helper.make_node(op, ["x", "w"], [f"{op}_out"])], op, [], [result])

    node = helper.make_node("If", ["cond"], ["out"], then_branch=branch("Add"), else_branch=branch("Sub"))
    model = helper.make_model(
        helper.make_graph([node], "if", [cond, x], [out], initializer=[w]), opset_imports=[helper.make_opsetid("", 17)]
    )
    s = inspect_model(model)
    assert (s.unused_initializers, s.unused_inputs, s.dead_nodes) == ((), (), ())
    assert s.op_counts == {"If": 1} and s.node_count == 1


def test_external_data_is_detected_and_counted_without_reading_it(tmp_path):
    model = _graph_with_unused_parts()
    big = numpy_helper.from_array(np.zeros((64, 64), np.float32), "big")
    model.graph.initializer.append(big)
    path = tmp_path / "ext.onnx"
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.onnx.data",
        size_threshold=1024,
    )
    s = inspect_model(path)
    assert s.has_external_data
    assert s.largest_initializers[0].name == "big" and s.largest_initializers[0].bytes == 64 * 64 * 4
    assert s.parameters_by_dtype["float32"] == 64 * 64 + 4


def test_a_folder_with_model_onnx_is_accepted(tiny_bert_onnx, bert_summary):
    assert inspect_model(tiny_bert_onnx.parent).node_count == bert_summary.node_count


@pytest.mark.parametrize("kind_of_bad", ["truncated", "garbage"])
def test_truncated_or_corrupt_file_is_a_workbench_error(tiny_bert_onnx, tmp_path, kind_of_bad):
    data = tiny_bert_onnx.read_bytes()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(data[: len(data) // 3] if kind_of_bad == "truncated" else b"not an onnx model at all")
    with pytest.raises(WorkbenchError) as info:
        inspect_model(bad)
    assert isinstance(info.value, ModelSourceError)
    with pytest.raises(ModelSourceError):
        node_table(bad)


def test_missing_file_and_wrong_type_are_model_source_errors(tmp_path):
    with pytest.raises(ModelSourceError, match="does not exist"):
        inspect_model(tmp_path / "nope.onnx")
    with pytest.raises(ModelSourceError, match="does not exist"):
        node_table(str(tmp_path / "nope.onnx"))
    with pytest.raises(ModelSourceError, match="ModelProto"):
        inspect_model(42)


def test_every_tiny_kind_inspects(tiny_model_dir, tiny_kind, tmp_path):
    from workbench.models import load_model
    from workbench.stages.export import export_onnx

    path = export_onnx(load_model(tiny_model_dir(tiny_kind)), tmp_path / "model.onnx").path
    s = inspect_model(path)
    assert s.opset == 17 and s.node_count == sum(s.op_counts.values()) > 0
    assert {"input_ids", "attention_mask"} <= {t.name for t in s.inputs}
    assert all(t.dtype == "int64" and t.shape == ["batch", "sequence"] for t in s.inputs)
    assert s.outputs[0].shape == ["batch", "sequence", 32]
    assert s.largest_initializers[0].shape == [30522, 32]
    assert not s.has_unused_parts
    matmuls = node_table(path, op_types=["MatMul"])
    assert len(matmuls) == s.op_counts["MatMul"]
    assert all(shape is not None and len(shape) >= 2 for row in matmuls for shape in row.output_shapes)


# --- node_table ------------------------------------------------------------------------------------------------


def test_node_table_lists_every_node_in_graph_order(bert_table, bert_model):
    assert len(bert_table) == bert_table.total_nodes == len(bert_model.graph.node)
    assert [r.index for r in bert_table] == list(range(len(bert_model.graph.node)))
    assert [(r.name, r.op_type) for r in bert_table] == [(n.name, n.op_type) for n in bert_model.graph.node]
    assert [list(r.outputs) for r in bert_table] == [list(n.output) for n in bert_model.graph.node]
    assert all(r.domain == "ai.onnx" for r in bert_table)


def test_filter_by_op_type_returns_only_those_ops(bert_table, bert_summary):
    matmuls = bert_table.filter(op_types=["MatMul"])
    assert len(matmuls) == bert_summary.op_counts["MatMul"] > 0
    assert {r.op_type for r in matmuls} == {"MatMul"}
    assert [r.index for r in matmuls] == sorted(r.index for r in matmuls)
    assert len(bert_table) == bert_summary.node_count  # filter returned a new table
    both = bert_table.filter(op_types=("MatMul", "Softmax"))
    assert len(both) == bert_summary.op_counts["MatMul"] + bert_summary.op_counts["Softmax"]
    assert len(bert_table.filter(op_types="matmul")) == len(matmuls)  # one name, any case


def test_filter_by_name_is_case_insensitive(bert_table):
    lower = bert_table.filter(name_contains="attention/self/query")
    upper = bert_table.filter(name_contains="ATTENTION/Self/QUERY")
    assert len(lower) > 0 and lower.rows == upper.rows
    assert all("attention/self/query" in r.name.lower() for r in lower)
    combined = bert_table.filter(name_contains="Query", op_types=["MatMul"])
    assert len(combined) == 2 and {r.op_type for r in combined} == {"MatMul"}  # one per layer


def test_node_table_arguments_filter_like_the_method(tiny_bert_onnx, bert_table):
    direct = node_table(tiny_bert_onnx, name_contains="LAYER.1", op_types=["MatMul", "Add"])
    assert direct.rows == bert_table.filter(name_contains="layer.1", op_types=["matmul", "add"]).rows
    assert len(direct) > 0


def test_unknown_op_type_is_an_empty_table_not_an_error(bert_table):
    assert len(bert_table.filter(op_types=["NoSuchOp"])) == 0
    assert bert_table.filter(op_types=["NoSuchOp"]).to_rows() == []


@pytest.mark.parametrize("op_types", [["MatMul", 3], [None], 5])
def test_non_string_op_types_are_a_config_error(bert_table, tiny_bert_onnx, op_types):
    with pytest.raises(ConfigError):
        bert_table.filter(op_types=op_types)
    with pytest.raises(ConfigError):
        node_table(tiny_bert_onnx, op_types=op_types)


def test_non_string_name_filter_is_a_config_error(bert_table):
    with pytest.raises(ConfigError):
        bert_table.filter(name_contains=None)


def test_matmul_outputs_have_inferred_shapes(bert_table):
    matmuls = bert_table.filter(op_types=["MatMul"])
    for row in matmuls:
        (shape,) = row.output_shapes
        assert shape is not None and len(shape) in (3, 4), (row.name, shape)
        assert row.output_dtypes == ("float32",)
        assert all(isinstance(d, (int, str)) for d in shape)
    query = bert_table.filter(name_contains="layer.0/attention/self/query/MatMul").rows[0]
    assert query.output_shapes[0][-1] == 32 and len(query.output_shapes[0]) == 3


def test_every_node_output_is_typed_on_the_tiny_bert(bert_table):
    assert bert_table.shape_inference in ("onnx", "onnxruntime-symbolic")
    missing = [(r.name, o) for r in bert_table for o, d in zip(r.outputs, r.output_dtypes) if o and d is None]
    assert missing == []


def test_symbolic_inference_keeps_the_dim_names(bert_table):
    # onnx's own inference renames batch/sequence to "unk__N" after Reshape/Shape chains; onnxruntime's
    # symbolic inference keeps the names the exporter gave
    pytest.importorskip("onnxruntime")
    assert bert_table.shape_inference == "onnxruntime-symbolic" and bert_table.notes
    query = bert_table.filter(name_contains="layer.0/attention/self/query/MatMul").rows[0]
    assert query.output_shapes == (["batch", "sequence", 32],)
    anonymous = [
        r.name
        for r in bert_table
        for s in r.output_shapes
        if s
        for d in s
        if d is None or (isinstance(d, str) and d.startswith("unk__"))
    ]
    assert anonymous == []


def test_contrib_ops_get_shapes_from_symbolic_inference():
    # onnx's inference knows no com.microsoft ops (what fusion produces): their outputs, and everything
    # downstream, stay untyped unless onnxruntime's symbolic inference fills them in
    pytest.importorskip("onnxruntime")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Gelu", ["x"], ["g"], name="gelu", domain="com.microsoft"),
        helper.make_node("Relu", ["g"], ["y"], name="relu"),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "contrib", [x], [y]),
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)],
    )
    table = node_table(model)
    assert table.shape_inference == "onnxruntime-symbolic"
    assert [(r.domain, r.output_shapes, r.output_dtypes) for r in table] == [
        ("com.microsoft", (["batch", 8],), ("float32",)),
        ("ai.onnx", (["batch", 8],), ("float32",)),
    ]
    assert inspect_model(model).opset_imports == {"ai.onnx": 17, "com.microsoft": 1}


def test_incomplete_symbolic_inference_keeps_partial_shapes_and_writes_no_file(tmp_path, monkeypatch):
    # onnxruntime's public infer_shapes saves sym_shape_infer_temp.onnx into the current folder and raises
    # when it meets a node it cannot follow; the workbench must do neither
    pytest.importorskip("onnxruntime")
    monkeypatch.chdir(tmp_path)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [
        helper.make_node("Gelu", ["x"], ["a"], name="gelu", domain="com.microsoft"),
        helper.make_node("Mystery", ["a"], ["b"], name="mystery", domain="custom.ops"),
        helper.make_node("Relu", ["b"], ["y"], name="relu"),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "partial", [x], [y]),
        opset_imports=[
            helper.make_opsetid("", 17),
            helper.make_opsetid("com.microsoft", 1),
            helper.make_opsetid("custom.ops", 1),
        ],
    )
    table = node_table(model)
    assert [r.output_shapes for r in table] == [(["batch", 8],), (None,), (None,)]
    assert [r.output_dtypes for r in table] == [("float32",), (None,), ("float32",)]  # y declares its dtype
    assert any("still lack" in note for note in table.notes)
    assert list(tmp_path.iterdir()) == []


def test_without_inference_only_recorded_shapes_are_known():
    model = _chain(3)
    table = node_table(model, infer_shapes=False)
    assert table.shape_inference == "none"
    assert [r.output_shapes for r in table] == [(None,), (None,), ([2, 3],)]  # only the graph output records one
    inferred = node_table(model)
    assert [r.output_shapes for r in inferred] == [([2, 3],)] * 3
    assert [r.output_dtypes for r in inferred] == [("float32",)] * 3


def test_to_rows_are_plain_dicts(bert_table):
    rows = bert_table.filter(op_types=["Softmax"]).to_rows()
    assert len(rows) == 2 and rows[0]["op_type"] == "Softmax"
    assert set(rows[0]) == {"index", "name", "op_type", "domain", "inputs", "outputs", "output_shapes", "output_dtypes"}
    json.dumps(rows)


def test_html_caps_at_200_rows():
    table = node_table(_chain(250))
    page = table._repr_html_()
    assert page.count("<tr>") == 201  # header + 200 rows
    assert "... 50 more" in page
    small = table.filter(name_contains="step_1")
    assert "more" not in small._repr_html_() and "Step_1" in small._repr_html_()


# --- the input model is never modified ---------------------------------------------------------------------------


def test_input_model_is_not_modified(bert_model):
    before = _snapshot(bert_model)
    inspect_model(bert_model)
    table = node_table(bert_model)
    assert _snapshot(bert_model) == before
    assert len(bert_model.graph.value_info) == 0 and len(table) == len(bert_model.graph.node)
    hand = _graph_with_unused_parts()
    before = _snapshot(hand)
    inspect_model(hand)
    node_table(hand)
    assert _snapshot(hand) == before


def test_input_file_is_not_modified(tiny_bert_onnx):
    before = tiny_bert_onnx.read_bytes()
    inspect_model(tiny_bert_onnx)
    node_table(tiny_bert_onnx)
    assert tiny_bert_onnx.read_bytes() == before


# --- figures -----------------------------------------------------------------------------------------------------


def test_op_histogram_figure(bert_summary):
    pytest.importorskip("plotly")
    figure = bert_summary.op_histogram_figure()
    assert len(figure.data) == 1 and figure.data[0].type == "bar"
    assert "MatMul" in list(figure.data[0].x)
    assert sum(figure.data[0].y) == bert_summary.node_count


def test_weight_size_figure(bert_summary):
    pytest.importorskip("plotly")
    figure = bert_summary.weight_size_figure()
    assert len(figure.data) == 1 and len(figure.data[0].y) == len(bert_summary.largest_initializers) > 0
    assert "word_embeddings" in figure.data[0].y[-1]  # the biggest bar is drawn on top


# --- import weight -----------------------------------------------------------------------------------------------


def test_importing_the_module_stays_light():
    code = (
        "import json, sys\nimport workbench.stages.surgery.inspect\n"
        "print(json.dumps(sorted(m for m in ('torch', 'onnxruntime', 'onnx', 'plotly') if m in sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
