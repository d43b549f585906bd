"""Sentence files, the bundled calibration/evaluation split, and tokenized feed dicts."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.data import (
    CALIBRATION_FILE,
    EVALUATION_FILE,
    SentenceSplits,
    default_data_dir,
    load_sentence_splits,
    read_sentences,
    tokenize_batches,
)
from workbench.errors import DataError, WorkbenchError

SENTENCES = [
    "Hello!",
    "The quarterly report shows revenue grew 12% to $4.5 million.",
    "How do I reset my password?",
    "Short one.",
    "São Paulo, café, naïve: accents too.",
    "Patients received 5 mg twice daily for 14 days.",
    "A tiny sentence.",
    "Another sentence that is a little bit longer than the others in this list.",
    "Nine.",
    "Ten sentences in all.",
]


@pytest.fixture(scope="module")
def tokenizer():
    from workbench.models import load_model

    return load_model().load_tokenizer()


# --- read_sentences ------------------------------------------------------------------------------------------


def test_read_sentences_skips_blank_lines_and_strips(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("first\n\n   \n  second  \n\nthird\n", encoding="utf-8")
    assert read_sentences(path) == ["first", "second", "third"]
    assert read_sentences(str(path)) == ["first", "second", "third"]


def test_read_sentences_keeps_unicode(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("café\nnaïve\n", encoding="utf-8")
    assert read_sentences(path) == ["café", "naïve"]


def test_read_sentences_limit(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("\n".join(f"sentence {i}" for i in range(10)), encoding="utf-8")
    assert read_sentences(path, limit=3) == ["sentence 0", "sentence 1", "sentence 2"]
    assert len(read_sentences(path, limit=100)) == 10
    with pytest.raises(DataError):
        read_sentences(path, limit=0)


def test_read_sentences_missing_file(tmp_path):
    missing = tmp_path / "missing.txt"
    with pytest.raises(DataError) as info:
        read_sentences(missing)
    assert str(missing) in str(info.value) and "does not exist" in str(info.value)
    assert "Fix:" in str(info.value)
    assert isinstance(info.value, WorkbenchError)


@pytest.mark.parametrize("content", ["", "\n\n  \n\t\n"], ids=["empty", "blank-lines"])
def test_read_sentences_empty_file(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match="no sentences"):
        read_sentences(path)


def test_read_sentences_folder_is_not_a_file(tmp_path):
    with pytest.raises(DataError):
        read_sentences(tmp_path)


# --- load_sentence_splits ------------------------------------------------------------------------------------


def test_bundled_splits():
    splits = load_sentence_splits()
    assert isinstance(splits, SentenceSplits)
    assert isinstance(splits.calibration, tuple) and isinstance(splits.evaluation, tuple)
    assert len(splits.calibration) == 240
    assert len(splits.evaluation) == 120
    assert not set(splits.calibration) & set(splits.evaluation)
    assert all(s and s == s.strip() for s in splits.calibration + splits.evaluation)
    # the bundled files hold one sentence on every line
    folder = default_data_dir()
    assert len((folder / CALIBRATION_FILE).read_text(encoding="utf-8").splitlines()) == 240
    assert len((folder / EVALUATION_FILE).read_text(encoding="utf-8").splitlines()) == 120


def test_bundled_splits_limits():
    full = load_sentence_splits()
    splits = load_sentence_splits(max_calibration=10, max_eval=5)
    assert splits.calibration == full.calibration[:10]
    assert splits.evaluation == full.evaluation[:5]


def test_splits_from_folder(tmp_path):
    (tmp_path / CALIBRATION_FILE).write_text("a\nb\n\nc\n", encoding="utf-8")
    (tmp_path / EVALUATION_FILE).write_text("x\ny\n", encoding="utf-8")
    splits = load_sentence_splits(tmp_path)
    assert splits == SentenceSplits(calibration=("a", "b", "c"), evaluation=("x", "y"))
    assert load_sentence_splits(str(tmp_path), max_calibration=1).calibration == ("a",)


def test_splits_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_sentence_splits(tmp_path / "nope")


def test_splits_missing_evaluation_file(tmp_path):
    (tmp_path / CALIBRATION_FILE).write_text("a\n", encoding="utf-8")
    with pytest.raises(DataError, match=EVALUATION_FILE):
        load_sentence_splits(tmp_path)


# --- tokenize_batches ----------------------------------------------------------------------------------------


def test_max_length_shapes_and_dtype(tokenizer):
    feeds = tokenize_batches(tokenizer, SENTENCES, batch_size=4, sequence_length=32)
    assert [feed["input_ids"].shape for feed in feeds] == [(4, 32), (4, 32), (2, 32)]
    for feed in feeds:
        assert set(feed) == {"input_ids", "token_type_ids", "attention_mask"}
        for array in feed.values():
            assert array.dtype == np.int64
            assert array.flags["C_CONTIGUOUS"]
            assert array.shape == feed["input_ids"].shape
    # padding is real: the short first sentence is mostly padding
    assert feeds[0]["attention_mask"][0].sum() < 32
    assert feeds[0]["input_ids"][0, -1] == tokenizer.pad_token_id


def test_sentences_are_kept_in_order(tokenizer):
    feeds = tokenize_batches(tokenizer, SENTENCES, batch_size=3, sequence_length=32)
    decoded = [tokenizer.decode(ids, skip_special_tokens=True) for feed in feeds for ids in feed["input_ids"]]
    assert len(decoded) == len(SENTENCES)
    assert decoded[0] == "hello!"
    assert decoded[3] == "short one."


def test_batch_equal_to_sentence_count(tokenizer):
    feeds = tokenize_batches(tokenizer, SENTENCES, batch_size=len(SENTENCES), sequence_length=16)
    assert len(feeds) == 1 and feeds[0]["input_ids"].shape == (len(SENTENCES), 16)


def test_truncation(tokenizer):
    long = " ".join(["word"] * 200)
    feeds = tokenize_batches(tokenizer, [long], batch_size=1, sequence_length=8)
    assert feeds[0]["input_ids"].shape == (1, 8)
    assert feeds[0]["input_ids"][0, -1] == tokenizer.sep_token_id


def test_longest_padding(tokenizer):
    feeds = tokenize_batches(
        tokenizer, ["Hi.", "A somewhat longer sentence here."], batch_size=2, sequence_length=128, padding="longest"
    )
    length = feeds[0]["input_ids"].shape[1]
    assert length < 128
    assert feeds[0]["attention_mask"][1].sum() == length  # the longest sentence has no padding


def test_input_names_filter_and_order(tokenizer):
    feeds = tokenize_batches(
        tokenizer, SENTENCES[:3], batch_size=2, sequence_length=16, input_names=["attention_mask", "input_ids"]
    )
    for feed in feeds:
        assert list(feed) == ["attention_mask", "input_ids"]
    reordered = tokenize_batches(tokenizer, SENTENCES[:3], batch_size=2, sequence_length=16, input_names=("input_ids",))
    assert [list(feed) for feed in reordered] == [["input_ids"], ["input_ids"]]
    np.testing.assert_array_equal(reordered[0]["input_ids"], feeds[0]["input_ids"])


def test_unknown_input_name(tokenizer):
    with pytest.raises(DataError) as info:
        tokenize_batches(
            tokenizer, SENTENCES, batch_size=2, sequence_length=16, input_names=["input_ids", "pixel_values"]
        )
    assert "pixel_values" in str(info.value)
    assert "Fix:" in str(info.value)


def test_bad_padding(tokenizer):
    with pytest.raises(DataError, match="padding"):
        tokenize_batches(tokenizer, SENTENCES, batch_size=2, sequence_length=16, padding="do_not_pad")


@pytest.mark.parametrize("empty", [[], ()], ids=["list", "tuple"])
def test_empty_sentences(tokenizer, empty):
    with pytest.raises(DataError, match="No sentences"):
        tokenize_batches(tokenizer, empty, batch_size=2, sequence_length=16)


@pytest.mark.parametrize("batch_size, sequence_length", [(0, 16), (-1, 16), (2, 1), (2, 0)])
def test_bad_sizes(tokenizer, batch_size, sequence_length):
    with pytest.raises(DataError):
        tokenize_batches(tokenizer, SENTENCES, batch_size=batch_size, sequence_length=sequence_length)


def test_tuple_of_sentences(tokenizer):
    splits = load_sentence_splits(max_calibration=5, max_eval=1)
    feeds = tokenize_batches(tokenizer, splits.calibration, batch_size=2, sequence_length=16)
    assert [feed["input_ids"].shape[0] for feed in feeds] == [2, 2, 1]
