"""InspectView and SurgeryView driven the way a user drives them, on the tiny BERT exported to ONNX."""

from __future__ import annotations

import hashlib
import html
import json
import subprocess
import sys
import urllib.request

import ipywidgets as widgets
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
go = pytest.importorskip("plotly.graph_objects")

from workbench.data import tokenize_batches  # noqa: E402
from workbench.errors import ConfigError, ModelSourceError  # noqa: E402
from workbench.models import load_model  # noqa: E402
from workbench.stages.surgery import edits as E  # noqa: E402
from workbench.stages.surgery.edits import EDIT_TYPES, GraphEditError, SurgeryPlan  # noqa: E402
from workbench.stages.surgery.inspect import GraphSummary, NodeTable  # noqa: E402
from workbench.stages.surgery.run import SurgeryResult  # noqa: E402
from workbench.ui import InspectView, SurgeryView  # noqa: E402
from workbench.ui import surgery as ui_surgery  # noqa: E402

TEXTS = ["hello there", "a somewhat longer sentence, with punctuation and 42 numbers", "short"]


@pytest.fixture(scope="module")
def feeds(tiny_model_dir, tiny_bert_onnx):
    inputs = [i.name for i in onnx.load(str(tiny_bert_onnx), load_external_data=False).graph.input]
    return tokenize_batches(
        load_model(tiny_model_dir("bert")).load_tokenizer(), TEXTS, batch_size=3, sequence_length=12, input_names=inputs
    )


def panel_text(view) -> str:
    return html.unescape(view.error_output.value)


def descendants(widget):
    yield widget
    for child in getattr(widget, "children", ()):
        yield from descendants(child)


def in_tree(view, part) -> bool:
    return any(part is w for w in descendants(view.widget))


def add(view, kind, **options):
    """Choose `kind` in the Dropdown, set its option widgets, click "Add edit"."""
    view.kind.value = kind
    for name, value in options.items():
        view.option_controls[name].value = value
    view.add_button.click()


# -- InspectView -----------------------------------------------------------------------------------------------


def test_inspect_view_is_built_without_reading_the_model(tmp_path):
    view = InspectView(tmp_path / "missing.onnx")
    assert view.result is None and view.table is None and view.status.value == "not run"
    assert list(view.controls) == ["name_contains", "op_types"]
    assert view.filter_button.disabled
    for part in [
        view.run_button,
        view.filter_button,
        view.status,
        view.error_output,
        view.output,
        view.netron_output,
        *view.controls.values(),
    ]:
        assert in_tree(view, part)
    view.click()  # the missing file is a clear error in the panel
    assert isinstance(view.error, ModelSourceError) and "does not exist" in panel_text(view)
    assert "Fix: " in panel_text(view) and view.result is None and view.filter_button.disabled


def test_inspect_view_shows_summary_charts_and_node_table(tiny_bert_onnx):
    view = InspectView(tiny_bert_onnx)
    view.click()
    assert view.error is None and view.status.value.startswith("done in")
    summary = view.result
    assert isinstance(summary, GraphSummary) and summary.path == tiny_bert_onnx
    assert isinstance(view.table, NodeTable) and len(view.table) == view.table.total_nodes == summary.node_count
    assert view.filtered_table == view.table  # no filter set
    assert [type(o) for o in view.shown] == [GraphSummary, go.Figure, go.Figure, NodeTable]
    assert view.shown[0] is summary and view.shown[3] is view.filtered_table
    assert "Op types" in view.shown[1].layout.title.text and "Largest weights" in view.shown[2].layout.title.text
    data = [o["data"] for o in view.output.outputs]
    assert "ONNX graph" in data[0]["text/html"] and "application/vnd.plotly.v1+json" in data[1]
    assert f"<b>Nodes</b>: {summary.node_count} of {summary.node_count}" in data[3]["text/html"]
    assert not view.filter_button.disabled
    assert "MatMul" in view.controls["op_types"].placeholder  # the model's op types as a hint


def test_filter_re_shows_the_table_through_node_table_filter(tiny_bert_onnx, monkeypatch):
    import workbench.stages.surgery.inspect as inspect_stage

    calls = []
    real = inspect_stage.node_table
    monkeypatch.setattr(inspect_stage, "node_table", lambda *a, **k: calls.append(a) or real(*a, **k))
    view = InspectView(tiny_bert_onnx)
    view.click()
    full = view.table
    view.controls["name_contains"].value = "LAYER.0/attention"
    view.controls["op_types"].value = "matmul, Softmax"
    view.filter_button.click()
    assert len(calls) == 1 and view.error_output.value == ""  # the model was not read again
    table = view.filtered_table
    assert table == full.filter(name_contains="LAYER.0/attention", op_types=("matmul", "Softmax"))
    assert 0 < len(table) < len(full) and {r.op_type for r in table} == {"MatMul", "Softmax"}
    assert all("layer.0/attention" in r.name.lower() for r in table)
    assert view.table is full and view.shown[-1] is table and len(view.shown) == 4
    assert f"<b>Nodes</b>: {len(table)} of {len(full)}" in view.output.outputs[-1]["data"]["text/html"]
    # an op type the model does not have: an empty table, not an error
    view.controls["op_types"].value = "Attention"
    assert len(view.filter()) == 0 and view.error_output.value == ""
    # the filter also applies on Run
    view.controls["name_contains"].value = ""
    view.controls["op_types"].value = "Softmax"
    view.click()
    assert {r.op_type for r in view.filtered_table} == {"Softmax"} and len(view.table) == len(full)


def test_filter_before_a_run_says_why(tiny_bert_onnx):
    view = InspectView(tiny_bert_onnx)
    assert view.filter() is None
    assert "There is no node table to filter yet." in panel_text(view) and "Fix: click Run first" in panel_text(view)
    assert view.shown == [] and view.result is None


# -- SurgeryView: the plan builder ------------------------------------------------------------------------------


def test_surgery_view_offers_every_edit_kind_with_its_options(tiny_bert_onnx, tmp_path):
    view = SurgeryView(tiny_bert_onnx, tmp_path / "out.onnx")
    assert list(view.kind.options) == list(EDIT_TYPES) and view.controls["kind"] is view.kind
    assert view.kind.value == "fold_constants" and list(view.option_controls) == ["fold_shapes"]
    assert len(view.plan) == 0 and view.remove_button.disabled and "no edits yet" in view.plan_html.value
    for part in [
        view.kind,
        view.add_button,
        view.remove_button,
        view.plan_html,
        view.run_button,
        view.error_output,
        view.output,
    ]:
        assert in_tree(view, part)
    view.kind.value = "fuse_transformer"  # the options box is rebuilt for the chosen kind
    assert list(view.option_controls) == ["model_type", "num_heads", "hidden_size", "opt_level"]
    assert view.options_box.children == tuple(view.option_controls.values())
    assert all(in_tree(view, w) for w in view.option_controls.values())
    assert isinstance(view.option_controls["model_type"], widgets.Dropdown)
    assert "onnxruntime's transformer optimizer" in html.unescape(view.edit_doc.value)
    view.kind.value = "cast_io"  # mappings are JSON text, tuples comma-separated text
    assert view.option_controls["inputs"].value == "{}"
    view.kind.value = "remove_nodes"
    assert view.option_controls["op_types"].value == "Identity, Dropout"
    view.kind.value = "toposort"
    assert view.option_controls == {} and "no options" in view.options_box.children[0].value


def test_add_and_remove_edits(tiny_bert_onnx, tmp_path):
    view = SurgeryView(tiny_bert_onnx, tmp_path / "out.onnx")
    add(view, "fold_constants")
    add(view, "remove_nodes", op_types="Identity")
    add(view, "cast_io", inputs='{"input_ids": "int32"}')
    add(view, "override_input_shapes", shapes='{"input_ids": ["batch", 12]}')
    assert view.plan == SurgeryPlan(
        (
            E.FoldConstants(),
            E.RemoveNodes(op_types=("Identity",)),
            E.CastIO(inputs={"input_ids": "int32"}),
            E.OverrideInputShapes({"input_ids": ("batch", 12)}),
        )
    )
    assert view.plan_html.value.startswith(view.plan._repr_html_())
    items = view.plan_html.value.split("<li>")[1:]
    assert [i.split("(")[0] for i in items] == [
        "<code>fold_constants",
        "<code>remove_nodes",
        "<code>cast_io",
        "<code>override_input_shapes",
    ]
    assert "4 edits" in view.plan_status.value and not view.remove_button.disabled
    view.remove_button.click()
    assert [e.kind for e in view.plan.edits] == ["fold_constants", "remove_nodes", "cast_io"]
    assert "removed" in view.plan_status.value
    for _ in range(3):
        view.remove_button.click()
    assert len(view.plan) == 0 and view.remove_button.disabled and view.remove_last() is None


def test_a_bad_option_shows_its_config_error_and_adds_nothing(tiny_bert_onnx, tmp_path):
    view = SurgeryView(tiny_bert_onnx, tmp_path / "out.onnx")
    add(view, "cleanup")
    before = view.plan
    add(view, "cast_io")  # nothing to cast
    assert view.plan == before
    assert "ConfigError: CastIO needs at least one input or output to cast." in panel_text(view)
    assert "not added: ConfigError" in view.plan_status.value
    add(view, "cast_io", inputs='{"input_ids": int32}')  # not JSON
    assert view.plan == before
    assert "CastIO.inputs: cannot read" in panel_text(view) and "Fix: correct the 'inputs' control" in panel_text(view)
    add(view, "cast_io", inputs='{"input_ids": "int12"}')  # rejected by the edit's own check
    assert "'int12' is not a dtype" in panel_text(view) and view.plan == before
    add(view, "remove_nodes", op_types="MatMul")
    assert "RemoveNodes cannot bypass op types ['MatMul']" in panel_text(view) and "Fix: " in panel_text(view)
    add(view, "override_input_shapes", shapes='{"input_ids": [0, 4]}')
    assert "is not a positive int or a symbolic name" in panel_text(view) and view.plan == before
    assert view.run_button.description == "Run" and view.status.value == "not run"  # the run status is untouched
    add(view, "cast_io", inputs='{"input_ids": "int32"}')  # a good one clears the panel
    assert view.error_output.value == "" and len(view.plan) == 2 and "added" in view.plan_status.value


def test_the_plan_can_be_set_from_code(tiny_bert_onnx, tmp_path):
    plan = SurgeryPlan((E.FoldConstants(), E.Cleanup()))
    view = SurgeryView(tiny_bert_onnx, tmp_path / "out.onnx", plan=plan)
    assert view.plan is plan and "fold_constants" in view.plan_html.value and not view.remove_button.disabled
    view.plan = SurgeryPlan()
    assert len(view.plan) == 0 and "no edits yet" in view.plan_html.value
    with pytest.raises(ConfigError, match="must be a SurgeryPlan"):
        view.plan = [E.Cleanup()]
    with pytest.raises(ConfigError, match="must be a SurgeryPlan"):
        SurgeryView(tiny_bert_onnx, tmp_path / "out.onnx", plan=(E.Cleanup(),))


# -- SurgeryView: running ---------------------------------------------------------------------------------------


def test_a_plan_built_with_the_controls_runs_checked_and_writes_the_model(tiny_bert_onnx, feeds, tmp_path, monkeypatch):
    import workbench.stages.surgery.run as surgery_stage

    seen = []
    real = surgery_stage.run_surgery

    def spy(*args, **kwargs):
        seen.append((view.run_button.disabled, view.status.value, args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(surgery_stage, "run_surgery", spy)
    output = tmp_path / "edited.onnx"
    view = SurgeryView(tiny_bert_onnx, output, check_feeds=feeds)
    add(view, "fold_constants")
    add(view, "remove_nodes")
    add(view, "fuse_transformer", num_heads=4, hidden_size=32)
    add(view, "cleanup")
    add(view, "rename_tensors", mapping='{"last_hidden_state": "hidden"}')
    add(view, "cast_io", inputs='{"input_ids": "int32"}')
    assert view.error_output.value == "" and len(view.plan) == 6
    view.click()
    assert view.error is None, panel_text(view)
    # the button was disabled while run_surgery ran, with the view's inputs and the plan as built
    ((disabled, status, args, kwargs),) = seen
    assert disabled and status == "running..." and not view.run_button.disabled
    assert args == (tiny_bert_onnx, output, view.plan)
    assert kwargs == {"check_feeds": feeds, "latency_repeats": 3}
    result = view.result
    assert isinstance(result, SurgeryResult) and result.path == output and output.is_file()
    assert result.plan == view.plan
    assert [r.edit.kind for r in result.reports] == [
        "fold_constants",
        "remove_nodes",
        "fuse_transformer",
        "cleanup",
        "rename_tensors",
        "cast_io",
    ]
    assert all(r.check is not None and r.check.passed for r in result.reports)
    assert all(r.diff.latency_ms_before is not None for r in result.reports)
    fused = next(r for r in result.reports if r.edit.kind == "fuse_transformer")
    assert fused.diff.op_changes["Attention"] == 2
    model = onnx.load(str(output))
    assert [o.name for o in model.graph.output] == ["hidden"]
    assert "Attention" in {n.op_type for n in model.graph.node}
    assert view.shown == [result]
    shown_html = view.output.outputs[0]["data"]["text/html"]
    assert "<b>Surgery</b>" in shown_html and "fuse_transformer" in shown_html and "Attention +2" in shown_html
    assert view.status.value.startswith("done in")


def test_a_graph_edit_error_is_shown_and_nothing_is_written(tiny_bert_onnx, feeds, tmp_path):
    output = tmp_path / "edited.onnx"
    view = SurgeryView(tiny_bert_onnx, output, check_feeds=feeds)
    add(view, "cleanup")
    view.click()
    earlier, earlier_outputs = view.result, view.output.outputs
    written = hashlib.sha256(output.read_bytes()).hexdigest()
    add(view, "rename_tensors", mapping='{"no_such_tensor": "x"}')  # a valid config, but not for this graph
    assert len(view.plan) == 2 and view.error_output.value == ""
    view.click()
    assert isinstance(view.error, GraphEditError)
    text = panel_text(view)
    assert "GraphEditError: RenameTensors renames tensors: ['no_such_tensor'] not in the graph." in text
    assert "Fix: look the names up with workbench.stages.surgery.inspect.node_table(model)" in text
    assert "failed: GraphEditError" in view.status.value and not view.run_button.disabled
    assert view.result is earlier and view.output.outputs == earlier_outputs
    assert hashlib.sha256(output.read_bytes()).hexdigest() == written  # the earlier file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["edited.onnx"]  # and nothing half-written beside it
    # a fresh view with the same bad plan writes no file at all
    fresh_output = tmp_path / "fresh" / "edited.onnx"
    fresh = SurgeryView(tiny_bert_onnx, fresh_output, check_feeds=feeds, plan=view.plan)
    fresh.click()
    assert isinstance(fresh.error, GraphEditError) and fresh.result is None and not fresh_output.exists()
    # removing the bad edit makes the plan run again
    view.remove_button.click()
    view.click()
    assert view.error is None and view.result is not earlier and view.error_output.value == ""


# -- Netron -----------------------------------------------------------------------------------------------------


def test_show_in_netron_serves_the_model_on_localhost(tiny_bert_onnx, feeds, tmp_path):
    netron = pytest.importorskip("netron")
    inspect_view = InspectView(tiny_bert_onnx)
    surgery_view = SurgeryView(
        tiny_bert_onnx, tmp_path / "edited.onnx", check_feeds=feeds, plan=SurgeryPlan((E.Cleanup(),))
    )
    assert inspect_view.netron_button is not None and in_tree(inspect_view, inspect_view.netron_button)
    try:
        inspect_view.netron_button.click()
        url = inspect_view.netron_url
        assert url is not None and url.startswith("http://127.0.0.1:"), panel_text(inspect_view)
        assert inspect_view.netron_address[0] == "127.0.0.1"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200 and b"netron" in response.read().lower()
        (frame,) = inspect_view.netron_output.outputs
        assert f'src="{url}"' in frame["data"]["text/html"] and "<iframe" in frame["data"]["text/html"]
        assert str(tiny_bert_onnx) in html.unescape(inspect_view.netron_note.value)
        second = inspect_view.show_in_netron()  # a second click replaces the first server
        assert second is not None and second != url and inspect_view.netron_url == second
        assert netron.status(inspect_view.netron_address)
        # the surgery view shows the input model before a run and the edited model after it
        surgery_view.netron_button.click()
        assert str(tiny_bert_onnx) in html.unescape(surgery_view.netron_note.value)
        surgery_view.click()
        surgery_view.netron_button.click()
        assert str(tmp_path / "edited.onnx") in html.unescape(surgery_view.netron_note.value)
        assert surgery_view.netron_url not in (url, second)
    finally:
        for view in (inspect_view, surgery_view):
            if view.netron_address:
                netron.stop(view.netron_address)


def test_show_in_netron_leaves_the_root_logger_as_it_was(tiny_bert_onnx, monkeypatch):
    import logging

    netron = pytest.importorskip("netron")
    monkeypatch.setattr(logging.root, "handlers", [])  # as in a fresh kernel
    level = logging.root.level
    view = InspectView(tiny_bert_onnx)
    try:
        assert view.show_in_netron() is not None
        assert logging.root.handlers == [] and logging.root.level == level  # netron did not call basicConfig
    finally:
        netron.stop(view.netron_address)


def test_without_netron_there_is_no_button_and_a_note_says_why(tiny_bert_onnx, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "netron", None)  # makes `import netron` fail, as if not installed
    assert not ui_surgery.netron_available()
    for view in (InspectView(tiny_bert_onnx), SurgeryView(tiny_bert_onnx, tmp_path / "out.onnx")):
        assert view.netron_button is None
        assert "netron" in view.netron_note.value and "not installed" in view.netron_note.value
        assert in_tree(view, view.netron_note)
        assert not any(
            isinstance(w, widgets.Button) and w.description == "Show in Netron" for w in descendants(view.widget)
        )
        assert view.show_in_netron() is None and "pip install netron" in panel_text(view)


def test_netron_errors_show_in_the_panel(tiny_bert_onnx, tmp_path):
    pytest.importorskip("netron")
    view = InspectView(tmp_path / "missing.onnx")
    assert view.show_in_netron() is None
    assert "FileNotFoundError" in panel_text(view) and view.netron_output.outputs == ()
    # a model that disappears after it was shown: the panel says so and the stale frame goes
    copy = tmp_path / "copy.onnx"
    copy.write_bytes(tiny_bert_onnx.read_bytes())
    view = InspectView(copy)
    assert view.show_in_netron() is not None and len(view.netron_output.outputs) == 1
    copy.unlink()
    assert view.show_in_netron() is None and view.netron_url is None and view.netron_output.outputs == ()
    assert "FileNotFoundError" in panel_text(view)


# -- light imports ------------------------------------------------------------------------------------------------


def test_building_the_views_imports_nothing_heavy(tmp_path):
    code = (
        "import sys, json\n"
        "from workbench.ui import InspectView, SurgeryView\n"
        f"InspectView({str(tmp_path / 'm.onnx')!r})\n"
        f"view = SurgeryView({str(tmp_path / 'm.onnx')!r}, {str(tmp_path / 'o.onnx')!r})\n"
        "for kind in view.kind.options: view.kind.value = kind\n"
        "print(json.dumps([m for m in ('torch', 'onnxruntime', 'tensorrt', 'netron', 'plotly') if m in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


def test_workbench_ui_exports_the_views():
    import workbench.ui as ui

    assert ui.InspectView is InspectView and ui.SurgeryView is SurgeryView
    assert {"InspectView", "SurgeryView"} <= set(ui.__all__)
    assert issubclass(InspectView, ui.StageView) and issubclass(SurgeryView, ui.StageView)
