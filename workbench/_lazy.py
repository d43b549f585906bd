"""Import optional, heavy packages on first use, with errors that name the extra to install.

`import workbench` must stay light (no torch, onnxruntime or tensorrt), so every heavy import in the package
goes through :func:`require` inside the function that needs it.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
from types import ModuleType
from typing import Any

from workbench.errors import DependencyConflict, MissingDependency

# Which extra (pip install "inference-workbench[EXTRA]") provides each optional top-level module.
EXTRA_FOR_MODULE: dict[str, str] = {
    "onnxruntime": "cpu",
    "tensorrt": "gpu",
    "openvino": "openvino",
    "nncf": "openvino",
    "tritonclient": "triton",
    "pytriton": "triton",
    "playwright": "dev",
}

_ORT_CONFLICT_FIX = (
    "keep exactly one of them. For CPU: pip uninstall -y onnxruntime onnxruntime-gpu && "
    "pip install onnxruntime. For GPU: pip uninstall -y onnxruntime onnxruntime-gpu && pip install onnxruntime-gpu. "
    "(Both wheels write the same onnxruntime/ folder, so uninstalling one of a pair breaks the other: "
    "remove both, then install one.)"
)


def installed_distribution(name: str) -> str | None:
    """Return the installed version of distribution `name`, or None when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_onnxruntime_conflict() -> None:
    """Raise DependencyConflict when both onnxruntime and onnxruntime-gpu are installed."""
    cpu = installed_distribution("onnxruntime")
    gpu = installed_distribution("onnxruntime-gpu")
    if cpu and gpu:
        raise DependencyConflict(
            f"Both onnxruntime {cpu} and onnxruntime-gpu {gpu} are installed; they own the same "
            "onnxruntime/ folder, so whichever was installed last silently replaced parts of the other.",
            expected="exactly one ONNX Runtime distribution: the [cpu] extra or the [gpu] extra, never both",
            fix=_ORT_CONFLICT_FIX,
        )


def require(module: str, *, purpose: str, extra: str | None = None) -> ModuleType:
    """Import `module`, or raise MissingDependency naming the extra that installs it.

    Args:
        module: Dotted module name, e.g. "onnxruntime.quantization".
        purpose: What the caller needs it for, used in the error message.
        extra: The extra that provides it; defaults to the table above, by top-level name.

    Returns:
        The imported module.
    """
    top = module.split(".")[0]
    if top == "onnxruntime":
        check_onnxruntime_conflict()
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if getattr(exc, "name", None) not in (None, top, module):
            raise  # the package is there but one of its own dependencies is broken: show the real error
        extra = extra or EXTRA_FOR_MODULE.get(top)
        if extra:
            fix = f'pip install "inference-workbench[{extra}]" (from a checkout: pip install -e ".[{extra}]")'
        else:
            fix = f"pip install {top}"
        raise MissingDependency(
            f"{purpose} needs the Python package '{top}', which is not installed.",
            fix=fix,
        ) from exc


def lazy_exports(package: str, exports: dict[str, str], public: list[str]) -> tuple[Any, Any]:
    """Module-level `__getattr__` and `__dir__` (PEP 562) for a package that re-exports names lazily.

    Args:
        package: The package's `__name__`.
        exports: Public name -> the module that defines it; imported on first access, then cached.
        public: What `dir(package)` lists (its `__all__`).
    """

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)  # cache: later lookups skip __getattr__
        return value

    def __dir__() -> list[str]:
        return public

    return __getattr__, __dir__
