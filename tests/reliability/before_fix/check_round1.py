"""Evidence for issue 12: each defect it names, reproduced against a chosen copy of the workbench's source.

Not collected by the normal suite (pytest collects test_*.py only). Run it against round 1 (before any issue-12
work) and against the fixed code:

    WORKBENCH_SRC=/work/wt/round1 python -m pytest -p no:cacheprovider tests/reliability/before_fix/check_round1.py
    WORKBENCH_SRC=$PWD            python -m pytest -p no:cacheprovider tests/reliability/before_fix/check_round1.py

WORKBENCH_SRC (default: this checkout) is put first on sys.path, so `import workbench` is that copy; subprocesses
get it first on PYTHONPATH. Each check asserts the fixed behaviour through whichever API the copy has (round 1
kept the same functions under older module paths: workbench.stages.calibrate, workbench.stages.precision,
workbench.backends.onnxrt, workbench.plan, workbench.stages.triton, workbench.triton_server), so on round 1 a
check fails for the defect itself, never at import. docs/reliability-evidence.md records both runs.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve()
TESTS_ROOT = HERE.parents[3]  # the checkout holding these tests (tests.* helpers, fixtures)
SRC = Path(os.environ.get("WORKBENCH_SRC", TESTS_ROOT)).resolve()
if not (SRC / "workbench" / "__init__.py").is_file():
    raise RuntimeError(f"WORKBENCH_SRC={SRC} holds no workbench package")
sys.path.insert(0, str(SRC))
for _name in [n for n in sys.modules if n == "workbench" or n.startswith("workbench.")]:
    del sys.modules[_name]
import workbench  # noqa: E402

assert Path(workbench.__file__).resolve().is_relative_to(SRC), workbench.__file__

from tests.reliability import fake_pb_utils  # noqa: E402
from tests.reliability.conftest import initialize_served, int32_id_model, leftovers, snapshot  # noqa: E402

ROUND1 = not (SRC / "workbench" / "engines").is_dir()  # the reorganised package has workbench/engines
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(TESTS_ROOT)]), "WORKBENCH_SRC": str(SRC)}
# subprocesses run `python -P -c GUARD + script`: -P keeps the current folder (maybe another checkout) off sys.path,
# and the guard stops a script that would import another copy of the workbench
GUARD = (
    "import os as _os, workbench as _wb\n"
    "assert _os.path.realpath(_wb.__file__).startswith(_os.environ['WORKBENCH_SRC'] + _os.sep), _wb.__file__\n"
)


def python_c(script: str) -> list[str]:
    return [sys.executable, "-P", "-c", GUARD + textwrap.dedent(script)]


# root ignores file modes; without these capabilities a 0555 folder is read-only for root too
WITHOUT_OVERRIDES = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner", "--"]
TEXTS = ["the cat sat on the mat", "revenue grew 12%", "how do I reset my password?", "SELECT 1;"]


def module(*names: str):
    """The first of `names` that this copy of the workbench has (the fixed path first, round 1's second)."""
    for name in names:
        # only modules this copy has: the venv's editable install of another checkout would answer for the rest
        relative = Path(*name.split("."))
        if (SRC / relative.with_suffix(".py")).is_file() or (SRC / relative / "__init__.py").is_file():
            return importlib.import_module(name)
    raise AssertionError(f"none of {names} in {SRC}")


@pytest.fixture(autouse=True)
def only_the_source_under_test():
    """Every workbench module a check imported is WORKBENCH_SRC's own."""
    yield
    foreign = [
        n
        for n, m in list(sys.modules.items())
        if (n == "workbench" or n.startswith("workbench."))
        and getattr(m, "__file__", None)
        and not Path(m.__file__).resolve().is_relative_to(SRC)
    ]
    assert not foreign, f"imported from outside {SRC}: {foreign}"


def short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"


def workbench_error(call, *words: str, cls: str = "WorkbenchError", accepted: str = "") -> BaseException:
    """Call; it must raise a WorkbenchError (and class `cls` by name, somewhere in its MRO) with each of `words`."""
    from workbench.errors import WorkbenchError

    try:
        result = call()
    except Exception as exc:  # noqa: BLE001 - a raw exception is the defect being shown
        assert isinstance(exc, WorkbenchError), f"raw exception, not a WorkbenchError: {short(exc)}"
        assert cls in [c.__name__ for c in type(exc).__mro__], f"{type(exc).__name__}, not {cls}: {short(exc)}"
        for word in words:
            assert word in str(exc), f"{word!r} not in the message: {short(exc)}"
        return exc
    raise AssertionError(f"no error: {accepted or f'the call returned {type(result).__name__}'}")


def run_python(script: str, *args: str, cwd: Path | None = None, env: dict | None = None, prefix=()) -> str:
    completed = subprocess.run(
        [*prefix, *python_c(script), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env or ENV,
        timeout=600,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed.stdout


def read_only_prefix() -> list[str]:
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without util-linux's setpriv")
    return WITHOUT_OVERRIDES


def make_read_only(folder: Path) -> None:
    for root, _dirs, files in os.walk(folder):
        for name in files:
            os.chmod(Path(root) / name, 0o444)
        os.chmod(root, 0o555)


def undo_read_only(folder: Path) -> None:
    for root, _dirs, _files in os.walk(folder):
        os.chmod(root, 0o755)


@pytest.fixture(scope="module")
def feeds(tiny_model_dir):
    from workbench.data import tokenize_batches
    from workbench.models import load_model

    return tokenize_batches(
        load_model(tiny_model_dir("bert")).load_tokenizer(), TEXTS, batch_size=1, sequence_length=16
    )


def calibrate_module():
    return module("workbench.stages.precision.calibrate", "workbench.stages.calibrate")


def quantize_module():
    return module("workbench.stages.precision.quantize", "workbench.stages.precision")


def triton_modules():
    pytest.importorskip("tritonclient.grpc.model_config_pb2")
    if ROUND1:
        triton = module("workbench.stages.triton")
        return triton.TritonConfig, triton.export_triton_ensemble, triton.export_triton
    config, ensemble, model = (module(f"workbench.triton.{n}") for n in ("config", "ensemble", "model"))
    return config.TritonConfig, ensemble.export_triton_ensemble, model.export_triton


def load_served_model(model_dir: Path):
    """Import a repository's `<model>/1/model.py` as Triton does and initialize it with its config.pbtxt."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    cfg = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    name = f"served_{model_dir.name}_{id(cfg)}"
    return initialize_served(model_dir / "1" / "model.py", model_dir, cfg, module_name=name)


# ------------------------------------------------------------------------------------------------ the server path


def test_python_model_answers_each_request_of_a_mixed_batch(tiny_bert_onnx, tiny_model_dir, tmp_path, monkeypatch):
    """A non-UTF-8 text batched with good ones: its own error; the good requests their results (round 1: one
    TritonError object for every response of the batch, which crashes tritonserver's Python backend)."""
    config_cls, export_ensemble, _ = triton_modules()
    pb_utils = fake_pb_utils.make_module()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", pb_utils)
    result = export_ensemble(
        tiny_bert_onnx,
        tmp_path / "repo",
        tiny_model_dir("bert"),
        config_cls(model_name="tiny", max_batch_size=8),
        sequence_length=16,
    )
    tokenizer = load_served_model(Path(result.repository) / "tiny_tokenizer")
    texts = [b"A man is playing a guitar.", b"\xff\xfe not UTF-8", b"short"]
    requests = [pb_utils.InferenceRequest(TEXT=np.array([[t]], dtype=np.object_)) for t in texts]
    responses = tokenizer.execute(requests)
    errors = [r.error for r in responses]
    shared = len({id(e) for e in errors if e is not None}) < sum(e is not None for e in errors)
    assert not shared and errors[0] is None and errors[2] is None, (
        f"{sum(e is not None for e in errors)} of 3 responses carry an error, "
        f"{len({id(e) for e in errors if e is not None})} distinct TritonError object(s): "
        f"{errors[1].message()[:90] if errors[1] else None!r}"
    )
    assert errors[1] is not None and "UTF-8" in errors[1].message()
    for index in (0, 2):
        assert {t.name() for t in responses[index].output_tensors()} >= {"input_ids", "attention_mask"}


# ------------------------------------------------------------------------------------------------------- caches


def _calibrate(model, feeds, cache_dir):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = calibrate_module().calibrate(model, feeds, cache_dir=cache_dir, progress=False)
        ranges = result.ranges()
    return result, ranges, [str(w.message) for w in caught]


def _set_ranges(value, low: float, high: float):
    if isinstance(value, dict):
        if "lowest" in value and "highest" in value:
            value.update(lowest=low, highest=high)
        for inner in value.values():
            _set_ranges(inner, low, high)


def test_cache_entry_with_wrong_ranges_is_not_a_hit(tiny_bert_onnx, feeds, tmp_path):
    """Valid JSON, wrong ranges: never a silent hit (round 1 used it, and the model's outputs were all zero)."""
    first, ranges, _ = _calibrate(tiny_bert_onnx, feeds, tmp_path)
    entry = json.loads(first.cache_path.read_text())
    _set_ranges(entry, 0.0, 0.0)
    first.cache_path.write_text(json.dumps(entry))
    try:
        again, again_ranges, warned = _calibrate(tiny_bert_onnx, feeds, tmp_path)
    except Exception:  # noqa: BLE001 - an error naming the file is the other correct outcome
        workbench_error(lambda: _calibrate(tiny_bert_onnx, feeds, tmp_path), str(first.cache_path))
        return
    zero = sum(1 for low, high in again_ranges.values() if low == high == 0.0)
    assert again_ranges == ranges, f"cache_hit={again.cache_hit}: {zero} of {len(again_ranges)} ranges are (0, 0)"
    assert any(str(first.cache_path) in w for w in warned), "re-measured without a warning naming the entry"


def test_truncated_cache_entry_names_the_file(tiny_bert_onnx, feeds, tmp_path):
    """A truncated entry: re-measured with a warning naming it, or an error naming it (round 1: a JSON error
    with no file name, on every later run)."""
    first, ranges, _ = _calibrate(tiny_bert_onnx, feeds, tmp_path)
    text = first.cache_path.read_text()
    first.cache_path.write_text(text[: len(text) // 2])
    try:
        _again, again_ranges, warned = _calibrate(tiny_bert_onnx, feeds, tmp_path)
    except Exception:  # noqa: BLE001
        workbench_error(lambda: _calibrate(tiny_bert_onnx, feeds, tmp_path), str(first.cache_path))
        return
    assert again_ranges == ranges and any(str(first.cache_path) in w for w in warned), warned


# ------------------------------------------------------------------------------------------------ output folders


def _parameters(tiny_model_dir, folder: Path, **more):
    from workbench.pipeline import PipelineParameters

    values = {"model_path": str(tiny_model_dir("bert")), "output_dir": str(folder), "sequence_length": 16}
    return PipelineParameters(**{**values, "max_eval_samples": 2, **more})


def _release(pipeline) -> None:
    folder = getattr(pipeline, "output_folder", None)
    if folder is not None:
        folder.release()


def test_overwrite_false_refuses_before_replacing_models(tiny_model_dir, tmp_path):
    """overwrite=False into a folder holding an earlier run: refused before any model file changes (round 1
    replaced model.onnx and refused only at the Triton step)."""
    from workbench.pipeline import Pipeline

    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"the earlier run's model")
    (folder / "summary.json").write_text('{"model": "earlier"}')
    before = snapshot(folder)

    def second_run():
        pipeline = Pipeline(_parameters(tiny_model_dir, folder, overwrite=False))
        try:
            pipeline.export()
            pipeline.fuse()
        finally:
            _release(pipeline)

    try:
        workbench_error(second_run, "earlier run", accepted="export() and fuse() ran with overwrite=False")
    finally:
        changed = sorted(k for k in set(before) | set(snapshot(folder)) if before.get(k) != snapshot(folder).get(k))
        assert not changed, f"overwrite=False changed {changed} in the earlier run's folder"


def test_second_run_into_a_busy_folder_is_refused(tiny_model_dir, tmp_path):
    """Two runs into one folder: the second is refused, naming the first (round 1: no lock, both write)."""
    from workbench.pipeline import Pipeline

    folder = tmp_path / "run"
    script = """
        import sys, time
        from workbench.pipeline import Pipeline, PipelineParameters
        pipeline = Pipeline(PipelineParameters(model_path=sys.argv[1], output_dir=sys.argv[2], sequence_length=16,
                                               overwrite=True))
        print("held", flush=True)
        time.sleep(120)
    """
    child = subprocess.Popen(
        [*python_c(script), str(tiny_model_dir("bert")), str(folder)],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert child.stdout.readline().strip() == "held"

        def second_run():
            _release(Pipeline(_parameters(tiny_model_dir, folder, overwrite=True)))

        workbench_error(
            second_run,
            f"process {child.pid}",
            cls="OutputFolderBusy",
            accepted=f"a second Pipeline into the folder that live process {child.pid} is running into",
        )
    finally:
        child.kill()
        child.wait(timeout=30)


DYNAMIC_SCRIPT = """
    import json, os, sys
    from workbench.errors import WorkbenchError
    from pathlib import Path
    import workbench
    if (Path(workbench.__file__).parent / "engines").is_dir():
        from workbench.stages.precision.quantize import quantize_dynamic
    else:  # round 1
        from workbench.stages.precision import quantize_dynamic
    try:
        quantize_dynamic(sys.argv[1], sys.argv[2])
        outcome = "ok"
    except Exception as exc:
        outcome = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    print("RESULT " + json.dumps(outcome))
"""


def test_dynamic_quantization_writes_nothing_beside_the_input(tiny_bert_onnx, tmp_path):
    """Dynamic INT8 of a model in a read-only folder: works, and writes nothing there (round 1: onnxruntime
    wrote <input>-inferred.onnx beside the input, which fails on a read-only folder)."""
    ro, out = tmp_path / "ro", tmp_path / "out"
    ro.mkdir()
    out.mkdir()
    shutil.copyfile(tiny_bert_onnx, ro / "model.onnx")
    make_read_only(ro)
    before = snapshot(ro)
    try:
        stdout = run_python(
            DYNAMIC_SCRIPT, str(ro / "model.onnx"), str(out / "int8.onnx"), cwd=out, prefix=read_only_prefix()
        )
    finally:
        undo_read_only(ro)
    outcome = json.loads(next(line[7:] for line in stdout.splitlines() if line.startswith("RESULT ")))
    assert outcome == "ok", outcome.replace(str(tmp_path), "<tmp>")[-260:]
    assert snapshot(ro) == before and (out / "int8.onnx").is_file()


# ------------------------------------------------------------------------------------- leftovers of a killed run

KILL_SCRIPT = """
    import os, sys, time
    from pathlib import Path
    mode, output, marker, model, tokenizer = sys.argv[1:6]
    output = Path(output)

    def hold():
        Path(marker).write_text(str(os.getpid()))
        time.sleep(120)
        raise SystemExit("not killed")

    import workbench
    if (Path(workbench.__file__).parent / "engines").is_dir():
        from workbench.stages.precision import calibrate as calibration, quantize
    else:  # round 1
        from workbench.stages import calibrate as calibration, precision as quantize
    if mode == "quantize_dynamic":  # stop at the first move of a staged *.partial into place
        real = os.replace

        def replace(source, destination, *args, **kwargs):
            staged = Path(os.fspath(source))
            if marker != "-" and any(p.name.endswith(".partial") for p in (staged, *staged.parents)):
                hold()
            return real(source, destination, *args, **kwargs)

        os.replace = replace
        quantize.quantize_dynamic(model, output / "int8.onnx")
    else:  # stop inside calibration, after the first feed
        from workbench.data import tokenize_batches
        from workbench.models import load_model

        real_next, seen = calibration.FeedReader.get_next, []

        def get_next(self):
            seen.append(1)
            if len(seen) > 1 and marker != "-":
                hold()
            return real_next(self)

        calibration.FeedReader.get_next = get_next
        texts = ["the cat sat on the mat", "revenue grew 12%", "how do I reset it?"]
        feeds = tokenize_batches(load_model(tokenizer).load_tokenizer(), texts, batch_size=1, sequence_length=16)
        calibration.calibrate(model, feeds, cache_dir=output / "cache", progress=False)
"""


def _kill_then_rerun(mode: str, output: Path, model: Path, tokenizer: Path, env: dict) -> None:
    marker = output.parent / f".{mode}.held"
    args = [*python_c(KILL_SCRIPT), mode, str(output), str(marker), str(model)]
    process = subprocess.Popen([*args, str(tokenizer)], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert process.poll() is None, f"ended before it was held: {process.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, "not held within 300 s"
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    process.stderr.close()
    marker.unlink()
    rerun = subprocess.run([*args[:5], str(output), "-", str(model), str(tokenizer)], env=env, capture_output=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]


def test_killed_quantization_leaves_no_partial_after_rerun(tiny_bert_onnx, tiny_model_dir, tmp_path):
    """SIGKILL while quantizing, then a re-run into the same folder: no *.partial left (round 1: the killed
    run's hidden staging folder and partial file stay for good)."""
    output = tmp_path / "out"
    _kill_then_rerun("quantize_dynamic", output, tiny_bert_onnx, tiny_model_dir("bert"), ENV)
    assert (output / "int8.onnx").is_file()
    assert leftovers(output) == [], f"left after the re-run: {leftovers(output)}"


def test_killed_calibration_leaves_no_temporary_folder(tiny_bert_onnx, tiny_model_dir, tmp_path):
    """SIGKILL inside calibration, then a re-run: no temporary calibration folder left, in the cache folder or
    in TMPDIR (round 1: a workbench-calibrate-* folder in TMPDIR that no run removes)."""
    output, tmpdir = tmp_path / "out", tmp_path / "tmpdir"
    output.mkdir()
    tmpdir.mkdir()
    _kill_then_rerun("calibrate", output, tiny_bert_onnx, tiny_model_dir("bert"), {**ENV, "TMPDIR": str(tmpdir)})
    assert list((output / "cache").glob("*.json"))
    # .ses: not the workbench's (stage_writes_script.py leaves it out of TMPDIR's listing too)
    left = leftovers(output) + [f"$TMPDIR/{p.name}" for p in tmpdir.iterdir() if p.name != ".ses"]
    assert left == [], f"left after the re-run: {left}"


# -------------------------------------------------------------------------------------------------------- types


def test_string_booleans_are_refused():
    """overwrite='no' and per_channel='false' are errors, not True (round 1 accepted both as true)."""
    from workbench.pipeline import PipelineParameters

    workbench_error(lambda: PipelineParameters(overwrite="no"), "overwrite", cls="ConfigError")
    workbench_error(lambda: quantize_module().DynamicQuantConfig(per_channel="false"), "per_channel", cls="ConfigError")


def test_fractional_sequence_length_is_refused():
    """sequence_length=64.5 is an error at construction (round 1 accepted it)."""
    from workbench.pipeline import PipelineParameters

    workbench_error(lambda: PipelineParameters(sequence_length=64.5), "sequence_length", cls="ConfigError")


def test_too_long_sequence_length_is_refused_before_writing(tiny_model_dir, tmp_path):
    """sequence_length=100000 for a 512-position model is refused before anything is written (round 1 accepted
    it and failed only after files were written)."""
    from workbench.pipeline import Pipeline

    folder = tmp_path / "run"

    def run():
        pipeline = Pipeline(_parameters(tiny_model_dir, folder, sequence_length=100000))
        try:
            pipeline.export()
        finally:
            _release(pipeline)

    try:
        workbench_error(run, "100000", cls="ConfigError", accepted="Pipeline(sequence_length=100000) and export() ran")
    finally:
        written = sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []
        assert not written, f"written before the refusal: {written}"


def test_misspelled_papermill_parameter_fails_the_notebook(tiny_model_dir, tmp_path):
    """papermill's `sequence_lenght=64` fails the notebook naming the closest name (round 1 ran with defaults).

    The notebook's cells up to its first call run in-process, as papermill's kernel runs them, after the
    parameters cell papermill injects (papermill.parameterize, no kernel)."""
    parameterize = pytest.importorskip("papermill.parameterize")
    from papermill.iorw import load_notebook_node

    path = SRC / "notebooks" / "quickstart.ipynb"
    notebook = parameterize.parameterize_notebook(
        load_notebook_node(str(path)),
        {"sequence_lenght": 64, "model_path": str(tiny_model_dir("bert")), "output_dir": str(tmp_path / "run")},
    )
    cells = [c.source for c in notebook.cells if c.cell_type == "code"]
    injected = next(i for i, c in enumerate(notebook.cells) if "injected-parameters" in c.metadata.get("tags", []))
    upto = sum(1 for c in notebook.cells[: injected + 1] if c.cell_type == "code") + 1  # the cell after it, too
    namespace: dict = {"__name__": "__main__"}

    def run_cells():
        cwd = os.getcwd()
        os.chdir(path.parent)
        try:
            for source in cells[:upto]:
                exec(compile(source, str(path), "exec"), namespace)  # noqa: S102 - the notebook's own code
        finally:
            _release(namespace.get("pipeline"))
            os.chdir(cwd)

    workbench_error(
        run_cells,
        "sequence_lenght",
        "sequence_length",
        cls="ConfigError",
        accepted="the notebook's first cells ran with sequence_lenght=64 ignored",
    )


# ------------------------------------------------------------------------------------------------ raw exceptions


def test_non_utf8_sentence_file_is_a_data_error(tmp_path):
    """A latin-1 sentence file: a DataError naming the file (round 1: UnicodeDecodeError)."""
    from workbench.data import read_sentences

    (tmp_path / "s.txt").write_bytes("first\nsecond caf\xe9\n".encode("latin-1"))
    workbench_error(lambda: read_sentences(tmp_path / "s.txt"), str(tmp_path / "s.txt"), cls="DataError")


def test_int32_id_model_is_fed_int32_ids(tiny_bert_onnx, feeds, tmp_path):
    """A model whose ids are int32 runs on the tokenizer's int64 feeds (round 1: onnxruntime's raw
    InvalidArgument about the input's type)."""
    runner_cls = module("workbench.engines.onnxruntime", "workbench.backends.onnxrt").OnnxRuntimeRunner
    path = int32_id_model(tiny_bert_onnx, tmp_path / "int32.onnx")
    with runner_cls(path) as int32, runner_cls(tiny_bert_onnx) as int64:
        try:
            got = int32.infer(feeds[0])["last_hidden_state"]
        except Exception as exc:  # noqa: BLE001
            raise AssertionError(f"int64 feeds into an int32-id model: {short(exc)}") from exc
        np.testing.assert_allclose(got, int64.infer(feeds[0])["last_hidden_state"], atol=1e-6)


def test_input_less_model_is_refused_when_loaded(tmp_path):
    """An ONNX model with no inputs is refused by load_model (round 1 accepted it; a later step failed raw)."""
    import onnx
    from onnx import TensorProto, helper

    from workbench.models import load_model

    constant = helper.make_node("Constant", [], ["y"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))
    graph = helper.make_graph([constant], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "constant.onnx")
    workbench_error(
        lambda: load_model(tmp_path / "constant.onnx"),
        "no inputs",
        cls="ModelSourceError",
        accepted="load_model returned a source for a model with no inputs",
    )


def test_output_folder_that_is_a_file_is_refused(tiny_model_dir, tmp_path):
    """Exporting under a path that is a file: an error naming it (round 1: a raw FileExistsError)."""
    from workbench.models import load_model
    from workbench.stages.export import export_onnx

    (tmp_path / "file").write_text("x")
    source = load_model(tiny_model_dir("bert"))
    workbench_error(lambda: export_onnx(source, tmp_path / "file" / "model.onnx"), "is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


READ_ONLY_SCRIPT = """
    import json, sys
    from workbench.errors import WorkbenchError
    from pathlib import Path
    import workbench
    if (Path(workbench.__file__).parent / "engines").is_dir():
        from workbench.stages.precision.quantize import quantize_dynamic
    else:  # round 1
        from workbench.stages.precision import quantize_dynamic
    try:
        quantize_dynamic(sys.argv[1], sys.argv[2] + "/int8.onnx")
        outcome = {"error": None}
    except Exception as exc:
        outcome = {"error": type(exc).__name__, "workbench": isinstance(exc, WorkbenchError),
                   "message": str(exc).splitlines()[0][:220]}
    print("RESULT " + json.dumps(outcome))
"""


def test_read_only_output_folder_is_refused(tiny_bert_onnx, tmp_path):
    """Quantizing into a read-only folder: an OutputFolderError naming it (round 1: a raw PermissionError)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    os.chmod(folder, 0o555)
    try:
        stdout = run_python(READ_ONLY_SCRIPT, str(tiny_bert_onnx), str(folder), prefix=read_only_prefix())
    finally:
        os.chmod(folder, 0o755)
    outcome = json.loads(next(line[7:] for line in stdout.splitlines() if line.startswith("RESULT ")))
    assert outcome["error"] == "OutputFolderError", f"{outcome['error']}: {outcome.get('message')}"
    assert str(folder) in outcome["message"] and list(folder.iterdir()) == []


def test_full_disk_is_reported_as_a_full_disk(tiny_model_dir, tmp_path, monkeypatch):
    """ENOSPC during export: a DiskFullError, not "try the other exporter" (round 1: an ExportError)."""
    import torch

    from workbench.models import load_model
    from workbench.stages.export import export_onnx

    def enospc(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", enospc)
    source = load_model(tiny_model_dir("bert"))
    error = workbench_error(lambda: export_onnx(source, tmp_path / "out" / "model.onnx"), cls="DiskFullError")
    assert "other exporter" not in str(error)


def test_empty_benchmark_is_a_config_error():
    """benchmark([]) is a ConfigError (round 1: ZeroDivisionError)."""
    latency = module("workbench.stages.benchmark.latency", "workbench.stages.benchmark")
    config = latency.BenchmarkConfig(batch_sizes=(1,), sequence_lengths=(4,))
    workbench_error(lambda: latency.benchmark([], lambda batch, seq: {}, config), cls="ConfigError")


def test_truncated_plan_json_names_the_file(tmp_path):
    """A truncated plan file: a ConfigError naming it (round 1: a raw JSONDecodeError)."""
    plan = module("workbench.stages.precision.plan", "workbench.plan")
    path = tmp_path / "plan.json"
    path.write_text('{"method": "int8_dynamic", "opt')
    workbench_error(lambda: plan.PrecisionPlan.load(path), str(path), cls="ConfigError")


def test_unparsable_config_pbtxt_is_named(tiny_bert_onnx, tiny_model_dir, tmp_path):
    """A config.pbtxt that does not parse: loading the ensemble that uses it names the file and its line (round 1:
    Triton's "... which is not available"). Starts a real tritonserver (pytriton's) on 127.0.0.1."""
    if importlib.util.find_spec("pytriton") is None:
        pytest.skip("nvidia-pytriton is not installed")
    config_cls, export_ensemble, _ = triton_modules()
    server_module = module("workbench.triton.server", "workbench.triton_server")
    result = export_ensemble(
        tiny_bert_onnx, tmp_path / "repo", tiny_model_dir("bert"), config_cls(model_name="tiny"), sequence_length=16
    )
    config = Path(result.repository) / "tiny" / "config.pbtxt"
    config.write_text(config.read_text().replace("max_batch_size", "max_batch_sise", 1))
    with server_module.TritonServer(result.repository) as server:
        error = workbench_error(lambda: server.load("tiny_ensemble"), cls="TritonServerError")
    headline = str(error).splitlines()[0]
    assert "not available" not in headline, headline[:300]
    assert str(config) in str(error) and "line " in str(error), f"names neither file nor line: {headline[:300]!r}"
