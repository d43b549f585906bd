"""StageConfig behaviour, exercised through the real stage configs."""

from __future__ import annotations

import dataclasses
import json

import pytest

from workbench.config import StageConfig
from workbench.errors import ConfigError, WorkbenchError
from workbench.pipeline import PipelineParameters
from workbench.stages.accuracy.compare import AccuracyBudget
from workbench.stages.benchmark.latency import BenchmarkConfig
from workbench.stages.export import ExportConfig
from workbench.stages.precision.quantize import DynamicQuantConfig

CONFIGS = [ExportConfig, BenchmarkConfig, AccuracyBudget, PipelineParameters, DynamicQuantConfig]

# non-default, valid instances, including tuples, None and floats
NON_DEFAULT = [
    ExportConfig(
        exporter="dynamo", opset=18, check_batch_sizes=(2, 3), check_sequence_lengths=(7,), atol=5e-4, min_cosine=0.999
    ),
    BenchmarkConfig(batch_sizes=(1, 4, 16), sequence_lengths=(32, 64), warmup=0, iterations=3, threads=2),
    AccuracyBudget(embedding_cosine_mean=0.9, embedding_cosine_min=-0.5, output_cosine_min=0.8),
    PipelineParameters(
        model_path="some/model",
        data_dir="data",
        output_dir="runs/x",
        sequence_length=64,
        benchmark_batch_sizes=(1, 2),
        threads=4,
        triton_model_name="m",
        overwrite=True,
    ),
    DynamicQuantConfig(per_channel=False, weight_type="uint8", reduce_range=True, op_types=("MatMul", "Gemm")),
]


def _tuple_fields(config: StageConfig) -> list[str]:
    return [f.name for f in dataclasses.fields(config) if isinstance(getattr(config, f.name), tuple)]


@pytest.mark.parametrize("config", [cls() for cls in CONFIGS] + NON_DEFAULT, ids=lambda c: type(c).__name__)
def test_json_round_trip(config):
    text = config.to_json()
    json.loads(text)  # plain JSON
    again = type(config).from_json(text)
    assert again == config
    assert hash(again) == hash(config)
    for name in _tuple_fields(config):
        assert isinstance(getattr(again, name), tuple), name
    assert type(config).from_dict(config.to_dict()) == config


def test_round_trip_changes_are_seen():
    # equality is real: a different value does not compare equal after the trip
    a = BenchmarkConfig(batch_sizes=(1, 8))
    b = BenchmarkConfig.from_json(BenchmarkConfig(batch_sizes=(1, 4)).to_json())
    assert a != b


def test_to_dict_is_plain():
    values = ExportConfig(check_batch_sizes=(1, 2)).to_dict()
    assert values["check_batch_sizes"] == [1, 2]
    assert set(values) == {f.name for f in dataclasses.fields(ExportConfig)}
    assert "PRESETS" not in values


def test_from_dict_turns_lists_into_tuples():
    config = PipelineParameters.from_dict({"benchmark_batch_sizes": [1, 4]})
    assert config.benchmark_batch_sizes == (1, 4)
    config = DynamicQuantConfig.from_dict({"op_types": ["MatMul"]})
    assert config.op_types == ("MatMul",)


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_unknown_key_is_an_error_naming_it(cls):
    with pytest.raises(ConfigError) as info:
        cls.from_dict({"no_such_setting": 1})
    assert "no_such_setting" in str(info.value)
    assert cls.__name__ in str(info.value)
    with pytest.raises(ConfigError, match="no_such_setting"):
        cls.from_json(json.dumps({"no_such_setting": 1}))


def test_typo_among_valid_keys_is_caught():
    with pytest.raises(ConfigError, match="iteration"):
        BenchmarkConfig.from_dict({"warmup": 1, "iteration": 5})


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_presets_exist_and_build(cls):
    assert cls.PRESETS
    for name in cls.PRESETS:
        config = cls.preset(name)
        assert isinstance(config, cls)
        for key, value in cls.PRESETS[name].items():
            assert getattr(config, key) == value


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_unknown_preset_is_an_error(cls):
    with pytest.raises(ConfigError) as info:
        cls.preset("no-such-preset")
    message = str(info.value)
    assert "no-such-preset" in message
    for name in cls.PRESETS:
        assert name in message


def test_named_presets():
    assert ExportConfig.preset("dynamo").exporter == "dynamo"
    assert ExportConfig.preset("dynamo").opset >= 18
    assert BenchmarkConfig.preset("quick").batch_sizes == (1,)
    assert PipelineParameters.preset("ci").sequence_length == 64
    assert DynamicQuantConfig.preset("cpu_int8_dynamic_per_tensor").per_channel is False
    assert AccuracyBudget.preset("relaxed").embedding_cosine_min < AccuracyBudget.preset("strict").embedding_cosine_min


def test_preset_overrides():
    config = BenchmarkConfig.preset("quick", iterations=7)
    assert config.iterations == 7 and config.batch_sizes == (1,)
    with pytest.raises(ConfigError, match="iterationz"):
        BenchmarkConfig.preset("quick", iterationz=7)
    with pytest.raises(ConfigError):
        BenchmarkConfig.preset("quick", iterations=0)


@pytest.mark.parametrize(
    "build",
    [
        lambda: ExportConfig(exporter="x"),
        lambda: ExportConfig(exporter="dynamo", opset=17),
        lambda: ExportConfig(opset=6),
        lambda: ExportConfig(opset=99),
        lambda: ExportConfig(check_batch_sizes=()),
        lambda: ExportConfig(check_batch_sizes=(1, 0)),
        lambda: ExportConfig(check_sequence_lengths=(-8,)),
        lambda: ExportConfig(atol=0),
        lambda: ExportConfig(min_cosine=0),
        lambda: ExportConfig(min_cosine=1.5),
        lambda: BenchmarkConfig(iterations=0),
        lambda: BenchmarkConfig(warmup=-1),
        lambda: BenchmarkConfig(threads=0),
        lambda: BenchmarkConfig(batch_sizes=(1, 0)),
        lambda: BenchmarkConfig(sequence_lengths=()),
        lambda: AccuracyBudget(embedding_cosine_mean=2),
        lambda: AccuracyBudget(embedding_cosine_min=-1.5),
        lambda: AccuracyBudget(output_cosine_min=1.01),
        lambda: PipelineParameters(sequence_length=4),
        lambda: PipelineParameters(eval_batch_size=0),
        lambda: PipelineParameters(benchmark_batch_sizes=(0,)),
        lambda: PipelineParameters(max_eval_samples=-1),
        lambda: DynamicQuantConfig(weight_type="int4"),
    ],
)
def test_invalid_values_are_config_errors(build):
    with pytest.raises(ConfigError) as info:
        build()
    assert isinstance(info.value, (ValueError, WorkbenchError))
    assert str(info.value)


def test_invalid_value_message_names_field_and_choices():
    with pytest.raises(ConfigError) as info:
        ExportConfig(exporter="x")
    assert "exporter" in str(info.value) and "torchscript" in str(info.value) and "dynamo" in str(info.value)
    with pytest.raises(ConfigError, match="iterations"):
        BenchmarkConfig(iterations=0)


def test_validation_applies_to_from_dict_and_replace():
    with pytest.raises(ConfigError):
        ExportConfig.from_dict({"opset": 3})
    with pytest.raises(ConfigError):
        BenchmarkConfig().replace(iterations=0)
    assert BenchmarkConfig().replace(iterations=3).iterations == 3


def test_boundary_values_are_accepted():
    assert ExportConfig(exporter="dynamo", opset=18).opset == 18
    assert ExportConfig(min_cosine=1.0).min_cosine == 1.0
    assert AccuracyBudget(embedding_cosine_mean=1, embedding_cosine_min=-1).embedding_cosine_min == -1
    assert BenchmarkConfig(warmup=0, threads=None).warmup == 0
    assert PipelineParameters(sequence_length=8).sequence_length == 8


@pytest.mark.parametrize("config", [cls() for cls in CONFIGS], ids=lambda c: type(c).__name__)
def test_configs_are_frozen(config):
    field = dataclasses.fields(config)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, field, getattr(config, field))


def test_replace_returns_a_new_object():
    base = ExportConfig()
    changed = base.replace(atol=0.5)
    assert changed.atol == 0.5 and base.atol == ExportConfig().atol
    assert changed is not base
