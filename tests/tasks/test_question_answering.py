"""Extractive question answering: windows and answers equal transformers' QuestionAnsweringPipeline (4.57, run in a
subprocess: transformers 5 removed it) on tiny BERT, DistilBERT, RoBERTa and ELECTRA models; the bundled
question-answering data is what data/README.md says; the metrics and the budget judge a damaged candidate by the
failing metric."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

transformers = pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")

from tests.tasks.conftest import REPOSITORY
from tests.tasks.tiny_heads import KINDS, damage_head
from workbench.errors import ConfigError, DataError
from workbench.tasks.base import detect_task, get_task
from workbench.tasks.question_answering import (
    QAExample,
    QuestionAnsweringBudget,
    answer_f1,
    doc_stride,
    read_examples,
)

HEAD = "question-answering"


@pytest.fixture(scope="module")
def samples():
    return get_task(HEAD).load_samples(None)


def _pairs(examples) -> list[tuple[str, str]]:
    return [(e.question, e.context) for e in examples]


# ----------------------------------------------------------------------------------------------- data


def test_bundled_data_is_as_documented(samples):
    from transformers import AutoTokenizer

    from workbench.models import bundled_model_path

    calibration, evaluation = samples.calibration, samples.evaluation
    assert len(calibration) + len(evaluation) >= 150 and len(evaluation) >= 100
    ids = [e.id for e in calibration + evaluation]
    assert len(set(ids)) == len(ids)
    assert not {e.context for e in calibration} & {e.context for e in evaluation}  # split by context
    for e in calibration + evaluation:
        assert e.context[e.answer_start : e.answer_start + len(e.answer)] == e.answer
    tokenizer = AutoTokenizer.from_pretrained(str(bundled_model_path()))
    task = get_task(HEAD)
    for split in (calibration, evaluation):
        long = {e.context for e in split if len(tokenizer(e.context)["input_ids"]) > 384}
        assert len(long) >= 3
        # gold answers that only a later window holds, with MiniLM's tokenizer at the pipeline's 384 / 128
        encoded = task.encode(tokenizer, list(split), batch_size=16, sequence_length=384)
        holders: dict[int, set[int]] = {}
        for batch in encoded.meta:
            for window in batch.windows:
                example = split[window.example]
                context = window.offsets[window.sequence_ids == 1]
                end = example.answer_start + len(example.answer)
                if context[0][0] <= example.answer_start and end <= context[-1][1]:
                    holders.setdefault(window.example, set()).add(window.window)
        assert len(holders) == len(split)
        assert sum(0 not in windows for windows in holders.values()) >= 4


def test_read_examples_refuses_bad_files(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(
        json.dumps({"question": "Who?", "context": "Ada wrote it.", "answer": "Bob", "answer_start": 0}) + "\n",
        encoding="utf-8",
    )
    with pytest.raises(DataError, match="not the context's text"):
        read_examples(path)
    path.write_text('{"question": "Who?"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="no context"):
        read_examples(path)
    path.write_text("not json\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 1 is not JSON"):
        read_examples(path)
    with pytest.raises(DataError, match="does not exist"):
        read_examples(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="does not exist"):
        get_task(HEAD).load_samples(str(tmp_path / "nowhere"))


def test_samples_can_be_pairs_dicts_or_examples(tiny_head):
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tiny_head("bert", HEAD)))
    task = get_task(HEAD)
    pair = ("Who wrote it?", "Ada wrote it.")
    forms = [pair, {"question": pair[0], "context": pair[1]}, QAExample(*pair)]
    feeds = [task.encode(tokenizer, [f], batch_size=1, sequence_length=32).feeds[0] for f in forms]
    assert all(np.array_equal(f["input_ids"], feeds[0]["input_ids"]) for f in feeds)
    with pytest.raises(DataError, match="empty question"):
        task.encode(tokenizer, [("", "Ada wrote it.")], batch_size=1, sequence_length=32)
    with pytest.raises(DataError, match="not a \\(question, context\\) pair"):
        task.encode(tokenizer, ["just a text"], batch_size=1, sequence_length=32)
    with pytest.raises(DataError, match="cannot be split into windows"):
        task.encode(tokenizer, [(" ".join(["why"] * 40), "Ada wrote it.")], batch_size=1, sequence_length=16)


def test_the_task_is_registered_and_detected():
    task = get_task(HEAD)
    assert task.outputs == ("start_logits", "end_logits") and task.default_sequence_length == 384
    assert detect_task({"architectures": ["ElectraForQuestionAnswering"]}) is task
    assert doc_stride(384) == 128 and doc_stride(128) == 64


# ----------------------------------------------------------------------------------------------- the real pipeline


#: (kind, sequence length, padding side) of every comparison with the pipeline: the pipeline's own 384 for each
#: architecture, shorter windows (many more of them) for two, and a tokenizer that pads on the left.
RUNS = [(k, 384, "right") for k in KINDS] + [("bert", 128, "right"), ("roberta", 128, "right"), ("bert", 96, "left")]


def _examples_for(run, samples):
    examples = list(samples.evaluation + samples.calibration)
    if run[1] != 384:  # many more windows: the long contexts and a sample of the short ones
        examples = [e for i, e in enumerate(examples) if len(e.context) > 2000 or i % 4 == 0]
    return examples


@pytest.fixture(scope="module")
def pipeline_runs(tiny_head, transformers4, samples, tmp_path_factory):
    """Every RUNS entry through transformers 4.57's pipeline, in one subprocess: run -> (pairs, its result)."""
    tmp = tmp_path_factory.mktemp("hf4")
    requests = []
    for kind, length, side in RUNS:
        requests.append(
            {
                "model": str(tiny_head(kind, HEAD)),
                "pairs": _pairs(_examples_for((kind, length), samples)),
                "max_seq_len": length,
                "doc_stride": doc_stride(length),
                "max_answer_len": 15,
                "padding_side": side,
            }
        )
    (tmp / "request.json").write_text(json.dumps({"runs": requests}), encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(transformers4), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(
        [
            sys.executable,
            str(REPOSITORY / "tests" / "tasks" / "hf4_reference.py"),
            str(tmp / "request.json"),
            str(tmp / "result.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
        cwd=str(tmp),
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp / "result.json").read_text(encoding="utf-8"))
    assert result["transformers"].startswith("4.")
    return {run: (request["pairs"], found) for run, request, found in zip(RUNS, requests, result["runs"])}


@pytest.mark.parametrize("run", RUNS, ids=[f"{k}-{n}-{s}" for k, n, s in RUNS])
def test_windows_and_answers_are_the_pipelines(run, tiny_head, pipeline_runs):
    """The pipeline's windows are the library's rows, and the library decodes the logits the pipeline's model
    returned into the pipeline's answers, for every bundled pair."""
    kind, length, side = run
    pairs, reference = pipeline_runs[run]
    task = get_task(HEAD)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tiny_head(kind, HEAD)))
    tokenizer.padding_side = side
    encoded = task.encode(tokenizer, pairs, batch_size=8, sequence_length=length)
    assert encoded.meta[0].context_sequence == (1 if side == "right" else 0)  # left padding: context first
    outputs = []
    for feed, batch in zip(encoded.feeds, encoded.meta):
        start = np.zeros(feed["input_ids"].shape, np.float32)
        end = np.zeros_like(start)
        for row, window in enumerate(batch.windows):
            seen = reference["windows"][window.example][window.window]
            span = slice(window.row_start, window.row_start + window.length)
            assert feed["input_ids"][row, span].tolist() == seen["input_ids"]
            assert feed["attention_mask"][row].sum() == window.length
            start[row, span], end[row, span] = seen["start"], seen["end"]
        outputs.append({"start_logits": start, "end_logits": end})
    assert sum(len(b.windows) for b in encoded.meta) == sum(len(w) for w in reference["windows"])
    answers = task.decode(outputs, encoded.meta)
    for answer, expected, pair in zip(answers, reference["answers"], pairs):
        assert (answer.start, answer.end, answer.answer) == (expected["start"], expected["end"], expected["answer"]), (
            pair[0]
        )
        assert answer.score == pytest.approx(expected["score"], rel=1e-6)
    assert sum(len(w) > 1 for w in reference["windows"]) >= 20  # windowing was exercised


# ----------------------------------------------------------------------------------------------- metrics


def test_answer_f1_is_squads():
    assert answer_f1("the Eiffel Tower", "Eiffel tower!") == 1.0
    # "in chloroplasts of leaf cells" (the article goes) against "chloroplasts": precision 1, recall 1/5
    assert answer_f1("in the chloroplasts of leaf cells", "chloroplasts") == pytest.approx(2 * 1 * 0.2 / 1.2)
    assert answer_f1("Paris", "London") == 0.0
    assert answer_f1("", "") == 1.0 and answer_f1("a", "Paris") == 0.0


@pytest.fixture(scope="module")
def bert_runs(tiny_head, tiny_head_onnx, samples, tmp_path_factory):
    """The tiny BERT QA model and a copy with one weight scaled, run on every evaluation window as served."""
    from workbench.engines.onnxruntime import OnnxRuntimeRunner

    folder, path = tiny_head("bert", HEAD), tiny_head_onnx("bert", HEAD)
    task = get_task(HEAD)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    with OnnxRuntimeRunner(path) as runner:
        encoded = task.encode(
            tokenizer,
            list(samples.evaluation),
            batch_size=8,
            sequence_length=128,
            input_names=list(runner.input_specs()),
        )
        reference = [runner.infer(f) for f in encoded.feeds]
    model = onnx.load(str(path))
    damage_head(model, 2, factor=-1.0, column=0)  # the start-logit column of qa_outputs, negated
    damaged_path = tmp_path_factory.mktemp("damaged-qa") / "damaged.onnx"
    onnx.save(model, str(damaged_path))
    with OnnxRuntimeRunner(damaged_path) as runner:
        damaged = [runner.infer(f) for f in encoded.feeds]
    return encoded, reference, damaged, path, damaged_path


def test_the_reference_meets_its_own_budget(bert_runs, samples):
    encoded, reference, *_ = bert_runs
    task = get_task(HEAD)
    result = task.metrics(reference, reference, encoded.feeds, encoded.meta)
    assert result.values["exact_match"] == 1.0 and result.values["answer_f1"] == 1.0
    assert result.values["logits_cosine_min"] == pytest.approx(1.0)
    assert len(result.per_sample) == len(samples.evaluation)
    assert result.details["windows"] > len(samples.evaluation)
    assert QuestionAnsweringBudget().failures(result.values) == ()
    assert set(task.metric_names) <= set(result.values)


def test_a_damaged_candidate_is_rejected_naming_the_metric(bert_runs):
    encoded, reference, damaged, *_ = bert_runs
    task = get_task(HEAD)
    result = task.metrics(reference, damaged, encoded.feeds, encoded.meta)
    assert result.values["exact_match"] < 0.97
    failures = task.default_budget().failures(result.values)
    assert any(line.startswith("answer exact match") for line in failures), failures
    assert result.details["disagreeing_samples"]
    only_cosine = QuestionAnsweringBudget(exact_match_min=None, answer_f1_min=None, logits_cosine_min=0.99)
    assert [line.split(" -")[0].split(" 0.")[0] for line in only_cosine.failures(result.values)] == [
        "start/end logits cosine min"
    ]


def test_budget_and_metrics_refuse_what_they_cannot_check(bert_runs):
    encoded, reference, *_ = bert_runs
    with pytest.raises(ConfigError, match="gates nothing"):
        QuestionAnsweringBudget(exact_match_min=None, answer_f1_min=None)
    with pytest.raises(DataError, match="windows of every batch"):
        get_task(HEAD).metrics(reference, reference, encoded.feeds, [object()] * len(encoded.feeds))
    plain = get_task(HEAD).metrics(reference, reference, encoded.feeds).values  # a diagnosis: no meta
    assert plain == {"logits_cosine_mean": pytest.approx(1.0), "logits_cosine_min": pytest.approx(1.0)}
    assert any("was not measured" in line for line in QuestionAnsweringBudget().failures(plain))
    with pytest.raises(ConfigError, match="question-answering"):
        get_task("token-classification").check_budget(QuestionAnsweringBudget())


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
