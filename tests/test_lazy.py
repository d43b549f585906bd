"""Optional imports: missing packages name their extra; onnxruntime and onnxruntime-gpu together are refused."""

from __future__ import annotations

import json
import sys

import pytest

import workbench._lazy as lazy
from workbench.errors import DependencyConflict, MissingDependency, WorkbenchError

FAKE = "workbench_test_surely_missing_module"


def test_missing_module_names_the_extra_from_the_table(monkeypatch):
    monkeypatch.setitem(lazy.EXTRA_FOR_MODULE, FAKE, "triton")
    with pytest.raises(MissingDependency) as info:
        lazy.require(FAKE, purpose="Serving with the fake engine")
    message = str(info.value)
    assert "inference-workbench[triton]" in message
    assert FAKE in message
    assert "Serving with the fake engine" in message
    assert "Fix:" in message
    assert isinstance(info.value, ImportError) and isinstance(info.value, WorkbenchError)
    assert isinstance(info.value.__cause__, ImportError)


def test_missing_submodule_uses_top_level_name_for_the_extra(monkeypatch):
    monkeypatch.setitem(lazy.EXTRA_FOR_MODULE, FAKE, "gpu")
    with pytest.raises(MissingDependency, match=r"inference-workbench\[gpu\]"):
        lazy.require(f"{FAKE}.sub.module", purpose="Testing")


def test_explicit_extra_overrides_the_table(monkeypatch):
    monkeypatch.setitem(lazy.EXTRA_FOR_MODULE, FAKE, "gpu")
    with pytest.raises(MissingDependency) as info:
        lazy.require(FAKE, purpose="Testing", extra="cpu")
    assert "inference-workbench[cpu]" in str(info.value)
    assert "[gpu]" not in str(info.value)


def test_module_without_extra_suggests_plain_pip_install():
    assert FAKE not in lazy.EXTRA_FOR_MODULE
    with pytest.raises(MissingDependency) as info:
        lazy.require(FAKE, purpose="Testing")
    assert f"pip install {FAKE}" in str(info.value)
    assert "inference-workbench[" not in str(info.value)


def test_present_module_is_returned():
    assert lazy.require("json", purpose="Testing") is json


def test_broken_dependency_of_an_installed_package_is_not_hidden(tmp_path, monkeypatch):
    # the package exists but one of its own imports fails: the real ImportError must come through
    package = "workbench_test_broken_pkg"
    (tmp_path / f"{package}.py").write_text("import workbench_test_missing_inner_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, package, raising=False)
    with pytest.raises(ImportError) as info:
        lazy.require(package, purpose="Testing")
    assert not isinstance(info.value, MissingDependency)
    assert info.value.name == "workbench_test_missing_inner_dependency"


def _fake_distributions(monkeypatch, installed: dict[str, str]) -> None:
    monkeypatch.setattr(lazy, "installed_distribution", lambda name: installed.get(name))


def test_both_onnxruntime_distributions_conflict(monkeypatch):
    _fake_distributions(monkeypatch, {"onnxruntime": "1.20.0", "onnxruntime-gpu": "1.20.1"})
    with pytest.raises(DependencyConflict) as info:
        lazy.check_onnxruntime_conflict()
    message = str(info.value)
    assert "1.20.0" in message and "1.20.1" in message
    assert "Fix:" in message
    assert "pip uninstall -y onnxruntime onnxruntime-gpu" in message
    assert "pip install onnxruntime-gpu" in message
    assert isinstance(info.value, WorkbenchError)


@pytest.mark.parametrize(
    "installed",
    [{"onnxruntime": "1.20.0"}, {"onnxruntime-gpu": "1.20.0"}, {}],
    ids=["cpu-only", "gpu-only", "none"],
)
def test_one_or_no_onnxruntime_distribution_is_fine(monkeypatch, installed):
    _fake_distributions(monkeypatch, installed)
    lazy.check_onnxruntime_conflict()  # no error


def test_require_onnxruntime_checks_the_conflict_first(monkeypatch):
    _fake_distributions(monkeypatch, {"onnxruntime": "1.0", "onnxruntime-gpu": "1.0"})
    with pytest.raises(DependencyConflict):
        lazy.require("onnxruntime", purpose="Testing")
    with pytest.raises(DependencyConflict):
        lazy.require("onnxruntime.quantization", purpose="Testing")


def test_require_other_modules_ignores_onnxruntime_conflict(monkeypatch):
    _fake_distributions(monkeypatch, {"onnxruntime": "1.0", "onnxruntime-gpu": "1.0"})
    assert lazy.require("json", purpose="Testing") is json


def test_installed_distribution():
    assert lazy.installed_distribution("pytest") == pytest.__version__
    assert lazy.installed_distribution("workbench-test-no-such-distribution") is None
