"""Every graph edit, on tiny BERT-, DistilBERT- and RoBERTa-shaped models: checked numerically, input untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from workbench.data import tokenize_batches  # noqa: E402
from workbench.errors import ConfigError, WorkbenchError  # noqa: E402
from workbench.models import load_model  # noqa: E402
from workbench.stages.export import ExportConfig, export_onnx  # noqa: E402
from workbench.stages.fusion import FusionConfig  # noqa: E402
from workbench.stages.surgery import edits as E  # noqa: E402
from workbench.stages.surgery.edits import run_tensors
from workbench.stages.surgery.run import apply_edit, run_surgery

TEXTS = ["hello there", "a somewhat longer sentence, with punctuation and 42 numbers", "short"]


@pytest.fixture(scope="module")
def exported(tiny_model_dir, tmp_path_factory):
    """kind -> (source, onnx model, check feeds), exported once per module."""
    cache = {}

    def get(kind):
        if kind not in cache:
            source = load_model(tiny_model_dir(kind))
            path = tmp_path_factory.mktemp(f"edits-{kind}") / "model.onnx"
            config = ExportConfig(check_batch_sizes=(2,), check_sequence_lengths=(12,))
            result = export_onnx(source, path, config)
            feeds = tokenize_batches(
                source.load_tokenizer(), TEXTS, batch_size=3, sequence_length=12, input_names=result.input_names
            )
            cache[kind] = (source, onnx.load(str(path)), feeds)
        return cache[kind]

    return get


def _first(model, op_type, index=0):
    return [n for n in model.graph.node if n.op_type == op_type][index]


def _linear(model):
    """(MatMul output, the bias Add's output) of a linear layer: a small subgraph to cut out."""
    for matmul in (n for n in model.graph.node if n.op_type == "MatMul"):
        add = next((n for n in model.graph.node if matmul.output[0] in n.input and n.op_type == "Add"), None)
        if add is not None:
            return matmul.output[0], add.output[0]
    raise AssertionError("no MatMul + Add in the graph")


def _edits_for(source, model):
    matmul, consumer = _linear(model)
    fusion = FusionConfig.for_source(source)
    return [
        E.FoldConstants(),
        E.Cleanup(),
        E.TopologicalSort(),
        E.InferShapes(),
        E.InferShapes(symbolic=True),
        E.FuseTransformer(fusion.model_type, fusion.num_heads, fusion.hidden_size),
        E.OverrideInputShapes({"input_ids": (3, 16)}),
        E.OverrideInputShapes({"input_ids": ("batch_size", "tokens")}),
        E.RenameTensors({"input_ids": "ids", "last_hidden_state": "hidden"}),
        E.CastIO(inputs={"input_ids": "int32", "attention_mask": "int32"}),
        E.AddOutputs((matmul,)),
        E.ExtractSubgraph((matmul,), (consumer,)),
        E.RemoveNodes(),
        E.ConvertOpset(18),
    ]


@pytest.mark.parametrize("index", range(14), ids=lambda i: f"edit{i}")
def test_edit_preserves_outputs_and_leaves_input_unchanged(exported, tiny_kind, index):
    source, model, feeds = exported(tiny_kind)
    edit = _edits_for(source, model)[index]
    before = model.SerializeToString()
    edited, report = apply_edit(model, edit, check_feeds=feeds)
    assert model.SerializeToString() == before, f"{edit.kind} modified its input model"
    assert report.check is not None and report.check.passed and report.check.enforced
    assert report.check.compared, "the check must say what it compared"
    if edit.kind != "fuse_transformer":  # the checker does not know onnxruntime's fused contrib ops
        onnx.checker.check_model(edited)
    # the plan entry round-trips
    assert E.edit_from_dict(json.loads(json.dumps(edit.to_plan_entry()))) == edit


def test_edits_change_what_they_claim(exported):
    source, model, feeds = exported("bert")
    folded, report = apply_edit(model, E.FoldConstants(), check_feeds=feeds)
    assert report.diff.op_changes.get("Constant", 0) < 0 and report.diff.nodes_after < report.diff.nodes_before
    renamed, _ = apply_edit(model, E.RenameTensors({"input_ids": "ids"}), check_feeds=feeds)
    assert [i.name for i in renamed.graph.input][0] == "ids"
    cast, report = apply_edit(model, E.CastIO(inputs={"input_ids": "int32"}), check_feeds=feeds)
    assert cast.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT32
    static, _ = apply_edit(model, E.OverrideInputShapes({"input_ids": (3, 16)}), check_feeds=feeds)
    assert [d.dim_value for d in static.graph.input[0].type.tensor_type.shape.dim] == [3, 16]
    no_identity, _ = apply_edit(model, E.RemoveNodes(), check_feeds=feeds)
    assert not any(n.op_type == "Identity" for n in no_identity.graph.node)
    fused, report = apply_edit(model, E.FuseTransformer(num_heads=4, hidden_size=32), check_feeds=feeds)
    assert any(n.op_type == "Attention" for n in fused.graph.node)
    converted, _ = apply_edit(model, E.ConvertOpset(18), check_feeds=feeds)
    assert next(o.version for o in converted.opset_import if o.domain in ("", "ai.onnx")) == 18


def test_extract_compares_with_the_input_models_tensors(exported):
    source, model, feeds = exported("bert")
    matmul, consumer = _linear(model)
    extracted, report = apply_edit(model, E.ExtractSubgraph((matmul,), (consumer,)), check_feeds=feeds)
    assert [i.name for i in extracted.graph.input] == [matmul]
    assert report.check.compared == ((consumer, consumer),)
    expected = run_tensors(model, feeds[0], [consumer])[consumer]
    assert expected.shape[0] == 3 and report.check.max_abs_diff == 0.0


def test_lossy_output_cast_is_reported_not_raised(exported):
    _, model, feeds = exported("bert")
    _, report = apply_edit(model, E.CastIO(outputs={"last_hidden_state": "float16"}), check_feeds=feeds)
    assert not report.check.enforced and 0 < report.check.max_abs_diff < 1e-2


def test_a_breaking_edit_raises(exported, monkeypatch):
    """An edit that claims to preserve outputs but does not is caught by the check."""
    _, model, feeds = exported("bert")

    class Sabotage(E.Cleanup):
        def apply(self, model):
            edited = super().apply(model)
            weights = next(t for t in edited.graph.initializer if len(t.dims) == 2 and t.dims[0] == 32)
            values = onnx.numpy_helper.to_array(weights) * 1.5
            weights.CopyFrom(onnx.numpy_helper.from_array(values.astype(np.float32), weights.name))
            return edited

    with pytest.raises(WorkbenchError, match="changed the model's outputs"):
        apply_edit(model, Sabotage(), check_feeds=feeds)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (E.RenameTensors({"no_such_tensor": "x"}), "not in the graph"),
        (E.RenameTensors({"input_ids": "attention_mask"}), "already name"),
        (E.AddOutputs(("no_such_tensor",)), "not in the graph"),
        (E.RemoveOutputs(("last_hidden_state",)), "every output"),
        (E.OverrideInputShapes({"input_ids": (1, 2, 3)}), "rank"),
        (E.OverrideInputShapes({"no_such_input": (1, 2)}), "not in the graph"),
        (E.CastIO(inputs={"no_such_input": "int32"}), "not in the graph"),
        (E.RemoveNodes(names=("no_such_node",)), "not in the graph"),
        (E.ExtractSubgraph(("attention_mask",), ("last_hidden_state",)), "also depend on"),
    ],
    ids=lambda value: value if isinstance(value, str) else value.kind,
)
def test_bad_edits_name_the_problem_and_the_fix(exported, edit, message):
    _, model, _ = exported("bert")
    with pytest.raises(WorkbenchError, match=message) as caught:
        edit.apply(model)
    assert "Fix:" in str(caught.value)


def test_removing_an_op_the_edit_does_not_handle_is_refused(exported):
    _, model, _ = exported("bert")
    with pytest.raises(ConfigError, match="only pass-through ops"):
        E.RemoveNodes(op_types=("Add",))
    add = _first(model, "Add").name
    with pytest.raises(WorkbenchError, match="cannot bypass"):
        E.RemoveNodes(names=(add,)).apply(model)


def test_impossible_static_shape_fails_the_check(exported):
    """Sequence 600 exceeds the 512 position embeddings: the edited model cannot run, and that is an error."""
    _, model, feeds = exported("bert")
    with pytest.raises(WorkbenchError):
        apply_edit(model, E.OverrideInputShapes({"input_ids": (3, 600)}), check_feeds=feeds)


@pytest.mark.parametrize("bad", [{"input_ids": (0, 4)}, {"input_ids": (1.5,)}, {}])
def test_invalid_shape_configs_are_rejected(bad):
    with pytest.raises(ConfigError):
        E.OverrideInputShapes(bad)


def test_plan_runs_in_order_and_round_trips(exported, tmp_path):
    source, model, feeds = exported("distilbert")
    path = tmp_path / "in.onnx"
    onnx.save(model, str(path))
    plan = E.SurgeryPlan(
        (
            E.FoldConstants(),
            E.RemoveNodes(),
            E.RenameTensors({"last_hidden_state": "hidden"}),
            E.CastIO(inputs={"input_ids": "int32"}),
            E.Cleanup(),
        )
    )
    assert E.SurgeryPlan.from_json(plan.to_json()) == plan
    result = run_surgery(path, tmp_path / "out.onnx", plan, check_feeds=feeds, latency_repeats=2)
    assert [r.edit.kind for r in result.reports] == [
        "fold_constants",
        "remove_nodes",
        "rename_tensors",
        "cast_io",
        "cleanup",
    ]
    assert all(r.check.passed for r in result.reports)
    assert all(r.diff.latency_ms_before and r.diff.latency_ms_after for r in result.reports)
    out = onnx.load(str(result.path))
    assert [o.name for o in out.graph.output] == ["hidden"]
    assert out.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert json.loads(json.dumps(result.to_dict()))["plan"][0]["kind"] == "fold_constants"


def test_failing_plan_writes_nothing(exported, tmp_path):
    _, model, feeds = exported("bert")
    path = tmp_path / "in.onnx"
    onnx.save(model, str(path))
    plan = E.SurgeryPlan((E.FoldConstants(), E.RenameTensors({"nope": "x"})))
    with pytest.raises(WorkbenchError):
        run_surgery(path, tmp_path / "out.onnx", plan, check_feeds=feeds)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]


def test_truncated_file_is_a_clear_error(exported, tmp_path):
    _, model, _ = exported("bert")
    data = model.SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WorkbenchError, match="truncated"):
        run_surgery(path, tmp_path / "out.onnx", E.SurgeryPlan((E.Cleanup(),)))
    assert not (tmp_path / "out.onnx").exists()


def test_unknown_edit_kind_in_a_plan(tmp_path):
    with pytest.raises(ConfigError, match="Unknown edit kind"):
        E.SurgeryPlan.from_json('[{"kind": "make_it_fast"}]')


@pytest.mark.slow
def test_model_above_2gb_round_trips_through_an_edit(tmp_path):
    """Two tables of just over 1 GiB each: the model only fits in files with external data."""
    from onnx import TensorProto, helper, numpy_helper

    from workbench.onnx.io import model_size_mb, save_onnx

    rows = (2**30 + 2**24) // (256 * 4)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table_a", "idx"], ["a"], axis=0),
            helper.make_node("Gather", ["table_b", "idx"], ["b"], axis=0),
            helper.make_node("Add", ["a", "b"], ["y"]),
        ],
        "big",
        [helper.make_tensor_value_info("idx", TensorProto.INT64, ["k"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["k", 256])],
    )
    for name, offset in (("table_a", 0), ("table_b", 1000)):
        table = np.zeros((rows, 256), dtype=np.float32)
        table[:, 0] = np.arange(rows) % 997 + offset
        graph.initializer.append(numpy_helper.from_array(table, name))
        del table
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    source = save_onnx(model, tmp_path / "big.onnx")
    del model, graph
    assert (tmp_path / "big.onnx.data").is_file() and model_size_mb(source) > 2147

    feeds = [{"idx": np.array([0, 5, rows - 1], dtype=np.int64)}]
    result = run_surgery(
        source, tmp_path / "renamed.onnx", E.SurgeryPlan((E.RenameTensors({"y": "sum"}),)), check_feeds=feeds
    )
    assert result.reports[0].check.passed and result.reports[0].check.max_abs_diff == 0.0
    assert (tmp_path / "renamed.onnx.data").is_file() and model_size_mb(result.path) > 2147
    header = onnx.load(str(result.path), load_external_data=False)
    assert [o.name for o in header.graph.output] == ["sum"]
    onnx.checker.check_model(str(result.path))
