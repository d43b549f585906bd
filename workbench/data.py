"""Sentences from text files, and tokenized feed dicts for export checks, calibration and evaluation."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.errors import DataError

CALIBRATION_FILE = "calibration.txt"
EVALUATION_FILE = "evaluation.txt"
PADDING_MODES = ("max_length", "longest")


def default_data_dir() -> Path:
    """The sentences shipped with the workbench (the repository's data/ folder)."""
    return Path(__file__).resolve().parent.parent / "data"


def read_sentences(path: str | os.PathLike[str], limit: int | None = None) -> list[str]:
    """Read one sentence per line, skipping blank lines.

    Raises:
        DataError: The file is missing or holds no sentences.
    """
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise DataError(f"Sentence file {path} {what}.", fix="pass a UTF-8 text file with one sentence per line")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(
            f"Sentence file {path} cannot be read: {exc.strerror or exc}.", fix="check the file's permissions"
        ) from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"Sentence file {path} is not UTF-8: byte {exc.start} (0x{raw[exc.start]:02x}, line {line}) cannot be "
            "decoded.",
            expected="a UTF-8 text file with one sentence per line",
            fix=f"convert it, for example `iconv -f latin1 -t utf-8 {path.name} > fixed.txt`, or save it as UTF-8",
        ) from None
    sentences = [line.strip() for line in text.removeprefix("\ufeff").splitlines() if line.strip()]
    if not sentences:
        raise DataError(f"Sentence file {path} holds no sentences.", fix="put at least one non-empty line in it")
    if limit is not None:
        if limit < 1:
            raise DataError(f"limit must be at least 1, got {limit}.")
        sentences = sentences[:limit]
    return sentences


@dataclass(frozen=True)
class SentenceSplits:
    """Calibration sentences (to fit quantization ranges) and held-out evaluation sentences."""

    calibration: tuple[str, ...]
    evaluation: tuple[str, ...]


def load_sentence_splits(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    max_calibration: int | None = None,
    max_eval: int | None = None,
) -> SentenceSplits:
    """Load `calibration.txt` and `evaluation.txt` from `data_dir` (default: the bundled sentences)."""
    folder = Path(data_dir) if data_dir is not None else default_data_dir()
    if not folder.is_dir():
        raise DataError(
            f"Data folder {folder} does not exist.",
            expected=f"a folder with {CALIBRATION_FILE} and {EVALUATION_FILE}, one sentence per line",
            fix="pass data_dir= such a folder, or None for the bundled sentences",
        )
    return SentenceSplits(
        calibration=tuple(read_sentences(folder / CALIBRATION_FILE, max_calibration)),
        evaluation=tuple(read_sentences(folder / EVALUATION_FILE, max_eval)),
    )


def tokenize_batches(
    tokenizer: Any,
    sentences: Sequence[str],
    *,
    batch_size: int,
    sequence_length: int,
    padding: str = "max_length",
    input_names: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Tokenize sentences into a list of int64 feed dicts, `batch_size` sentences each.

    Args:
        tokenizer: A Hugging Face tokenizer.
        sentences: The texts.
        batch_size: Sentences per feed dict (the last one may be smaller).
        sequence_length: Truncation length; with padding="max_length" also the padded length.
        padding: "max_length" pads every batch to `sequence_length`, as a batching server does (the accuracy
            of dynamically quantized models depends on it); "longest" pads to the longest sentence in the batch.
        input_names: Keep only these inputs, in this order (e.g. the ONNX model's inputs).
    """
    import numpy as np

    if not sentences:
        raise DataError("No sentences to tokenize.", fix="pass at least one sentence")
    if batch_size < 1 or sequence_length < 2:
        raise DataError(f"batch_size must be >= 1 and sequence_length >= 2, got {batch_size} and {sequence_length}.")
    if padding not in PADDING_MODES:
        raise DataError(f"padding {padding!r} is not one of {PADDING_MODES}.")
    feeds = []
    for start in range(0, len(sentences), batch_size):
        encoded = tokenizer(
            list(sentences[start : start + batch_size]),
            padding=padding,
            truncation=True,
            max_length=sequence_length,
            return_tensors="np",
        )
        names = list(input_names) if input_names is not None else list(encoded.keys())
        missing = [n for n in names if n not in encoded]
        if missing:
            raise DataError(
                f"The tokenizer does not produce the model inputs {missing} (it gives {list(encoded.keys())}).",
                fix="use the tokenizer that belongs to this model",
            )
        feeds.append({name: np.ascontiguousarray(encoded[name], dtype=np.int64) for name in names})
    return feeds


def conform_feeds(feeds: Mapping[str, Any], dtypes: Mapping[str, Any], *, what: str = "the feeds") -> dict[str, Any]:
    """`feeds` with integer arrays cast to the integer type the model takes (int64 ids for an int32 model).

    Tokenizers give int64; some exported models take int32 ids. Integer arrays are cast when every value fits
    the model's type; anything else that differs is a DataError naming the input.

    Args:
        feeds: Input name -> array.
        dtypes: Input name -> the numpy dtype the model takes.
        what: How error messages name the feeds.

    Raises:
        DataError: An input is missing or unknown, a value does not fit, or a dtype differs in kind.
    """
    import numpy as np

    missing, unknown = sorted(set(dtypes) - set(feeds)), sorted(set(feeds) - set(dtypes))
    if missing or unknown:
        raise DataError(
            f"{what[0].upper() + what[1:]} have inputs {sorted(feeds)}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unknown {unknown}" if unknown else "")
            + ".",
            expected=f"exactly the model's inputs {sorted(dtypes)}",
            fix="tokenize with input_names= the model's inputs, or rename the keys",
        )
    conformed = {}
    for name, value in feeds.items():
        array, want = np.asarray(value), np.dtype(dtypes[name])
        if array.dtype != want:
            if np.issubdtype(array.dtype, np.integer) and np.issubdtype(want, np.integer):
                limits = np.iinfo(want)
                if array.size and (array.min() < limits.min or array.max() > limits.max):
                    raise DataError(
                        f"Input {name!r} of {what} has values outside {want}'s range "
                        f"({array.min()}..{array.max()}), which the model takes.",
                        fix="check the token ids (a tokenizer of another model?)",
                    )
                array = array.astype(want)
            else:
                raise DataError(
                    f"Input {name!r} of {what} is {array.dtype}, the model takes {want}.",
                    fix=f"cast it: array.astype(np.{want})",
                )
        conformed[name] = array
    return conformed
