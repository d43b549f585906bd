"""Every StageConfig checks its fields' types from their annotations, at construction, with one mechanism.

`overwrite='no'` must not mean True, `sequence_length=64.5` must not be a length; library calls, papermill
parameters (PipelineParameters.from_dict) and recipes (from_json) go through the same check.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from pathlib import Path
from typing import Literal, Optional

import pytest

from workbench.config import StageConfig
from workbench.errors import ConfigError

pytestmark = pytest.mark.reliability

MODULES = (
    "workbench.pipeline",
    "workbench.stages.export",
    "workbench.stages.fusion",
    "workbench.stages.choose",
    "workbench.stages.precision.quantize",
    "workbench.stages.precision.calibrate",
    "workbench.stages.precision.smooth",
    "workbench.stages.benchmark.latency",
    "workbench.stages.accuracy.compare",
    "workbench.stages.accuracy.autofix",
    "workbench.stages.surgery.edits",
    "workbench.stages.tensorrt",
    "workbench.triton.config",
    "workbench.tasks.embedding",
    "workbench.tasks.classification",
)


def all_config_classes():
    for name in MODULES:
        importlib.import_module(name)
    found, todo = [], list(StageConfig.__subclasses__())
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if dataclasses.is_dataclass(cls) and cls not in found:
            found.append(cls)
    return sorted(found, key=lambda c: (c.__module__, c.__name__))


def test_string_booleans_are_errors_not_true():
    from workbench.pipeline import PipelineParameters
    from workbench.stages.precision.quantize import DynamicQuantConfig

    with pytest.raises(ConfigError, match="overwrite") as info:
        PipelineParameters(overwrite="no")
    assert "'no'" in str(info.value) and "True or False" in str(info.value)
    with pytest.raises(ConfigError, match="per_channel"):
        DynamicQuantConfig(per_channel="false")
    with pytest.raises(ConfigError, match="overwrite"):
        PipelineParameters.from_dict({"overwrite": "no"})  # papermill parameters
    with pytest.raises(ConfigError, match="per_channel"):
        DynamicQuantConfig.from_json('{"per_channel": "false"}')  # recipes
    with pytest.raises(ConfigError, match="per_channel"):
        DynamicQuantConfig(per_channel=1)


def test_fractional_or_textual_integers_are_errors():
    from workbench.pipeline import PipelineParameters
    from workbench.stages.export import ExportConfig

    with pytest.raises(ConfigError, match="sequence_length") as info:
        PipelineParameters(sequence_length=64.5)
    assert "integer" in str(info.value) and "64.5" in str(info.value)
    with pytest.raises(ConfigError, match="sequence_length"):
        PipelineParameters(sequence_length="128")
    with pytest.raises(ConfigError, match=r"check_batch_sizes\[1\]"):
        ExportConfig(check_batch_sizes=(1, 2.5))
    with pytest.raises(ConfigError, match="opset"):
        ExportConfig(opset=True)


def test_ints_are_accepted_for_floats_and_lists_for_tuples():
    from workbench.stages.export import ExportConfig

    config = ExportConfig(atol=1, check_batch_sizes=[1, 2])
    assert config.atol == 1.0 and isinstance(config.atol, float)
    assert config.check_batch_sizes == (1, 2)
    assert hash(config) == hash(ExportConfig(atol=1.0, check_batch_sizes=(1, 2)))
    with pytest.raises(ConfigError, match="atol"):
        ExportConfig(atol="1e-3")
    with pytest.raises(ConfigError, match="atol"):
        ExportConfig(atol=math.nan)


def test_optional_strings_and_paths():
    from workbench.pipeline import PipelineParameters

    assert PipelineParameters(model_path=Path("/tmp/model")).model_path == "/tmp/model"
    assert PipelineParameters(model_path=None).model_path is None
    with pytest.raises(ConfigError, match="model_path"):
        PipelineParameters(model_path=3)
    with pytest.raises(ConfigError, match="output_dir"):
        PipelineParameters(output_dir=None)


def test_nested_tuples_and_mappings_round_trip():
    from workbench.stages.surgery.edits import OverrideInputShapes
    from workbench.stages.tensorrt import TensorRTConfig

    profile = {"input_ids": ((1, 8), (4, 64), (8, 128))}
    config = TensorRTConfig(profiles=(profile,))
    again = TensorRTConfig.from_json(config.to_json())
    assert again == config and again.profiles[0]["input_ids"][2] == (8, 128)
    with pytest.raises(ConfigError, match="profiles"):  # the class checks this field itself
        TensorRTConfig(profiles=({"input_ids": ((1, 8), (4, "x"), (8, 128))},))
    shapes = OverrideInputShapes(shapes={"input_ids": ["batch", 128]})
    assert shapes.shapes["input_ids"] == ("batch", 128)
    with pytest.raises(ConfigError, match="shapes"):
        OverrideInputShapes(shapes={"input_ids": [1.5]})


@dataclasses.dataclass(frozen=True)
class Inner(StageConfig):
    mode: Literal["a", "b"] = "a"


@dataclasses.dataclass(frozen=True)
class Outer(StageConfig):
    inner: Inner = Inner()
    ratio: float = dataclasses.field(default=0.5, metadata={"range": (0.0, 1.0)})
    sizes: tuple[int, ...] = dataclasses.field(default=(1,), metadata={"range": (1, None)})
    name: Optional[str] = None  # noqa: UP045 - the old spelling must work too


@dataclasses.dataclass(frozen=True)
class Required(StageConfig):
    size: int
    flag: bool = False

    def __post_init__(self) -> None:  # a class's own checks still run, after the type checks
        if self.size == 13:
            raise ConfigError("Required.size must not be 13.")


@dataclasses.dataclass(frozen=True)
class Derived(Required):
    extra: str = "x"


def test_literals_ranges_and_nested_configs():
    assert Outer(inner={"mode": "b"}).inner == Inner("b")
    assert Outer.from_json(Outer(inner=Inner("b"), sizes=(2, 3)).to_json()) == Outer(Inner("b"), sizes=(2, 3))
    with pytest.raises(ConfigError, match=r"Inner.mode .*one of \['a', 'b'\]"):
        Inner(mode="c")
    with pytest.raises(ConfigError, match="ratio"):
        Outer(ratio=1.5)
    with pytest.raises(ConfigError, match=r"sizes\[1\]"):
        Outer(sizes=(1, 0))
    with pytest.raises(ConfigError, match="inner"):
        Outer(inner="b")


def test_missing_required_field_in_json_is_a_config_error():
    with pytest.raises(ConfigError, match=r"needs the field\(s\) \['size'\]"):
        Required.from_dict({"flag": True})


def test_own_post_init_runs_after_the_type_checks_and_is_inherited():
    with pytest.raises(ConfigError, match="must not be 13"):
        Required(13)
    with pytest.raises(ConfigError, match="must not be 13"):
        Derived(13)
    with pytest.raises(ConfigError, match="Derived.extra must be a string"):
        Derived(1, extra=2)
    with pytest.raises(ConfigError, match="Derived.size must be an integer"):
        Derived("1")
    assert Derived.from_json(Derived(2, True, "y").to_json()) == Derived(2, True, "y")


def test_unknown_key_names_the_closest_field():
    from workbench.pipeline import PipelineParameters

    with pytest.raises(ConfigError, match="sequence_lenght") as info:
        PipelineParameters.from_dict({"sequence_lenght": 64})
    assert "sequence_length" in str(info.value)


@pytest.mark.parametrize("cls", all_config_classes(), ids=lambda c: c.__name__)
def test_every_config_class_checks_its_types(cls):
    # the defaults construct; every bool, int, float and str field refuses a value of the wrong type
    required = {
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    if required:
        pytest.skip(f"{cls.__name__} has required fields {sorted(required)}: covered by the tests above")
    try:
        default = cls()
    except ConfigError as exc:  # e.g. a budget base that gates nothing, an edit with nothing to do
        pytest.skip(f"{cls.__name__}() needs arguments to be valid ({exc.what})")
    hints = __import__("typing").get_type_hints(cls)
    checked = 0
    for f in dataclasses.fields(cls):
        wrong = {bool: "yes", int: 2.5, float: "0.5", str: 12}.get(hints[f.name])
        if wrong is None:
            continue
        with pytest.raises(ConfigError, match=f.name):
            dataclasses.replace(default, **{f.name: wrong})
        checked += 1
    assert cls.from_json(json.dumps(default.to_dict())) == default
    if not checked:
        pytest.skip(f"{cls.__name__} has no plain bool/int/float/str field")
