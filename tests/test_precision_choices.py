"""plan_from_choices: a preset plus the precision view's choices, validated by the configs themselves."""

from __future__ import annotations

import pytest

from workbench.errors import ConfigError
from workbench.stages.precision.choices import parse_node_names, plan_from_choices, preset_choices
from workbench.stages.precision.plan import PrecisionPlan


def test_no_choices_is_the_preset():
    for name in PrecisionPlan.PRESETS:
        assert plan_from_choices(name) == PrecisionPlan.preset(name)


def test_static_choices_reach_the_options():
    plan = plan_from_choices("cpu_int8_static", calibration_method="Entropy", per_channel=False, activation_type="int8")
    assert plan.method == "int8_static"
    assert plan.options.calibration.method == "Entropy" and plan.options.per_channel is False
    assert plan.options.activation_type == "int8"
    assert plan.options.quant_format == "QDQ"  # the rest of the preset is kept
    assert PrecisionPlan.preset("cpu_int8_static").options.calibration.method == "MinMax"  # preset untouched


def test_dynamic_takes_per_channel_only():
    assert plan_from_choices("cpu_int8_dynamic", per_channel=False).options.per_channel is False
    with pytest.raises(ConfigError, match="calibration_method"):
        plan_from_choices("cpu_int8_dynamic", calibration_method="Entropy")
    with pytest.raises(ConfigError, match="per_channel"):
        plan_from_choices("gpu_fp16", per_channel=True)


def test_keep_fp32_from_text_or_names():
    plan = plan_from_choices("cpu_int8_dynamic", keep_fp32=" b, a ,, b ")
    assert plan.keep_fp32 == ("a", "b") and plan.nodes["a"].reason == "pinned"
    assert plan_from_choices("gpu_fp16", keep_fp32=["x"]).keep_fp32 == ("x",)
    assert plan_from_choices("cpu_int8_static", keep_fp32="  ").nodes == {}
    assert parse_node_names("a, b,a") == ("a", "b")


@pytest.mark.parametrize("bad", [{"calibration_method": "Magic"}, {"activation_type": "int4"}])
def test_bad_values_are_config_errors(bad):
    with pytest.raises(ConfigError):
        plan_from_choices("cpu_int8_static", **bad)
    with pytest.raises(ConfigError, match="preset"):
        plan_from_choices("no_such_preset")


def test_preset_choices_name_what_applies():
    assert preset_choices("cpu_int8_static") == {
        "calibration_method": "MinMax",
        "per_channel": True,
        "activation_type": "uint8",
    }
    assert preset_choices("tensorrt_int8_qdq")["calibration_method"] == "Entropy"
    assert preset_choices("cpu_int8_dynamic_per_tensor") == {"per_channel": False}
    assert preset_choices("gpu_fp16") == {}
    for name in PrecisionPlan.PRESETS:  # the preset's own values give the preset back
        assert plan_from_choices(name, **preset_choices(name)) == PrecisionPlan.preset(name)
