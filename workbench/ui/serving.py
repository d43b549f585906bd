"""The serving view: load-test the chosen engine served every way, and the batching sweep.

    ServingView(onnx_path, tokenizer_dir, texts, pytorch_model=model_dir)   # Run: benchmark_serving(...)

A shell over ONE library call (workbench.stages.serving.run.benchmark_serving, see workbench.ui.base.StageView):
controls for ServingConfig's fields and a "batching sweep" checkbox; it shows the servers side by side at the
headline concurrency, the throughput vs p99 chart per concurrency level, and the sweep table with its
suggestion. Nothing heavy is imported until Run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from workbench.stages.serving.load import PROTOCOLS, ServingConfig  # light: numpy only
from workbench.ui.base import StageView
from workbench.ui.controls import controls_for

__all__ = ["ServingView"]


class ServingView(StageView):
    """Serve one ONNX engine with Triton (length-aware and fixed padding, HTTP and gRPC) and FastAPI (PyTorch
    and ONNX Runtime), load each at every concurrency level, and sweep Triton's batching settings.

    Args:
        onnx_path: The chosen ONNX engine.
        tokenizer_dir: Its tokenizer folder.
        texts: The texts to send (the evaluation sentences).
        pytorch_model: The Hugging Face model folder for the FastAPI + PyTorch server; None skips it.
        triton_config: How the repositories are exported (default TritonConfig(model_name="served")).
        padding: The length-aware policy (default PaddingPolicy()).
        sweep: The sweep run when the checkbox is ticked (default SweepConfig.preset("quick")).
        servers: Which servers to run (default all of workbench.stages.serving.run.SERVERS).
        config: The ServingConfig the controls start from (default ServingConfig.preset("quick")).
        run_sweep: The sweep checkbox's starting value.
        title: Heading of the view.

    Attributes:
        result: The ServingResult of the last successful run.
        sweep_checkbox: The "batching sweep" checkbox (also `controls["sweep"]`).
    """

    title = "Serving: load test and batching sweep"
    config_cls = ServingConfig

    def __init__(
        self,
        onnx_path: str | os.PathLike[str],
        tokenizer_dir: str | os.PathLike[str],
        texts: Sequence[str],
        *,
        pytorch_model: str | os.PathLike[str] | None = None,
        triton_config: Any = None,
        padding: Any = None,
        sweep: Any = None,
        servers: Sequence[str] | None = None,
        config: ServingConfig | None = None,
        run_sweep: bool = True,
        title: str | None = None,
    ) -> None:
        self.onnx_path = Path(onnx_path)
        self.tokenizer_dir = Path(tokenizer_dir)
        self.texts = list(texts)
        self.pytorch_model = Path(pytorch_model) if pytorch_model is not None else None
        self.triton_config = triton_config
        self.padding = padding
        self.sweep = sweep
        self.servers = tuple(servers) if servers is not None else None
        self._run_sweep = run_sweep
        super().__init__(title=title, config_base=config if config is not None else ServingConfig.preset("quick"))

    def _controls(self) -> dict[str, widgets.Widget]:
        controls = controls_for(
            self.config_base,
            choices={"protocol": PROTOCOLS},
            labels={"window_s": "window (s)", "max_level_s": "max per level (s)"},
        )
        self.sweep_checkbox = widgets.Checkbox(
            value=self._run_sweep,
            description="batching sweep",
            indent=True,
            tooltip="Also sweep queue delay and instance count on the length-aware repository and suggest a setting",
        )
        self.sweep_checkbox.style = {"description_width": "14em"}
        controls["sweep"] = self.sweep_checkbox
        return controls

    def config(self) -> ServingConfig:
        from workbench.ui.controls import config_from_controls

        fields = {k: v for k, v in self.controls.items() if k != "sweep"}
        return config_from_controls(ServingConfig, fields, base=self.config_base)

    def _run(self) -> Any:
        from workbench.stages.serving import run as stage
        from workbench.stages.serving.sweep import SweepConfig

        sweep = None
        if self.sweep_checkbox.value:
            sweep = self.sweep if self.sweep is not None else SweepConfig.preset("quick")
        return stage.benchmark_serving(
            self.onnx_path,
            self.tokenizer_dir,
            self.texts,
            self.config(),
            triton_config=self.triton_config,
            padding=self.padding,
            pytorch_model=self.pytorch_model,
            sweep=sweep,
            servers=self.servers if self.servers is not None else stage.SERVERS,
            progress=False,
        )  # the status line says it runs; a bar would land nowhere

    def _show(self, result: Any) -> None:
        self.show(result)
        self.show(result.figure())
        if result.sweep is not None:  # its table is part of the result's; the chart shows every setting
            self.show(result.sweep.figure())
