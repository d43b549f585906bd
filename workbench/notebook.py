"""Checks a notebook's first code cell runs on the papermill parameters it was given.

papermill injects the parameters it is given as assignments after a notebook's `parameters` cell. A misspelled
name (`-p sequence_lenght 64`) would only add an unused variable, and the notebook would run with the default:
:func:`check_parameters`, called first thing after the parameters, makes it an error naming the unknown
parameter and the closest allowed one::

    wb.check_parameters(globals(), "model_path", "output_dir", "sequence_length")
"""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable, Mapping
from typing import Any

from workbench.errors import ConfigError

#: Values papermill can inject: what its parameter translators write for Python kernels.
_PARAMETER_TYPES = (type(None), bool, int, float, str, list, dict, tuple)
#: Globals every IPython kernel defines whose values are plain lists or dicts.
_KERNEL_NAMES = frozenset({"In", "Out"})


def check_parameters(namespace: Mapping[str, Any], *allowed: str | Iterable[str]) -> None:
    """Raise ConfigError if `namespace` (a notebook's globals()) holds a parameter the notebook does not take.

    A parameter is a global whose name does not start with an underscore and whose value is one of the types
    papermill injects (None, bool, int, float, str, list, dict, tuple); modules, functions, classes and objects
    the notebook made are not parameters. Every name in `allowed` must be defined too (the parameters cell
    defines them), so a check list that drifted from the parameters cell is an error as well.

    Args:
        namespace: The notebook's `globals()`.
        allowed: The names of the notebook's parameters (strings, or iterables of strings).

    Raises:
        ConfigError: An unknown parameter (named, with the closest allowed one), or an allowed one that is not
            defined.
    """
    names: set[str] = set()
    for item in allowed:
        if isinstance(item, str):
            names.add(item)
        else:
            names.update(item)
    unknown = sorted(
        name
        for name, value in namespace.items()
        if not name.startswith("_")
        and name not in names
        and name not in _KERNEL_NAMES
        and isinstance(value, _PARAMETER_TYPES)
        and not isinstance(value, types.ModuleType)
    )
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, sorted(names), n=1, cutoff=0.6)
            hints.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
        raise ConfigError(
            f"This notebook has no parameter {', '.join(hints)}.",
            expected=f"parameters among {sorted(names)}",
            fix="check the spelling of the papermill parameter (-p NAME VALUE) or of the variable",
        )
    missing = sorted(names - set(namespace))
    if missing:
        raise ConfigError(
            f"The notebook checks parameters {missing} that its parameters cell does not define.",
            fix="add them to the cell tagged 'parameters', or remove them from the check_parameters() call",
        )
