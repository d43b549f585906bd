"""Facts about this machine a measurement is meaningless without: processor, memory, load."""

from __future__ import annotations

import ctypes
import gc
import os
import platform
from typing import Any


def cpu_name() -> str:
    """The processor's model name (from /proc/cpuinfo on Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """The facts a latency figure is meaningless without."""
    return {
        "platform": platform.platform(),
        "processor": cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
    }


def _proc_status_mb(key: str) -> float | None:
    """A memory line of /proc/self/status (kB there) in MB, or None where there is no such file."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mb() -> float | None:
    """This process's resident memory now (VmRSS), in MB; None off Linux."""
    return _proc_status_mb("VmRSS")


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far (VmHWM), in MB; None off Linux."""
    return _proc_status_mb("VmHWM")


_MALLOC_TRIM: Any = None


def release_free_memory() -> None:
    """Collect garbage and hand the C heap's free pages back to the OS (glibc's malloc_trim; a no-op elsewhere).

    Done before each RSS reading of an activation, so that a session does not appear to cost nothing just
    because it reused pages that earlier work (an export, a quantization) freed but the allocator kept.
    """
    global _MALLOC_TRIM
    gc.collect()
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError, TypeError):  # not glibc: nothing to trim with
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_VERSIONED = (
    "torch",
    "transformers",
    "onnx",
    "onnxruntime",
    "onnxruntime-gpu",
    "openvino",
    "nncf",
    "polygraphy",
    "tritonclient",
)


def library_versions() -> dict[str, str]:
    """Versions of the libraries a result depends on (those installed)."""
    from workbench._lazy import installed_distribution

    versions = {name: installed_distribution(name) for name in _VERSIONED}
    return {name: version for name, version in versions.items() if version}
