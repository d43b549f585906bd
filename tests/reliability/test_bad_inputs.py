"""Bad inputs and faults at the library's boundary: each gives its exact WorkbenchError, before work starts where
it can be checked, and leaves no file behind (no partial, no temporary, nothing beside the input)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.reliability.conftest import int32_id_model, leftovers, snapshot
from workbench._files import LOCK_FILE, OutputFolder, atomic_directory, atomic_path, clean_leftovers
from workbench.errors import (
    ConfigError,
    DataError,
    DiskFullError,
    ExportError,
    ModelSourceError,
    OutputFolderBusy,
    OutputFolderError,
)

pytestmark = pytest.mark.reliability
ROOT = Path(__file__).resolve().parents[2]


def enospc(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


# ------------------------------------------------------------------------------------------------ model sources


def test_an_onnx_model_without_inputs_is_refused_when_loaded(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from workbench.models import load_model

    constant = helper.make_node("Constant", [], ["y"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))
    graph = helper.make_graph([constant], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "constant.onnx")
    with pytest.raises(ModelSourceError, match="has no inputs"):
        load_model(tmp_path / "constant.onnx")


def test_a_truncated_onnx_file_is_refused_naming_it(tiny_bert_onnx, tmp_path):
    from workbench.models import load_model

    data = tiny_bert_onnx.read_bytes()
    (tmp_path / "model.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ModelSourceError, match="truncated or corrupt") as info:
        load_model(tmp_path / "model.onnx")
    assert str(tmp_path / "model.onnx") in str(info.value)


def test_a_hugging_face_folder_with_a_damaged_config_is_refused(tiny_model_dir, tmp_path):
    from workbench.models import load_model

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir("bert"), folder)
    (folder / "config.json").write_text('{"model_type": "bert", ')
    with pytest.raises(ModelSourceError, match="config.json"):
        load_model(folder)


def test_int32_id_models_are_fed_int32_ids(tiny_bert_onnx, tiny_model_dir, tmp_path):
    pytest.importorskip("onnx")
    from workbench.data import tokenize_batches
    from workbench.engines.onnxruntime import OnnxRuntimeRunner
    from workbench.models import load_model

    int32_id_model(tiny_bert_onnx, tmp_path / "int32.onnx")
    feeds = tokenize_batches(
        load_model(tiny_model_dir("bert")).load_tokenizer(), ["a test"], batch_size=1, sequence_length=8
    )
    with OnnxRuntimeRunner(tmp_path / "int32.onnx") as int32, OnnxRuntimeRunner(tiny_bert_onnx) as int64:
        np.testing.assert_allclose(
            int32.infer(feeds[0])["last_hidden_state"], int64.infer(feeds[0])["last_hidden_state"], atol=1e-6
        )
        too_large = {**feeds[0], "input_ids": np.full((1, 8), 2**40, dtype=np.int64)}
        with pytest.raises(DataError, match="outside int32"):
            int32.infer(too_large)
        with pytest.raises(DataError, match="missing"):
            int32.infer({"input_ids": feeds[0]["input_ids"]})


# --------------------------------------------------------------------------------------------------------- data


def test_a_sentence_file_that_is_not_utf8_is_a_data_error_naming_the_line(tmp_path):
    from workbench.data import read_sentences

    (tmp_path / "s.txt").write_bytes("first\nsecond caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"not UTF-8.*line 2") as info:
        read_sentences(tmp_path / "s.txt")
    assert "iconv" in info.value.fix


@pytest.mark.parametrize("content, words", [(None, "is a folder"), ("\n \n", "holds no sentences")])
def test_sentence_files_that_hold_nothing_usable(tmp_path, content, words):
    from workbench.data import read_sentences

    path = tmp_path / "s.txt"
    if content is None:
        path.mkdir()
    else:
        path.write_text(content)
    with pytest.raises(DataError, match=words):
        read_sentences(path)


def test_a_utf8_byte_order_mark_is_not_part_of_the_first_sentence(tmp_path):
    from workbench.data import read_sentences

    (tmp_path / "s.txt").write_bytes("\ufefffirst\nsecond\n".encode())
    assert read_sentences(tmp_path / "s.txt") == ["first", "second"]


# ------------------------------------------------------------------------------------------------ output paths


def test_an_output_folder_that_is_a_file_is_refused_before_work(tmp_path):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(OutputFolderError, match="is a file"):
        OutputFolder(tmp_path / "out").claim()
    with pytest.raises(OutputFolderError, match="is a file"):
        OutputFolder(tmp_path / "out" / "deeper").claim()


def test_export_refuses_an_output_path_it_cannot_write_before_exporting(tiny_model_dir, tmp_path, monkeypatch):
    from workbench.models import load_model
    from workbench.stages import export

    calls = []
    monkeypatch.setattr(export, "_tuple_outputs_module", lambda *a: calls.append(a))  # the work: never reached
    (tmp_path / "file").write_text("x")
    source = load_model(tiny_model_dir("bert"))
    with pytest.raises(OutputFolderError, match="is a file"):
        export.export_onnx(source, tmp_path / "file" / "model.onnx")
    (tmp_path / "folder.onnx").mkdir()
    with pytest.raises(OutputFolderError, match="is a folder"):
        export.export_onnx(source, tmp_path / "folder.onnx")
    assert not calls and sorted(p.name for p in tmp_path.iterdir()) == ["file", "folder.onnx"]


def test_a_read_only_output_folder_is_refused_naming_it(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    os.chmod(folder, 0o555)
    script = (
        "import sys; from workbench._files import OutputFolder, check_output_file\n"
        "from workbench.errors import OutputFolderError\n"
        "calls = (lambda: OutputFolder(sys.argv[1]).claim(),\n"
        "         lambda: check_output_file(sys.argv[1] + '/m.onnx'))\n"
        "for call in calls:\n"
        "    try:\n        call()\n"
        "    except OutputFolderError as exc:\n        print('OutputFolderError', exc.what)\n"
    )
    # root ignores file modes; without CAP_DAC_OVERRIDE it cannot
    prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"] if os.geteuid() == 0 else []
    if prefix and shutil.which("setpriv") is None:
        pytest.skip("running as root without util-linux's setpriv, so a folder cannot be made read-only for root")
    result = subprocess.run(
        [*prefix, sys.executable, "-c", script, str(folder)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("OutputFolderError")]
    assert len(lines) == 2, result.stdout + result.stderr
    assert all(str(folder) in line and "read-only" in line.lower() or "Permission" in line for line in lines), lines
    assert list(folder.iterdir()) == []


def test_an_earlier_run_is_refused_up_front_without_overwrite(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    for name in ("model.onnx", "summary.json"):
        (folder / name).write_text(name)
    before = snapshot(folder)
    with pytest.raises(OutputFolderError, match="holds an earlier run") as info:
        OutputFolder(folder).claim(overwrite=False)
    assert "overwrite=True" in info.value.fix and snapshot(folder) == before
    claim = OutputFolder(folder).claim(overwrite=True)
    assert not (folder / "summary.json").exists()  # it would describe the models this run replaces
    assert (folder / LOCK_FILE).exists()
    claim.release()
    assert not (folder / LOCK_FILE).exists() and (folder / "model.onnx").exists()


def test_a_pipeline_with_overwrite_false_refuses_before_replacing_any_model(tiny_model_dir, tmp_path):
    from workbench.pipeline import Pipeline, PipelineParameters

    folder = tmp_path / "run"
    parameters = PipelineParameters(
        model_path=str(tiny_model_dir("bert")), output_dir=str(folder), sequence_length=16, max_eval_samples=2
    )
    first = Pipeline(parameters)
    first.export()
    first.output_folder.release()  # as a finished run does
    before = snapshot(folder)
    with pytest.raises(OutputFolderError, match="holds an earlier run.*model.onnx"):
        Pipeline(parameters)
    assert snapshot(folder) == before


def test_a_second_run_into_a_busy_folder_names_the_first(tmp_path):
    folder = tmp_path / "run"
    script = (
        "import sys, time; from workbench._files import OutputFolder\n"
        "claim = OutputFolder(sys.argv[1]).claim(); print('held', flush=True); time.sleep(60)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, str(folder)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert child.stdout.readline().strip() == "held"
        with pytest.raises(OutputFolderBusy, match=f"process {child.pid} on .*, started 20") as info:
            OutputFolder(folder).claim(overwrite=True)
        assert "another output folder" in info.value.fix
    finally:
        child.kill()
        child.wait(timeout=30)
    claim = OutputFolder(folder).claim()  # the killed holder does not block the next run
    assert claim.previous_run is not None and claim.previous_run["pid"] == child.pid
    claim.release()


def test_the_same_process_may_claim_its_folder_again(tmp_path):
    first = OutputFolder(tmp_path / "run").claim()
    (tmp_path / "run" / "model.onnx").write_text("written by the first claim")
    second = OutputFolder(tmp_path / "run").claim()  # a notebook re-running its cells
    assert not first.held and second.held
    second.release()


def test_leftovers_of_dead_processes_are_cleaned_and_live_ones_kept(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    dead_pid = int(dead.stdout)
    (tmp_path / f".model.onnx.wb{dead_pid}.abc.partial").write_text("half a model")
    (tmp_path / f".export.wb{dead_pid}.x1.partial").mkdir()
    (tmp_path / f".mine.wb{os.getpid()}.x2.partial").write_text("in progress")
    (tmp_path / "notes.partial").write_text("not hidden: not ours")
    with atomic_path(tmp_path / "summary.json") as tmp:
        tmp.write_text("{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".mine.wb{os.getpid()}.x2.partial", "notes.partial", "summary.json"]
    )


def test_a_killed_swap_puts_the_previous_folder_back(tmp_path):
    dead = int(
        subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
        ).stdout
    )
    aside = tmp_path / f".tiny.wb{dead}.q1.old"  # atomic_directory moved `tiny` aside, then was killed
    aside.mkdir()
    (aside / "config.pbtxt").write_text("the only copy")
    repository_aside = tmp_path / f".workbench-export.wb{dead}.q2.old"
    repository_aside.mkdir()
    (repository_aside / "README.md").write_text("previous readme")
    clean_leftovers(tmp_path)
    assert (tmp_path / "tiny" / "config.pbtxt").read_text() == "the only copy"
    assert (tmp_path / "README.md").read_text() == "previous readme"
    assert leftovers(tmp_path) == []


def test_published_files_are_readable_by_the_server_user(tmp_path):
    with atomic_path(tmp_path / "a.json") as tmp:
        tmp.write_text("{}")
    with atomic_directory(tmp_path / "folder") as tmp:
        (tmp / "x").write_text("x")
    assert oct((tmp_path / "a.json").stat().st_mode & 0o777) == "0o644"
    assert oct((tmp_path / "folder").stat().st_mode & 0o777) == "0o755"


def test_a_triton_model_folder_is_readable_by_the_server_user(tiny_bert_onnx, tmp_path):
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from workbench.triton.config import TritonConfig
    from workbench.triton.model import export_triton

    result = export_triton(tiny_bert_onnx, tmp_path / "repo", TritonConfig(model_name="tiny"))
    assert oct(result.model_dir.stat().st_mode & 0o777) == "0o755"
    assert all(f.stat().st_mode & 0o044 == 0o044 for f in result.files)


# ------------------------------------------------------------------------------------------------- a full disk


def test_a_full_disk_during_export_is_a_full_disk_not_an_exporter_problem(tiny_model_dir, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from workbench.models import load_model
    from workbench.stages.export import export_onnx

    monkeypatch.setattr(torch.onnx, "export", enospc)
    with pytest.raises(DiskFullError, match="disk is full") as info:
        export_onnx(load_model(tiny_model_dir("bert")), tmp_path / "out" / "model.onnx")
    assert not isinstance(info.value, ExportError) and "other exporter" not in str(info.value)
    assert "free space" in info.value.fix
    assert list((tmp_path / "out").iterdir()) == []


def test_a_full_disk_while_saving_a_model_leaves_the_old_one(tiny_bert_onnx, tmp_path, monkeypatch):
    onnx = pytest.importorskip("onnx")
    from workbench.onnx.io import save_onnx

    model = onnx.load(str(tiny_bert_onnx))
    (tmp_path / "model.onnx").write_bytes(b"the earlier model")
    real_save = onnx.save_model

    def half_then_full(proto, path, *args, **kwargs):
        Path(path).write_bytes(proto.SerializeToString()[:1000])
        enospc()

    monkeypatch.setattr(onnx, "save_model", half_then_full)
    with pytest.raises(DiskFullError):
        save_onnx(model, tmp_path / "model.onnx")
    assert (tmp_path / "model.onnx").read_bytes() == b"the earlier model"
    assert leftovers(tmp_path) == []
    monkeypatch.setattr(onnx, "save_model", real_save)


def test_a_full_disk_while_writing_a_triton_repository_changes_nothing(
    tiny_bert_onnx, tiny_model_dir, tmp_path, monkeypatch
):
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    from workbench.triton import model as triton_model
    from workbench.triton.config import TritonConfig
    from workbench.triton.ensemble import export_triton_ensemble

    repository = tmp_path / "repo"
    repository.mkdir()
    (repository / "other_model").mkdir()
    before = snapshot(repository)
    monkeypatch.setattr(triton_model.shutil, "copyfile", enospc)
    with pytest.raises(DiskFullError):
        export_triton_ensemble(
            tiny_bert_onnx, repository, tiny_model_dir("bert"), TritonConfig(model_name="tiny"), sequence_length=16
        )
    assert snapshot(repository) == before


def test_a_full_disk_while_caching_calibration_ranges(fused_tiny, tmp_path, monkeypatch):
    from workbench.stages.precision import calibrate as calibration

    path, feeds = fused_tiny
    real_write = Path.write_text

    def full_for_cache(self, *args, **kwargs):
        if self.name.endswith(".partial") and ".json" in self.name:
            enospc()
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_for_cache)
    with pytest.raises(DiskFullError, match="calibration|json"):
        calibration.calibrate(path, feeds, cache_dir=tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


FULL_DISK_SCRIPT = """
import json, sys
from pathlib import Path
from workbench.errors import WorkbenchError
out, stage, model = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
try:
    if stage == "export":
        from workbench.models import load_model
        from workbench.stages.export import export_onnx
        export_onnx(load_model(model), out / "model.onnx")
    else:
        from workbench.stages.precision.quantize import quantize_dynamic
        quantize_dynamic(model, out / "int8.onnx")
    print("RESULT " + json.dumps({"error": None}))
except WorkbenchError as exc:
    print("RESULT " + json.dumps({"error": type(exc).__name__, "what": exc.what}))
import os
print("LEFT " + json.dumps(sorted(os.listdir(out))))
"""


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["export", "quantize_dynamic"])
def test_a_really_full_disk_is_reported_as_a_full_disk(stage, tiny_model_dir, fused_tiny, tmp_path):
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("a tiny private tmpfs needs root and util-linux's unshare")
    out = tmp_path / "small"
    out.mkdir()
    model = str(tiny_model_dir("bert")) if stage == "export" else str(fused_tiny[0])
    command = (
        f"mount -t tmpfs -o size=600k tmpfs {out} && exec {sys.executable} -c '{FULL_DISK_SCRIPT}' "
        f"{out} {stage} {model}"
    )
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", command],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=600,
        check=False,
    )
    if "mount:" in result.stderr and "RESULT" not in result.stdout:
        pytest.skip(f"mounting a private tmpfs is not permitted here: {result.stderr.strip()[:200]}")
    outcome = json.loads(next(line[7:] for line in result.stdout.splitlines() if line.startswith("RESULT ")))
    left = json.loads(next(line[5:] for line in result.stdout.splitlines() if line.startswith("LEFT ")))
    assert outcome["error"] == "DiskFullError", (outcome, result.stderr[-2000:])
    assert left == []  # no partial model, no staging folder on the full disk
    assert list(out.iterdir()) == []  # and the tmpfs is gone with its namespace: nothing reached the real folder


# ---------------------------------------------------------------------------------------------- stage boundaries


def test_an_empty_benchmark_is_a_config_error_not_a_division_by_zero():
    from workbench.stages.benchmark.latency import BenchmarkConfig, benchmark

    with pytest.raises(ConfigError, match="no runners"):
        benchmark([], lambda batch, seq: {}, BenchmarkConfig(batch_sizes=(1,), sequence_lengths=(4,)))


@pytest.mark.parametrize(
    "content, words",
    [
        ('{"method": "int8_dynamic", "opt', r"not valid JSON \(line 1"),
        ("[1, 2]", "not a plan"),
        (b"\xff\xfe", "cannot be read"),
        (None, "does not exist"),
    ],
)
def test_a_damaged_plan_file_is_a_config_error_naming_it(tmp_path, content, words):
    from workbench.stages.precision.plan import PrecisionPlan

    path = tmp_path / "plan.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=words) as info:
        PrecisionPlan.load(path)
    assert str(path) in str(info.value)


def test_a_sequence_length_beyond_the_models_positions_fails_before_export_writes(tiny_model_dir, tmp_path):
    from workbench.models import load_model
    from workbench.stages.export import ExportConfig, check_sequence_length, export_onnx, max_sequence_length

    source = load_model(tiny_model_dir("bert"))
    assert max_sequence_length(source) == 512
    with pytest.raises(ConfigError, match="100000 is longer than .* 512 tokens"):
        export_onnx(source, tmp_path / "out" / "model.onnx", ExportConfig(check_sequence_lengths=(16, 100000)))
    assert not (tmp_path / "out").exists()
    check_sequence_length(source, 512)
    # RoBERTa counts positions from padding_idx + 1: the tiny one has 514 and pad id 0, so 513 tokens fit
    assert max_sequence_length(load_model(tiny_model_dir("roberta"))) == 513


def test_a_pipeline_refuses_a_sequence_length_beyond_the_models_positions_up_front(tiny_model_dir, tmp_path):
    from workbench.pipeline import Pipeline, PipelineParameters

    parameters = PipelineParameters(
        model_path=str(tiny_model_dir("bert")), output_dir=str(tmp_path / "run"), sequence_length=100000
    )
    with pytest.raises(ConfigError, match="sequence_length = 100000"):
        Pipeline(parameters)
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------------------------------- CLI


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "workbench", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
        check=False,
    )


def test_cli_summary_of_nothing_and_of_a_damaged_file(tmp_path):
    missing = cli("summary", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and missing.stderr.startswith("WorkbenchError: No summary")
    (tmp_path / "summary.json").write_text('{"model": "x", "candidates": [')
    damaged = cli("summary", str(tmp_path))
    assert damaged.returncode == 1 and "is not a workbench summary" in damaged.stderr
    assert "Traceback" not in missing.stderr + damaged.stderr


def test_cli_run_of_a_missing_recipe_and_an_unknown_command(tmp_path):
    missing = cli("run", str(tmp_path / "nowhere.json"))
    assert missing.returncode == 1 and missing.stderr.startswith("RecipeError: No recipe")
    unknown = cli("frobnicate")
    assert unknown.returncode == 2 and "invalid choice" in unknown.stderr
    assert list(tmp_path.iterdir()) == []


def test_cli_run_of_a_recipe_with_a_string_boolean(tmp_path):
    from workbench.pipeline import PipelineParameters
    from workbench.recipe import Recipe

    recipe = json.loads(Recipe(parameters=PipelineParameters(output_dir=str(tmp_path / "run"))).to_json())
    recipe["parameters"]["overwrite"] = "no"
    (tmp_path / "recipe.json").write_text(json.dumps(recipe))
    result = cli("run", str(tmp_path / "recipe.json"), "--no-check-inputs")
    assert result.returncode == 1 and "RecipeError" in result.stderr and "overwrite" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()


def test_cli_run_into_an_output_folder_that_is_a_file(tmp_path, tiny_model_dir):
    from workbench.pipeline import PipelineParameters
    from workbench.recipe import Recipe

    Recipe(
        parameters=PipelineParameters(model_path=str(tiny_model_dir("bert")), output_dir=str(tmp_path / "run"))
    ).save(tmp_path / "recipe.json")
    (tmp_path / "blocked").write_text("a file")
    result = cli(
        "run", str(tmp_path / "recipe.json"), "--output-dir", str(tmp_path / "blocked"), "--quiet", "--no-check-inputs"
    )
    assert result.returncode == 1 and result.stderr.startswith("OutputFolderError") and "is a file" in result.stderr
    assert (tmp_path / "blocked").read_text() == "a file"


def test_cli_doctor_runs(tmp_path):
    result = cli("doctor", cwd=tmp_path)
    assert result.returncode == 0 and list(tmp_path.iterdir()) == []


def _recipe_into(tmp_path: Path, model_dir: Path, output: Path) -> Path:
    from workbench.pipeline import PipelineParameters
    from workbench.recipe import Recipe

    Recipe(parameters=PipelineParameters(model_path=str(model_dir), output_dir=str(output))).save(
        tmp_path / "recipe.json"
    )
    return tmp_path / "recipe.json"


def test_cli_run_into_a_folder_another_run_holds_names_that_run(tmp_path, tiny_model_dir):
    output = tmp_path / "run"
    recipe = _recipe_into(tmp_path, tiny_model_dir("bert"), output)
    holder = OutputFolder(output).claim()  # this test process is the other, live run
    try:
        before = sorted(p.name for p in output.iterdir())
        result = cli("run", str(recipe), "--quiet", "--no-check-inputs")
        assert result.returncode == 1 and result.stderr.startswith("OutputFolderBusy"), result.stderr[-2000:]
        assert f"process {os.getpid()}" in result.stderr and "Traceback" not in result.stderr
        assert sorted(p.name for p in output.iterdir()) == before  # nothing written, the lock left alone
    finally:
        holder.release()


def test_cli_run_into_an_earlier_run_without_overwrite_changes_nothing(tmp_path, tiny_model_dir):
    output = tmp_path / "run"
    recipe = _recipe_into(tmp_path, tiny_model_dir("bert"), output)
    output.mkdir()
    (output / "model.onnx").write_bytes(b"an earlier run's model")
    (output / "summary.json").write_text('{"model": "earlier"}')
    result = cli("run", str(recipe), "--quiet", "--no-check-inputs")
    assert result.returncode == 1 and result.stderr.startswith("OutputFolderError"), result.stderr[-2000:]
    assert "holds an earlier run" in result.stderr and "Traceback" not in result.stderr
    assert (output / "model.onnx").read_bytes() == b"an earlier run's model"
    assert (output / "summary.json").read_text() == '{"model": "earlier"}'
    assert sorted(p.name for p in output.iterdir()) == ["model.onnx", "summary.json"]
