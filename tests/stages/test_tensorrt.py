"""TensorRT stage: everything up to the point where TensorRT itself is needed runs here; the rest is marked gpu.

TensorRT cannot be installed on this project's machines (NVIDIA's index is out of reach and there is no GPU), so
the tests that build engines skip here. What runs without it: configs and presets, profiles, the Polygraphy
loader chain *constructed* (not called), the TensorRT-layer -> ONNX-node -> precision mapping, the ONNX checks,
the errors raised where TensorRT or a GPU is missing, and apply_layer_precisions' logic against a stand-in
`tensorrt` module (which checks our logic, not TensorRT's API).
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import numpy as np
import pytest

from workbench.errors import (
    ConfigError,
    DataError,
    DeviceUnavailable,
    MissingDependency,
    ModelSourceError,
)
from workbench.stages import tensorrt as stage
from workbench.stages.precision.plan import PrecisionPlan
from workbench.stages.tensorrt import (
    CalibrationFeeds,
    PlanLayerPrecisions,
    TensorRTConfig,
    TensorRTLoaders,
    apply_layer_precisions,
    build_engine,
    build_loaders,
    check_onnx_for_tensorrt,
    layer_precisions,
    onnx_node_of,
    profile_for,
    profile_from_choices,
    tensorrt_status,
)

onnx = pytest.importorskip("onnx")
trt_backend = pytest.importorskip("polygraphy.backend.trt")

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
PROFILE = profile_for(INPUTS, 1, 4, 8, 8, 16, 64)
FFN_MATMUL = "/inner/encoder/layer.0/output/dense/MatMul"
ATTENTION_MATMUL = "/inner/encoder/layer.0/attention/self/MatMul"
ATTENTION_MATMUL_1 = "/inner/encoder/layer.0/attention/self/MatMul_1"  # a node of its own, not a suffix
LAYER_NORM = "/inner/encoder/layer.0/attention/output/LayerNorm/LayerNormalization"
TRT_INSTALLED = importlib.util.find_spec("tensorrt") is not None
needs_no_tensorrt = pytest.mark.skipif(TRT_INSTALLED, reason="checks behaviour where TensorRT is not installed")


def _feeds(batch=4, seq=16, count=3):
    rng = np.random.default_rng(0)
    feeds = []
    for _ in range(count):
        ids = rng.integers(1000, 2000, size=(batch, seq), dtype=np.int64)
        feeds.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
    return feeds


def _tiny_graph(tmp_path, name, *, domain="", op="Relu", rank=2):
    """A one-node ONNX file: for the checks that only read the graph."""
    helper = onnx.helper
    dims = ["batch", "sequence", "hidden"][:rank]
    x = helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, dims)
    y = helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, dims)
    node = helper.make_node(op, ["x"], ["y"], name="the_node", domain=domain)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    model = helper.make_model(helper.make_graph([node], "g", [x], [y]), opset_imports=opsets)
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


# ---------------------------------------------------------------------------------------------------- config


def test_default_config_is_fp16_with_room_for_layer_precisions():
    config = TensorRTConfig()
    assert (config.fp16, config.int8, config.explicit_quantization) == (True, False, False)
    assert config.precision_constraints == "prefer" and config.profiles == ()
    assert config.precisions == ("fp32", "fp16") and not config.calibrated


@pytest.mark.parametrize(
    "preset, fp16, int8, explicit",
    [
        ("tensorrt_fp16", True, False, False),
        ("tensorrt_int8_calibrated", True, True, False),
        ("tensorrt_int8_qdq", True, True, True),
    ],
)
def test_presets(preset, fp16, int8, explicit):
    config = TensorRTConfig.preset(preset, profiles=(PROFILE,))
    assert (config.fp16, config.int8, config.explicit_quantization) == (fp16, int8, explicit)
    assert config.calibrated == (int8 and not explicit)
    assert config.profiles == (PROFILE,)


@pytest.mark.parametrize("preset", sorted(TensorRTConfig.PRESETS))
def test_json_round_trip(preset, tmp_path):
    overrides = {
        "profiles": (PROFILE, profile_for(INPUTS, 8, 16, 32, 64, 128, 256)),
        "workspace_mb": 1024,
        "timing_cache": tmp_path / "timing.cache",
        "builder_optimization_level": 4,
    }
    if preset == "tensorrt_int8_calibrated":
        overrides["calibration_cache"] = str(tmp_path / "calibration.cache")
    config = TensorRTConfig.preset(preset, **overrides)
    assert config.timing_cache == str(tmp_path / "timing.cache")  # a Path becomes a JSON-able str
    text = config.to_json()
    assert json.loads(text)["profiles"][0]["input_ids"] == [[1, 8], [4, 16], [8, 64]]
    again = TensorRTConfig.from_json(text)
    assert again == config and hash(again) == hash(config)
    assert again.profiles[0]["input_ids"] == ((1, 8), (4, 16), (8, 64))  # tuples again, not JSON's lists


def test_a_single_profile_mapping_is_accepted():
    assert TensorRTConfig(profiles=PROFILE).profiles == (PROFILE,)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"int8": False, "explicit_quantization": True}, "needs int8=True"),
        ({"fp16": 1}, "must be True or False"),
        ({"precision_constraints": "strict"}, "precision_constraints"),
        ({"workspace_mb": 0}, "workspace_mb"),
        ({"builder_optimization_level": 6}, "builder_optimization_level"),
        ({"timing_cache": ""}, "timing_cache"),
        ({"calibration_cache": "c.cache"}, "nothing is calibrated"),
        ({"int8": True, "explicit_quantization": True, "calibration_cache": "c.cache"}, "nothing is calibrated"),
        ({"profiles": ({"input_ids": ((1, 16), (8, 16), (4, 16))},)}, "min <= opt <= max"),
        ({"profiles": ({"input_ids": ((1, 16), (1, 16, 1), (4, 16))},)}, "same, non-zero rank"),
        ({"profiles": ({"input_ids": ((0, 16), (1, 16), (4, 16))},)}, "integer >= 1"),
        ({"profiles": ({"input_ids": ((1, 16), (1, 16))},)}, "must be \\(min, opt, max\\)"),
        ({"profiles": ({},)}, "must map input names"),
        ({"profiles": (PROFILE, {"input_ids": ((1, 1), (1, 1), (1, 1))})}, "name different inputs"),
        ({"profiles": "input_ids"}, "tuple of profiles"),
    ],
)
def test_invalid_configs_are_rejected(changes, match):
    with pytest.raises(ConfigError, match=match):
        TensorRTConfig(**changes)


def test_unknown_keys_are_rejected():
    with pytest.raises(ConfigError, match="no field"):
        TensorRTConfig.from_dict({"fp_16": True})


# ---------------------------------------------------------------------------------------------------- profiles


def test_profile_for_gives_batch_by_sequence_shapes_for_every_input():
    profile = profile_for(INPUTS, 1, 4, 8, 8, 128, 512)
    assert list(profile) == list(INPUTS)
    assert profile["attention_mask"] == ((1, 8), (4, 128), (8, 512))


@pytest.mark.parametrize("args", [(1, 8, 4, 1, 1, 1), (0, 1, 1, 1, 1, 1), (1, 1, 1, 2, 1, 3), (1.0, 1, 1, 1, 1, 1)])
def test_profile_for_rejects_bad_ranges(args):
    with pytest.raises(ConfigError, match="range"):
        profile_for(INPUTS, *args)


def test_profile_for_needs_input_names():
    with pytest.raises(ConfigError, match="input names"):
        profile_for([], 1, 1, 1, 1, 1, 1)


def test_profile_from_the_benchmark_choices():
    from workbench.stages.benchmark.latency import BenchmarkConfig

    bench = BenchmarkConfig.preset("thorough")  # batches (1, 8, 32), sequences (32, 128, 512)
    profile = profile_from_choices(INPUTS, bench.batch_sizes, bench.sequence_lengths)
    assert profile["input_ids"] == ((1, 32), (1, 32), (32, 512))  # opt: the first choice of each
    profile = profile_from_choices(INPUTS, bench.batch_sizes, bench.sequence_lengths, opt_batch=8, opt_seq=128)
    assert profile["input_ids"] == ((1, 32), (8, 128), (32, 512))
    with pytest.raises(ConfigError):
        profile_from_choices(INPUTS, (1, 8), (128,), opt_batch=16)  # outside the range


# ---------------------------------------------------------------------------------------------- loader chain


def test_fp16_chain_is_polygraphy_loaders_constructed_without_tensorrt(tiny_bert_onnx, tmp_path):
    config = TensorRTConfig.preset(
        "tensorrt_fp16",
        profiles=(PROFILE,),
        timing_cache=str(tmp_path / "t.cache"),
        builder_optimization_level=5,
        workspace_mb=256,
    )
    loaders = build_loaders(tiny_bert_onnx, config, engine_path=tmp_path / "model.plan")
    assert isinstance(loaders, TensorRTLoaders)
    assert isinstance(loaders.network, trt_backend.NetworkFromOnnxPath) and loaders.network.path == str(tiny_bert_onnx)
    assert loaders.postprocess is None and loaders.layer_precisions is None  # no plan
    create = loaders.create_config
    assert isinstance(create, trt_backend.CreateConfig)
    assert (create.fp16, create.int8, create.calibrator) == (True, False, None)
    assert create.precision_constraints == "prefer"
    assert create.builder_optimization_level == 5
    assert create.timing_cache_path == str(tmp_path / "t.cache")  # load_timing_cache
    assert isinstance(loaders.engine, trt_backend.EngineFromNetwork)
    assert loaders.engine.timing_cache_path == str(tmp_path / "t.cache")  # save_timing_cache
    assert isinstance(loaders.save, trt_backend.SaveEngine) and loaders.save.path == str(tmp_path / "model.plan")
    assert loaders.final is loaders.save
    [profile] = create.profiles
    assert isinstance(profile, trt_backend.Profile)
    assert {name: tuple(shapes) for name, shapes in profile.items()} == PROFILE
    assert loaders.builder_config.workspace_bytes == 256 * 2**20
    assert loaders.calibration_feeds is None
    # the wiring (Polygraphy keeps these in private attributes)
    assert loaders.engine._network is loaders.network
    assert loaders.engine._config is loaders.builder_config
    assert loaders.builder_config.create_config is create
    assert loaders.save._engine is loaders.engine
    assert not (tmp_path / "model.plan").exists()  # constructed, not called


@needs_no_tensorrt
def test_building_the_chain_does_not_import_tensorrt(tiny_bert_onnx):
    build_loaders(
        tiny_bert_onnx,
        TensorRTConfig.preset("tensorrt_int8_calibrated", profiles=(PROFILE,)),
        plan=PrecisionPlan.preset("gpu_fp16").pin([FFN_MATMUL]),
        calibration_feeds=_feeds(),
    )
    assert "tensorrt" not in sys.modules


def test_chain_without_engine_path_ends_at_engine_from_network(tiny_bert_onnx):
    loaders = build_loaders(tiny_bert_onnx, TensorRTConfig(profiles=(PROFILE,)))
    assert loaders.save is None and loaders.final is loaders.engine


def test_precision_constraints_none_means_polygraphy_none(tiny_bert_onnx):
    loaders = build_loaders(tiny_bert_onnx, TensorRTConfig(profiles=(PROFILE,), precision_constraints="none"))
    assert loaders.create_config.precision_constraints is None


def test_empty_profiles_get_a_batch_by_sequence_profile_from_the_model(tiny_bert_onnx):
    loaders = build_loaders(tiny_bert_onnx, TensorRTConfig())
    assert loaders.profiles == (profile_for(INPUTS, *stage.DEFAULT_BATCH, *stage.DEFAULT_SEQUENCE),)


def test_empty_profiles_need_batch_by_sequence_inputs(tmp_path):
    with pytest.raises(ConfigError, match="no default profile fits"):
        build_loaders(_tiny_graph(tmp_path, "rank3.onnx", rank=3), TensorRTConfig())


def test_calibrated_int8_chain_carries_the_feeds_and_defers_the_calibrator(tiny_bert_onnx, tmp_path):
    feeds = _feeds()
    config = TensorRTConfig.preset(
        "tensorrt_int8_calibrated", profiles=(PROFILE,), calibration_cache=str(tmp_path / "calibration.cache")
    )
    loaders = build_loaders(tiny_bert_onnx, config, calibration_feeds=feeds)
    assert (loaders.create_config.fp16, loaders.create_config.int8) == (True, True)
    assert isinstance(loaders.calibration_feeds, CalibrationFeeds) and len(loaders.calibration_feeds) == 3
    assert loaders.builder_config.calibration_cache == str(tmp_path / "calibration.cache")
    # Polygraphy's Calibrator is created when the chain is called: it cannot exist without tensorrt
    assert loaders.create_config.calibrator is None
    batches = list(loaders.calibration_feeds)
    assert len(batches) == 3 and np.array_equal(batches[0]["input_ids"], feeds[0]["input_ids"])
    assert len(list(loaders.calibration_feeds)) == 3  # rewindable: the Calibrator iterates it again on reset


@needs_no_tensorrt
def test_polygraphy_calibrator_cannot_be_created_without_tensorrt(tiny_bert_onnx):
    """Why the chain defers it: Calibrator() subclasses trt.IInt8EntropyCalibrator2 on the spot."""
    from polygraphy.exception import PolygraphyException

    with pytest.raises(PolygraphyException, match="tensorrt"):
        trt_backend.Calibrator(data_loader=_feeds())
    loaders = build_loaders(
        tiny_bert_onnx,
        TensorRTConfig.preset("tensorrt_int8_calibrated", profiles=(PROFILE,)),
        calibration_feeds=_feeds(),
    )
    with pytest.raises(MissingDependency, match=r"\[gpu\]"):
        loaders.builder_config.resolve()


def test_qdq_chain_has_no_calibration(tiny_bert_onnx):
    loaders = build_loaders(tiny_bert_onnx, TensorRTConfig.preset("tensorrt_int8_qdq", profiles=(PROFILE,)))
    assert loaders.create_config.int8 and loaders.create_config.calibrator is None
    assert loaders.calibration_feeds is None and loaders.builder_config.calibration_cache is None


def test_calibrated_int8_needs_feeds(tiny_bert_onnx):
    with pytest.raises(DataError, match="needs calibration_feeds"):
        build_loaders(tiny_bert_onnx, TensorRTConfig.preset("tensorrt_int8_calibrated", profiles=(PROFILE,)))
    with pytest.raises(DataError, match="none was given"):
        build_loaders(
            tiny_bert_onnx, TensorRTConfig.preset("tensorrt_int8_calibrated", profiles=(PROFILE,)), calibration_feeds=[]
        )


def test_calibration_feeds_must_be_at_the_opt_shape(tiny_bert_onnx):
    config = TensorRTConfig.preset("tensorrt_int8_calibrated", profiles=(PROFILE,))  # opt (4, 16)
    with pytest.raises(DataError, match=r"opt shape \(4, 16\)") as info:
        build_loaders(tiny_bert_onnx, config, calibration_feeds=_feeds(batch=4) + _feeds(batch=2, count=1))
    assert "batch_size=4, sequence_length=16" in str(info.value)
    with pytest.raises(DataError, match="lacks the inputs"):
        build_loaders(tiny_bert_onnx, config, calibration_feeds=[{"input_ids": np.ones((4, 16), np.int64)}])


@pytest.mark.parametrize("preset", ["tensorrt_int8_qdq", "tensorrt_fp16"])
def test_feeds_where_nothing_calibrates_are_an_error(tiny_bert_onnx, preset):
    with pytest.raises(ConfigError, match="would be ignored"):
        build_loaders(tiny_bert_onnx, TensorRTConfig.preset(preset, profiles=(PROFILE,)), calibration_feeds=_feeds())


def test_calibration_feeds_are_cast_to_the_network_input_types():
    from polygraphy.common import TensorMetadata
    from polygraphy.datatype import DataType

    feeds = CalibrationFeeds(_feeds(count=1))
    feeds.input_metadata = (
        TensorMetadata().add("input_ids", DataType.INT32, (4, 16)).add("attention_mask", DataType.INT64, (4, 16))
    )
    [batch] = list(feeds)
    assert set(batch) == {"input_ids", "attention_mask"}  # token_type_ids is not a network input here
    assert batch["input_ids"].dtype == np.int32 and batch["attention_mask"].dtype == np.int64


def test_plan_adds_the_layer_precision_step(tiny_bert_onnx):
    plan = PrecisionPlan.preset("gpu_fp16").pin([FFN_MATMUL], note="FP16 overflow")
    loaders = build_loaders(tiny_bert_onnx, TensorRTConfig(profiles=(PROFILE,)), plan=plan)
    assert isinstance(loaders.postprocess, trt_backend.PostprocessNetwork)
    assert isinstance(loaders.layer_precisions, PlanLayerPrecisions) and loaders.layer_precisions.plan is plan
    assert loaders.postprocess._func is loaders.layer_precisions
    assert loaders.postprocess._network is loaders.network and loaders.engine._network is loaders.postprocess
    assert loaders.layer_precisions.report is None  # filled by a build


@pytest.mark.parametrize(
    "plan, config, match",
    [
        (PrecisionPlan("int8_dynamic"), TensorRTConfig(int8=True), "no dynamic INT8"),
        (PrecisionPlan("fp16"), TensorRTConfig(fp16=False), r"needs \['fp16'\]"),
        (PrecisionPlan.preset("tensorrt_int8_qdq"), TensorRTConfig.preset("tensorrt_fp16"), r"needs \['int8'\]"),
        (PrecisionPlan("fp16").pin([FFN_MATMUL], "int8"), TensorRTConfig(), r"needs \['int8'\]"),
        (PrecisionPlan("fp32"), TensorRTConfig(), "FP32 throughout"),
        (
            PrecisionPlan("fp16").pin([FFN_MATMUL]),
            TensorRTConfig(precision_constraints="none"),
            "ignore layer precisions",
        ),
    ],
)
def test_plan_and_config_must_agree(tiny_bert_onnx, plan, config, match):
    with pytest.raises(ConfigError, match=match):
        build_loaders(tiny_bert_onnx, config.replace(profiles=(PROFILE,)), plan=plan)


def test_fp32_plan_with_an_fp32_config_is_fine(tiny_bert_onnx):
    loaders = build_loaders(tiny_bert_onnx, TensorRTConfig(fp16=False, profiles=(PROFILE,)), plan=PrecisionPlan("fp32"))
    assert not loaders.create_config.fp16 and not loaders.create_config.int8


# ------------------------------------------------------------------------------------------------ ONNX checks


def test_check_onnx_returns_every_node_name(tiny_bert_onnx):
    names = check_onnx_for_tensorrt(tiny_bert_onnx, TensorRTConfig(profiles=(PROFILE,)))
    assert {FFN_MATMUL, ATTENTION_MATMUL, ATTENTION_MATMUL_1, LAYER_NORM} <= set(names)


def test_fused_graphs_are_refused_before_tensorrt_is_needed(tmp_path):
    fused = _tiny_graph(tmp_path, "fused.onnx", domain="com.microsoft", op="Attention")
    with pytest.raises(ModelSourceError, match=r"contrib ops \['Attention'\]") as info:
        build_engine(fused, TensorRTConfig(profiles=({"x": ((1, 1), (1, 1), (1, 1))},)))
    assert "plain export" in str(info.value)


def test_missing_model_is_reported(tmp_path):
    with pytest.raises(ModelSourceError, match="does not exist"):
        build_engine(tmp_path / "nope.onnx", TensorRTConfig(profiles=(PROFILE,)))


def test_plan_must_name_nodes_of_this_graph(tiny_bert_onnx):
    plan = PrecisionPlan("fp16").pin(["Attention_0", FFN_MATMUL])  # a fused-graph name and a real one
    with pytest.raises(ConfigError, match=r"not in model.onnx: \['Attention_0'\]"):
        check_onnx_for_tensorrt(tiny_bert_onnx, TensorRTConfig(profiles=(PROFILE,)), plan)


def test_int8_mode_must_match_the_model(tiny_bert_onnx, tmp_path):
    with pytest.raises(ConfigError, match="no QuantizeLinear"):
        check_onnx_for_tensorrt(tiny_bert_onnx, TensorRTConfig.preset("tensorrt_int8_qdq", profiles=(PROFILE,)))
    qdq = _tiny_graph(tmp_path, "qdq.onnx", op="Identity")
    model = onnx.load(str(qdq))
    model.graph.node[0].op_type = "DequantizeLinear"
    onnx.save(model, str(qdq))
    with pytest.raises(ConfigError, match="already has Q/DQ nodes"):
        check_onnx_for_tensorrt(qdq, TensorRTConfig.preset("tensorrt_int8_calibrated"))


@pytest.mark.parametrize(
    "profile, match",
    [
        ({n: PROFILE[n] for n in INPUTS[:2]}, r"no shapes for the inputs \['token_type_ids'\]"),
        ({**PROFILE, "pixel_values": PROFILE["input_ids"]}, r"\['pixel_values'\], which are not inputs"),
        ({**PROFILE, "input_ids": ((1, 1, 1), (1, 1, 1), (1, 1, 1))}, "ranks"),
    ],
)
def test_profiles_must_cover_exactly_the_model_inputs(tiny_bert_onnx, profile, match):
    with pytest.raises(ConfigError, match=match):
        check_onnx_for_tensorrt(tiny_bert_onnx, TensorRTConfig(profiles=(profile,)))


# ---------------------------------------------------------------------------- TensorRT layers -> ONNX nodes


def test_layer_names_map_back_to_the_pinned_nodes(tiny_bert_onnx):
    nodes = check_onnx_for_tensorrt(tiny_bert_onnx, TensorRTConfig(profiles=(PROFILE,)))
    plan = PrecisionPlan.preset("gpu_fp16").pin([FFN_MATMUL, LAYER_NORM, ATTENTION_MATMUL])
    layers = [
        FFN_MATMUL,  # the node's own layer: same name
        FFN_MATMUL + "_87",  # an extra layer of the same node
        FFN_MATMUL + "_87_3",  # ... renamed again to stay unique
        LAYER_NORM + " [Normalization]",  # a " [...]" suffix
        ATTENTION_MATMUL,
        ATTENTION_MATMUL_1,  # another node, not pinned: not a suffix of MatMul
        ATTENTION_MATMUL_1 + "_12",  # an extra layer of that other node
        "/inner/encoder/layer.0/output/dense/MatMulX",  # no separator: not the node
        "(Unnamed Layer* 12) [Constant]",
        "ONNXTRT_ShapeTensorFromDims_3",
        "/inner/encoder/layer.0/output/dense/Add",
    ]
    assert layer_precisions(plan, layers, node_names=nodes) == {
        FFN_MATMUL: "fp32",
        FFN_MATMUL + "_87": "fp32",
        FFN_MATMUL + "_87_3": "fp32",
        LAYER_NORM + " [Normalization]": "fp32",
        ATTENTION_MATMUL: "fp32",
    }


def test_without_every_node_name_a_numbered_node_is_mistaken_for_a_suffix():
    """Why apply_layer_precisions reads every node name of the model: with only the plan's names,
    '.../MatMul_1' looks like an extra layer of the pinned '.../MatMul'."""
    plan = PrecisionPlan("fp16").pin([ATTENTION_MATMUL])
    assert layer_precisions(plan, [ATTENTION_MATMUL_1]) == {ATTENTION_MATMUL_1: "fp32"}
    assert layer_precisions(plan, [ATTENTION_MATMUL_1], node_names=[ATTENTION_MATMUL, ATTENTION_MATMUL_1]) == {}


def test_fused_graph_names_and_longest_prefix():
    nodes = ["Attention_0", "Attention_0_1", "SkipLayerNorm_AddBias_0", "MatMul", "MatMul_1"]
    assert onnx_node_of("Attention_0", nodes) == "Attention_0"
    assert onnx_node_of("Attention_0_1_7", nodes) == "Attention_0_1"  # the longest node name wins
    assert onnx_node_of("Attention_0_7", nodes) == "Attention_0"
    assert onnx_node_of("MatMul_1 [ONNX Layer: MatMul]", nodes) == "MatMul"  # the recorded node wins
    assert onnx_node_of("SkipLayerNorm_AddBias_0 + Attention_0", nodes) == "SkipLayerNorm_AddBias_0"
    assert onnx_node_of("Attention", nodes) is None
    assert onnx_node_of("Attention_0x", nodes) is None


def test_tensorrt_10_metadata_wins_over_the_name():
    plan = PrecisionPlan("fp16").pin([LAYER_NORM])
    metadata = {
        "(Unnamed Layer* 40) [Normalization]": f"[ONNX Layer: {LAYER_NORM}]",
        LAYER_NORM: f"[ONNX Layer: {FFN_MATMUL}]",
    }
    found = layer_precisions(plan, list(metadata), node_names=[LAYER_NORM, FFN_MATMUL], metadata=metadata)
    assert found == {"(Unnamed Layer* 40) [Normalization]": "fp32"}


def test_other_precisions_come_through():
    plan = PrecisionPlan.preset("tensorrt_int8_qdq").pin([FFN_MATMUL], "fp16").pin([LAYER_NORM])
    assert layer_precisions(plan, [FFN_MATMUL, LAYER_NORM, ATTENTION_MATMUL]) == {
        FFN_MATMUL: "fp16",
        LAYER_NORM: "fp32",
    }


@needs_no_tensorrt
def test_apply_layer_precisions_needs_tensorrt():
    with pytest.raises(MissingDependency, match=r"\[gpu\]"):
        apply_layer_precisions(object(), PrecisionPlan("fp16").pin([FFN_MATMUL]))


# A stand-in for the parts of TensorRT's Python API that apply_layer_precisions uses. It checks our logic
# (which layers get which precision and output types); only a real TensorRT can check the API itself.
class _Enum:
    def __init__(self, kind: str, name: str) -> None:
        self.kind, self.name = kind, name

    def __repr__(self) -> str:
        return f"{self.kind}.{self.name}"


def _fake_tensorrt() -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = "10.99.0-fake"
    for name in ("float32", "float16", "int8", "int32", "int64", "bool"):
        setattr(trt, name, _Enum("DataType", name.upper()))
    trt.LayerType = types.SimpleNamespace(
        **{
            n: _Enum("LayerType", n)
            for n in (
                "CONSTANT",
                "SHAPE",
                "QUANTIZE",
                "DEQUANTIZE",
                "MATRIX_MULTIPLY",
                "ELEMENTWISE",
                "NORMALIZATION",
                "GATHER",
            )
        }
    )
    return trt


class _Tensor:
    def __init__(self, dtype, execution=True):
        self.dtype, self.is_execution_tensor = dtype, execution


class _Layer:
    def __init__(self, name, kind, *dtypes, metadata="", execution=True):
        self.name, self.type, self.metadata = name, kind, metadata
        self.outputs = [_Tensor(d, execution) for d in dtypes]
        self.precision = None
        self.output_types = {}

    @property
    def num_outputs(self):
        return len(self.outputs)

    def get_output(self, index):
        return self.outputs[index]

    def set_output_type(self, index, dtype):
        self.output_types[index] = dtype


class _Network:
    def __init__(self, layers):
        self.layers = layers

    @property
    def num_layers(self):
        return len(self.layers)

    def get_layer(self, index):
        return self.layers[index]


def test_apply_layer_precisions_logic_on_a_stand_in_network(tiny_bert_onnx, monkeypatch):
    trt = _fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    kinds = trt.LayerType
    layers = {
        "matmul": _Layer(FFN_MATMUL, kinds.MATRIX_MULTIPLY, trt.float32),
        "its_weights": _Layer(FFN_MATMUL + "_57", kinds.CONSTANT, trt.float32),
        "other_matmul": _Layer(ATTENTION_MATMUL_1, kinds.MATRIX_MULTIPLY, trt.float32),
        "norm": _Layer(
            "(Unnamed Layer* 9) [Normalization]",
            kinds.NORMALIZATION,
            trt.float16,
            metadata=f"[ONNX Layer: {LAYER_NORM}]",
        ),
        "shape": _Layer("/inner/Shape_1", kinds.SHAPE, trt.int64),
        "gather": _Layer("/inner/Gather_1", kinds.GATHER, trt.int64),
        "shape_math": _Layer("/inner/Mul_1", kinds.ELEMENTWISE, trt.float32, execution=False),
    }
    plan = PrecisionPlan("fp16").pin(
        [FFN_MATMUL, LAYER_NORM, "/inner/Shape_1", "/inner/Gather_1", "/inner/Mul_1", "/inner/Constant_1"]
    )
    step = PlanLayerPrecisions(plan, tiny_bert_onnx)  # what the chain's PostprocessNetwork calls
    step(network=_Network(list(layers.values())))
    report = step.report
    assert report.applied == {
        FFN_MATMUL: (FFN_MATMUL, "fp32"),
        "(Unnamed Layer* 9) [Normalization]": (LAYER_NORM, "fp32"),
    }
    assert layers["matmul"].precision is trt.float32 and layers["matmul"].output_types == {0: trt.float32}
    assert layers["norm"].precision is trt.float32 and layers["norm"].output_types == {0: trt.float32}
    assert layers["other_matmul"].precision is None  # '.../MatMul_1' is its own node
    assert set(report.skipped) == {FFN_MATMUL + "_57", "/inner/Shape_1", "/inner/Gather_1", "/inner/Mul_1"}
    assert "CONSTANT" in report.skipped[FFN_MATMUL + "_57"]
    assert all(layers[k].precision is None for k in ("its_weights", "shape", "gather", "shape_math"))
    assert report.unmatched_nodes == ("/inner/Constant_1",)  # ONNX Constant nodes become no layer
    assert json.loads(json.dumps(report.to_dict()))["applied"][FFN_MATMUL] == [FFN_MATMUL, "fp32"]


def test_an_int8_pin_sets_only_the_compute_precision(monkeypatch):
    trt = _fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    layer = _Layer(FFN_MATMUL, trt.LayerType.MATRIX_MULTIPLY, trt.float32)
    report = apply_layer_precisions(_Network([layer]), PrecisionPlan("fp16").pin([FFN_MATMUL], "int8"))
    assert layer.precision is trt.int8 and layer.output_types == {}
    assert report.applied == {FFN_MATMUL: (FFN_MATMUL, "int8")}


# ---------------------------------------------------------------------------------- where TensorRT can run


def test_the_stage_reports_the_backends_status():
    from workbench.engines import tensorrt as backend

    assert tensorrt_status is backend.tensorrt_status


@needs_no_tensorrt
def test_tensorrt_status_here_says_what_is_missing_and_how_to_install_it():
    available, reason = tensorrt_status()
    assert available is False
    assert reason.startswith("TensorRT: not available — the Python package 'tensorrt' is not installed")
    assert "pip install 'inference-workbench[gpu]'" in reason and "NVIDIA GPU" in reason
    assert "\n" not in reason


@needs_no_tensorrt
def test_build_engine_without_tensorrt_names_the_gpu_extra(tiny_bert_onnx, tmp_path):
    engine_path = tmp_path / "out" / "model.plan"
    with pytest.raises(MissingDependency, match=r"\[gpu\]") as info:
        build_engine(tiny_bert_onnx, TensorRTConfig(profiles=(PROFILE,)), engine_path=engine_path)
    assert "NVIDIA GPU" in str(info.value)
    assert not engine_path.exists() and not engine_path.parent.exists()  # nothing half-written


def test_build_engine_with_tensorrt_but_no_gpu_is_device_unavailable(tiny_bert_onnx, tmp_path, monkeypatch):
    from workbench.engines import tensorrt as backend

    monkeypatch.setitem(sys.modules, "tensorrt", _fake_tensorrt())
    monkeypatch.setattr(backend, "gpu_status", lambda: (False, "nvidia-smi is not on PATH (simulated)"))
    with pytest.raises(DeviceUnavailable, match="needs an NVIDIA GPU") as info:
        build_engine(tiny_bert_onnx, TensorRTConfig(profiles=(PROFILE,)), engine_path=tmp_path / "m.plan")
    assert "10.99.0-fake" in str(info.value) and "simulated" in str(info.value)
    expected = (
        "TensorRT: not available — tensorrt 10.99.0-fake is installed but no NVIDIA GPU was found "
        "(nvidia-smi is not on PATH (simulated))"
    )
    assert tensorrt_status() == (False, expected)
    monkeypatch.setattr(backend, "gpu_status", lambda: (True, "GPU 0: NVIDIA H100 (simulated)"))
    assert tensorrt_status() == (True, "TensorRT 10.99.0-fake on GPU 0: NVIDIA H100 (simulated)")


def test_argument_errors_come_before_the_missing_tensorrt(tiny_bert_onnx):
    with pytest.raises(DataError):  # a user on a CPU machine still learns that the call itself was wrong
        build_engine(tiny_bert_onnx, TensorRTConfig.preset("tensorrt_int8_calibrated", profiles=(PROFILE,)))


# ------------------------------------------------------------------------------ with TensorRT and a GPU


def _require_tensorrt_and_gpu():
    pytest.importorskip(
        "tensorrt",
        reason="TensorRT is not installed: it needs NVIDIA's package index and a GPU, "
        "neither available on this machine",
    )
    from workbench.engines.tensorrt import gpu_status

    has_gpu, why = gpu_status()
    if not has_gpu:
        pytest.skip(f"TensorRT is installed but there is no NVIDIA GPU: {why}")


def _compare_with_onnxruntime(engine_path, onnx_path, feeds):
    from workbench.engines.onnxruntime import OnnxRuntimeRunner
    from workbench.engines.tensorrt import TensorRTRunner
    from workbench.stages.accuracy.compare import mean_pooled_embeddings

    with TensorRTRunner(engine_path) as trt_runner, OnnxRuntimeRunner(onnx_path) as ort_runner:
        cosines = []
        for feed in feeds:
            got = trt_runner.infer(feed)["last_hidden_state"].astype(np.float32)
            expected = ort_runner.infer(feed)["last_hidden_state"]
            assert got.shape == expected.shape and np.isfinite(got).all()
            cosines += np.sum(
                mean_pooled_embeddings(got, feed["attention_mask"])
                * mean_pooled_embeddings(expected, feed["attention_mask"]),
                axis=1,
            ).tolist()
    return float(np.min(cosines))


@pytest.mark.gpu
def test_int8_qdq_engine_builds_and_runs(tiny_bert_onnx, tmp_path):
    _require_tensorrt_and_gpu()
    qdq = PrecisionPlan.preset("tensorrt_int8_qdq").convert(
        tiny_bert_onnx, tmp_path / "qdq.onnx", calibration_feeds=_feeds(count=4), progress=False
    )
    engine = build_engine(
        qdq.path,
        TensorRTConfig.preset("tensorrt_int8_qdq", profiles=(PROFILE,)),
        engine_path=tmp_path / "int8_qdq.plan",
    )
    assert engine.path.is_file() and engine.size_mb > 0 and engine.layer_precisions is None
    assert _compare_with_onnxruntime(engine.path, tiny_bert_onnx, _feeds(count=2)) > 0.9  # random tiny weights


@pytest.mark.gpu
def test_calibrated_int8_engine_builds_and_writes_its_cache(tiny_bert_onnx, tmp_path):
    _require_tensorrt_and_gpu()
    config = TensorRTConfig.preset(
        "tensorrt_int8_calibrated", profiles=(PROFILE,), calibration_cache=str(tmp_path / "calibration.cache")
    )
    engine = build_engine(tiny_bert_onnx, config, calibration_feeds=_feeds(count=4), engine_path=tmp_path / "c.plan")
    assert engine.path.is_file() and (tmp_path / "calibration.cache").is_file()
    assert any("deprecated" in note for note in engine.notes)
    assert _compare_with_onnxruntime(engine.path, tiny_bert_onnx, _feeds(count=2)) > 0.9


@pytest.mark.gpu
def test_plan_pins_layers_to_fp32_in_a_real_build(tiny_bert_onnx, tmp_path):
    _require_tensorrt_and_gpu()
    plan = PrecisionPlan.preset("gpu_fp16").pin([FFN_MATMUL, LAYER_NORM])
    config = TensorRTConfig.preset(
        "tensorrt_fp16", profiles=(PROFILE,), precision_constraints="obey", timing_cache=str(tmp_path / "timing.cache")
    )
    engine = build_engine(tiny_bert_onnx, config, plan=plan, engine_path=tmp_path / "pinned.plan")
    report = engine.layer_precisions
    assert report is not None
    assert {node for node, _ in report.applied.values()} == {FFN_MATMUL, LAYER_NORM}
    assert all(precision == "fp32" for _, precision in report.applied.values())
    assert (tmp_path / "timing.cache").is_file()
    assert _compare_with_onnxruntime(engine.path, tiny_bert_onnx, _feeds(count=2)) > 0.999
