"""Model sources: what load_model accepts, and the errors it gives for what it cannot use."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from workbench.errors import ModelSourceError, WorkbenchError
from workbench.models import HFModelSource, ModuleSource, OnnxSource, bundled_model_path, load_model

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def _small_onnx_model(size: int = 64):
    weights = numpy_helper.from_array(np.arange(size, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])],
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _write_onnx(path: Path) -> Path:
    onnx.save_model(_small_onnx_model(), str(path))
    return path


def _assert_explained(error: ModelSourceError, *fragments: str) -> str:
    message = str(error)
    assert isinstance(error, WorkbenchError)
    assert "Fix:" in message
    assert error.fix
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


# --- errors -------------------------------------------------------------------------------------------------


def test_unknown_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelSourceError) as info:
        load_model("no/such/model")
    message = _assert_explained(info.value, "no/such/model", "does not exist")
    assert "download" in message  # how to get a hub model: download once, then pass the folder
    assert not (tmp_path / "no").exists()


def test_hub_like_id_says_nothing_is_downloaded(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelSourceError) as info:
        load_model("sentence-transformers/all-MiniLM-L6-v2")
    message = _assert_explained(info.value, "does not exist", "never downloads", "huggingface-cli download")
    assert "sentence-transformers/all-MiniLM-L6-v2" in message


def test_unknown_absolute_path(tmp_path):
    missing = tmp_path / "missing-model"
    with pytest.raises(ModelSourceError) as info:
        load_model(missing)
    _assert_explained(info.value, str(missing), "does not exist")


def test_folder_without_model(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing to see")
    with pytest.raises(ModelSourceError) as info:
        load_model(tmp_path)
    _assert_explained(info.value, str(tmp_path), "holds no model", "config.json")


def test_folder_with_config_but_no_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ModelSourceError) as info:
        load_model(tmp_path)
    _assert_explained(info.value, "config.json", "no weights", "model.safetensors", "save_pretrained")


def test_truncated_onnx_file(tmp_path):
    data = _small_onnx_model().SerializeToString()
    path = tmp_path / "model.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelSourceError) as info:
        load_model(path)
    _assert_explained(info.value, str(path), "truncated")
    # the same file found through its folder
    with pytest.raises(ModelSourceError):
        load_model(tmp_path)


def test_garbage_onnx_file(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"this is not an onnx model at all")
    with pytest.raises(ModelSourceError) as info:
        load_model(path)
    _assert_explained(info.value, str(path))


def test_onnx_file_with_empty_graph(tmp_path):
    graph = helper.make_graph([], "empty", [], [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "empty.onnx"
    onnx.save_model(model, str(path))
    with pytest.raises(ModelSourceError) as info:
        load_model(path)
    _assert_explained(info.value, str(path), "0 nodes")


def test_non_onnx_file(tmp_path):
    path = tmp_path / "weights.txt"
    path.write_text("hello")
    with pytest.raises(ModelSourceError) as info:
        load_model(path)
    _assert_explained(info.value, str(path), "not an .onnx model")


@pytest.mark.parametrize("argument", [123, 1.5, ["model.onnx"], object()], ids=lambda a: type(a).__name__)
def test_non_path_argument(argument):
    with pytest.raises(ModelSourceError) as info:
        load_model(argument)
    _assert_explained(info.value, type(argument).__name__, "ModuleSource")


def test_module_source_needs_example_inputs():
    with pytest.raises(ModelSourceError) as info:
        ModuleSource(module=object(), example_inputs={})
    _assert_explained(info.value, "example input")


def test_module_source_without_tokenizer():
    source = ModuleSource(module=object(), example_inputs={"x": np.zeros(2)}, name="toy")
    assert source.load_module() is source.module
    with pytest.raises(ModelSourceError) as info:
        source.load_tokenizer()
    _assert_explained(info.value, "'toy'", "tokenizer")


# --- sources that load ---------------------------------------------------------------------------------------


def test_bundled_model():
    source = load_model()
    assert isinstance(source, HFModelSource)
    assert source.path == bundled_model_path()
    assert (source.path / "config.json").is_file()
    assert source.model_type == "bert"
    assert source.num_heads == 12
    assert source.hidden_size == 384
    assert source.task.name == "feature-extraction" and source.output_names == ("last_hidden_state",)
    assert source.output_names == ("last_hidden_state",)
    assert source.attn_implementation == "eager"
    assert load_model(attn_implementation="sdpa").attn_implementation == "sdpa"


def test_tiny_models_load(tiny_model_dir, tiny_kind):
    folder = tiny_model_dir(tiny_kind)
    for path in (folder, str(folder)):
        source = load_model(path)
        assert isinstance(source, HFModelSource)
        assert source.path == Path(folder)
    assert source.model_type == tiny_kind
    # distilbert names these n_heads / dim in its config.json
    assert source.num_heads == 4
    assert source.hidden_size == 32
    assert source.name == Path(folder).name
    tokenizer = source.load_tokenizer()
    encoded = tokenizer(["hello world"], return_tensors="np")
    assert encoded["input_ids"].shape[0] == 1
    assert encoded["input_ids"].shape[1] >= 3  # [CLS] hello world [SEP]


def test_tiny_bert_module_loads_in_eval_mode(tiny_model_dir):
    module = load_model(tiny_model_dir("bert")).load_module()
    assert module.training is False
    assert module.config.hidden_size == 32


def test_corrupt_weights_are_a_model_source_error(tiny_model_dir, tmp_path):
    import shutil

    folder = tmp_path / "corrupt"
    shutil.copytree(tiny_model_dir("bert"), folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # an interrupted copy
    source = load_model(folder)
    with pytest.raises(ModelSourceError) as info:
        source.load_module()
    _assert_explained(info.value, str(folder))


def test_classifier_checkpoint_is_sequence_classification(tmp_path):
    config = {
        "model_type": "bert",
        "architectures": ["BertForSequenceClassification"],
        "num_attention_heads": 2,
        "hidden_size": 8,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "model.safetensors").write_bytes(b"")
    source = load_model(tmp_path)
    assert isinstance(source, HFModelSource)
    assert source.task.name == "text-classification" and source.output_names == ("logits",)
    assert source.output_names == ("logits",)
    assert (source.num_heads, source.hidden_size) == (2, 8)


def test_onnx_file(tmp_path):
    path = _write_onnx(tmp_path / "small.onnx")
    source = load_model(path)
    assert isinstance(source, OnnxSource)
    assert source.path == path
    assert source.tokenizer_path is None
    assert source.name == "small"


def test_folder_with_model_onnx(tmp_path):
    path = _write_onnx(tmp_path / "model.onnx")
    source = load_model(tmp_path)
    assert isinstance(source, OnnxSource)
    assert source.path == path


def test_onnx_without_tokenizer_files(tmp_path):
    source = load_model(_write_onnx(tmp_path / "model.onnx"))
    with pytest.raises(ModelSourceError) as info:
        source.load_tokenizer()
    _assert_explained(info.value, "tokenizer", "tokenizer_path")


def test_onnx_with_tokenizer_path(tmp_path, tiny_model_dir):
    path = _write_onnx(tmp_path / "model.onnx")
    source = load_model(path, tokenizer_path=tiny_model_dir("bert"))
    assert isinstance(source, OnnxSource)
    assert source.tokenizer_path == tiny_model_dir("bert")
    tokenizer = source.load_tokenizer()
    assert tokenizer(["hi"])["input_ids"][0][0] == tokenizer.cls_token_id


def test_onnx_with_tokenizer_beside_it(tmp_path, tiny_model_dir):
    import shutil

    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (tiny_model_dir("bert") / name).exists():
            shutil.copy(tiny_model_dir("bert") / name, tmp_path / name)
    source = load_model(_write_onnx(tmp_path / "model.onnx"))
    assert source.load_tokenizer()(["hi"])["input_ids"]
