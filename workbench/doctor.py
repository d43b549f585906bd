"""What this installation can do: versions, ONNX Runtime flavour and providers, GPU and TensorRT, and every
registered engine's availability (what is missing, and the extra that installs it)."""

from __future__ import annotations

from workbench._lazy import check_onnxruntime_conflict, installed_distribution
from workbench.errors import DependencyConflict
from workbench.machine import library_versions


def report() -> str:
    """A plain-text report of the environment, one fact per line."""
    lines = [f"{name}: {version}" for name, version in library_versions().items()]
    try:
        check_onnxruntime_conflict()
        flavour = (
            "onnxruntime-gpu"
            if installed_distribution("onnxruntime-gpu")
            else ("onnxruntime" if installed_distribution("onnxruntime") else None)
        )
        lines.append(f"ONNX Runtime: {flavour or 'not installed (pip install -e .[cpu])'}")
        if flavour:
            import onnxruntime

            lines.append(f"ONNX Runtime providers: {', '.join(onnxruntime.get_available_providers())}")
    except DependencyConflict as exc:
        lines.append(f"ONNX Runtime: CONFLICT - {exc}")
    try:
        import torch

        gpu = torch.cuda.is_available()
        lines.append(f"GPU (torch.cuda): {'yes, ' + torch.cuda.get_device_name(0) if gpu else 'no'}")
    except ImportError:
        lines.append("GPU (torch.cuda): torch not installed")
    tensorrt = installed_distribution("tensorrt")
    lines.append(f"TensorRT: {tensorrt or 'not installed (needs the [gpu] extra on a machine with an NVIDIA GPU)'}")
    lines += engine_lines()
    return "\n".join(lines)


def engine_lines() -> list[str]:
    """One line per registered engine, from the registry: available (version) or not (why, and the extra)."""
    from workbench.engines.base import engines

    lines = ["Engines:"]
    for name, engine in engines().items():
        status = engine.availability()
        if status:
            lines.append(f"  {name}: available - {status.reason}")
        else:
            named = engine.extra is None or f"[{engine.extra}]" in status.reason
            install = "" if named else f'; install it with pip install "inference-workbench[{engine.extra}]"'
            lines.append(f"  {name}: NOT available - {status.reason}{install}")
    return lines
