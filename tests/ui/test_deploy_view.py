"""BenchmarkView, ChoiceView and ExportView driven the way a user drives them, on the tiny BERT ONNX."""

from __future__ import annotations

import dataclasses
import hashlib
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("plotly.graph_objects")
pytest.importorskip("tritonclient.grpc.model_config_pb2")

from workbench.errors import ConfigError, TritonExportError, WorkbenchError  # noqa: E402
from workbench.models import load_model  # noqa: E402
from workbench.stages import choose as choose_stage  # noqa: E402
from workbench.stages.accuracy.compare import AccuracyBudget  # noqa: E402
from workbench.stages.benchmark import latency as benchmark_stage  # noqa: E402
from workbench.stages.benchmark.latency import (  # noqa: E402
    BenchmarkConfig,
    BenchmarkResult,
    BenchmarkRow,
    benchmark_candidates,
    feeds_from_sentences,
)
from workbench.stages.choose import Choice, choose_candidate  # noqa: E402
from workbench.triton import config as triton_stage  # noqa: E402
from workbench.triton import model as triton_model  # noqa: E402
from workbench.triton.config import TritonConfig, parse_model_config  # noqa: E402
from workbench.triton.model import TritonExportResult
from workbench.ui import BenchmarkView, ChoiceView, ExportView  # noqa: E402

TEXTS = ["the cat sat on the mat", "revenue grew 12%", "how do I reset my password?", "SELECT 1;"]
INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, tiny_bert_onnx, tmp_path_factory):
    """The tiny BERT's source, a feeds_for, and two candidates: the FP32 export and a dynamic INT8 of it."""
    from workbench.stages.precision.plan import PrecisionPlan

    source = load_model(tiny_model_dir("bert"))
    feeds_for = feeds_from_sentences(source.load_tokenizer(), TEXTS, input_names=INPUTS)
    int8 = (
        PrecisionPlan.preset("cpu_int8_dynamic")
        .convert(tiny_bert_onnx, tmp_path_factory.mktemp("int8") / "int8.onnx")
        .path
    )
    return source, feeds_for, {"fp32": tiny_bert_onnx, "int8": int8}


@pytest.fixture(scope="module")
def measured(tiny):
    """A real accuracy report and benchmark of the two candidates (relaxed budget; batches 1 and 2)."""
    from workbench.data import tokenize_batches
    from workbench.stages.accuracy.compare import compare_candidates

    source, feeds_for, candidates = tiny
    feeds = tokenize_batches(source.load_tokenizer(), TEXTS, batch_size=2, sequence_length=16, input_names=INPUTS)
    report = compare_candidates(candidates["fp32"], candidates, feeds, budget=AccuracyBudget(0.5, 0.0))
    timings = benchmark_candidates(
        candidates,
        feeds_for,
        BenchmarkConfig(batch_sizes=(1, 2), sequence_lengths=(16,), warmup=1, iterations=5, threads=1),
    )
    return report, timings


def panel_text(view) -> str:
    return html.unescape(view.error_output.value)


def record_button_during(monkeypatch, module, name, view):
    """Wrap `module.name` so each call records (button disabled, view running, status) while it runs."""
    seen: list[tuple[bool, bool, str]] = []
    original = getattr(module, name)

    def wrapped(*args, **kwargs):
        seen.append((view.run_button.disabled, view.running, view.status.value))
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return seen


def snapshot(folder: Path) -> dict[str, Any]:
    """Every path under `folder` with a hash of each file's bytes."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(folder.rglob("*"))
    }


# -- BenchmarkView --------------------------------------------------------------------------------------------


def test_benchmark_view_controls_come_from_the_config(tiny):
    _, feeds_for, candidates = tiny
    view = BenchmarkView(candidates, feeds_for)
    assert set(view.controls) == {f.name for f in dataclasses.fields(BenchmarkConfig)}
    assert view.config() == BenchmarkConfig()
    started = BenchmarkView(candidates, feeds_for, config=BenchmarkConfig.preset("quick"))
    assert started.controls["batch_sizes"].value == "1" and started.config() == BenchmarkConfig.preset("quick")


def test_benchmark_view_times_every_candidate_and_pytorch(tiny):
    source, feeds_for, candidates = tiny
    view = BenchmarkView(candidates, feeds_for, pytorch_module=source.load_module())
    view.controls["batch_sizes"].value = "1, 2"
    view.controls["sequence_lengths"].value = "16"
    view.controls["warmup"].value = 1
    view.controls["iterations"].value = 3
    view.controls["threads"].value = "1"
    view.click()
    assert view.error is None, panel_text(view)
    result = view.result
    assert isinstance(result, BenchmarkResult)
    assert result.config == BenchmarkConfig(
        batch_sizes=(1, 2), sequence_lengths=(16,), warmup=1, iterations=3, threads=1
    )
    assert {(r.name, r.batch, r.seq) for r in result.rows} == {
        (n, b, 16) for n in ("pytorch", "fp32", "int8") for b in (1, 2)
    }
    table, latency, speedup = view.shown
    assert table is result
    assert "Latency vs batch size" in latency.layout.title.text and len(latency.data) == 3
    assert "Speed-up over pytorch" in speedup.layout.title.text and {t.name for t in speedup.data} == {"fp32", "int8"}
    assert view.status.value.startswith("done")
    bundles = [o["data"] for o in view.output.outputs]
    assert "int8" in bundles[0]["text/html"] and "application/vnd.plotly.v1+json" in bundles[1]


def test_benchmark_view_with_a_time_budget_and_no_baseline(tiny):
    _, feeds_for, candidates = tiny
    view = BenchmarkView(
        candidates, feeds_for, config=BenchmarkConfig(batch_sizes=(1,), sequence_lengths=(8,), warmup=0, threads=1)
    )
    view.controls["iterations"].value = 100_000
    view.controls["time_budget_s"].value = "0.2"
    view.click()
    assert view.error is None, panel_text(view)
    assert all(r.iterations < 100_000 for r in view.result.rows)
    assert len(view.shown) == 2  # no PyTorch row, so no speed-up chart


def test_benchmark_view_shows_a_bad_control_value_and_keeps_the_result(tiny):
    _, feeds_for, candidates = tiny
    view = BenchmarkView(
        candidates,
        feeds_for,
        config=BenchmarkConfig(batch_sizes=(1,), sequence_lengths=(8,), warmup=0, iterations=2, threads=1),
    )
    view.click()
    first = view.result
    assert first is not None
    view.controls["batch_sizes"].value = "0, 8"
    view.click()
    assert isinstance(view.error, ConfigError) and "batch_sizes must be positive" in str(view.error)
    # the panel speaks the control's label, not the dataclass path
    assert "'batch sizes' must be positive" in panel_text(view) and "BenchmarkConfig." not in panel_text(view)
    assert view.result is first and view.status.value.startswith('<span style="color:#b00020">failed')


def test_benchmark_view_disables_run_while_running(tiny, monkeypatch):
    _, feeds_for, candidates = tiny
    view = BenchmarkView(
        candidates,
        feeds_for,
        config=BenchmarkConfig(batch_sizes=(1,), sequence_lengths=(8,), warmup=0, iterations=2, threads=1),
    )
    seen = record_button_during(monkeypatch, benchmark_stage, "benchmark", view)
    view.click()
    assert seen == [(True, True, "running...")]
    assert not view.run_button.disabled and not view.running and view.error is None


def test_benchmark_view_reports_a_missing_model(tiny, tmp_path):
    _, feeds_for, _ = tiny
    view = BenchmarkView(
        {"ghost": tmp_path / "missing.onnx"},
        feeds_for,
        config=BenchmarkConfig(batch_sizes=(1,), sequence_lengths=(8,), iterations=1, threads=1),
    )
    view.click()
    assert isinstance(view.error, WorkbenchError) and "does not exist" in panel_text(view)
    assert "Fix:" in panel_text(view) and view.result is None


# -- ChoiceView -----------------------------------------------------------------------------------------------


def test_choice_view_runs_choose_candidate_and_shows_the_table_and_chart(measured):
    report, timings = measured
    view = ChoiceView(report, timings)
    assert view.controls["objective"].value == "latency" and view.controls["batch"].value == 1
    assert view.controls["seq"].value == 16 and view.controls["latency_ceiling_ms"].value == ""
    view.click()
    assert view.error is None, panel_text(view)
    assert isinstance(view.result, Choice)
    assert view.result == choose_candidate(report, timings, batch=1, seq=16, objective="latency")
    choice, table, figure = view.shown
    assert choice is view.result and table is view.table
    assert [row["name"] for row in table] == ["fp32", "int8"]
    assert all(
        {"p50_ms", "p90_ms", "throughput", "cosine_mean", "cosine_min", "meets_budget", "pareto"} <= set(r)
        for r in table
    )
    assert any(row["pareto"] for row in table)
    assert any(t.name == "Pareto front" for t in figure.data)
    shown_html = view.output.outputs[1]["data"]["text/html"]
    assert "Candidates" in shown_html and "int8" in shown_html


def test_choice_view_objective_moves_the_batch_and_is_passed_on(measured):
    report, timings = measured
    view = ChoiceView(report, timings)
    view.controls["objective"].value = "throughput"
    assert view.controls["batch"].value == 2  # the largest benchmarked
    view.click()
    assert view.error is None, panel_text(view)
    assert view.result.objective == "throughput" and view.result.batch == 2
    assert view.result == choose_candidate(report, timings, batch=2, seq=16, objective="throughput")
    view.controls["objective"].value = "latency"
    assert view.controls["batch"].value == 1


def test_choice_view_latency_ceiling(measured):
    report, timings = measured
    view = ChoiceView(report, timings)
    slowest_p90 = max(timings.row(name, 1, 16).p90_ms for name in ("fp32", "int8"))
    view.controls["latency_ceiling_ms"].value = f"{slowest_p90 * 10:.3f}"
    view.click()
    assert view.error is None, panel_text(view)
    assert view.result.constraints["latency_ceiling_ms"] == pytest.approx(slowest_p90 * 10, rel=1e-3)
    first = view.result
    view.controls["latency_ceiling_ms"].value = "0.000001"
    view.click()
    assert isinstance(view.error, WorkbenchError)
    text = panel_text(view)
    assert "latency ceiling of 1e-06 ms" in text and "Fix:" in text
    assert view.result is first  # a failed run keeps the previous choice
    view.controls["latency_ceiling_ms"].value = "fast"
    view.click()
    assert isinstance(view.error, ConfigError) and "latency_ceiling_ms" in str(view.error)
    assert "'latency ceiling (ms, p90)': cannot read 'fast'" in panel_text(view)  # the label, not the field path


def test_choice_view_on_a_hand_made_comparison():
    @dataclass(frozen=True)
    class Candidate:
        name: str
        embedding_cosine_mean: float
        embedding_cosine_min: float
        failures: tuple = ()

        def __bool__(self):
            return not self.failures

    @dataclass(frozen=True)
    class Report:
        candidates: tuple
        budget: Any = AccuracyBudget()

    def row(name, batch, p50, p90):
        return BenchmarkRow(name, batch, 128, p50, p90, p90, p50, batch * 1000 / p50, 5)

    timings = BenchmarkResult(
        rows=(
            row("fast", 1, 5.0, 30.0),
            row("steady", 1, 8.0, 9.0),
            row("fast", 8, 30.0, 35.0),
            row("steady", 8, 50.0, 55.0),
        ),
        config=BenchmarkConfig(batch_sizes=(1, 8)),
        machine={},
    )
    report = Report((Candidate("fast", 0.999, 0.995), Candidate("steady", 0.999, 0.995)))
    view = ChoiceView(report, timings)
    view.click()
    assert view.result.name == "fast"
    view.controls["latency_ceiling_ms"].value = "20"
    view.click()
    assert view.result.name == "steady" and "exceeds the latency ceiling" in view.result.reason
    assert [r["meets_ceiling"] for r in view.table] == [False, True]


def test_choice_view_disables_run_while_running(measured, monkeypatch):
    view = ChoiceView(*measured)
    seen = record_button_during(monkeypatch, choose_stage, "choose_candidate", view)
    view.click()
    assert seen == [(True, True, "running...")] and not view.run_button.disabled


# -- ExportView -----------------------------------------------------------------------------------------------


def test_export_view_controls_come_from_triton_config(tiny_bert_onnx, tmp_path):
    view = ExportView(tiny_bert_onnx, tmp_path / "repo")
    assert set(view.controls) == {f.name for f in dataclasses.fields(TritonConfig)} | {"overwrite"}
    assert view.controls["instance_kind"].options == triton_stage.INSTANCE_KINDS
    assert view.config() == TritonConfig() and view.overwrite.value is False
    assert not (tmp_path / "repo").exists()  # building the view writes nothing


def test_export_view_writes_the_repository(tiny_bert_onnx, tmp_path):
    repository = tmp_path / "repo"
    view = ExportView(tiny_bert_onnx, repository)
    view.controls["model_name"].value = "tiny_bert"
    view.controls["max_batch_size"].value = 4
    view.controls["preferred_batch_sizes"].value = "2, 4"
    view.controls["instance_count"].value = 2
    view.click()
    assert view.error is None, panel_text(view)
    result = view.result
    assert isinstance(result, TritonExportResult) and result.model_dir == repository / "tiny_bert"
    assert view.shown == [result]
    assert (repository / "tiny_bert" / "1" / "model.onnx").is_file()
    config = parse_model_config(result.config_path.read_text())
    assert config.name == "tiny_bert" and config.max_batch_size == 4
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert config.instance_group[0].count == 2
    assert [i.name for i in config.input] == list(INPUTS)
    assert "tritonserver --model-repository" in view.output.outputs[0]["data"]["text/html"]


def test_export_view_refuses_an_existing_folder_without_overwrite(tiny_bert_onnx, tmp_path):
    repository = tmp_path / "repo"
    view = ExportView(tiny_bert_onnx, repository, config=TritonConfig(model_name="tiny"))
    view.click()
    first = view.result
    assert first is not None and view.error is None
    before = snapshot(repository)
    view.controls["max_batch_size"].value = 16
    view.click()
    assert isinstance(view.error, TritonExportError)
    text = panel_text(view)
    assert "already exists; nothing was changed" in text
    assert "Fix: pass overwrite=True to replace it" in text
    assert snapshot(repository) == before  # nothing on disk changed
    assert view.result is first and view.status.value.startswith('<span style="color:#b00020">failed')
    view.overwrite.value = True
    view.click()
    assert view.error is None, panel_text(view)
    assert parse_model_config(view.result.config_path.read_text()).max_batch_size == 16
    assert view.error_output.value == ""


def test_export_view_shows_a_bad_model_name_and_writes_nothing(tiny_bert_onnx, tmp_path):
    view = ExportView(tiny_bert_onnx, tmp_path / "repo")
    view.controls["model_name"].value = "../escape"
    view.click()
    assert isinstance(view.error, ConfigError) and "model_name" in str(view.error) and "Fix:" in panel_text(view)
    assert "'model name' '../escape' has characters" in panel_text(view)  # the control's label
    assert not (tmp_path / "repo").exists() and not (tmp_path / "escape").exists()


def test_export_view_disables_run_while_running(tiny_bert_onnx, tmp_path, monkeypatch):
    view = ExportView(tiny_bert_onnx, tmp_path / "repo")
    seen = record_button_during(monkeypatch, triton_model, "export_triton", view)
    view.click()
    assert seen == [(True, True, "running...")]
    assert not view.run_button.disabled and view.error is None


def test_export_view_with_a_tokenizer_writes_the_ensemble(tiny_bert_onnx, tiny_model_dir, tmp_path):
    repository = tmp_path / "repo"
    view = ExportView(
        tiny_bert_onnx, repository, tiny_model_dir("bert"), config=TritonConfig(model_name="tiny"), sequence_length=16
    )
    view.click()
    assert view.error is None, panel_text(view)
    configs = sorted(p.parent.name for p in repository.glob("*/config.pbtxt"))
    assert "tiny" in configs and len(configs) > 1  # the model and the steps around it
    for path in repository.glob("*/config.pbtxt"):
        parse_model_config(path.read_text())
    assert view.shown == [view.result]
