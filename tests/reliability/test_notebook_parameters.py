"""A misspelled papermill parameter fails the notebook with a message naming it and the closest allowed one."""

from __future__ import annotations

import math
import types
from pathlib import Path

import pytest

from tests.notebooks.checks import committed_code_cells, logic_in
from workbench.errors import ConfigError
from workbench.notebook import check_parameters

pytestmark = pytest.mark.reliability

NOTEBOOKS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("*.ipynb"))


def test_an_unknown_name_is_an_error_naming_the_closest_one():
    namespace = {
        "sequence_length": 128,
        "output_dir": "runs/x",
        "sequence_lenght": 64,
        "In": [""],
        "Out": {},
        "_": None,
        "wb": types,
        "math": math,
        "helper": print,
    }
    with pytest.raises(ConfigError) as info:
        check_parameters(namespace, "sequence_length", "output_dir")
    message = str(info.value)
    assert "'sequence_lenght'" in message and "did you mean 'sequence_length'" in message


def test_known_names_modules_functions_and_kernel_globals_pass():
    namespace = {
        "sequence_length": 128,
        "output_dir": None,
        "In": [""],
        "Out": {},
        "_i1": "x",
        "wb": types,
        "partial": print,
    }
    check_parameters(namespace, ["sequence_length", "output_dir"])


def test_a_check_list_that_drifted_from_the_parameters_cell_is_an_error():
    with pytest.raises(ConfigError, match="does not define"):
        check_parameters({"sequence_length": 1}, "sequence_length", "output_dir")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_checks_its_parameters_first(path):
    import ast

    cells = committed_code_cells(path, ())
    parameters = [
        t.id for node in ast.parse(cells[0].source).body if isinstance(node, ast.Assign) for t in node.targets
    ]
    first = ast.parse(cells[1].source)
    calls = [
        n for n in ast.walk(first) if isinstance(n, ast.Call) and getattr(n.func, "attr", None) == "check_parameters"
    ]
    assert len(calls) == 1, cells[1].source
    assert [a.value for a in calls[0].args[1:]] == parameters  # exactly the parameters cell's names
    assert not logic_in(path)  # still calls only


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_misspelled_papermill_parameter_fails_the_notebook(path, tmp_path):
    papermill = pytest.importorskip("papermill")
    with pytest.raises(papermill.PapermillExecutionError) as info:
        papermill.execute_notebook(
            str(path),
            str(tmp_path / "out.ipynb"),
            parameters={"sequence_lenght": 64},
            cwd=str(path.parent),
            progress_bar=False,
            kernel_name="python3",
        )
    assert info.value.ename == "ConfigError"
    assert "sequence_lenght" in info.value.evalue and "did you mean 'sequence_length'" in info.value.evalue
    assert not (tmp_path / "runs").exists()
