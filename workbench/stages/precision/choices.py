"""A PrecisionPlan from a preset and the few choices that matter (what the precision view offers).

    plan_from_choices("cpu_int8_static", calibration_method="Entropy", keep_fp32="node_a, node_b")

Choices apply to some methods only: `preset_choices(preset)` says which, with the preset's own values (the
view shows those controls, set to those values, and disables the rest). A choice given for a method it does
not apply to is a ConfigError rather than silently ignored.

=====================  ==========================  ===========================================================
choice                 applies to                  sets
=====================  ==========================  ===========================================================
calibration_method     int8_static                 StaticQuantConfig.calibration.method
per_channel            int8_static, int8_dynamic   StaticQuantConfig.per_channel / DynamicQuantConfig.per_channel
activation_type        int8_static                 StaticQuantConfig.activation_type
smoothquant_alpha      int8_static, int8_dynamic   PrecisionPlan.smoothing: SmoothQuant with this alpha first
keep_fp32              every method                PrecisionPlan.pin(names): nodes left in FP32
=====================  ==========================  ===========================================================
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from workbench.errors import ConfigError
from workbench.stages.precision.plan import PrecisionPlan

CHOICES = ("calibration_method", "per_channel", "activation_type", "smoothquant_alpha")
_APPLIES_TO = {
    "calibration_method": ("int8_static",),
    "per_channel": ("int8_static", "int8_dynamic"),
    "activation_type": ("int8_static",),
    "smoothquant_alpha": ("int8_static", "int8_dynamic"),
}


def preset_choices(preset: str) -> dict[str, Any]:
    """The choices that apply to `preset`'s method, with the preset's values (e.g. {"per_channel": True}).

    Raises:
        ConfigError: No such preset.
    """
    plan = as_plan(preset)
    values: dict[str, Any] = {}
    if plan.method == "int8_static":
        values = {
            "calibration_method": plan.options.calibration.method,
            "per_channel": plan.options.per_channel,
            "activation_type": plan.options.activation_type,
        }
    elif plan.method == "int8_dynamic":
        values = {"per_channel": plan.options.per_channel}
    return values


def parse_node_names(text: str | Iterable[str]) -> tuple[str, ...]:
    """Node names from comma-separated text (or any iterable of names): stripped, blanks dropped, in order."""
    items = text.split(",") if isinstance(text, str) else list(text)
    return tuple(dict.fromkeys(name.strip() for name in items if name and name.strip()))


def plan_from_choices(
    preset: str,
    *,
    calibration_method: str | None = None,
    per_channel: bool | None = None,
    activation_type: str | None = None,
    smoothquant_alpha: float | None = None,
    keep_fp32: str | Iterable[str] = (),
) -> PrecisionPlan:
    """`PrecisionPlan.preset(preset)` with the given choices applied (None keeps the preset's value).

    Args:
        preset: One of PrecisionPlan.PRESETS, or a PrecisionPlan method without a preset (see method_presets).
        calibration_method: "MinMax", "Entropy", "Percentile" or "Distribution" (static INT8).
        per_channel: One weight scale per output channel (INT8).
        activation_type: "uint8" or "int8" (static INT8).
        smoothquant_alpha: Smooth activations with SmoothQuant at this alpha before converting (INT8); None: no
            smoothing.
        keep_fp32: Node names to leave in FP32, as names or comma-separated text; they are checked against the
            graph when the plan converts a model (QuantizationError for a name that is not there).

    Raises:
        ConfigError: No such preset, a value the config rejects, or a choice the preset's method has no use for.
    """
    plan = as_plan(preset)
    given = {
        "calibration_method": calibration_method,
        "per_channel": per_channel,
        "activation_type": activation_type,
        "smoothquant_alpha": smoothquant_alpha,
    }
    unused = [name for name, value in given.items() if value is not None and plan.method not in _APPLIES_TO[name]]
    if unused:
        raise ConfigError(
            f"Preset {preset!r} ({plan.method}) has no use for {unused}.",
            expected=f"only the choices {sorted(preset_choices(preset))} for this preset",
            fix="leave those choices as None",
        )
    options = plan.options
    if calibration_method is not None:
        options = replace(options, calibration=replace(options.calibration, method=calibration_method))
    if per_channel is not None:
        options = replace(options, per_channel=bool(per_channel))
    if activation_type is not None:
        options = replace(options, activation_type=activation_type)
    plan = replace(plan, options=options)
    if smoothquant_alpha is not None:
        from workbench.stages.precision.smooth import SmoothingConfig

        plan = replace(plan, smoothing=SmoothingConfig(alpha=float(smoothquant_alpha)))
    names = parse_node_names(keep_fp32)
    return plan.pin(names) if names else plan


def method_presets() -> dict[str, str]:
    """Every way to convert the library offers now, label -> preset or method name: PrecisionPlan.PRESETS, then
    each PrecisionPlan method without a preset (an engine's own, such as OpenVINO's "int8_nncf", appears as soon
    as PrecisionPlan knows it)."""
    from workbench.stages.precision import plan as plans

    offered = {name: name for name in PrecisionPlan.PRESETS}
    covered = {method for method, _ in PrecisionPlan.PRESETS.values()}
    offered.update({method: method for method in plans.METHODS if method not in covered and method != "fp32"})
    return offered


def as_plan(plan: Any) -> PrecisionPlan:
    """A PrecisionPlan from a plan, a preset name, a method name (its default options) or a plan's dict / JSON.

    Raises:
        ConfigError: None of those.
    """
    import json

    if isinstance(plan, PrecisionPlan):
        return plan
    if isinstance(plan, str):
        if plan in PrecisionPlan.PRESETS:
            return PrecisionPlan.preset(plan)
        if plan.lstrip().startswith("{"):
            return PrecisionPlan.from_json(plan)
        from workbench.stages.precision import plan as plans

        if plan in plans.METHODS:
            return PrecisionPlan(plan)
        raise ConfigError(
            f"No precision preset or method {plan!r}.",
            expected=f"one of {sorted(method_presets())}, a PrecisionPlan or its dict",
        )
    if isinstance(plan, dict):
        return PrecisionPlan.from_json(json.dumps(plan))
    raise ConfigError(
        f"A precision plan must be a PrecisionPlan, a preset name or a plan's dict, got {type(plan).__name__}.",
        fix='e.g. "cpu_int8_static" or PrecisionPlan.preset(...).to_dict()',
    )


def candidate_name(plan: PrecisionPlan) -> str:
    """The candidate name a plan's conversion gets: its method and what sets it apart, e.g.
    "int8_static_entropy", "int8_dynamic_per_tensor_smoothquant", "fp16_3_fp32" (3 nodes kept in FP32)."""
    parts = [plan.method]
    options = plan.options
    if plan.method == "int8_static":
        calibration = options.calibration
        parts.append((calibration.method if calibration is not None else "MinMax").lower())
        if options.quant_format != "QDQ":
            parts.append(options.quant_format.lower())
    if plan.method in ("int8_static", "int8_dynamic") and not options.per_channel:
        parts.append("per_tensor")
    if plan.smoothing is not None:
        parts.append("smoothquant" if plan.smoothing.alpha == 0.75 else f"smoothquant{plan.smoothing.alpha:g}")
    if plan.keep_fp32:
        parts.append(f"{len(plan.keep_fp32)}_fp32")
    return "_".join(parts).replace(".", "")
