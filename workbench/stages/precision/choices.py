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
keep_fp32              every method                PrecisionPlan.pin(names): nodes left in FP32
=====================  ==========================  ===========================================================
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

from workbench.errors import ConfigError
from workbench.stages.precision.plan import PrecisionPlan

CHOICES = ("calibration_method", "per_channel", "activation_type")
_APPLIES_TO = {
    "calibration_method": ("int8_static",),
    "per_channel": ("int8_static", "int8_dynamic"),
    "activation_type": ("int8_static",),
}


def preset_choices(preset: str) -> dict[str, Any]:
    """The choices that apply to `preset`'s method, with the preset's values (e.g. {"per_channel": True}).

    Raises:
        ConfigError: No such preset.
    """
    plan = PrecisionPlan.preset(preset)
    values: dict[str, Any] = {}
    if plan.method == "int8_static":
        values = {"calibration_method": plan.options.calibration.method, "per_channel": plan.options.per_channel,
                  "activation_type": plan.options.activation_type}
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
    keep_fp32: str | Iterable[str] = (),
) -> PrecisionPlan:
    """`PrecisionPlan.preset(preset)` with the given choices applied (None keeps the preset's value).

    Args:
        preset: One of PrecisionPlan.PRESETS.
        calibration_method: "MinMax", "Entropy", "Percentile" or "Distribution" (static INT8).
        per_channel: One weight scale per output channel (INT8).
        activation_type: "uint8" or "int8" (static INT8).
        keep_fp32: Node names to leave in FP32, as names or comma-separated text; they are checked against the
            graph when the plan converts a model (QuantizationError for a name that is not there).

    Raises:
        ConfigError: No such preset, a value the config rejects, or a choice the preset's method has no use for.
    """
    plan = PrecisionPlan.preset(preset)
    given = {"calibration_method": calibration_method, "per_channel": per_channel,
             "activation_type": activation_type}
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
    names = parse_node_names(keep_fp32)
    return plan.pin(names) if names else plan
