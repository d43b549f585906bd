"""TensorRT runner, and the checks that say honestly whether TensorRT can run on this machine.

TensorRT needs two things a CPU machine lacks: NVIDIA's `tensorrt` Python package (the `[gpu]` extra; the PyPI
package of that name is a placeholder that downloads the real wheel from NVIDIA's own index) and an NVIDIA GPU.
:func:`tensorrt_status` reports both without raising; :class:`TensorRTRunner` raises MissingDependency without
the package and DeviceUnavailable without a GPU, before Polygraphy is asked to do anything.

onnxruntime-gpu's TensorRT and CUDA execution providers are not a separate runner: pass
``providers=ort_gpu_providers(...)`` to :class:`~workbench.engines.onnxruntime.OnnxRuntimeRunner`, which raises
DeviceUnavailable when a requested provider is missing instead of silently running on the CPU.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from workbench._lazy import require
from workbench.engines.base import Availability, BaseRunner, Engine, check_float_precision, register_engine
from workbench.errors import (
    DeviceUnavailable,
    MissingDependency,
    ModelSourceError,
    WorkbenchError,
)

GPU_EXTRA_FIX = (
    "pip install 'inference-workbench[gpu]' on a machine with an NVIDIA GPU; it fetches TensorRT "
    "from NVIDIA's package index"
)

# --------------------------------------------------------------------------------------------------------------
# where can TensorRT run?


def gpu_status() -> tuple[bool, str]:
    """(whether an NVIDIA GPU is visible, what was found or why not). Never raises.

    Asks `nvidia-smi -L` when it is on PATH, then torch (if installed) `torch.cuda.is_available()`.
    """
    reasons = []
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            reasons.append(f"nvidia-smi -L failed ({type(exc).__name__}: {exc})")
        else:
            gpus = [line.strip() for line in listed.stdout.splitlines() if line.strip().startswith("GPU ")]
            if listed.returncode == 0 and gpus:
                return True, gpus[0]
            detail = (listed.stderr or listed.stdout).strip().splitlines()
            reasons.append(f"nvidia-smi -L lists no GPU{': ' + detail[0] if detail else ''}")
    else:
        reasons.append("nvidia-smi is not on PATH")
    if importlib.util.find_spec("torch") is not None:
        try:
            import torch

            if torch.cuda.is_available():
                return True, f"{torch.cuda.get_device_name(0)} (seen by torch {torch.__version__})"
            build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
            reasons.append(f"torch {torch.__version__}, {build}, sees no CUDA device")
        except Exception as exc:  # a broken torch must not break a status line
            reasons.append(f"torch could not be asked ({type(exc).__name__}: {exc})")
    return False, "; ".join(reasons)


def _tensorrt_package() -> tuple[Any, str]:
    """(the imported tensorrt module or None, why not). Never raises."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        if getattr(exc, "name", None) in (None, "tensorrt"):
            return None, "the Python package 'tensorrt' is not installed"
        return None, f"the Python package 'tensorrt' is installed but does not import ({exc})"
    except Exception as exc:  # e.g. a missing libnvinfer raises OSError from inside the package
        return None, f"the Python package 'tensorrt' is installed but does not import ({type(exc).__name__}: {exc})"
    shadow = _shadowing_file(trt)
    if shadow:
        return None, f"the Python package 'tensorrt' is not installed ({shadow} shadows the name)"
    return trt, ""


def _shadowing_file(module: Any) -> str | None:
    """The file of a module that is merely named tensorrt (a script tensorrt.py on sys.path), else None."""
    if hasattr(module, "__version__"):
        return None
    return str(getattr(module, "__file__", None) or module)


def tensorrt_status() -> tuple[bool, str]:
    """(whether TensorRT engines can be built and run here, a one-line reason for the UI and candidate tables).

    Examples of the reason:
        "TensorRT: not available — the Python package 'tensorrt' is not installed (pip install ...); this
        machine has no NVIDIA GPU either (nvidia-smi is not on PATH; ...)"
        "TensorRT: not available — tensorrt 10.3.0 is installed but no NVIDIA GPU was found (...)"
        "TensorRT 10.3.0 on GPU 0: NVIDIA H100 ..."
    """
    trt, why_not = _tensorrt_package()
    has_gpu, gpu = gpu_status()
    if trt is None:
        reason = f"TensorRT: not available — {why_not} ({GPU_EXTRA_FIX})"
        if not has_gpu:
            reason += f"; this machine has no NVIDIA GPU either ({gpu})"
        return False, reason
    version = getattr(trt, "__version__", "(unknown version)")
    if not has_gpu:
        return False, f"TensorRT: not available — tensorrt {version} is installed but no NVIDIA GPU was found ({gpu})"
    return True, f"TensorRT {version} on {gpu}"


def require_tensorrt(purpose: str) -> Any:
    """Import tensorrt and check for a GPU, or raise MissingDependency / DeviceUnavailable.

    Raises:
        MissingDependency: tensorrt is not installed (the message names the [gpu] extra).
        DeviceUnavailable: tensorrt is installed but there is no NVIDIA GPU.
    """
    try:
        trt = require("tensorrt", purpose=purpose, extra="gpu")
    except MissingDependency as exc:
        raise MissingDependency(
            exc.what,
            expected="NVIDIA's tensorrt package and an NVIDIA GPU",
            fix=f"{exc.fix}, on a machine with an NVIDIA GPU (TensorRT comes from NVIDIA's package index; "
            "the PyPI package 'tensorrt' only forwards there)",
        ) from exc.__cause__
    shadow = _shadowing_file(trt)
    if shadow:
        raise MissingDependency(
            f"{purpose} needs NVIDIA's Python package 'tensorrt', but 'import tensorrt' found {shadow}, which is "
            "not it.",
            fix=f"rename that file or take its folder off sys.path; if TensorRT is not installed: {GPU_EXTRA_FIX}",
        )
    has_gpu, gpu = gpu_status()
    if not has_gpu:
        raise DeviceUnavailable(
            f"{purpose} needs an NVIDIA GPU; tensorrt {getattr(trt, '__version__', '')} is installed but none was "
            f"found ({gpu}).",
            expected="an NVIDIA GPU with its driver (nvidia-smi -L lists it)",
            fix="run this on a GPU machine, or choose a CPU candidate (onnxruntime)",
        )
    return trt


def ort_gpu_providers(tensorrt_fp16: bool = True, *, cache_dir: str | os.PathLike[str] | None = None) -> list[Any]:
    """onnxruntime-gpu providers in priority order: TensorRT EP, CUDA EP, CPU (for the nodes neither takes).

    Use as ``OnnxRuntimeRunner(path, providers=ort_gpu_providers(True))``: the runner raises DeviceUnavailable
    when onnxruntime cannot use TensorRT or CUDA rather than running on the CPU.

    Args:
        tensorrt_fp16: Let the TensorRT EP build FP16 engines (`trt_fp16_enable`).
        cache_dir: Where the TensorRT EP caches its engines between sessions (building is slow); None: no cache.

    Returns:
        [("TensorrtExecutionProvider", options), "CUDAExecutionProvider", "CPUExecutionProvider"]. The first
        entry is a (name, options) tuple that onnxruntime accepts and that also compares equal to its name, so
        the runner's check of the providers the session really uses recognises it.
    """
    options: dict[str, Any] = {"trt_fp16_enable": bool(tensorrt_fp16)}
    if cache_dir is not None:
        options.update(trt_engine_cache_enable=True, trt_engine_cache_path=str(cache_dir))
    return [ProviderWithOptions("TensorrtExecutionProvider", options), "CUDAExecutionProvider", "CPUExecutionProvider"]


class ProviderWithOptions(tuple):
    """An onnxruntime (provider name, options) pair that compares equal to the provider's name.

    OnnxRuntimeRunner reports a fallback by checking each requested provider against the names the session
    really uses (`requested not in session.get_providers()`); a plain tuple would never be found there.
    """

    def __new__(cls, name: str, options: Mapping[str, Any]) -> ProviderWithOptions:
        return super().__new__(cls, (name, dict(options)))

    @property
    def name(self) -> str:
        return self[0]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, str):
            return other == self[0]
        return tuple.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash(self[0])

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self[1].items())
        return f"{self[0]}({options})"


# --------------------------------------------------------------------------------------------------------------
# runner


class TensorRTRunner(BaseRunner):
    """Runs a serialized TensorRT engine with Polygraphy's TrtRunner; numpy in, numpy out.

    Args:
        engine: The engine file (what build_engine() wrote), or a callable that returns an engine (a Polygraphy
            loader chain such as build_loaders(...)), built when the runner is activated.
        name: Name used in reports; default: the file's stem, or "tensorrt".
        output_names: Outputs to return; default all.
        optimization_profile: Index of the engine's optimization profile to use; None: the first.

    Feeds are cast to the engine's input types where the kind matches (int64 -> int32 for an engine with int32
    inputs, float32 -> float16); outputs are copied, because Polygraphy reuses its host buffers between runs.
    """

    def __init__(
        self,
        engine: str | os.PathLike[str] | Callable[[], Any],
        *,
        name: str | None = None,
        output_names: Sequence[str] | None = None,
        optimization_profile: int | None = None,
    ) -> None:
        super().__init__()
        trt_backend = require("polygraphy.backend.trt", purpose="The TensorRT runner")
        common = require("polygraphy.backend.common", purpose="The TensorRT runner")
        if callable(engine):
            self.path: Path | None = None
            self.loader = engine
            self.name = name or "tensorrt"
        else:
            self.path = Path(engine)
            # constructing Polygraphy loaders needs no tensorrt; calling them does
            self.loader = trt_backend.EngineFromBytes(common.BytesFromPath(str(self.path)))
            self.name = name or self.path.stem
        self.output_names = list(output_names) if output_names is not None else None
        self.optimization_profile = optimization_profile
        self.runner: Any = None
        self._input_dtypes: dict[str, np.dtype] = {}

    def _activate(self) -> None:
        require_tensorrt("Running a TensorRT engine")
        if self.path is not None and not self.path.is_file():
            raise ModelSourceError(
                f"TensorRT engine {self.path} does not exist.",
                fix="build it first with workbench.stages.tensorrt.build_engine()",
            )
        trt_backend = require("polygraphy.backend.trt", purpose="The TensorRT runner")
        exceptions = require("polygraphy.exception", purpose="The TensorRT runner")
        runner = trt_backend.TrtRunner(self.loader, name=self.name, optimization_profile=self.optimization_profile)
        try:
            runner.activate()
        except exceptions.PolygraphyException as exc:
            raise WorkbenchError(
                f"TensorRT could not load the engine {self.path or self.loader}: {exc}",
                expected="an engine built by this TensorRT version for this GPU (engines are not portable across "
                "TensorRT versions or GPU architectures)",
                fix="rebuild the engine on this machine with build_engine()",
            ) from exc
        self.runner = runner
        self._input_dtypes = {name: _numpy_dtype(meta.dtype) for name, meta in self._metadata(runner).items()}

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.runner is not None
        feed_dict = {name: _cast(np.asarray(value), self._input_dtypes.get(name)) for name, value in feeds.items()}
        outputs = self.runner.infer(feed_dict, copy_outputs_to_host=True)
        names = self.output_names or list(outputs)
        return {name: np.array(outputs[name], copy=True) for name in names}

    def _deactivate(self) -> None:
        if self.runner is not None:
            try:
                self.runner.deactivate()
            finally:
                self.runner = None

    def input_specs(self) -> dict[str, tuple[np.dtype, list[int]]]:
        """Input name -> (numpy dtype, shape with -1 for dynamic dimensions). Needs an active runner."""
        if self.runner is None:
            raise RuntimeError(f"Runner {self.name!r} is not active: activate it first.")
        return {
            name: (_numpy_dtype(meta.dtype), [-1 if d is None or int(d) < 0 else int(d) for d in meta.shape])
            for name, meta in self._metadata(self.runner).items()
        }

    @staticmethod
    def _metadata(runner: Any) -> Any:
        # Polygraphy's DataTypes, not the deprecated numpy default (which logs a deprecation warning)
        try:
            return runner.get_input_metadata(use_numpy_dtypes=False)
        except TypeError:  # a Polygraphy from before the keyword: it returns numpy dtypes
            return runner.get_input_metadata()


def _numpy_dtype(dtype: Any) -> np.dtype:
    datatype = require("polygraphy.datatype", purpose="The TensorRT runner")
    if isinstance(dtype, datatype.DataTypeEntry):  # Polygraphy's own type (DataType.INT32, ...)
        return np.dtype(datatype.DataType.to_dtype(dtype, "numpy"))
    return np.dtype(dtype)


def _cast(value: np.ndarray, dtype: np.dtype | None) -> np.ndarray:
    if dtype is None or value.dtype == dtype or value.dtype.kind != dtype.kind:
        return value
    return np.ascontiguousarray(value, dtype=dtype)


@register_engine
class TensorRT(Engine):
    """NVIDIA TensorRT: serialized engines (.plan) built by workbench.stages.tensorrt, on an NVIDIA GPU."""

    name = "tensorrt"
    title = "TensorRT"
    extra = "gpu"
    suffixes = (".plan", ".engine")
    precisions = ("fp32", "fp16", "int8_static")
    triton_backend = "tensorrt"
    triton_platform = "tensorrt_plan"
    model_files = ("model.plan",)
    gpu = True

    def availability(self) -> Availability:
        available, reason = tensorrt_status()
        trt, _ = _tensorrt_package()
        return Availability(available, reason, getattr(trt, "__version__", None) if trt is not None else None)

    def runner(
        self, model: Any, *, name: str | None = None, threads: int | None = None, float_precision: str = "fp32"
    ) -> TensorRTRunner:
        check_float_precision(self, float_precision)
        return TensorRTRunner(model, name=name)


__all__ = [
    "GPU_EXTRA_FIX",
    "ProviderWithOptions",
    "TensorRT",
    "TensorRTRunner",
    "gpu_status",
    "ort_gpu_providers",
    "require_tensorrt",
    "tensorrt_status",
]
