"""PyTorch runner: the eager-mode baseline every candidate is compared and timed against."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from workbench._lazy import require
from workbench.engines.base import Availability, BaseRunner, Engine, check_float_precision, register_engine


class PyTorchRunner(BaseRunner):
    """Runs a torch.nn.Module on the CPU under `torch.inference_mode()`.

    Args:
        module: The model (a Hugging Face model or any module whose forward takes the feed names as keywords).
        output_names: Which outputs to return. Hugging Face ModelOutput fields are read by name; tuple outputs
            are named in order.
        name: Name used in reports.
        threads: torch intra-op threads (process-wide in torch); None leaves torch's setting alone.
    """

    def __init__(
        self,
        module: Any,
        *,
        output_names: Sequence[str] = ("last_hidden_state",),
        name: str = "pytorch",
        threads: int | None = None,
    ) -> None:
        super().__init__()
        self.module = module
        self.output_names = tuple(output_names)
        self.name = name
        self.threads = threads
        self._torch: Any = None

    def _activate(self) -> None:
        self._torch = require("torch", purpose="The PyTorch runner")
        if self.threads is not None:
            self._torch.set_num_threads(self.threads)
        self.module.eval()

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            outputs = self.module(**{k: torch.from_numpy(np.asarray(v)) for k, v in feeds.items()})
        if isinstance(outputs, torch.Tensor):
            outputs = (outputs,)
        if isinstance(outputs, Mapping):  # transformers' ModelOutput is a Mapping
            return {name: outputs[name].detach().numpy() for name in self.output_names}
        return {name: value.detach().numpy() for name, value in zip(self.output_names, outputs)}

    def _deactivate(self) -> None:
        self._torch = None


@register_engine
class PyTorch(Engine):
    """PyTorch eager on the CPU: the baseline every candidate is timed and compared against."""

    name = "pytorch"
    title = "PyTorch (eager)"
    precisions = ("fp32",)

    def availability(self) -> Availability:
        from workbench._lazy import installed_distribution

        version = installed_distribution("torch")
        if version is None:
            return Availability(False, "the Python package 'torch' is not installed (pip install torch)")
        return Availability(True, f"torch {version}", version)

    def runner(
        self,
        model: Any,
        *,
        name: str | None = None,
        threads: int | None = None,
        float_precision: str = "fp32",
        output_names: Sequence[str] = ("last_hidden_state",),
    ) -> PyTorchRunner:
        check_float_precision(self, float_precision)
        return PyTorchRunner(model, output_names=output_names, name=name or "pytorch", threads=threads)
