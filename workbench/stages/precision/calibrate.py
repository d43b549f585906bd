"""Calibration: activation ranges (and histograms) of a model on real data, cached on disk and reused.

Uses onnxruntime.quantization's calibrators. Data is fed in chunks, so histogram methods (Entropy, Percentile,
Distribution) hold the activations of one chunk at a time instead of the whole data set.

A cache entry is onnxruntime's own calibration JSON (what `quantize_static(calibration_cache_path=...)` reads)
plus a `workbench` record: the entry's key, the sha256 of the model and of the data, the method's options, the
names of the tensors measured, and a checksum of the ranges. An entry is used only if all of them match and its
ranges are plausible (finite, low <= high, not all empty, only tensors the model has); otherwise it is discarded
with a CalibrationCacheWarning naming the file, and the ranges are measured again. Entries are written atomically
and readable by everyone.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from workbench._lazy import require
from workbench.config import StageConfig, check_choice, check_positive
from workbench.errors import DataError, OutputFolderError
from workbench.progress import Progress, ProgressCallback, as_callback

CACHE_FORMAT = "workbench-calibration/2"


class CalibrationCacheWarning(UserWarning):
    """A calibration cache entry was corrupt or implausible; it was discarded and the ranges measured again."""


CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile", "Distribution")
HISTOGRAM_METHODS = ("Entropy", "Percentile", "Distribution")
_NUMPY_FOR_ONNX = {
    1: np.float32,
    2: np.uint8,
    3: np.int8,
    6: np.int32,
    7: np.int64,
    9: np.bool_,
    10: np.float16,
    11: np.float64,
}


@dataclass(frozen=True)
class CalibrationConfig(StageConfig):
    """How activation ranges are measured.

    Attributes:
        method: "MinMax" (range of values seen), "Entropy" (KL-divergence threshold, as TensorRT's calibrator),
            "Percentile" (clip at a percentile of |x|), or "Distribution".
        percentile: For Percentile: the percentile of |x| kept (99.999 clips the top 0.001%).
        num_bins: Histogram bins (0: onnxruntime's default for the method).
        num_quantized_bins: For Entropy: bins of the quantized distribution.
        symmetric: Symmetric ranges around 0 (MinMax, Entropy).
        moving_average: For MinMax: average per-batch ranges instead of taking the extremes.
        averaging_constant: For MinMax with moving_average.
        chunk_size: Feed dicts per collection pass; bounds memory for the histogram methods.
    """

    method: str = "MinMax"
    percentile: float = 99.999
    num_bins: int = 0
    num_quantized_bins: int = 128
    symmetric: bool = False
    moving_average: bool = False
    averaging_constant: float = 0.01
    chunk_size: int = 16

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "minmax": {},
        "entropy": {"method": "Entropy"},
        "percentile": {"method": "Percentile", "percentile": 99.999},
        "distribution": {"method": "Distribution"},
    }

    def __post_init__(self) -> None:
        check_choice(self, "method", CALIBRATION_METHODS)
        check_positive(self, "chunk_size", "num_quantized_bins", "averaging_constant")
        if not 50.0 < self.percentile <= 100.0:
            from workbench.errors import ConfigError

            raise ConfigError(f"CalibrationConfig.percentile must be in (50, 100], got {self.percentile}.")

    def calibrator_options(self) -> dict[str, Any]:
        """The extra_options onnxruntime's create_calibrator takes for this method."""
        if self.method == "MinMax":
            return {
                "symmetric": self.symmetric,
                "moving_average": self.moving_average,
                "averaging_constant": self.averaging_constant,
            }
        options: dict[str, Any] = {}
        if self.num_bins:
            options["num_bins"] = self.num_bins
        if self.method == "Entropy":
            options.update(num_quantized_bins=self.num_quantized_bins, symmetric=self.symmetric)
        elif self.method == "Percentile":
            options.update(percentile=self.percentile, symmetric=True)
        return options


@dataclass(frozen=True)
class CalibrationResult:
    """Activation ranges of one model on one data set with one method, and where they are cached."""

    cache_path: Path
    config: CalibrationConfig
    cache_hit: bool
    samples: int
    seconds: float
    entry: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)  # the verified entry

    def ranges(self) -> dict[str, tuple[float, float]]:
        """Tensor name -> (low, high) as the quantizer will use them."""
        data = self.tensors_data()
        return {
            name: (float(np.asarray(d.range_value[0]).min()), float(np.asarray(d.range_value[1]).max()))
            for name, d in data.data.items()
        }

    def tensors_data(self) -> Any:
        calibrate = require("onnxruntime.quantization.calibrate", purpose="Calibration")
        if self.entry:
            return calibrate.TensorsData.from_dict(dict(self.entry))
        return calibrate.load_tensors_data(self.cache_path)

    def copy_ranges(self, path: str | os.PathLike[str]) -> Path:
        """Write the verified ranges (not whatever the cache file holds by now) to `path`, for onnxruntime."""
        from workbench._files import atomic_path

        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(dict(self.entry)))
        return Path(path)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cache_path": str(self.cache_path),
            "config": self.config.to_dict(),
            "cache_hit": self.cache_hit,
            "samples": self.samples,
            "seconds": self.seconds,
        }

    def _repr_html_(self) -> str:
        source = "reused from the cache" if self.cache_hit else f"measured in {self.seconds:.1f} s"
        return (
            f"<b>Calibration</b> ({self.config.method}) on {self.samples} samples: ranges of "
            f"{len(self.ranges())} tensors, {source} (<code>{self.cache_path.name}</code>)."
        )


def model_inputs(model_path: str | os.PathLike[str]) -> dict[str, tuple[Any, list[Any]]]:
    """Graph input name -> (numpy dtype, dims) of an ONNX file, initializers excluded."""
    onnx = require("onnx", purpose="Reading an ONNX model")
    model = onnx.load(str(model_path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    found = {}
    for graph_input in model.graph.input:
        if graph_input.name in initializers:
            continue
        tensor_type = graph_input.type.tensor_type
        dims = [d.dim_param or d.dim_value for d in tensor_type.shape.dim]
        found[graph_input.name] = (np.dtype(_NUMPY_FOR_ONNX.get(tensor_type.elem_type, np.float32)), dims)
    return found


def validate_feeds(
    feeds: Sequence[Mapping[str, np.ndarray]],
    model_path: str | os.PathLike[str],
    *,
    equal_shapes: bool = False,
    what: str = "calibration data",
) -> None:
    """Raise DataError unless `feeds` is non-empty and every dict has the model's input names and dtypes."""
    if not feeds:
        raise DataError(
            f"The {what} is empty.",
            fix="pass at least one feed dict (e.g. tokenize_batches(tokenizer, sentences, ...))",
        )
    expected = model_inputs(model_path)
    for index, feed in enumerate(feeds):
        names = set(feed)
        if names != set(expected):
            raise DataError(
                f"Feed dict {index} of the {what} has inputs {sorted(names)}.",
                expected=f"exactly the model's inputs {sorted(expected)}",
                fix="tokenize with input_names= the model's inputs, or rename the keys",
            )
        for name, (dtype, dims) in expected.items():
            array = np.asarray(feed[name])
            if array.dtype != dtype:
                raise DataError(
                    f"Input {name!r} of feed dict {index} is {array.dtype}, the model takes {dtype}.",
                    fix=f"cast it: array.astype(np.{dtype})",
                )
            if array.ndim != len(dims):
                raise DataError(
                    f"Input {name!r} of feed dict {index} has rank {array.ndim}, the model takes {len(dims)}."
                )
    if equal_shapes:
        shapes = {tuple(np.asarray(v).shape for v in feed.values()) for feed in feeds}
        if len(shapes) > 1:
            raise DataError(
                f"The {what} holds {len(shapes)} different input shapes; histogram calibration needs one.",
                fix="tokenize with padding='max_length' at one sequence_length (and one batch size), or use MinMax",
            )


def _digest_feeds(feeds: Sequence[Mapping[str, np.ndarray]]) -> str:
    digest = hashlib.sha256()
    for feed in feeds:
        for name in sorted(feed):
            array = np.ascontiguousarray(feed[name])
            digest.update(name.encode())
            digest.update(str((array.dtype.str, array.shape)).encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 of a model file and its external data file, if any."""
    digest = hashlib.sha256()
    for part in (Path(path), Path(f"{path}.data")):
        if part.exists():
            with part.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def _options(config: CalibrationConfig) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k != "chunk_size"}  # chunking does not change ranges


def calibration_key(
    model_path: str | os.PathLike[str], feeds: Sequence[Mapping[str, np.ndarray]], config: CalibrationConfig
) -> str:
    """The cache key: the model's bytes, the data's bytes and the method with its options."""
    return _key(file_digest(model_path), _digest_feeds(feeds), config)


def _key(model_digest: str, data_digest: str, config: CalibrationConfig) -> str:
    text = json.dumps({"model": model_digest, "data": data_digest, "config": _options(config)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def default_cache_dir() -> Path:
    """Where calibration ranges are cached unless a folder is given: $WORKBENCH_CACHE or ~/.cache/workbench."""
    return Path(os.environ.get("WORKBENCH_CACHE", Path.home() / ".cache" / "workbench")) / "calibration"


def _checksum(entry: Mapping[str, Any]) -> str:
    """sha256 of what onnxruntime reads from an entry (its ranges and method), in a canonical JSON form."""
    ranges = {k: entry.get(k) for k in ("data", "calibration_method", "smooth_quant")}
    return hashlib.sha256(json.dumps(ranges, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _model_tensor_names(model_path: str | os.PathLike[str]) -> set[str]:
    onnx = require("onnx", purpose="Reading an ONNX model")
    model = onnx.load(str(model_path), load_external_data=False)
    names = {i.name for i in model.graph.input} | {o.name for o in model.graph.output}
    names |= {out for node in model.graph.node for out in node.output if out}
    return names


def _values(value: Any) -> np.ndarray:
    if isinstance(value, Mapping) and value.get("CLS") == "numpy.array":
        value = value.get("data")
    return np.asarray(value, dtype=np.float64).ravel()


def _entry_problem(
    entry: Any, *, key: str, model_digest: str, data_digest: str, config: CalibrationConfig, tensor_names: set[str]
) -> str | None:
    """Why `entry` (parsed JSON) must not be used for this model, data and method; None if it may."""
    if not isinstance(entry, Mapping) or not isinstance(entry.get("data"), Mapping):
        return "is not a calibration cache entry"
    record = entry.get("workbench")
    if not isinstance(record, Mapping) or record.get("format") != CACHE_FORMAT:
        return "has no checksum (written by another tool or an older workbench)"
    if record.get("checksum") != _checksum(entry):
        return "does not match its checksum (the ranges were changed or damaged)"
    if record.get("model_sha256") != model_digest:
        return "belongs to another model (its model sha256 differs)"
    if record.get("data_sha256") != data_digest or record.get("key") != key:
        return "belongs to other calibration data"
    if record.get("config") != json.loads(json.dumps(_options(config))):
        return "was measured with other calibration options"
    data = entry["data"]
    if not data:
        return "holds no ranges"
    unknown = sorted(set(data) - tensor_names)
    if unknown:
        return f"has ranges for tensors the model does not have: {unknown[:5]}"
    if sorted(data) != sorted(record.get("tensors", ())):
        return "has other tensors than it records"
    empty = 0
    for name, value in data.items():
        if not isinstance(value, Mapping) or "lowest" not in value or "highest" not in value:
            return f"has no range for tensor {name!r}"
        try:
            low, high = _values(value["lowest"]), _values(value["highest"])
        except (TypeError, ValueError):
            return f"has a range for {name!r} that is not numbers"
        if not low.size or not high.size or not np.isfinite(low).all() or not np.isfinite(high).all():
            return f"has a range for {name!r} that is empty or not finite"
        if low.min() > high.max():
            return f"has a range for {name!r} with low > high ({low.min():g} > {high.max():g})"
        empty += bool(math.isclose(float(low.min()), float(high.max()), abs_tol=0.0))
    if empty == len(data):
        return "has only empty ranges (low == high for every tensor: the model would output constants)"
    try:
        require("onnxruntime.quantization.calibrate", purpose="Calibration").TensorsData.from_dict(dict(entry))
    except Exception as exc:  # noqa: BLE001 - whatever onnxruntime cannot read, it must not be given
        return f"cannot be read by onnxruntime ({type(exc).__name__}: {exc})"
    return None


def _read_entry(path: Path, **expected: Any) -> tuple[dict[str, Any] | None, str | None]:
    """(the entry, None) if `path` holds a valid entry for `expected`, else (None, why not)."""
    try:
        entry = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"is not valid JSON ({type(exc).__name__}: {exc}; a truncated or damaged file)"
    except OSError as exc:
        return None, f"cannot be read ({exc})"
    problem = _entry_problem(entry, **expected)
    return (entry, None) if problem is None else (None, problem)


def calibrate(
    model_path: str | os.PathLike[str],
    feeds: Sequence[Mapping[str, np.ndarray]],
    config: CalibrationConfig = CalibrationConfig(),
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool | ProgressCallback | None = True,
    work_dir: str | os.PathLike[str] | None = None,
) -> CalibrationResult:
    """Measure activation ranges of `model_path` on `feeds`, or reuse them from the cache once verified.

    Args:
        model_path: The model to calibrate (pre-processed for quantization, see quantize_static).
        feeds: Calibration feed dicts; histogram methods need them all the same shape.
        config: Method and options.
        cache_dir: Folder of cached ranges (default: default_cache_dir()).
        progress: True: a progress bar (tqdm.auto) while collecting; False or None: none; a callable: called with
            a workbench.progress.ProgressEvent after each calibration batch (feed dict), which may raise
            Stopped to end the calibration there (nothing is cached then).
        work_dir: Folder for the temporary augmented model (default: a hidden folder in cache_dir, removed
            afterwards, and by the next calibration into cache_dir if this process is killed).

    Raises:
        DataError: The data is empty, has the wrong inputs or dtypes, or mixed shapes for a histogram method, or
            the model's activations are not finite on it.
        OutputFolderError: The cache folder cannot be created or written (DiskFullError: the disk is full).

    Warns:
        CalibrationCacheWarning: A cached entry was corrupt or implausible (named); it was measured again.
    """
    from workbench._files import atomic_path, ensure_folder, staging_directory

    validate_feeds(feeds, model_path, equal_shapes=config.method in HISTOGRAM_METHODS)
    cache_dir = ensure_folder(cache_dir or default_cache_dir(), what="Calibration cache folder")
    model_digest, data_digest = file_digest(model_path), _digest_feeds(feeds)
    key = _key(model_digest, data_digest, config)
    cache_path = cache_dir / f"{key}.json"
    tensor_names = _model_tensor_names(model_path)
    expected: dict[str, Any] = {
        "key": key,
        "model_digest": model_digest,
        "data_digest": data_digest,
        "config": config,
        "tensor_names": tensor_names,
    }
    started = time.perf_counter()
    report = Progress(as_callback(progress), f"calibration ({config.method})", "calibration batches", total=len(feeds))
    if cache_path.exists():
        entry, problem = _read_entry(cache_path, **expected)
        if entry is not None:
            report(len(feeds), "ranges reused from the cache")
            return CalibrationResult(cache_path, config, True, len(feeds), time.perf_counter() - started, entry)
        warnings.warn(
            f"Calibration cache entry {cache_path} {problem}; it was discarded and the ranges are measured again.",
            CalibrationCacheWarning,
            stacklevel=2,
        )
    calibrate_module = require("onnxruntime.quantization.calibrate", purpose="Calibration")

    from workbench.onnx.io import stage_model

    with staging_directory(work_dir or cache_dir, "calibrate") as folder:
        # onnxruntime writes <model>-inferred.onnx beside the model it is given: a link in the staging folder
        calibrator = calibrate_module.create_calibrator(
            stage_model(model_path, Path(folder) / "input"),
            None,
            augmented_model_path=str(Path(folder) / "augmented.onnx"),
            calibrate_method=getattr(calibrate_module.CalibrationMethod, config.method),
            extra_options=config.calibrator_options(),
        )
        chunks = [feeds[i : i + config.chunk_size] for i in range(0, len(feeds), config.chunk_size)]
        # onnxruntime's histogram calibrators print progress lines of their own; the events say it all
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                report(0, "collecting activation ranges")
                for start, chunk in zip(range(0, len(feeds), config.chunk_size), chunks):

                    def on_next(i: int, start: int = start) -> None:
                        report(start + i, f"batch {start + i} of {len(feeds)}")

                    calibrator.collect_data(FeedReader(chunk, on_next=on_next))
                report(len(feeds), "computing ranges")
                tensors_data = calibrator.compute_data()
            except (IndexError, MemoryError, ValueError) as exc:
                raise DataError(
                    f"{config.method} calibration failed while building activation histograms: "
                    f"{type(exc).__name__}: {exc}. Unfused transformer graphs add a mask of -3.4e38 to the "
                    "attention scores, and a histogram over that range overflows float32.",
                    expected="finite activation ranges",
                    fix="calibrate the fused graph (fuse_transformer: the mask moves inside Attention), or use MinMax",
                ) from exc
        del calibrator
    entry = json.loads(json.dumps(tensors_data.to_dict(), cls=calibrate_module.CalibrationCacheEncoder))
    entry["smooth_quant"] = False
    entry["workbench"] = {
        "format": CACHE_FORMAT,
        "key": key,
        "model_sha256": model_digest,
        "data_sha256": data_digest,
        "config": json.loads(json.dumps(_options(config))),
        "samples": len(feeds),
        "tensors": sorted(entry["data"]),
    }
    entry["workbench"]["checksum"] = _checksum(entry)
    problem = _entry_problem(entry, **expected)
    if problem is not None:
        raise DataError(
            f"Calibrating {model_path} measured ranges that cannot be used: the result {problem}.",
            expected="finite activation ranges on real data",
            fix="check the model on this data (NaN or inf activations), or calibrate other sentences",
        )
    try:
        with atomic_path(cache_path) as tmp:
            tmp.write_text(json.dumps(entry), encoding="utf-8")
    except OutputFolderError:
        raise
    except OSError as exc:
        raise OutputFolderError(
            f"Could not write the calibration cache entry {cache_path}: {exc}.", fix="pass cache_dir= a writable folder"
        ) from exc
    return CalibrationResult(cache_path, config, False, len(feeds), time.perf_counter() - started, entry)


class FeedReader:
    """A rewindable onnxruntime CalibrationDataReader over a list of feed dicts.

    Args:
        feeds: The feed dicts.
        on_next: Called with how many feed dicts were handed out before each next one (the calibration's
            progress; it may raise Stopped).
    """

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]], on_next: Callable[[int], None] | None = None) -> None:
        self._feeds = list(feeds)
        self._position = 0
        self._on_next = on_next

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._position >= len(self._feeds):
            return None
        if self._on_next is not None:
            self._on_next(self._position)
        self._position += 1
        return dict(self._feeds[self._position - 1])

    def rewind(self) -> None:
        self._position = 0

    def __len__(self) -> int:
        return len(self._feeds)

    def __iter__(self) -> Any:
        self.rewind()
        return iter(self._feeds)
