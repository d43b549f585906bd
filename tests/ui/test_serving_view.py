"""ServingView driven the way a user drives it, without a browser: set controls, click Run, read what it shows."""

from __future__ import annotations

import dataclasses
import html
import importlib.util
import subprocess
import sys
import time

import pytest

pytest.importorskip("ipywidgets")

from workbench.data import default_data_dir, read_sentences
from workbench.errors import ConfigError
from workbench.stages.serving.load import ServingConfig
from workbench.ui import ServingView


def test_building_the_view_is_light_and_has_a_control_per_field():
    code = (
        "import sys; from workbench.ui import ServingView; "
        "v = ServingView('m.onnx', 'tok', ['a']); "
        "print(sorted(m for m in ('torch', 'onnxruntime', 'tritonclient', 'fastapi') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    view = ServingView("m.onnx", "tok", ["a"])
    assert set(view.controls) == {*(f.name for f in dataclasses.fields(ServingConfig)), "sweep"}
    assert view.controls["concurrency"].value == "1, 4, 8"  # starts from the quick preset
    assert view.config() == ServingConfig.preset("quick")
    view.controls["concurrency"].value = "2, 16"
    view.controls["protocol"].value = "grpc"
    assert view.config().concurrency == (2, 16) and view.config().protocol == "grpc"


def test_a_bad_control_value_shows_the_error_and_starts_nothing(tmp_path):
    view = ServingView(tmp_path / "missing.onnx", tmp_path, ["a"], run_sweep=False)
    view.controls["concurrency"].value = "0, 2"
    started = time.perf_counter()
    view.click()
    assert time.perf_counter() - started < 5
    assert view.result is None and isinstance(view.error, ConfigError)
    assert "concurrency" in html.unescape(view.error_output.value)
    assert view.status.value.count("failed") == 1 and not view.run_button.disabled


@pytest.mark.slow
def test_run_shows_the_servers_the_chart_and_the_sweep(tiny_bert_onnx, tiny_model_dir):
    pytest.importorskip("tritonclient.http", reason="tritonclient is not installed (the [triton] extra)")
    pytest.importorskip("fastapi", reason="fastapi is not installed (the [serving] extra)")
    if importlib.util.find_spec("pytriton") is None:
        pytest.skip("nvidia-pytriton is not installed (the [triton] extra)")
    from workbench.stages.serving.run import ServingResult
    from workbench.stages.serving.sweep import SweepConfig
    from workbench.triton.config import TritonConfig
    from workbench.triton.padding import PaddingPolicy

    texts = read_sentences(default_data_dir() / "evaluation.txt", limit=30)
    view = ServingView(
        tiny_bert_onnx,
        tiny_model_dir("bert"),
        texts,
        triton_config=TritonConfig(model_name="tiny"),
        padding=PaddingPolicy(max_length=32),
        sweep=SweepConfig(max_queue_delays_us=(0, 2000), instance_counts=(1,), concurrency=(4,)),
        servers=("triton_length_aware_http", "fastapi_onnxruntime"),
    )
    for name, value in {
        "concurrency": "1, 4",
        "window_s": "0.4",
        "stable_windows": "2",
        "stability": "0.5",
        "max_windows": "3",
        "warmup_s": "0.2",
        "max_level_s": "5",
    }.items():
        view.controls[name].value = (
            value if isinstance(view.controls[name].value, str) else type(view.controls[name].value)(value)
        )
    view.click()
    assert view.error is None, html.unescape(view.error_output.value)
    result = view.result
    assert isinstance(result, ServingResult) and set(result.servers) == {
        "triton_length_aware_http",
        "fastapi_onnxruntime",
    }
    assert result.config.concurrency == (1, 4) and result.sweep is not None
    figures = [obj for obj in view.shown if hasattr(obj, "to_plotly_json")]
    chart, sweep_chart = figures
    assert len(chart.data) == 2 and chart.layout.xaxis.title.text == "p99 latency (ms)"
    assert len(sweep_chart.data) == 2  # one point per setting
    shown_html = view.shown[0]._repr_html_()
    assert "Batching sweep" in shown_html and "Suggested" in shown_html
    assert view.status.value.startswith("done")
