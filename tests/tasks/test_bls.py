"""BLS front models without a server: the served pure functions answer every evaluation input as the library does,
and export_triton_bls writes complete, strictly parsed repositories (or nothing) after proving that agreement."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
pytest.importorskip("tritonclient.grpc.model_config_pb2")
pytest.importorskip("onnxruntime")

from workbench.data import load_sentence_splits
from workbench.engines.onnxruntime import OnnxRuntimeRunner
from workbench.errors import TritonExportError
from workbench.tasks.base import get_task
from workbench.triton import bls
from workbench.triton.bls import export_triton_bls
from workbench.triton.config import TritonConfig, parse_model_config
from workbench.triton.python_models import FOLDER

NER, QA = "token-classification", "question-answering"


def _served(source: str):
    spec = importlib.util.spec_from_file_location(f"served_{source[:-3]}", FOLDER / source)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _front_parameters(task, tokenizer, folder, onnx_path, sequence_length, runner):
    config = json.loads((folder / "config.json").read_text())
    dims = {"logits": (-1, len(config.get("id2label") or {}))}
    front = task.front_model(
        model_config=config, output_names=tuple(task.outputs), output_dims=dims, sequence_length=sequence_length
    )
    plan = bls._load_tokenizer(folder, task)
    engine_inputs = [[name, "TYPE_INT64"] for name in runner.input_specs()]
    return (
        front,
        plan,
        {
            **plan.parameters,
            "sequence_length": str(sequence_length),
            "engine_model": "m",
            "engine_inputs": json.dumps(engine_inputs),
            "engine_max_batch": "8",
            **dict(front.parameters),
        },
        config,
    )


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_served_entities_are_the_librarys_for_every_evaluation_sentence(kind, tiny_head, tiny_head_onnx, tmp_path):
    folder, path = tiny_head(kind, NER), tiny_head_onnx(kind, NER)
    task = get_task(NER)
    module = _served(
        task.front_model(model_config={}, output_names=(), output_dims={"logits": (-1, 9)}, sequence_length=64).source
    )
    texts = list(load_sentence_splits().evaluation)
    with OnnxRuntimeRunner(path) as runner:
        _, plan, parameters, config = _front_parameters(task, None, folder, path, 64, runner)
        (tmp_path / "tokenizer.json").write_text(plan.json_text, encoding="utf-8")
        served_tokenizer = module.tokenizer_from(tmp_path / "tokenizer.json", parameters)
        for strategy in ("none", "simple", "first", "average", "max"):
            chosen = {**parameters, "aggregation_strategy": strategy}
            served = module.run(served_tokenizer, texts, runner.infer, chosen)
            expected = task.served_outputs(
                plan.tokenizer,
                texts,
                runner.infer,
                sequence_length=64,
                input_names=list(runner.input_specs()),
                model_config=config,
                parameters=chosen,
            )
            assert bls._differences(expected, served) == [], strategy
    assert sum(len(e) for e in expected) > len(texts)  # entities were found and compared


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_served_answers_are_the_librarys_for_every_evaluation_pair(kind, tiny_head, tiny_head_onnx, tmp_path):
    folder, path = tiny_head(kind, QA), tiny_head_onnx(kind, QA)
    task = get_task(QA)
    pairs = [(e.question, e.context) for e in task.load_samples(None).evaluation]
    with OnnxRuntimeRunner(path) as runner:
        front, plan, parameters, config = _front_parameters(task, None, folder, path, 128, runner)
        module = _served(front.source)
        (tmp_path / "tokenizer.json").write_text(plan.json_text, encoding="utf-8")
        served_tokenizer = module.tokenizer_from(tmp_path / "tokenizer.json", parameters)
        served = module.run(served_tokenizer, pairs, runner.infer, parameters)
        expected = task.served_outputs(
            plan.tokenizer,
            pairs,
            runner.infer,
            sequence_length=128,
            input_names=list(runner.input_specs()),
            model_config=config,
            parameters=parameters,
        )
    assert len(served) == len(pairs)
    assert bls._differences(expected, served) == []
    windows = [len(module.windows_of(served_tokenizer, q, c)) for q, c in pairs]
    assert max(windows) >= 4  # long contexts were windowed


def test_export_writes_the_engine_and_its_front_model(tiny_head, tiny_head_onnx, tmp_path):
    folder, path = tiny_head("bert", NER), tiny_head_onnx("bert", NER)
    result = export_triton_bls(
        path,
        tmp_path / "repo",
        folder,
        TritonConfig(model_name="ner", max_batch_size=4),
        task=NER,
        sequence_length=64,
        provenance={"source_model": "tiny"},
    )
    assert result.front_name == "ner_ner" and result.model_names == ("ner", "ner_ner")
    assert result.input_names == ("TEXT",) and result.output_names == ("ENTITIES",)
    assert result.checked == len(
        get_task(NER)
        .front_model(model_config={}, output_names=(), output_dims={"logits": (-1, 9)}, sequence_length=64)
        .check_samples
    )
    front_dir = tmp_path / "repo" / "ner_ner"
    cfg = parse_model_config((front_dir / "config.pbtxt").read_text())
    assert cfg.backend == "python" and cfg.max_batch_size == 4 and not cfg.model_warmup
    parameters = {k: v.string_value for k, v in cfg.parameters.items()}
    assert parameters["engine_model"] == "ner" and parameters["sequence_length"] == "64"
    assert json.loads(parameters["labels"])[:3] == ["O", "B-PER", "I-PER"]
    assert json.loads(parameters["engine_inputs"]) == [
        ["input_ids", "TYPE_INT64"],
        ["token_type_ids", "TYPE_INT64"],
        ["attention_mask", "TYPE_INT64"],
    ] or sorted(n for n, _ in json.loads(parameters["engine_inputs"])) == [
        "attention_mask",
        "input_ids",
        "token_type_ids",
    ]
    assert (front_dir / "1" / "model.py").read_text() == (FOLDER / "token_classification_model.py").read_text()
    assert (front_dir / "1" / "tokenizer.json").is_file()
    engine = parse_model_config((tmp_path / "repo" / "ner" / "config.pbtxt").read_text())
    assert engine.backend == "onnxruntime" and [o.name for o in engine.output] == ["logits"]
    provenance = json.loads(result.provenance.read_text())
    assert provenance["task"] == NER and provenance["source_model"] == "tiny"
    assert "ner_ner" in result.readme.read_text() and all(f.is_file() for f in result.files)


def test_export_refuses_a_served_model_that_answers_differently(tiny_head, tiny_head_onnx, tmp_path, monkeypatch):
    folder, path = tiny_head("bert", QA), tiny_head_onnx("bert", QA)
    real = bls._served_module

    def off_by_one(source):
        module = real(source)
        run = module.run

        def shifted(*args):
            return [{**a, "start": a["start"] + 1} for a in run(*args)]

        module.run = shifted
        return module

    monkeypatch.setattr(bls, "_served_module", off_by_one)
    with pytest.raises(TritonExportError, match=r"would not answer as the workbench measured: answers\[0\]\.start"):
        export_triton_bls(path, tmp_path / "repo", folder, TritonConfig(model_name="qa"), task=QA, sequence_length=64)
    assert not (tmp_path / "repo").exists()  # nothing written


def test_export_refuses_what_it_cannot_serve(tiny_head, tiny_head_onnx, tiny_bert_onnx, tiny_model_dir, tmp_path):
    with pytest.raises(TritonExportError, match="served as an ensemble"):
        export_triton_bls(
            tiny_bert_onnx, tmp_path / "repo", tiny_model_dir("bert"), task="feature-extraction", sequence_length=32
        )
    with pytest.raises(TritonExportError, match="no outputs"):  # a token-classification export of a QA model
        export_triton_bls(
            tiny_head_onnx("bert", QA),
            tmp_path / "repo",
            tiny_head("bert", QA),
            task=NER,
            sequence_length=32,
            model_config={"id2label": {"0": "O"}},
        )
    folder, path = tiny_head("bert", NER), tiny_head_onnx("bert", NER)
    export_triton_bls(path, tmp_path / "repo", folder, TritonConfig(model_name="ner"), task=NER, sequence_length=32)
    before = sorted(p.relative_to(tmp_path) for p in (tmp_path / "repo").rglob("*"))
    with pytest.raises(TritonExportError, match="already exist"):
        export_triton_bls(path, tmp_path / "repo", folder, TritonConfig(model_name="ner"), task=NER, sequence_length=32)
    assert sorted(p.relative_to(tmp_path) for p in (tmp_path / "repo").rglob("*")) == before
    again = export_triton_bls(
        path, tmp_path / "repo", folder, TritonConfig(model_name="ner"), task=NER, sequence_length=48, overwrite=True
    )
    assert parse_model_config(again.models["front"].config_text).parameters["sequence_length"].string_value == "48"


def test_served_decoding_errors_are_per_input(tiny_head, tmp_path):
    """Bad inputs raise in the pure functions, which the model turns into that request's own error."""
    task = get_task(QA)
    module = _served("question_answering_model.py")
    plan = bls._load_tokenizer(tiny_head("bert", QA), task)
    (tmp_path / "tokenizer.json").write_text(plan.json_text, encoding="utf-8")
    tokenizer = module.tokenizer_from(tmp_path / "tokenizer.json", {"sequence_length": "64", "stride": "32"})
    with pytest.raises(ValueError, match="question is empty"):
        module.windows_of(tokenizer, " ", "Ada wrote it.")
    with pytest.raises(ValueError, match="not UTF-8"):
        module._text(b"\xff\xfe")
    ner = _served("token_classification_model.py")
    with pytest.raises(ValueError, match="not UTF-8"):
        ner.texts_of([b"ok", b"\xc3"])
    with pytest.raises(ValueError, match="text 1 is empty"):
        ner.texts_of([b"ok", "  "])
    assert np.array_equal(ner._softmax(np.zeros((2, 3), np.float16)).sum(axis=-1), [1.0, 1.0])
