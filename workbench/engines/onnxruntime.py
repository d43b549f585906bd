"""ONNX Runtime engine: the runner (the only place, with the other engines, where inference sessions are
created) and helpers that run in-memory models."""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from workbench._lazy import require
from workbench.engines.base import Availability, BaseRunner, Engine, check_float_precision, register_engine
from workbench.errors import DeviceUnavailable, ModelSourceError, WorkbenchError


class OnnxRuntimeRunner(BaseRunner):
    """Runs an ONNX model with onnxruntime.

    Args:
        path: The .onnx file.
        name: Name used in reports; default: the file's stem.
        providers: Execution providers in priority order.
        intra_op_threads: Threads per operator; None lets onnxruntime choose (all cores).
        allow_spinning: Whether idle pool threads spin. Turn it off when several sessions (or torch) share the
            cores, or timings of interleaved candidates skew (see measured-facts.md).
        output_names: Outputs to fetch; default all.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        intra_op_threads: int | None = None,
        allow_spinning: bool = True,
        output_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.name = name or self.path.stem
        self.providers = tuple(providers)
        self.intra_op_threads = intra_op_threads
        self.allow_spinning = allow_spinning
        self.output_names = list(output_names) if output_names is not None else None
        self.session = None

    def _activate(self) -> None:
        ort = require("onnxruntime", purpose="Running ONNX models")
        if not self.path.is_file():
            raise ModelSourceError(f"ONNX model {self.path} does not exist.", fix="export the model first")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: provider fallbacks are reported below, not logged
        if self.intra_op_threads is not None:
            options.intra_op_num_threads = self.intra_op_threads
            options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.allow_spinning else "0")
        session = ort.InferenceSession(str(self.path), options, providers=list(self.providers))
        self.session = session
        active = session.get_providers()
        # a provider may be given as (name, options): compare by name
        missing = [p for p in (p if isinstance(p, str) else p[0] for p in self.providers) if p not in active]
        if missing:
            self.session = None
            raise DeviceUnavailable(
                f"onnxruntime could not use {missing} for {self.path.name}; it would have fallen back to {active}.",
                expected=f"providers {list(self.providers)}",
                fix="install the [gpu] extra (onnxruntime-gpu) on a machine with an NVIDIA GPU and matching CUDA, "
                "or ask for CPUExecutionProvider",
            )

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self.session is not None
        from workbench.data import conform_feeds

        names = self.output_names or [o.name for o in self.session.get_outputs()]
        dtypes = {i.name: np.dtype(_ORT_TO_NUMPY.get(i.type, "float32")) for i in self.session.get_inputs()}
        values = self.session.run(names, conform_feeds(feeds, dtypes, what=f"the feeds of {self.name}"))
        return dict(zip(names, values))

    def _deactivate(self) -> None:
        self.session = None

    def input_specs(self) -> dict[str, tuple[np.dtype, list[int | str | None]]]:
        """Input name -> (numpy dtype, shape with symbolic dims as strings). Needs an active runner."""
        if self.session is None:
            raise RuntimeError(f"Runner {self.name!r} is not active: activate it first.")
        return {
            i.name: (np.dtype(_ORT_TO_NUMPY.get(i.type, "float32")), list(i.shape)) for i in self.session.get_inputs()
        }


_ORT_TO_NUMPY = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


def max_output_difference(model_a: Any, model_b: Any, feeds: list[dict[str, np.ndarray]]) -> float:
    """Largest absolute difference between two models' common outputs over `feeds` (in-memory models)."""
    from workbench.engines.onnxruntime import OnnxRuntimeRunner
    from workbench.onnx.io import save_onnx

    with tempfile.TemporaryDirectory(prefix="workbench-check-") as folder:
        path_a = save_onnx(model_a, Path(folder) / "a.onnx")
        path_b = save_onnx(model_b, Path(folder) / "b.onnx")
        worst = 0.0
        with OnnxRuntimeRunner(path_a) as runner_a, OnnxRuntimeRunner(path_b) as runner_b:
            for feed in feeds:
                out_a, out_b = runner_a.infer(feed), runner_b.infer(feed)
                for name in set(out_a) & set(out_b):
                    worst = max(worst, max_abs_difference(out_a[name], out_b[name], feed))
        return worst


def max_abs_difference(a: np.ndarray, b: np.ndarray, feeds: dict[str, np.ndarray]) -> float:
    """Largest absolute difference, over the positions that carry tokens.

    Outputs shaped [batch, sequence, ...] are compared only where `attention_mask` is 1: padded positions hold
    values nothing reads (pooling and attention ignore them) and fused Attention computes them differently
    (measured on MiniLM: 3e-6 on tokens, 1.6e-4 on padding).
    """
    mask = feeds.get("attention_mask")
    if mask is not None and a.ndim >= 2 and a.shape[:2] == mask.shape and b.shape == a.shape:
        keep = mask.astype(bool)
        a, b = a[keep], b[keep]
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)), initial=0.0))


@contextlib.contextmanager
def model_session(
    model: Any, output_names: Sequence[str] | None = None
) -> Iterator[Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]]:
    """An in-memory model ready to run many feed dicts: saved and loaded once, for as long as the block lasts.

    Yields a function feed dict -> outputs; raises WorkbenchError when onnxruntime cannot run a feed.
    """
    from workbench.engines.onnxruntime import OnnxRuntimeRunner
    from workbench.onnx.io import save_onnx

    with tempfile.TemporaryDirectory(prefix="workbench-run-") as folder:
        path = save_onnx(model, Path(folder) / "model.onnx")
        with OnnxRuntimeRunner(path, output_names=output_names) as runner:

            def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
                try:
                    return runner.infer(dict(feeds))
                except Exception as exc:
                    raise WorkbenchError(
                        f"onnxruntime could not run the model: {type(exc).__name__}: {exc}",
                        fix="check the feeds' names, dtypes and shapes against the model's inputs",
                    ) from exc

            yield run


def run_model(
    model: Any, feeds_list: list[dict[str, np.ndarray]], output_names: list[str] | None = None, *, repeats: int = 0
) -> tuple[list[dict[str, np.ndarray]], float | None]:
    """Run an in-memory model on each feed dict; with `repeats`, also the median latency (ms) of feeds[0]."""
    with model_session(model, output_names) as run:
        results = [run(feeds) for feeds in feeds_list]
        latency = None
        if repeats and feeds_list:
            timings = []
            for _ in range(repeats):
                started = time.perf_counter()
                run(feeds_list[0])
                timings.append((time.perf_counter() - started) * 1000.0)
            latency = float(np.median(timings))
    return results, latency


@register_engine
class OnnxRuntime(Engine):
    """ONNX Runtime: .onnx models on the CPU provider here (CUDA / TensorRT providers with the [gpu] extra)."""

    name = "onnxruntime"
    title = "ONNX Runtime"
    extra = "cpu"
    suffixes = (".onnx",)
    precisions = ("fp32", "int8_dynamic", "int8_static", "fp16", "int4_weight_only", "int8_weight_only")
    triton_backend = "onnxruntime"
    triton_platform = "onnxruntime_onnx"
    model_files = ("model.onnx",)

    def availability(self) -> Availability:
        from workbench._lazy import installed_distribution
        from workbench.errors import WorkbenchError

        version = installed_distribution("onnxruntime") or installed_distribution("onnxruntime-gpu")
        try:
            ort = require("onnxruntime", purpose="ONNX Runtime")
        except WorkbenchError as exc:
            return Availability(False, exc.what, version)
        providers = ", ".join(p.replace("ExecutionProvider", "") for p in ort.get_available_providers())
        return Availability(True, f"onnxruntime {ort.__version__} ({providers})", ort.__version__)

    def copy_model(self, source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> Path:
        """Load and save: an external data file is renamed to go with the copy."""
        from workbench.onnx.io import load_onnx, save_onnx

        return save_onnx(load_onnx(source), destination)

    def runner(
        self, model: Any, *, name: str | None = None, threads: int | None = None, float_precision: str = "fp32"
    ) -> OnnxRuntimeRunner:
        check_float_precision(self, float_precision)
        # spinning off: an idle pool must not steal the cores of another engine timed beside it
        return OnnxRuntimeRunner(model, name=name, intra_op_threads=threads, allow_spinning=False)
