"""Every notebook holds imports, assignments and calls only: logic lives in the library."""

from __future__ import annotations

import pytest

from tests.notebooks.checks import NOTEBOOKS, logic_in


@pytest.mark.parametrize("path", sorted(NOTEBOOKS.glob("*.ipynb")), ids=lambda p: p.name)
def test_notebook_cells_only_call_the_library(path):
    assert logic_in(path) == []
