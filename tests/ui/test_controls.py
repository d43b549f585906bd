"""controls_for / config_from_controls: a widget per config field, and the config back through from_dict."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import ipywidgets as widgets
import pytest

from workbench.config import StageConfig
from workbench.errors import ConfigError
from workbench.stages.benchmark.latency import BenchmarkConfig
from workbench.stages.export import EXPORTERS, ExportConfig
from workbench.ui import config_from_controls, controls_for, field_labels


@dataclass(frozen=True)
class KitchenSink(StageConfig):
    """Every field type a config may have.

    Attributes:
        flag: A bool.
        count: An int; must be >= 0.
        scale: A float.
        name: A plain string.
        mode: A string with a choice list
            that goes on over two lines.
        level: A Literal.
        limit: An optional int.
        label: An optional string.
        ratio: An optional float.
        strict: An optional bool.
        sizes: A tuple of ints.
        weights: A tuple of floats.
        names: A tuple of strings.
        shape: A fixed tuple.
        extra: A dict.
        maybe_sizes: An optional tuple.
    """

    flag: bool = True
    count: int = 3
    scale: float = 0.5
    name: str = "x"
    mode: str = "fast"
    level: Literal["low", "high"] = "low"
    limit: int | None = None
    label: str | None = "hello"
    ratio: float | None = 0.25
    strict: bool | None = None
    sizes: tuple[int, ...] = (1, 8)
    weights: tuple[float, ...] = (0.5, 1.5)
    names: tuple[str, ...] = ()
    shape: tuple[int, int] = (2, 3)
    extra: dict[str, Any] = field(default_factory=lambda: {"a": 1, "b": [1, 2]})
    maybe_sizes: tuple[int, ...] | None = None

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        if self.count < 0:
            raise ConfigError(f"KitchenSink.count must be >= 0, got {self.count}.", fix="use 0 or more")


SINK_CHOICES = {"mode": ("fast", "slow")}


def test_widget_type_per_field_type():
    controls = controls_for(KitchenSink, choices=SINK_CHOICES)
    kinds = {name: type(widget) for name, widget in controls.items()}
    assert kinds == {
        "flag": widgets.Checkbox,
        "count": widgets.IntText,
        "scale": widgets.FloatText,
        "name": widgets.Text,
        "mode": widgets.Dropdown,
        "level": widgets.Dropdown,
        "limit": widgets.Text,
        "label": widgets.Text,
        "ratio": widgets.Text,
        "strict": widgets.Dropdown,
        "sizes": widgets.Text,
        "weights": widgets.Text,
        "names": widgets.Text,
        "shape": widgets.Text,
        "extra": widgets.Text,
        "maybe_sizes": widgets.Text,
    }
    assert list(controls) == [f.name for f in dataclasses.fields(KitchenSink)]  # field order


def test_initial_values_show_the_defaults():
    c = controls_for(KitchenSink, choices=SINK_CHOICES)
    assert (c["flag"].value, c["count"].value, c["scale"].value, c["name"].value) == (True, 3, 0.5, "x")
    assert c["mode"].value == "fast" and c["mode"].options == ("fast", "slow")
    assert c["level"].value == "low" and c["level"].options == ("low", "high")
    assert (c["limit"].value, c["label"].value, c["ratio"].value) == ("", "hello", "0.25")
    assert c["strict"].value is None and [v for _, v in c["strict"].options] == [None, True, False]
    assert [label for label, _ in c["strict"].options] == ["None", "True", "False"]
    assert (c["sizes"].value, c["weights"].value, c["names"].value, c["shape"].value) == (
        "1, 8",
        "0.5, 1.5",
        "",
        "2, 3",
    )
    assert c["extra"].value == '{"a": 1, "b": [1, 2]}'
    assert c["maybe_sizes"].value == ""


def test_instance_values_and_round_trip_of_every_field_type():
    config = KitchenSink(
        flag=False,
        count=0,
        scale=-2.0,
        name="",
        mode="slow",
        level="high",
        limit=7,
        label=None,
        ratio=None,
        strict=False,
        sizes=(4,),
        weights=(),
        names=("MatMul", "Gemm"),
        shape=(5, 6),
        extra={},
        maybe_sizes=(1, 2),
    )
    controls = controls_for(config, choices=SINK_CHOICES)
    assert config_from_controls(KitchenSink, controls) == config


def test_text_controls_are_parsed_to_the_field_types():
    c = controls_for(KitchenSink, choices=SINK_CHOICES)
    c["limit"].value = " 12 "
    c["label"].value = "  "  # blank: None
    c["ratio"].value = "1e-3"
    c["strict"].value = True
    c["sizes"].value = "1,2, 3,"  # spaces and a trailing comma are fine
    c["weights"].value = "0.1, 2"
    c["names"].value = "MatMul, Attention"
    c["extra"].value = '{"k": [1, 2]}'
    c["maybe_sizes"].value = "16"
    config = config_from_controls(KitchenSink, c)
    assert config.limit == 12 and config.label is None and config.ratio == 1e-3 and config.strict is True
    assert config.sizes == (1, 2, 3) and config.weights == (0.1, 2.0) and config.names == ("MatMul", "Attention")
    assert config.extra == {"k": [1, 2]} and config.maybe_sizes == (16,)
    c["sizes"].value = ""
    assert config_from_controls(KitchenSink, c).sizes == ()


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("sizes", "1, x", "comma-separated whole numbers"),
        ("limit", "1.5", "a whole number, or empty for None"),
        ("ratio", "abc", "a number"),
        ("shape", "1, 2, 3", "comma-separated values"),
        ("extra", "{not json", "JSON"),
    ],
)
def test_unreadable_text_is_a_config_error_naming_the_field(name, text, expected):
    c = controls_for(KitchenSink, choices=SINK_CHOICES)
    c[name].value = text
    with pytest.raises(ConfigError) as caught:
        config_from_controls(KitchenSink, c)
    message = str(caught.value)
    assert f"KitchenSink.{name}" in message and repr(text) in message
    assert expected in message and "Fix: correct the" in message


def test_library_validation_runs_and_its_config_error_comes_through():
    c = controls_for(KitchenSink, choices=SINK_CHOICES)
    c["count"].value = -1
    with pytest.raises(ConfigError, match="count must be >= 0") as caught:
        config_from_controls(KitchenSink, c)
    assert "Fix: use 0 or more" in str(caught.value)


def test_labels_exclude_base_and_tooltips():
    base = KitchenSink(count=9, name="from base")
    c = controls_for(base, exclude=("name", "extra"), labels={"count": "How many"}, choices=SINK_CHOICES)
    assert "name" not in c and "extra" not in c
    assert c["count"].description == "How many" and c["maybe_sizes"].description == "maybe sizes"
    assert c["scale"].tooltip == "A float."
    assert c["mode"].tooltip == "A string with a choice list that goes on over two lines."
    assert field_labels(KitchenSink)["shape"] == "A fixed tuple."
    c["count"].value = 4
    config = config_from_controls(KitchenSink, c, base=base)
    assert (config.count, config.name, config.extra) == (4, "from base", {"a": 1, "b": [1, 2]})
    # an instance passed as the class is the base too
    assert config_from_controls(base, c).name == "from base"
    # without a base, excluded fields take their defaults
    assert config_from_controls(KitchenSink, c).name == "x"


def test_other_keys_in_the_controls_are_ignored():
    c = {**controls_for(KitchenSink, choices=SINK_CHOICES), "model_path": widgets.Text("m.onnx")}
    assert config_from_controls(KitchenSink, c) == KitchenSink()


def test_unknown_field_names_and_non_dataclasses_are_refused():
    with pytest.raises(ConfigError, match=r"no field\(s\) \['nope'\]"):
        controls_for(KitchenSink, exclude=("nope",))
    with pytest.raises(ConfigError, match="nope"):
        controls_for(KitchenSink, choices={"nope": (1,)})
    with pytest.raises(TypeError, match="not a dataclass"):
        controls_for(dict)


def test_a_value_outside_the_choices_is_still_shown():
    c = controls_for(KitchenSink(mode="medium"), choices=SINK_CHOICES)
    assert c["mode"].value == "medium" and "medium" in c["mode"].options


# -- the project's configs -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [
        BenchmarkConfig(),
        BenchmarkConfig(threads=4),
        BenchmarkConfig.preset("quick"),
        BenchmarkConfig.preset("thorough"),
    ],
)
def test_benchmark_config_round_trip(config):
    controls = controls_for(config)
    assert isinstance(controls["threads"], widgets.Text) and isinstance(controls["batch_sizes"], widgets.Text)
    assert config_from_controls(BenchmarkConfig, controls) == config


def test_benchmark_config_from_edited_controls():
    c = controls_for(BenchmarkConfig)
    c["batch_sizes"].value = "1, 4, 16"
    c["sequence_lengths"].value = "64"
    c["iterations"].value = 7
    c["threads"].value = "2"
    assert config_from_controls(BenchmarkConfig, c) == BenchmarkConfig(
        batch_sizes=(1, 4, 16), sequence_lengths=(64,), iterations=7, threads=2
    )
    c["threads"].value = ""
    assert config_from_controls(BenchmarkConfig, c).threads is None
    c["batch_sizes"].value = "0, 8"
    with pytest.raises(ConfigError, match="batch_sizes must be positive"):
        config_from_controls(BenchmarkConfig, c)


@pytest.mark.parametrize("config", [ExportConfig(), ExportConfig.preset("dynamo"), ExportConfig.preset("thorough")])
def test_export_config_round_trip(config):
    controls = controls_for(config, choices={"exporter": EXPORTERS})
    assert isinstance(controls["exporter"], widgets.Dropdown)
    assert controls["exporter"].options == EXPORTERS and controls["exporter"].value == config.exporter
    assert config_from_controls(ExportConfig, controls) == config


def test_export_config_dropdown_and_cross_field_check():
    c = controls_for(ExportConfig, choices={"exporter": EXPORTERS})
    c["exporter"].value = "dynamo"
    with pytest.raises(ConfigError, match="dynamo exporter needs opset >= 18") as caught:
        config_from_controls(ExportConfig, c)
    assert "Fix: use ExportConfig.preset('dynamo')" in str(caught.value)
    c["opset"].value = 18
    assert config_from_controls(ExportConfig, c) == ExportConfig(exporter="dynamo", opset=18)


def _project_configs():
    from workbench.pipeline import PipelineParameters
    from workbench.stages.accuracy.compare import AccuracyBudget
    from workbench.stages.fusion import FusionConfig
    from workbench.stages.precision.quantize import DynamicQuantConfig
    from workbench.triton.config import TritonConfig

    return [
        FusionConfig(),
        FusionConfig.preset("minilm"),
        DynamicQuantConfig(),
        AccuracyBudget(),
        AccuracyBudget(output_cosine_min=0.999),
        TritonConfig(),
        PipelineParameters(),
        PipelineParameters.preset("ci", model_path="some/dir", threads=2),
    ]


@pytest.mark.parametrize("index", range(8))
def test_every_project_config_round_trips(index):
    config = _project_configs()[index]
    assert config_from_controls(type(config), controls_for(config)) == config


def test_placeholders_say_what_the_items_look_like_and_what_empty_means():
    from workbench.pipeline import PipelineParameters
    from workbench.stages.precision.quantize import DynamicQuantConfig

    quantize = controls_for(DynamicQuantConfig())
    assert quantize["op_types"].placeholder == "comma-separated names"  # op types are names, not "e.g. 1, 8"
    parameters = controls_for(PipelineParameters())
    assert parameters["benchmark_batch_sizes"].placeholder == "comma-separated whole numbers, e.g. 1, 8"
    placeholders = [c.placeholder for c in parameters.values() if hasattr(c, "placeholder")]
    assert placeholders and not any("None" in p for p in placeholders), placeholders
