"""The precision view: pick a PrecisionPlan preset and the choices that matter, look at the activations, convert.

    PrecisionView(model_path, output_path, calibration_feeds, cache_dir=...)

Run builds the plan with `workbench.stages.precision.choices.plan_from_choices` (the preset, the choices that apply
to its method, the nodes to keep in FP32) and calls ONE stage: `plan.convert(model_path, output_path,
calibration_feeds=..., cache_dir=...)`. Calibration's progress bar (tqdm.auto, from the library) shows in the
view while it runs. "Show activation statistics" calls `activation_statistics` on the first few calibration
feeds and shows the outlier table and the range chart: tensors whose range a few outliers set are the ones
static INT8 handles badly (pin their nodes to FP32, or try Entropy / Percentile calibration).

Nothing heavy is imported when the view is built; each library call imports what it needs when it runs.
"""

from __future__ import annotations

import html
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as widgets

from workbench.ui.base import StageView, mime_bundle

__all__ = ["PrecisionView"]

_STYLE = {"description_width": "14em"}
_LAYOUT = {"width": "36em"}
DEFAULT_PRESET = "cpu_int8_dynamic"


class PrecisionView(StageView):
    """Convert an FP32 model with a PrecisionPlan built from a preset and a few choices.

    Controls: the method (every PrecisionPlan preset, then every PrecisionPlan method without a preset, such as an
    engine's own); calibration method, per-channel weights and activation type (enabled only where the method
    uses them, set to the preset's values when the preset changes); SmoothQuant first, with its alpha (INT8);
    nodes to keep in FP32 (comma-separated node names of this model).

    Args:
        model_path: The FP32 model (fused or not; node names are this model's). Not modified.
        output_path: Where the converted model goes (settable: `view.output_path = ...`).
        calibration_feeds: Feed dicts: calibration data for static INT8, scan data for FP16's overflow scan,
            and the data activation statistics are measured on. None: no data (dynamic INT8 needs none).
        cache_dir: Calibration cache folder (static INT8); None: the library's default.
        stats_samples: Calibration feed dicts the activation statistics are measured on.
        preset: The preset (or method) the view starts from.
        title: Heading of the view.

    Attributes:
        result: The QuantizeResult of the last successful run (a failed run keeps the previous one).
        plan: The last PrecisionPlan built (by a run, successful or not).
        stats: The last ActivationStats; stats_shown: what the statistics area shows (the stats and the chart).
        preset, calibration_method, per_channel, activation_type, keep_fp32: the controls (also in `controls`).
        stats_button, progress, stats_output: the statistics button, the progress area and the statistics area.
    """

    title = "Precision: INT8 and FP16"

    def __init__(
        self,
        model_path: str | os.PathLike[str],
        output_path: str | os.PathLike[str],
        calibration_feeds: Sequence[Mapping[str, Any]] | None = None,
        *,
        cache_dir: str | os.PathLike[str] | None = None,
        stats_samples: int = 8,
        preset: str = DEFAULT_PRESET,
        title: str | None = None,
    ) -> None:
        self._initial_preset = preset
        self.inputs: Any = None  # () -> (model_path, calibration_feeds), read when statistics are asked for
        self.model_path = model_path
        self.output_path = output_path
        self.calibration_feeds = list(calibration_feeds) if calibration_feeds is not None else []
        self.cache_dir = cache_dir
        self.stats_samples = stats_samples
        self.plan: Any = None
        self.stats: Any = None
        self.stats_shown: list[Any] = []
        super().__init__(title=title)
        self.stats_button = widgets.Button(
            description="Show activation statistics",
            icon="bar-chart",
            layout=widgets.Layout(width="auto"),
            tooltip=f"Measure every activation of the FP32 model on {stats_samples} calibration samples",
        )
        self.stats_button.on_click(lambda _button: self.show_statistics())
        self.progress = widgets.Output()
        self.stats_output = widgets.Output()
        self.widget.children = (
            self.title_widget,
            widgets.VBox(list(self.controls.values())),
            widgets.HBox([self.run_button, self.stats_button, self.status]),
            self.error_output,
            self.progress,
            self.output,
            self.stats_output,
        )

    # -- controls ----------------------------------------------------------------------------------------------

    def _controls(self) -> dict[str, widgets.Widget]:
        from workbench.stages.precision.calibrate import CALIBRATION_METHODS
        from workbench.stages.precision.choices import method_presets
        from workbench.stages.precision.quantize import ACTIVATION_TYPES

        def styled(widget: widgets.Widget, tooltip: str) -> widgets.Widget:
            widget.style, widget.layout, widget.tooltip = dict(_STYLE), widgets.Layout(**_LAYOUT), tooltip
            return widget

        offered = method_presets()  # every preset, then every method without one (an engine's own, e.g. NNCF)
        self.preset = styled(
            widgets.Dropdown(
                options=list(offered),
                value=self._initial_preset if self._initial_preset in offered else DEFAULT_PRESET,
                description="method",
            ),
            "How to convert: a PrecisionPlan preset, or a method an engine adds (PrecisionPlan)",
        )
        self.calibration_method = styled(
            widgets.Dropdown(options=list(CALIBRATION_METHODS), description="calibration method"),
            "How static INT8 measures activation ranges (Entropy, Percentile and Distribution clip outliers)",
        )
        self.per_channel = styled(
            widgets.Checkbox(description="per-channel weights", indent=True),
            "One weight scale per output channel (INT8)",
        )
        self.activation_type = styled(
            widgets.Dropdown(options=list(ACTIVATION_TYPES), description="activation type"),
            "uint8 on x86 CPUs (int8 activations ran 2-3x slower there); int8 for TensorRT",
        )
        self.smoothquant = styled(
            widgets.Checkbox(description="SmoothQuant first", indent=True),
            "Move activation outliers into the weights before INT8 (calibrated on the calibration samples)",
        )
        self.smoothquant_alpha = styled(
            widgets.FloatSlider(
                value=0.75, min=0.0, max=1.0, step=0.05, description="SmoothQuant alpha", readout_format=".2f"
            ),
            "How much of the activation range moves into the weights (0: none, 1: all); 0.75 met the budget on "
            "MiniLM where 0.5 did not",
        )
        self.keep_fp32 = styled(
            widgets.Text(description="keep in FP32", placeholder="node names, comma-separated"),
            "Nodes of this model to leave in FP32 (PrecisionPlan.pin)",
        )
        self.preset.observe(lambda change: self._apply_preset(change["new"]), names="value")
        self.smoothquant.observe(self._smoothquant_changed, names="value")
        controls = {
            "preset": self.preset,
            "calibration_method": self.calibration_method,
            "per_channel": self.per_channel,
            "activation_type": self.activation_type,
            "smoothquant": self.smoothquant,
            "smoothquant_alpha": self.smoothquant_alpha,
            "keep_fp32": self.keep_fp32,
        }
        self._choice_controls = {
            name: controls[name] for name in ("calibration_method", "per_channel", "activation_type")
        }
        self._apply_preset(self.preset.value)
        return controls

    def _apply_preset(self, preset: str) -> None:
        """Set the choice controls to the preset's values; disable those its method does not use."""
        from workbench.stages.precision.choices import as_plan, preset_choices

        values = preset_choices(preset)
        for name, control in self._choice_controls.items():
            control.disabled = name not in values
            if name in values:
                control.value = values[name]
        smoothable = as_plan(preset).method in ("int8_dynamic", "int8_static")
        self.smoothquant.disabled = not smoothable
        self.smoothquant_alpha.disabled = not (smoothable and self.smoothquant.value)

    def _smoothquant_changed(self, change: dict[str, Any]) -> None:
        self.smoothquant_alpha.disabled = self.smoothquant.disabled or not change["new"]

    def choices(self) -> dict[str, Any]:
        """The enabled choice controls' values (what Run passes to plan_from_choices)."""
        values = {name: control.value for name, control in self._choice_controls.items() if not control.disabled}
        if not self.smoothquant.disabled and self.smoothquant.value:
            values["smoothquant_alpha"] = float(self.smoothquant_alpha.value)
        return values

    def build_plan(self) -> Any:
        """The PrecisionPlan the controls describe (workbench.stages.precision.choices.plan_from_choices)."""
        from workbench.stages.precision.choices import plan_from_choices

        return plan_from_choices(self.preset.value, keep_fp32=self.keep_fp32.value, **self.choices())

    # -- running -----------------------------------------------------------------------------------------------

    def _run(self) -> Any:
        self.plan = self.build_plan()
        self.progress.outputs = ()
        with self.progress:  # in a kernel, calibration's tqdm bar lands here
            return self.plan.convert(
                self.model_path, self.output_path, calibration_feeds=self.calibration_feeds, cache_dir=self.cache_dir
            )

    def _show(self, result: Any) -> None:
        self.show(result)
        self.show(self.plan)

    def run(self, *, raise_errors: bool = False) -> Any:
        """StageView.run, with the statistics button disabled too while the conversion runs."""
        self.stats_button.disabled = True
        try:
            return super().run(raise_errors=raise_errors)
        finally:
            self.stats_button.disabled = False

    def show_statistics(self) -> Any:
        """What "Show activation statistics" does: measure the FP32 model's activations on the first
        `stats_samples` calibration feeds and show the outlier table and the range chart; returns the stats.

        Both buttons are disabled meanwhile. A failure (no calibration data, say) is shown in the error panel and
        the status line, keeps the previous `.stats`, and returns None.
        """
        from workbench.stages.precision.activations import activation_statistics

        if self._running:
            return None
        if self.inputs is not None:  # a Workbench panel: the model and data of its pipeline, read now
            try:
                self.model_path, feeds = self.inputs()
                self.calibration_feeds = list(feeds)
            except Exception as exc:
                self._fail(exc)
                return None
        self._running = True
        self.run_button.disabled = self.stats_button.disabled = True
        self.status.value = "measuring activations..."
        self.error_output.value = ""
        started = time.perf_counter()
        try:
            stats = activation_statistics(self.model_path, self.calibration_feeds[: self.stats_samples])
            figure = stats.range_figure()
        except Exception as exc:
            self._fail(exc)
            return None
        finally:
            self._running = False
            self.run_button.disabled = self.stats_button.disabled = False
        self.stats = stats
        self.stats_shown = [stats, figure]
        self.stats_output.outputs = tuple(
            {"output_type": "display_data", "data": mime_bundle(obj), "metadata": {}} for obj in self.stats_shown
        )
        self.status.value = (
            f"activation statistics of {len(stats)} tensors on {stats.feeds} samples in "
            f"{time.perf_counter() - started:.2f} s; largest outlier ratio: "
            f"{html.escape(_largest(stats))}"
        )
        return stats


def _largest(stats: Any) -> str:
    top = stats.top_outliers(1)
    return f"{top[0].outlier_ratio:.3g} ({top[0].name})" if top else "-"
