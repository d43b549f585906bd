"""Checks every committed notebook must pass: no outputs, one `parameters` cell, calls only."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import nbformat

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
# Logic belongs in the library: a notebook cell holds imports, assignments and calls.
LOGIC_NODES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.For, ast.While, ast.If, ast.Try, ast.With,
               ast.Lambda, ast.ListComp, ast.DictComp, ast.SetComp, ast.GeneratorExp)


def committed_code_cells(path: Path, parameters: tuple[str, ...]) -> list[Any]:
    """Assert `path` is committed without outputs, with one `parameters` cell first that assigns `parameters`;
    return its code cells."""
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code_cells = [c for c in notebook.cells if c.cell_type == "code"]
    assert "parameters" in code_cells[0].metadata.get("tags", [])
    assert sum("parameters" in c.metadata.get("tags", []) for c in code_cells) == 1
    for name in parameters:
        assert f"{name} =" in code_cells[0].source, name
    assert all(not c.outputs and c.execution_count is None for c in code_cells)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    return code_cells


def logic_in(path: Path) -> list[tuple[list[str], str]]:
    """(logic node types, cell source) for every code cell of `path` that holds more than calls."""
    notebook = nbformat.read(path, as_version=4)
    found = []
    for cell in notebook.cells:
        if cell.cell_type == "code":
            nodes = [type(n).__name__ for n in ast.walk(ast.parse(cell.source)) if isinstance(n, LOGIC_NODES)]
            if nodes:
                found.append((nodes, cell.source))
    return found
