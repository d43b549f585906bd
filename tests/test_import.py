"""`import workbench` stays light, and every public name in `workbench.__all__` resolves to where it is defined."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import workbench

HEAVY = ("torch", "onnxruntime", "tensorrt", "openvino", "nncf")


def _heavy_modules_after(code: str) -> list[str]:
    """Run `code` in a fresh interpreter and return which heavy top-level modules it left in sys.modules."""
    script = code + f"\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))\n"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_bare_import_is_light():
    assert _heavy_modules_after("import workbench") == []


def test_probe_detects_heavy_imports():
    # the probe itself must be able to fail: importing onnxruntime directly is seen
    pytest.importorskip("onnxruntime")
    assert "onnxruntime" in _heavy_modules_after("import onnxruntime")


@pytest.mark.parametrize("name", ["ExportConfig", "AccuracyBudget", "TritonConfig", "PipelineParameters"])
def test_light_config_names_stay_light(name):
    code = f"import workbench\nvalue = workbench.{name}\nassert isinstance(value, type), value"
    assert _heavy_modules_after(code) == []


def test_all_light_config_names_together_stay_light():
    code = (
        "import workbench\n"
        "for name in ('ExportConfig', 'AccuracyBudget', 'TritonConfig', 'PipelineParameters',"
        " 'BenchmarkConfig', 'DynamicQuantConfig'):\n"
        "    getattr(workbench, name)\n"
        "workbench.ExportConfig().to_json()\n"
        "workbench.PipelineParameters.preset('ci')\n"
    )
    assert _heavy_modules_after(code) == []


@pytest.mark.parametrize(
    "module",
    [
        "workbench.errors",
        "workbench._lazy",
        "workbench._files",
        "workbench.config",
        "workbench.models",
        "workbench.data",
        "workbench.onnx.io",
        "workbench.summary",
        "workbench.doctor",
        "workbench.__main__",
    ],
)
def test_core_modules_import_light(module):
    assert _heavy_modules_after(f"import {module}") == []


def test_unknown_attribute_raises_attribute_error():
    with pytest.raises(AttributeError, match="no_such_name"):
        workbench.no_such_name  # noqa: B018
    assert not hasattr(workbench, "definitely_not_exported")
    with pytest.raises(ImportError):
        from workbench import definitely_not_exported  # noqa: F401


def test_version_is_a_string():
    assert isinstance(workbench.__version__, str) and workbench.__version__
    assert "__version__" in workbench.__all__


def test_dir_lists_public_names():
    assert sorted(dir(workbench)) == sorted(workbench.__all__)


@pytest.mark.parametrize("name", sorted(workbench._EXPORTS))
def test_every_public_name_resolves_to_its_module(name):
    value = getattr(workbench, name)
    assert value is not None
    assert value.__module__ == workbench._EXPORTS[name]
    assert getattr(sys.modules[workbench._EXPORTS[name]], name) is value


def test_all_names_resolve():
    for name in workbench.__all__:
        assert getattr(workbench, name) is not None, name


def test_type_checking_imports_match_exports():
    """The TYPE_CHECKING block (for IDEs) names the same objects, from the same modules, as the lazy table."""
    tree = ast.parse(Path(workbench.__file__).read_text())
    block = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
    )
    imported = {
        alias.name: node.module for node in block.body if isinstance(node, ast.ImportFrom) for alias in node.names
    }
    assert imported == workbench._EXPORTS
