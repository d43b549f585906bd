"""Tests for the Triton export stage, on tiny ONNX graphs built here (no real model, no server)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tritonclient.grpc.model_config_pb2")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from workbench.errors import ConfigError, ModelSourceError, TritonExportError, WorkbenchError  # noqa: E402
from workbench.triton.config import TritonConfig, parse_model_config, render_model_config  # noqa: E402
from workbench.triton.model import TritonExportResult, export_triton, model_config_from_onnx  # noqa: E402


def _save(model, path: Path) -> Path:
    model.ir_version = 8  # opset 17 needs IR 8; keeps the files loadable by any recent onnxruntime
    onnx.checker.check_model(model)
    onnx.save_model(model, str(path))
    return path


def _token_model(path: Path) -> Path:
    """input_ids int64 [batch, sequence] -> Cast -> embeddings float [batch, sequence]; flags bool [batch] too."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["input_ids"], ["embeddings"], to=TensorProto.FLOAT),
            helper.make_node("Identity", ["flags"], ["flags_out"]),
        ],
        "tokens",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]),
            helper.make_tensor_value_info("flags", TensorProto.BOOL, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["batch", "sequence"]),
            helper.make_tensor_value_info("flags_out", TensorProto.BOOL, [None]),
        ],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _cast_model(path: Path, *, in_shape, out_shape, out_type=TensorProto.FLOAT) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=out_type)],
        "cast",
        [helper.make_tensor_value_info("x", TensorProto.INT64, in_shape)],
        [helper.make_tensor_value_info("y", out_type, out_shape)],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def _static_batch_model(path: Path) -> Path:
    return _cast_model(path, in_shape=[4, "sequence"], out_shape=[4, "sequence"])


def _bf16_model(path: Path) -> Path:
    return _cast_model(path, in_shape=["batch", 3], out_shape=["batch", 3], out_type=TensorProto.BFLOAT16)


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` (relative) -> its bytes, or None for folders."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


# ---------------------------------------------------------------------------------------------------- config


def test_model_config_is_derived_from_the_graph(tmp_path):
    onnx_path = _token_model(tmp_path / "tokens.onnx")
    cfg = model_config_from_onnx(onnx_path, TritonConfig(model_name="minilm", instance_count=2))

    assert cfg.name == "minilm"
    assert cfg.platform == "onnxruntime_onnx"
    assert cfg.backend == "onnxruntime"
    assert cfg.max_batch_size == 8
    inputs = {t.name: t for t in cfg.input}
    outputs = {t.name: t for t in cfg.output}
    assert list(inputs) == ["input_ids", "flags"] and list(outputs) == ["embeddings", "flags_out"]

    pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    assert pb2.DataType.Name(inputs["input_ids"].data_type) == "TYPE_INT64"
    assert pb2.DataType.Name(outputs["embeddings"].data_type) == "TYPE_FP32"
    assert pb2.DataType.Name(inputs["flags"].data_type) == "TYPE_BOOL"
    # the batch dim is left out; the symbolic sequence dim becomes -1
    assert list(inputs["input_ids"].dims) == [-1]
    assert list(outputs["embeddings"].dims) == [-1]
    # a batch-only tensor becomes dims [1] reshaped to a scalar per batch item
    for tensor in (inputs["flags"], outputs["flags_out"]):
        assert list(tensor.dims) == [1]
        assert tensor.HasField("reshape") and list(tensor.reshape.shape) == []

    assert cfg.HasField("dynamic_batching")
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 100
    assert list(cfg.dynamic_batching.preferred_batch_size) == []
    assert len(cfg.instance_group) == 1
    assert cfg.instance_group[0].count == 2
    assert pb2.ModelInstanceGroup.Kind.Name(cfg.instance_group[0].kind) == "KIND_CPU"


def test_batching_and_instances_follow_the_config(tmp_path):
    onnx_path = _cast_model(tmp_path / "m.onnx", in_shape=["batch", 5], out_shape=["n", 5])
    pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")

    gpu = model_config_from_onnx(onnx_path, TritonConfig.preset("gpu", preferred_batch_sizes=(16, 32)))
    assert gpu.max_batch_size == 32
    assert list(gpu.dynamic_batching.preferred_batch_size) == [16, 32]
    assert pb2.ModelInstanceGroup.Kind.Name(gpu.instance_group[0].kind) == "KIND_GPU"
    assert list(gpu.input[0].dims) == [5] and list(gpu.output[0].dims) == [5]

    plain = model_config_from_onnx(onnx_path, TritonConfig(dynamic_batching=False))
    assert not plain.HasField("dynamic_batching")
    assert "dynamic_batching" not in render_model_config(plain)


def test_string_tensors_map_to_type_string(tmp_path):
    # Triton's onnxruntime backend serves ONNX string tensors as TYPE_STRING (BYTES on the wire).
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["same"])],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("same", TensorProto.STRING, ["batch"])],
    )
    onnx_path = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "s.onnx")
    pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    cfg = model_config_from_onnx(onnx_path, TritonConfig())
    assert pb2.DataType.Name(cfg.input[0].data_type) == "TYPE_STRING"


def test_static_batch_dim_is_rejected_with_a_fix(tmp_path):
    onnx_path = _static_batch_model(tmp_path / "static.onnx")
    with pytest.raises(TritonExportError) as info:
        model_config_from_onnx(onnx_path, TritonConfig())
    message = str(info.value)
    assert "static batch dimension" in message
    assert "'x'" in message and "[4, sequence]" in message
    assert "dynamic batch axis" in info.value.fix


def test_unsupported_dtype_is_rejected(tmp_path):
    onnx_path = _bf16_model(tmp_path / "bf16.onnx")
    with pytest.raises(TritonExportError, match="BFLOAT16"):
        model_config_from_onnx(onnx_path, TritonConfig())


# ----------------------------------------------------------------------------------------------- parsing


def test_parse_round_trips_rendered_config(tmp_path):
    cfg = model_config_from_onnx(_token_model(tmp_path / "t.onnx"), TritonConfig(preferred_batch_sizes=(4, 8)))
    text = render_model_config(cfg)
    parsed = parse_model_config(text)
    assert parsed == cfg
    assert render_model_config(parsed) == text


def test_parse_rejects_misspelled_field():
    with pytest.raises(TritonExportError) as info:
        parse_model_config('name: "m"\nmax_batch_sise: 8\n')
    assert "max_batch_sise" in str(info.value)
    assert "line 2" in str(info.value)
    assert info.value.fix


def test_parse_rejects_bad_data_type():
    text = 'name: "m"\nmax_batch_size: 8\ninput {\n  name: "x"\n  data_type: TYPE_INT65\n  dims: [-1]\n}\n'
    with pytest.raises(TritonExportError) as info:
        parse_model_config(text)
    assert "TYPE_INT65" in str(info.value)
    assert "line 5" in str(info.value)


# ------------------------------------------------------------------------------------------------ TritonConfig


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".hidden", ".", "..", "a\\b", "has space", "a" * 201])
def test_invalid_model_names_are_config_errors(name):
    with pytest.raises(ConfigError):
        TritonConfig(model_name=name)


@pytest.mark.parametrize("name", ["minilm", "minilm_int8-v2", "m.onnx.1", "_x"])
def test_valid_model_names(name):
    assert TritonConfig(model_name=name).model_name == name


@pytest.mark.parametrize(
    "changes",
    [
        {"max_batch_size": 0},
        {"max_batch_size": True},
        {"max_queue_delay_us": -1},
        {"instance_count": 0},
        {"version": 0},
        {"instance_kind": "KIND_TPU"},
        {"preferred_batch_sizes": (0,)},
        {"preferred_batch_sizes": (16,)},
        {"preferred_batch_sizes": (4, 4)},
        {"preferred_batch_sizes": (4,), "dynamic_batching": False},
    ],
)
def test_invalid_config_values_are_config_errors(changes):
    with pytest.raises(ConfigError):
        TritonConfig(**changes)


def test_config_json_round_trip_and_presets():
    config = TritonConfig(model_name="enc", max_batch_size=16, preferred_batch_sizes=(8, 16), instance_kind="KIND_AUTO")
    again = TritonConfig.from_json(config.to_json())
    assert again == config
    assert isinstance(again.preferred_batch_sizes, tuple)

    gpu = TritonConfig.preset("gpu", model_name="enc")
    assert gpu.instance_kind == "KIND_GPU" and gpu.model_name == "enc"
    assert TritonConfig.from_json(gpu.to_json()) == gpu
    assert TritonConfig.preset("cpu").instance_kind == "KIND_CPU"
    with pytest.raises(ConfigError):
        TritonConfig.from_dict({"max_batch_sise": 8})


# ------------------------------------------------------------------------------------------------ export


def test_export_writes_a_repository_whose_config_parses_strictly(tmp_path):
    onnx_path = _token_model(tmp_path / "tokens.onnx")
    repository = tmp_path / "repo"
    other = repository / "other_model"
    other.mkdir(parents=True)
    (other / "config.pbtxt").write_text('name: "other_model"\n')

    result = export_triton(onnx_path, repository, TritonConfig(model_name="minilm", version=3))

    assert isinstance(result, TritonExportResult)
    model_dir = repository / "minilm"
    assert result.model_dir == model_dir and result.repository == repository
    assert result.files == (model_dir / "config.pbtxt", model_dir / "3" / "model.onnx")
    assert (model_dir / "3" / "model.onnx").read_bytes() == onnx_path.read_bytes()
    text = (model_dir / "config.pbtxt").read_text()
    assert text == result.config_text
    parsed = parse_model_config(text)
    assert parsed.name == "minilm" and parsed.max_batch_size == 8
    assert parsed == model_config_from_onnx(onnx_path, TritonConfig(model_name="minilm", version=3))
    assert render_model_config(parsed) == text
    # the other model and the repository hold nothing else: no temporary folders left behind
    assert (other / "config.pbtxt").read_text() == 'name: "other_model"\n'
    assert sorted(p.name for p in repository.iterdir()) == ["minilm", "other_model"]

    as_dict = result.to_dict()
    assert as_dict["model_name"] == "minilm" and as_dict["files"][0].endswith("config.pbtxt")
    page = result._repr_html_()
    assert "minilm" in page and "<pre>" in page and "onnxruntime_onnx" in page


def test_external_data_is_copied_and_renamed(tmp_path):
    numpy = pytest.importorskip("numpy")
    weight = onnx.numpy_helper.from_array(numpy.array([1.0, 2.0, 3.0, 4.0], dtype=numpy.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "add",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    source = tmp_path / "src" / "fused.onnx"
    source.parent.mkdir()
    onnx.save_model(model, str(source), save_as_external_data=True, location="fused.onnx.data", size_threshold=0)
    assert (source.parent / "fused.onnx.data").is_file()

    result = export_triton(source, tmp_path / "repo", TritonConfig(model_name="add"))

    version_dir = tmp_path / "repo" / "add" / "1"
    assert sorted(p.name for p in version_dir.iterdir()) == ["model.onnx", "model.onnx.data"]
    assert (version_dir / "model.onnx.data").read_bytes() == (source.parent / "fused.onnx.data").read_bytes()
    assert version_dir / "model.onnx.data" in result.files
    loaded = onnx.load(str(version_dir / "model.onnx"), load_external_data=True)
    values = onnx.numpy_helper.to_array(loaded.graph.initializer[0])
    numpy.testing.assert_array_equal(values, [1.0, 2.0, 3.0, 4.0])


def test_existing_model_folder_is_kept_without_overwrite_and_replaced_with_it(tmp_path):
    onnx_path = _token_model(tmp_path / "tokens.onnx")
    repository = tmp_path / "repo"
    export_triton(onnx_path, repository, TritonConfig(model_name="m"))
    (repository / "m" / "notes.txt").write_text("user file")
    before = _snapshot(repository)

    with pytest.raises(TritonExportError, match="already exists") as info:
        export_triton(onnx_path, repository, TritonConfig(model_name="m", max_batch_size=4))
    assert "overwrite=True" in info.value.fix
    assert _snapshot(repository) == before

    result = export_triton(onnx_path, repository, TritonConfig(model_name="m", max_batch_size=4), overwrite=True)
    assert not (repository / "m" / "notes.txt").exists()
    assert parse_model_config((repository / "m" / "config.pbtxt").read_text()).max_batch_size == 4
    assert result.config_text == (repository / "m" / "config.pbtxt").read_text()
    assert sorted(p.name for p in repository.iterdir()) == ["m"]


@pytest.mark.parametrize("build", [_bf16_model, _static_batch_model], ids=["bf16-output", "static-batch"])
def test_failing_export_leaves_nothing_behind(tmp_path, build):
    onnx_path = build(tmp_path / "bad.onnx")
    repository = tmp_path / "repo"
    (repository / "other").mkdir(parents=True)
    before = _snapshot(repository)

    with pytest.raises(TritonExportError):
        export_triton(onnx_path, repository, TritonConfig(model_name="bad"))
    assert _snapshot(repository) == before  # no model folder, no temporary folder

    fresh = tmp_path / "fresh_repo"
    with pytest.raises(TritonExportError):
        export_triton(onnx_path, fresh, TritonConfig(model_name="bad"))
    assert not fresh.exists()


def test_failed_overwrite_keeps_the_old_model(tmp_path):
    repository = tmp_path / "repo"
    export_triton(_token_model(tmp_path / "good.onnx"), repository, TritonConfig(model_name="m"))
    before = _snapshot(repository)
    with pytest.raises(TritonExportError):
        export_triton(_bf16_model(tmp_path / "bad.onnx"), repository, TritonConfig(model_name="m"), overwrite=True)
    assert _snapshot(repository) == before


def test_truncated_or_missing_onnx_is_a_workbench_error(tmp_path):
    good = _token_model(tmp_path / "good.onnx")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    repository = tmp_path / "repo"

    with pytest.raises(WorkbenchError) as info:
        export_triton(truncated, repository, TritonConfig(model_name="m"))
    assert type(info.value) is not WorkbenchError  # a specific subclass
    with pytest.raises(ModelSourceError, match="does not exist"):
        export_triton(tmp_path / "missing.onnx", repository, TritonConfig(model_name="m"))
    assert not repository.exists()


def test_importing_the_stage_stays_light():
    code = (
        "import sys, workbench.triton.config, workbench.triton.model, workbench.triton.ensemble\n"
        "heavy = [m for m in ('onnx', 'tritonclient', 'google.protobuf', 'torch', 'onnxruntime') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------ warmup and accelerators


def test_warmup_samples_cover_every_input_at_batch_1_and_max(tmp_path):
    onnx_path = _token_model(tmp_path / "tokens.onnx")
    pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    cfg = model_config_from_onnx(onnx_path, TritonConfig(max_batch_size=4, warmup=True, warmup_sequence_length=16))

    assert [(w.name, w.batch_size) for w in cfg.model_warmup] == [("zeros_batch_1", 1), ("zeros_batch_4", 4)]
    for sample in cfg.model_warmup:
        assert sorted(sample.inputs) == ["flags", "input_ids"]
        ids, flags = sample.inputs["input_ids"], sample.inputs["flags"]
        assert list(ids.dims) == [16] and pb2.DataType.Name(ids.data_type) == "TYPE_INT64" and ids.zero_data
        assert list(flags.dims) == [1] and pb2.DataType.Name(flags.data_type) == "TYPE_BOOL" and flags.zero_data
    assert parse_model_config(render_model_config(cfg)) == cfg
    assert "model_warmup" not in render_model_config(model_config_from_onnx(onnx_path, TritonConfig()))
    single = model_config_from_onnx(onnx_path, TritonConfig(max_batch_size=1, warmup=True))
    assert [w.batch_size for w in single.model_warmup] == [1]


def test_tensorrt_fp16_accelerator_for_gpu_instances(tmp_path):
    onnx_path = _token_model(tmp_path / "tokens.onnx")
    cfg = model_config_from_onnx(onnx_path, TritonConfig.preset("gpu_tensorrt_fp16"))

    (accelerator,) = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert accelerator.name == "tensorrt" and dict(accelerator.parameters) == {"precision_mode": "FP16"}
    assert not cfg.optimization.execution_accelerators.cpu_execution_accelerator
    assert len(cfg.model_warmup) == 2  # the preset warms up, so the engine is built at load time
    text = render_model_config(cfg)
    assert "gpu_execution_accelerator" in text and 'value: "FP16"' in text
    assert parse_model_config(text) == cfg
    assert not model_config_from_onnx(onnx_path, TritonConfig.preset("gpu")).HasField("optimization")
    auto = model_config_from_onnx(onnx_path, TritonConfig(instance_kind="KIND_AUTO", ort_gpu_tensorrt_fp16=True))
    assert auto.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"

    with pytest.raises(ConfigError, match="KIND_CPU") as info:
        TritonConfig(ort_gpu_tensorrt_fp16=True)
    assert "KIND_GPU" in info.value.fix
    preset = TritonConfig.preset("gpu_tensorrt_fp16", model_name="enc")
    assert TritonConfig.from_json(preset.to_json()) == preset


@pytest.mark.parametrize(
    "changes",
    [
        {"warmup": "yes"},
        {"warmup": 1},
        {"ort_gpu_tensorrt_fp16": 1, "instance_kind": "KIND_GPU"},
        {"warmup_sequence_length": 0},
        {"warmup_sequence_length": 2.5},
    ],
)
def test_invalid_new_options_are_config_errors(changes):
    with pytest.raises(ConfigError):
        TritonConfig(**changes)


# ----------------------------------------------------------------------------------------------- ensemble

from workbench.triton.ensemble import (  # noqa: E402
    TritonEnsembleResult,
    check_ensemble,
    ensemble_model_names,
    export_triton_ensemble,
)


def _ensemble(tiny_bert_onnx, tiny_model_dir, repository, **kwargs):
    """The fixed-padding ensemble (the length-aware designs are tested in test_padding.py)."""
    from workbench.triton.padding import PaddingPolicy

    config = kwargs.pop("config", TritonConfig(model_name="tiny", preferred_batch_sizes=(4, 8), max_queue_delay_us=500))
    sequence_length = kwargs.pop("sequence_length", 16)
    kwargs.setdefault(
        "padding",
        PaddingPolicy.fixed(sequence_length) if isinstance(sequence_length, int) and sequence_length >= 2 else None,
    )
    return export_triton_ensemble(
        tiny_bert_onnx, repository, tiny_model_dir("bert"), config, sequence_length=sequence_length, **kwargs
    )


def test_ensemble_layout_and_configs(tiny_bert_onnx, tiny_model_dir, tmp_path):
    import json

    pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    repository = tmp_path / "repo"
    result = _ensemble(
        tiny_bert_onnx,
        tiny_model_dir,
        repository,
        provenance={"source_model": "tiny-bert", "precision_plan": {"method": "fp32"}, "speed": {"p50_ms": 1.5}},
    )

    assert isinstance(result, TritonEnsembleResult)
    assert result.ensemble_name == result.model_name == "tiny_ensemble"
    assert result.model_names == ("tiny", "tiny_tokenizer", "tiny_pooling", "tiny_ensemble")
    assert result.output_names == ("EMBEDDING",) and result.sequence_length == 16
    assert sorted(p.name for p in repository.iterdir()) == [
        "README.md",
        "provenance.json",
        "tiny",
        "tiny_ensemble",
        "tiny_pooling",
        "tiny_tokenizer",
    ]
    tokenizer_dir = repository / "tiny_tokenizer" / "1"
    assert (tokenizer_dir / "tokenizer.json").read_bytes() == (tiny_model_dir("bert") / "tokenizer.json").read_bytes()
    assert (tokenizer_dir / "model.py").is_file() and (repository / "tiny_pooling" / "1" / "model.py").is_file()
    assert (repository / "tiny" / "1" / "model.onnx").read_bytes() == tiny_bert_onnx.read_bytes()
    assert (repository / "tiny_ensemble" / "1").is_dir()
    assert all(f.is_file() for f in result.files)

    configs = {}
    for _role, written in result.models.items():
        text = written.config_path.read_text()
        assert text == written.config_text
        configs[written.model_name] = parse_model_config(text)  # every config parses strictly
        assert configs[written.model_name].name == written.model_name
    model, tokenizer = configs["tiny"], configs["tiny_tokenizer"]
    pooling, ensemble = configs["tiny_pooling"], configs["tiny_ensemble"]
    check_ensemble(ensemble, configs)

    # the ONNX model keeps its dynamic batching
    assert list(model.dynamic_batching.preferred_batch_size) == [4, 8]
    assert model.dynamic_batching.max_queue_delay_microseconds == 500
    assert model.backend == "onnxruntime" and model.max_batch_size == 8
    # tokenizer: strings in, the model's int64 inputs out at a fixed length
    assert tokenizer.backend == "python" and tokenizer.max_batch_size == 8
    (text_input,) = tokenizer.input
    assert (text_input.name, pb2.DataType.Name(text_input.data_type), list(text_input.dims)) == (
        "TEXT",
        "TYPE_STRING",
        [1],
    )
    assert {o.name: (pb2.DataType.Name(o.data_type), list(o.dims)) for o in tokenizer.output} == {
        n: ("TYPE_INT64", [16]) for n in ("input_ids", "attention_mask", "token_type_ids")
    }
    assert tokenizer.parameters["sequence_length"].string_value == "16"
    assert tokenizer.parameters["pad_token"].string_value == "[PAD]"
    assert pb2.ModelInstanceGroup.Kind.Name(tokenizer.instance_group[0].kind) == "KIND_CPU"
    # pooling: token embeddings + mask -> normalised embedding
    assert [i.name for i in pooling.input] == ["last_hidden_state", "attention_mask"]
    assert [(o.name, list(o.dims)) for o in pooling.output] == [("EMBEDDING", [32])]
    assert pooling.parameters["normalize"].string_value == "true"
    # the ensemble wires TEXT -> tokenizer -> model -> pooling -> EMBEDDING
    assert ensemble.platform == "ensemble" and ensemble.max_batch_size == 8
    assert [(i.name, list(i.dims)) for i in ensemble.input] == [("TEXT", [1])]
    assert [(o.name, pb2.DataType.Name(o.data_type)) for o in ensemble.output] == [("EMBEDDING", "TYPE_FP32")]
    steps = ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps] == ["tiny_tokenizer", "tiny", "tiny_pooling"]
    assert dict(steps[1].input_map) == {n: n for n in ("input_ids", "attention_mask", "token_type_ids")}
    assert dict(steps[2].input_map) == {"last_hidden_state": "last_hidden_state", "attention_mask": "attention_mask"}
    assert dict(steps[2].output_map) == {"EMBEDDING": "EMBEDDING"}

    record = json.loads(result.provenance.read_text())
    assert record["ensemble"] == "tiny_ensemble" and record["sequence_length"] == 16
    assert record["precision_plan"] == {"method": "fp32"} and record["speed"] == {"p50_ms": 1.5}
    assert record["source_model"] == "tiny-bert"
    assert record["libraries"]["onnx"] and record["hardware"]["cpu_count"] >= 1
    assert len(record["onnx_model"]["sha256"]) == 64
    readme = result.readme.read_text()
    assert "tiny_ensemble" in readme and "tritonserver --model-repository" in readme and "`speed`" in readme
    assert result.to_dict()["models"]["tokenizer"]["model_name"] == "tiny_tokenizer"
    assert "tiny_pooling" in result._repr_html_()


def test_ensemble_without_pooling_returns_the_model_outputs(tiny_bert_onnx, tiny_model_dir, tmp_path):
    config = TritonConfig(model_name="raw", warmup=True)
    result = _ensemble(
        tiny_bert_onnx, tiny_model_dir, tmp_path / "repo", postprocess=False, config=config, sequence_length=24
    )
    assert sorted(result.models) == ["ensemble", "model", "tokenizer"]
    assert not (tmp_path / "repo" / "raw_pooling").exists()
    assert result.output_names == ("last_hidden_state",)
    tokenizer = parse_model_config(result.models["tokenizer"].config_text)
    model = parse_model_config(result.models["model"].config_text)
    # warmup samples use the ensemble's sequence length, not warmup_sequence_length
    assert {list(w.inputs["input_ids"].dims)[0] for w in model.model_warmup} == {24}
    # the tokenizer gets none: Triton's zero-data text samples are empty texts, which it refuses
    assert not tokenizer.model_warmup


def test_ensemble_refuses_existing_entries_before_writing(tiny_bert_onnx, tiny_model_dir, tmp_path):
    repository = tmp_path / "repo"
    repository.mkdir()
    (repository / "README.md").write_text("somebody else's notes")
    before = _snapshot(repository)
    with pytest.raises(TritonExportError, match="README.md") as info:
        _ensemble(tiny_bert_onnx, tiny_model_dir, repository)
    assert "overwrite=True" in info.value.fix
    assert _snapshot(repository) == before

    (repository / "README.md").unlink()
    first = _ensemble(tiny_bert_onnx, tiny_model_dir, repository)
    before = _snapshot(repository)
    with pytest.raises(TritonExportError, match="already exist"):
        _ensemble(tiny_bert_onnx, tiny_model_dir, repository, sequence_length=20)
    assert _snapshot(repository) == before

    again = _ensemble(tiny_bert_onnx, tiny_model_dir, repository, sequence_length=20, overwrite=True)
    assert again.sequence_length == 20 and first.sequence_length == 16
    assert 'string_value: "20"' in (repository / "tiny_tokenizer" / "config.pbtxt").read_text()
    assert not [p for p in repository.iterdir() if p.name.startswith(".")]


def test_ensemble_failure_while_moving_into_place_restores_the_old_repository(
    tiny_bert_onnx, tiny_model_dir, tmp_path, monkeypatch
):
    import workbench.triton.writer as stage

    repository = tmp_path / "repo"
    _ensemble(tiny_bert_onnx, tiny_model_dir, repository)
    before = _snapshot(repository)
    real_rename, calls = stage.os.rename, []

    def failing_rename(source, target):
        calls.append(target)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_rename(source, target)

    monkeypatch.setattr(stage.os, "rename", failing_rename)
    with pytest.raises(TritonExportError, match="No space left"):
        _ensemble(tiny_bert_onnx, tiny_model_dir, repository, sequence_length=20, overwrite=True)
    monkeypatch.undo()
    assert len(calls) == 3
    assert _snapshot(repository) == before  # the two entries already moved were put back, nothing left over

    fresh = tmp_path / "fresh"
    monkeypatch.setattr(stage.os, "rename", lambda s, t: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(TritonExportError):
        _ensemble(tiny_bert_onnx, tiny_model_dir, fresh)
    assert not fresh.exists()


def test_ensemble_rejects_bad_arguments_without_writing(tiny_bert_onnx, tiny_model_dir, tmp_path):
    repository = tmp_path / "repo"
    with pytest.raises(ConfigError):
        _ensemble(tiny_bert_onnx, tiny_model_dir, repository, sequence_length=1)
    with pytest.raises(ConfigError):
        _ensemble(tiny_bert_onnx, tiny_model_dir, repository, postprocess="yes")
    with pytest.raises(ConfigError, match="libraries"):
        _ensemble(tiny_bert_onnx, tiny_model_dir, repository, provenance={"libraries": {}})
    with pytest.raises(ConfigError, match="object"):
        _ensemble(tiny_bert_onnx, tiny_model_dir, repository, provenance={"speed": object()})
    with pytest.raises(TritonExportError, match="no output"):
        _ensemble(tiny_bert_onnx, tiny_model_dir, repository, task="text-classification")  # no logits to label
    with pytest.raises(TritonExportError, match="There is no task 'pooled'"):
        _ensemble(tiny_bert_onnx, tiny_model_dir, repository, task="pooled")
    with pytest.raises(ModelSourceError, match="does not exist"):
        export_triton_ensemble(tiny_bert_onnx, repository, tmp_path / "no_tokenizer", sequence_length=16)
    # names: the derived model names are validated too
    with pytest.raises(ConfigError):
        _ensemble(tiny_bert_onnx, tiny_model_dir, repository, config=TritonConfig(model_name="m" * 195))
    assert ensemble_model_names("m", post_suffix=None) == {
        "model": "m",
        "tokenizer": "m_tokenizer",
        "ensemble": "m_ensemble",
    }
    assert not repository.exists()


def test_ensemble_rejects_inputs_a_tokenizer_cannot_produce(tiny_model_dir, tmp_path):
    onnx_path = _token_model(tmp_path / "tokens.onnx")  # takes a bool 'flags' input
    with pytest.raises(TritonExportError, match="'flags'") as info:
        export_triton_ensemble(
            onnx_path, tmp_path / "repo", tiny_model_dir("bert"), sequence_length=16, postprocess=False
        )
    assert "export_triton()" in info.value.fix
    assert not (tmp_path / "repo").exists()


def test_ensemble_refuses_a_tokenizer_the_server_would_apply_differently(
    tiny_bert_onnx, tiny_model_dir, tmp_path, monkeypatch
):
    from workbench.triton.python_models import tokenizer_model

    real_encode = tokenizer_model.encode

    def off_by_one(tokenizer, texts, dtypes):
        arrays = real_encode(tokenizer, texts, dtypes)
        arrays["input_ids"] = arrays["input_ids"] + 1
        return arrays

    monkeypatch.setattr(tokenizer_model, "encode", off_by_one)
    with pytest.raises(TritonExportError, match=r"different \['input_ids'\]"):
        _ensemble(tiny_bert_onnx, tiny_model_dir, tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_check_ensemble_reports_wiring_mistakes(tiny_bert_onnx, tiny_model_dir, tmp_path):
    result = _ensemble(tiny_bert_onnx, tiny_model_dir, tmp_path / "repo")
    configs = {r.model_name: parse_model_config(r.config_text) for r in result.models.values()}
    ensemble = configs["tiny_ensemble"]
    tokenize = ensemble.ensemble_scheduling.step[0]
    tokenize.output_map["IDZ"] = tokenize.output_map.pop("input_ids")
    ensemble.ensemble_scheduling.step[2].model_name = "tiny_pool"
    with pytest.raises(TritonExportError) as info:
        check_ensemble(ensemble, configs)
    message = str(info.value)
    assert "'IDZ', which the model does not have" in message
    assert "'input_ids', which no earlier step or ensemble input provides" in message
    assert "'tiny_pool'" in message and "EMBEDDING" in message


# --------------------------------------------------------------------------------- Python-backend models


def test_pooling_model_is_the_workbench_pooling():
    np = pytest.importorskip("numpy")
    from workbench.stages.accuracy.compare import mean_pooled_embeddings
    from workbench.triton.python_models.pooling_model import mean_pool

    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(3, 7, 5)).astype(np.float32)
    mask = np.array([[1] * 7, [1, 1, 1, 0, 0, 0, 0], [0] * 7], dtype=np.int64)
    np.testing.assert_array_equal(mean_pool(hidden, mask), mean_pooled_embeddings(hidden, mask))
    raw = mean_pool(hidden, mask, normalize=False)
    np.testing.assert_allclose(raw[1], hidden[1, :3].astype(np.float64).mean(axis=0))


def test_onnxruntime_backend_checks_config_against_the_graph(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from workbench.triton.python_models.onnxruntime_model import check_io

    onnx_path = _token_model(tmp_path / "tokens.onnx")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    good = {
        "input": [{"name": "input_ids", "data_type": "TYPE_INT64"}, {"name": "flags", "data_type": "TYPE_BOOL"}],
        "output": [{"name": "embeddings", "data_type": "TYPE_FP32"}],
    }
    assert check_io(good, session) == []
    bad = {
        "input": [{"name": "input_idz", "data_type": "TYPE_INT64"}, {"name": "flags", "data_type": "TYPE_INT32"}],
        "output": [{"name": "embeddings", "data_type": "TYPE_FP32"}],
    }
    problems = " ".join(check_io(bad, session))
    assert "'input_idz' is not a graph input" in problems
    assert "TYPE_INT32 but the graph has tensor(bool)" in problems
    assert "graph inputs ['input_ids'] are not in the config" in problems


def test_missing_pytriton_names_the_triton_extra(tmp_path, monkeypatch):
    pytest.importorskip("tritonclient.http")
    import workbench.triton.server as server_module
    from workbench.errors import MissingDependency

    monkeypatch.setattr(server_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(MissingDependency) as info:
        server_module.TritonServer(tmp_path).start()
    assert "nvidia-pytriton" in str(info.value) and "[triton]" in info.value.fix


def test_importing_the_server_module_stays_light():
    code = (
        "import sys, workbench.triton.server, workbench.triton.python_models\n"
        "heavy = [m for m in ('onnx', 'tritonclient', 'google.protobuf', 'torch', 'onnxruntime', 'numpy')"
        " if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ensemble_follows_int32_model_inputs(tiny_model_dir, tmp_path):
    pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["input_ids", "attention_mask"], ["masked"]),
            helper.make_node("Cast", ["masked"], ["as_float"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["as_float", "axes"], ["token_vectors"]),
        ],
        "int32_inputs",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT32, ["batch", "sequence"]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT32, ["batch", "sequence"]),
        ],
        [helper.make_tensor_value_info("token_vectors", TensorProto.FLOAT, ["batch", "sequence", 1])],
        initializer=[helper.make_tensor("axes", TensorProto.INT64, [1], [2])],
    )
    onnx_path = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "i32.onnx")

    from workbench.triton.padding import PaddingPolicy

    result = export_triton_ensemble(
        onnx_path,
        tmp_path / "repo",
        tiny_model_dir("bert"),
        TritonConfig(model_name="i32"),
        sequence_length=8,
        padding=PaddingPolicy.fixed(8),
    )
    tokenizer = parse_model_config(result.models["tokenizer"].config_text)
    pooling = parse_model_config(result.models["pooling"].config_text)
    assert {o.name: pb2.DataType.Name(o.data_type) for o in tokenizer.output} == {
        "input_ids": "TYPE_INT32",
        "attention_mask": "TYPE_INT32",
    }
    assert [(i.name, pb2.DataType.Name(i.data_type)) for i in pooling.input] == [
        ("token_vectors", "TYPE_FP32"),
        ("attention_mask", "TYPE_INT32"),
    ]
    assert [list(o.dims) for o in pooling.output] == [[1]]


def test_tensorrt_engine_export_writes_a_tensorrt_plan_model(tmp_path):
    """A .plan cannot be loaded here (no TensorRT, no GPU): its config and files are what can be checked."""
    from workbench.triton.model import export_triton_engine

    onnx_path = _token_model(tmp_path / "m.onnx")
    engine = tmp_path / "m.plan"
    engine.write_bytes(b"not a real engine, but the bytes must be copied as they are")
    result = export_triton_engine(engine, onnx_path, tmp_path / "repo", TritonConfig.preset("gpu", model_name="trt"))
    config = parse_model_config((tmp_path / "repo" / "trt" / "config.pbtxt").read_text())
    assert (config.platform, config.backend, config.default_model_filename) == (
        "tensorrt_plan",
        "tensorrt",
        "model.plan",
    )
    assert [i.name for i in config.input] == ["input_ids", "flags"] and config.max_batch_size > 0
    assert config.instance_group[0].kind == config.instance_group[0].KIND_GPU
    assert (tmp_path / "repo" / "trt" / "1" / "model.plan").read_bytes() == engine.read_bytes()
    assert result.model_name == "trt"
    before = sorted(p.name for p in (tmp_path / "repo" / "trt").rglob("*"))
    with pytest.raises(TritonExportError, match="already exists"):
        export_triton_engine(engine, onnx_path, tmp_path / "repo", TritonConfig.preset("gpu", model_name="trt"))
    assert sorted(p.name for p in (tmp_path / "repo" / "trt").rglob("*")) == before
    with pytest.raises(TritonExportError, match="does not exist or is empty"):
        export_triton_engine(tmp_path / "missing.plan", onnx_path, tmp_path / "repo2")
    assert not (tmp_path / "repo2").exists()
