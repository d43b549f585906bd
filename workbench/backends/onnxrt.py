"""ONNX Runtime runner: the only place (with the other backends) where inference sessions are created."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from workbench._lazy import require
from workbench.backends.base import BaseRunner
from workbench.errors import DeviceUnavailable, ModelSourceError


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
        self.session = ort.InferenceSession(str(self.path), options, providers=list(self.providers))
        active = self.session.get_providers()
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
        names = self.output_names or [o.name for o in self.session.get_outputs()]
        values = self.session.run(names, dict(feeds))
        return dict(zip(names, values))

    def _deactivate(self) -> None:
        self.session = None

    def input_specs(self) -> dict[str, tuple[np.dtype, list[int | str | None]]]:
        """Input name -> (numpy dtype, shape with symbolic dims as strings). Needs an active runner."""
        if self.session is None:
            raise RuntimeError(f"Runner {self.name!r} is not active: activate it first.")
        return {i.name: (np.dtype(_ORT_TO_NUMPY.get(i.type, "float32")), list(i.shape)) for i in self.session.get_inputs()}


_ORT_TO_NUMPY = {
    "tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
    "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(int8)": "int8", "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}
