"""Token classification: decoding equals transformers' TokenClassificationPipeline for every aggregation strategy
on tiny BERT, DistilBERT, RoBERTa (byte-level BPE) and ELECTRA models; the metrics and the budget judge a damaged
candidate by the failing metric; bad input is refused with the fix."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from tests.tasks.tiny_heads import KINDS, NER_LABELS, damage_head
from workbench.data import load_sentence_splits
from workbench.errors import ConfigError, DataError, ModelSourceError
from workbench.tasks.base import detect_task, get_task, tasks
from workbench.tasks.token_classification import (
    AGGREGATION_STRATEGIES,
    Entity,
    TokenClassificationBudget,
    span_scores,
)

HEAD = "token-classification"
#: Texts beyond the bundled sentences: accents, emoji, hyphens, apostrophes, runs of whitespace, one character.
EXTRA_TEXTS = [
    "Ünïcödé café naïve São Paulo 🙂",
    "Microsoft-Azure's CEO, Satya Nadella, visited New York.",
    "x",
    "a  b\tc   d",
    "e-mail bob@example.com or call +44 20 7946 0958 before 09:30!",
]


@pytest.fixture(scope="module")
def texts() -> list[str]:
    splits = load_sentence_splits()
    return list(splits.evaluation) + EXTRA_TEXTS


def _plain(entities):
    return [
        {k: (float(v) if k == "score" else int(v) if k in ("index", "start", "end") else v) for k, v in e.items()}
        for e in entities
    ]


def test_the_task_is_registered_and_detected():
    task = get_task(HEAD)
    assert HEAD in tasks() and task.outputs == ("logits",) and task.auto_model == "AutoModelForTokenClassification"
    assert detect_task({"architectures": ["DistilBertForTokenClassification"]}) is task
    assert task.primary_cosine == ("logits_cosine_mean", "logits_cosine_min")
    assert set(task.primary_cosine) <= set(task.metric_names)


@pytest.mark.parametrize("kind", KINDS)
def test_decoding_is_the_pipelines_for_every_strategy(kind, tiny_head, texts):
    """The real TokenClassificationPipeline and the library decode the same logits into the same entities.

    The pipeline's own preprocess and forward run once per text, and its postprocess once per strategy (what
    `pipe(text, aggregation_strategy=s)` does, without running the model five times)."""
    from transformers.pipelines.token_classification import AggregationStrategy

    folder = tiny_head(kind, HEAD)
    task = get_task(HEAD)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.AutoModelForTokenClassification.from_pretrained(str(folder)).eval()
    pipe = transformers.pipeline(HEAD, model=model, tokenizer=tokenizer)
    encoded = task.encode(tokenizer, texts, batch_size=1, sequence_length=512, padding="longest")
    compared = 0
    for text, meta in zip(texts, encoded.meta):
        (model_inputs,) = list(pipe.preprocess(text, is_split_into_words=False))
        outputs = pipe.forward(model_inputs)
        logits = outputs["logits"][0].numpy()[None]
        for strategy in AGGREGATION_STRATEGIES:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the pipeline warns about its heuristic for non word-aware tokenizers
                expected = _plain(pipe.postprocess([outputs], aggregation_strategy=AggregationStrategy(strategy)))
            (found,) = task.decode({"logits": logits}, meta, strategy=strategy)
            mine = [e.to_dict() for e in found]
            assert [{k: v for k, v in e.items() if k != "score"} for e in mine] == [
                {k: v for k, v in e.items() if k != "score"} for e in expected
            ], (strategy, text)
            np.testing.assert_allclose([e["score"] for e in mine], [e["score"] for e in expected], rtol=1e-6)
            compared += len(mine)
    assert compared > 1000  # random heads label most tokens as entities: the comparison is not vacuous


def test_roberta_takes_the_pipelines_fallback_for_subwords(tiny_head):
    """Byte-level BPE marks no continuing sub-words, so the whitespace heuristic decides, as in the pipeline."""
    from workbench.tasks.token_classification import Vocabulary

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tiny_head("roberta", HEAD)))
    assert not Vocabulary.of(tokenizer).word_aware
    meta = get_task(HEAD).encode(tokenizer, ["Lovelace wrote programs"], batch_size=1, sequence_length=32).meta[0]
    pieces = meta.texts[0].pieces
    assert any(p.is_subword for p in pieces) and not pieces[0].is_subword
    assert all(p.is_subword == (p.start > 0 and "Lovelace wrote programs"[p.start - 1] != " ") for p in pieces)


def test_token_agreement_scores_first_subwords_only(tiny_head):
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tiny_head("bert", HEAD)))
    task = get_task(HEAD)
    encoded = task.encode(tokenizer, ["Tokenization unbelievably"], batch_size=1, sequence_length=16)
    text = encoded.meta[0].texts[0]
    ids = encoded.feeds[0]["input_ids"][0]
    words = tokenizer.convert_ids_to_tokens([int(ids[i]) for i in text.first_subwords])
    assert words and all(not w.startswith("##") for w in words)
    assert len(text.first_subwords) == 2 and text.length > len(text.first_subwords) + 2  # 2 words, sub-words
    # a disagreement on a continuing sub-word is not counted; one on a first sub-word is
    labels = len(NER_LABELS)
    reference = np.zeros((1, 16, labels), np.float32)
    reference[..., 1] = 1.0
    continuing = next(i for i in range(1, text.length - 1) if i not in text.first_subwords)
    moved = reference.copy()
    moved[0, continuing] = np.roll(moved[0, continuing], 1)
    metrics = task.metrics([{"logits": reference}], [{"logits": moved}], encoded.feeds, encoded.meta).values
    assert metrics["token_agreement"] == 1.0
    moved[0, text.first_subwords[0]] = np.roll(moved[0, text.first_subwords[0]], 1)
    metrics = task.metrics([{"logits": reference}], [{"logits": moved}], encoded.feeds, encoded.meta).values
    assert metrics["token_agreement"] == 0.5


def test_span_scores():
    a, b, c = Entity("PER", 0.9, 0, 3, "ada"), Entity("LOC", 0.8, 10, 16, "london"), Entity("PER", 0.7, 4, 9, "x")
    assert span_scores([[a, b]], [[a, b]]) == {"precision": 1.0, "recall": 1.0, "f1": 1.0}
    half = span_scores([[a, b]], [[a, c]])
    assert half["precision"] == 0.5 and half["recall"] == 0.5 and half["f1"] == 0.5
    assert span_scores([[]], [[]])["f1"] == 1.0
    assert span_scores([[a]], [[]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    assert span_scores([[]], [[a]]) == {"precision": 0.0, "recall": 0.0, "f1": 0.0}
    moved = Entity("PER", 0.9, 0, 4, "ada ")  # same label, other characters: another entity
    assert span_scores([[a]], [[moved]])["f1"] == 0.0


@pytest.fixture(scope="module")
def bert_runs(tiny_head, tiny_head_onnx, texts, tmp_path_factory):
    """The tiny BERT's ONNX model and a copy with one weight scaled, run on the evaluation texts as served."""
    from workbench.engines.onnxruntime import OnnxRuntimeRunner

    folder, path = tiny_head("bert", HEAD), tiny_head_onnx("bert", HEAD)
    task = get_task(HEAD)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    with OnnxRuntimeRunner(path) as runner:
        encoded = task.encode(
            tokenizer, texts, batch_size=8, sequence_length=64, input_names=list(runner.input_specs())
        )
        reference = [runner.infer(f) for f in encoded.feeds]
    model = onnx.load(str(path))
    damage_head(model, len(NER_LABELS), factor=3.0, column=2)  # the classifier's I-PER column, tripled
    damaged_path = tmp_path_factory.mktemp("damaged-ner") / "damaged.onnx"
    onnx.save(model, str(damaged_path))
    with OnnxRuntimeRunner(damaged_path) as runner:
        damaged = [runner.infer(f) for f in encoded.feeds]
    return encoded, reference, damaged, path, damaged_path


def test_the_reference_meets_its_own_budget(bert_runs):
    encoded, reference, *_ = bert_runs
    task = get_task(HEAD)
    result = task.metrics(reference, reference, encoded.feeds, encoded.meta)
    assert result.values["token_agreement"] == 1.0 and result.values["span_f1"] == 1.0
    assert all(result.values[f"span_f1_{s}"] == 1.0 for s in AGGREGATION_STRATEGIES)
    assert result.values["logits_cosine_min"] == pytest.approx(1.0)
    assert len(result.per_sample) == sum(len(m.texts) for m in encoded.meta)
    assert TokenClassificationBudget().failures(result.values) == ()
    assert set(task.metric_names) <= set(result.values)


def test_a_damaged_candidate_is_rejected_naming_the_metric(bert_runs):
    encoded, reference, damaged, *_ = bert_runs
    task = get_task(HEAD)
    result = task.metrics(reference, damaged, encoded.feeds, encoded.meta)
    assert result.values["token_agreement"] < 0.99 and result.values["span_f1"] < 0.98
    failures = task.default_budget().failures(result.values)
    assert any(line.startswith("token agreement") for line in failures), failures
    assert any(line.startswith("entity span F1") for line in failures), failures
    assert result.details["disagreeing_samples"]["simple"]
    # a budget on one metric names only that one
    only_f1 = TokenClassificationBudget(token_agreement_min=None, span_f1_min=0.98)
    assert [line.split(" 0.")[0] for line in only_f1.failures(result.values)] == ["entity span F1"]


def test_budget_that_gates_nothing_is_refused():
    with pytest.raises(ConfigError, match="gates nothing"):
        TokenClassificationBudget(token_agreement_min=None, span_f1_min=None)
    assert TokenClassificationBudget.from_dict({"task": HEAD, "span_f1_min": 0.9}).span_f1_min == 0.9


def test_without_meta_only_cosines_are_measured_and_the_budget_misses(bert_runs):
    """A layer diagnosis calls metrics() with feeds only: it gets the logits cosines, and a budget on the decoded
    metrics reports them as not measured (never as a pass)."""
    encoded, reference, damaged, *_ = bert_runs
    task = get_task(HEAD)
    plain = task.metrics(reference, damaged, encoded.feeds).values
    full = task.metrics(reference, damaged, encoded.feeds, encoded.meta).values
    assert set(plain) == {"logits_cosine_mean", "logits_cosine_min"}
    assert plain["logits_cosine_mean"] < 1.0 and plain["logits_cosine_min"] <= full["logits_cosine_min"] + 1e-12
    assert any("was not measured" in line for line in task.default_budget().failures(plain))
    with pytest.raises(DataError, match="tokens of every batch"):
        task.metrics(reference, reference, encoded.feeds, [object()] * len(encoded.feeds))


def test_a_slow_tokenizer_is_refused_with_the_fix(tiny_head):
    from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy

    slow = BertTokenizerLegacy(vocab_file=str(_vocab_file(tiny_head("bert", HEAD))), model_max_length=512)
    assert not slow.is_fast
    with pytest.raises(ModelSourceError, match="fast tokenizer"):
        get_task(HEAD).check_tokenizer(slow, model_path="tiny")


def _vocab_file(folder: Path) -> Path:
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    path = folder.parent / "vocab-for-slow.txt"
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    path.write_text("\n".join(token for token, _ in vocab) + "\n", encoding="utf-8")
    return path


def test_labels_come_from_the_config_beside_the_tokenizer(tiny_head):
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tiny_head("bert", HEAD)))
    meta = get_task(HEAD).encode(tokenizer, ["Ada"], batch_size=1, sequence_length=8).meta[0]
    assert [meta.id2label[i] for i in range(len(NER_LABELS))] == list(NER_LABELS)


def test_the_accuracy_stage_rejects_the_damaged_candidate(bert_runs, tmp_path):
    """compare_candidates (the accuracy stage) judges by the task's metrics and budget: the undamaged copy
    passes, the damaged one fails with the metric named."""
    import shutil

    from workbench.stages.accuracy.compare import compare_candidates

    encoded, _, _, path, damaged_path = bert_runs
    copy = tmp_path / "copy.onnx"
    shutil.copyfile(path, copy)
    report = compare_candidates(path, {"copy": copy, "damaged": damaged_path}, encoded, task=HEAD)
    assert report.task == HEAD and bool(report["copy"]) and not bool(report["damaged"])
    assert report["copy"].cosine_min == pytest.approx(1.0)
    assert set(get_task(HEAD).metric_names) <= set(report["damaged"].task_metrics)
    first_gate = get_task(HEAD).default_budget().gates()[0].label
    assert any(line.startswith(first_gate) for line in report["damaged"].failures), report["damaged"].failures
    found = compare_candidates(path, {"damaged": damaged_path}, encoded)  # the task found from the outputs
    assert found.task == HEAD
