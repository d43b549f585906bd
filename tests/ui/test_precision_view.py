"""PrecisionView driven the way a user drives it, on the fused tiny BERT."""

from __future__ import annotations

import html

import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
go = pytest.importorskip("plotly.graph_objects")

from workbench.errors import DataError, QuantizationError  # noqa: E402
from workbench.stages.precision.activations import ActivationStats  # noqa: E402
from workbench.stages.precision.plan import PrecisionPlan  # noqa: E402
from workbench.stages.precision.quantize import QuantizeResult  # noqa: E402
from workbench.ui import PrecisionView  # noqa: E402


@pytest.fixture
def view(fused_tiny, tmp_path):
    path, feeds = fused_tiny
    return PrecisionView(path, tmp_path / "out" / "model.onnx", feeds, cache_dir=tmp_path / "cache")


def panel_text(view) -> str:
    return html.unescape(view.error_output.value)


def _loads(path) -> None:
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def test_dynamic_preset_runs_and_the_model_loads(view):
    assert view.preset.value == "cpu_int8_dynamic"
    view.click()
    assert view.error is None, panel_text(view)
    assert isinstance(view.result, QuantizeResult) and view.result.method == "int8 dynamic per-channel"
    assert view.result.path.is_file()
    _loads(view.result.path)
    assert view.plan == PrecisionPlan.preset("cpu_int8_dynamic")
    assert view.shown == [view.result, view.plan] and view.status.value.startswith("done")


def test_preset_sets_and_disables_the_choices(view):
    assert view.calibration_method.disabled and view.activation_type.disabled and not view.per_channel.disabled
    view.preset.value = "tensorrt_int8_qdq"
    assert not view.calibration_method.disabled and view.calibration_method.value == "Entropy"
    assert view.activation_type.value == "int8"
    view.preset.value = "gpu_fp16"
    assert view.choices() == {}
    view.preset.value = "cpu_int8_dynamic_per_tensor"
    assert view.choices() == {"per_channel": False}


def test_static_entropy_run_uses_entropy(view):
    view.preset.value = "cpu_int8_static"
    view.calibration_method.value = "Entropy"
    view.click()
    assert view.error is None, panel_text(view)
    assert view.result.calibration.config.method == "Entropy"
    assert view.plan.options.calibration.method == "Entropy" and view.plan.method == "int8_static"
    _loads(view.result.path)


def test_unknown_fp32_node_shows_the_error_keeps_the_result_and_writes_nothing(view, tmp_path):
    view.click()
    first = view.result
    assert first is not None
    view.output_path = tmp_path / "second" / "model.onnx"
    view.keep_fp32.value = "no_such_node"
    view.click()
    assert isinstance(view.error, QuantizationError)
    text = panel_text(view)
    assert "QuantizationError" in text and "no_such_node" in text and "Fix:" in text
    assert "failed" in view.status.value
    assert view.result is first and view.shown == [first, PrecisionPlan.preset("cpu_int8_dynamic")]
    assert view.plan.keep_fp32 == ("no_such_node",)  # the plan that failed is there to look at
    second = tmp_path / "second"
    assert not second.exists() or list(second.iterdir()) == []


def test_pinned_node_is_kept_fp32(view, fused_tiny):
    path, _ = fused_tiny
    matmul = next(n.name for n in onnx.load(str(path)).graph.node if n.op_type == "MatMul")
    view.keep_fp32.value = f" {matmul} , "
    view.click()
    assert view.error is None, panel_text(view)
    assert view.result.keep_fp32 == (matmul,) and view.plan.nodes[matmul].precision == "fp32"
    assert matmul in {n.name for n in onnx.load(str(view.result.path)).graph.node if n.op_type == "MatMul"}


def test_stats_button_measures_and_shows_the_range_chart(view):
    view.stats_button.click()
    assert view.error is None, panel_text(view)
    assert isinstance(view.stats, ActivationStats) and view.stats.feeds == 4
    assert {"MatMul", "Attention"} <= {r.op_type for r in view.stats.rows}
    assert view.stats_shown[0] is view.stats and isinstance(view.stats_shown[1], go.Figure)
    assert len(view.stats_shown[1].data) > 0
    assert any("application/vnd.plotly.v1+json" in o["data"] for o in view.stats_output.outputs)
    assert "activation statistics" in view.status.value
    assert not view.run_button.disabled and not view.stats_button.disabled


def test_without_data_static_and_stats_are_data_errors(fused_tiny, tmp_path):
    path, _ = fused_tiny
    view = PrecisionView(path, tmp_path / "model.onnx", cache_dir=tmp_path / "cache")
    view.stats_button.click()
    assert isinstance(view.error, DataError) and view.stats is None and "empty" in panel_text(view)
    view.preset.value = "cpu_int8_static"
    view.click()
    assert isinstance(view.error, DataError) and view.result is None
    assert not (tmp_path / "model.onnx").exists()


def test_run_button_is_disabled_during_the_run(view, monkeypatch):
    seen = []
    convert = PrecisionPlan.convert

    def spy(plan, *args, **kwargs):
        seen.append((view.run_button.disabled, view.stats_button.disabled, view.running, view.status.value))
        return convert(plan, *args, **kwargs)

    monkeypatch.setattr(PrecisionPlan, "convert", spy)
    view.click()
    assert seen == [(True, True, True, "running...")]
    assert view.result is not None and not view.run_button.disabled


def test_view_builds_without_heavy_imports():
    import json
    import subprocess
    import sys

    code = (
        "from workbench.ui import PrecisionView\nv = PrecisionView('m.onnx', 'o.onnx')\n"
        "v.preset.value = 'cpu_int8_static'\nimport sys, json\n"
        "print(json.dumps(sorted(m for m in ('torch', 'onnxruntime', 'onnx') if m in sys.modules)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
