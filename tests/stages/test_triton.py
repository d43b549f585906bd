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
from workbench.stages.triton import (  # noqa: E402
    TritonConfig,
    TritonExportResult,
    export_triton,
    model_config_from_onnx,
    parse_model_config,
    render_model_config,
)


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
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))
    }


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
        "import sys, workbench.stages.triton\n"
        "heavy = [m for m in ('onnx', 'tritonclient', 'google.protobuf', 'torch', 'onnxruntime') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
