"""Calibration: activation ranges (and histograms) of a model on real data, cached on disk and reused.

Uses onnxruntime.quantization's calibrators. Data is fed in chunks, so histogram methods (Entropy, Percentile,
Distribution) hold the activations of one chunk at a time instead of the whole data set.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from workbench._lazy import require
from workbench.config import StageConfig, check_choice, check_positive
from workbench.errors import DataError
from workbench.progress import Progress, ProgressCallback, as_callback

CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile", "Distribution")
HISTOGRAM_METHODS = ("Entropy", "Percentile", "Distribution")
_NUMPY_FOR_ONNX = {1: np.float32, 2: np.uint8, 3: np.int8, 6: np.int32, 7: np.int64, 9: np.bool_, 10: np.float16,
                   11: np.float64}


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
            return {"symmetric": self.symmetric, "moving_average": self.moving_average,
                    "averaging_constant": self.averaging_constant}
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

    def ranges(self) -> dict[str, tuple[float, float]]:
        """Tensor name -> (low, high) as the quantizer will use them."""
        data = self.tensors_data()
        return {name: (float(np.asarray(d.range_value[0]).min()), float(np.asarray(d.range_value[1]).max()))
                for name, d in data.data.items()}

    def tensors_data(self) -> Any:
        calibrate = require("onnxruntime.quantization.calibrate", purpose="Calibration")
        return calibrate.load_tensors_data(self.cache_path)

    def to_dict(self) -> dict[str, Any]:
        return {"cache_path": str(self.cache_path), "config": self.config.to_dict(), "cache_hit": self.cache_hit,
                "samples": self.samples, "seconds": self.seconds}

    def _repr_html_(self) -> str:
        source = "reused from the cache" if self.cache_hit else f"measured in {self.seconds:.1f} s"
        return (f"<b>Calibration</b> ({self.config.method}) on {self.samples} samples: ranges of "
                f"{len(self.ranges())} tensors, {source} (<code>{self.cache_path.name}</code>).")


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


def validate_feeds(feeds: Sequence[Mapping[str, np.ndarray]], model_path: str | os.PathLike[str], *,
                   equal_shapes: bool = False, what: str = "calibration data") -> None:
    """Raise DataError unless `feeds` is non-empty and every dict has the model's input names and dtypes."""
    if not feeds:
        raise DataError(f"The {what} is empty.",
                        fix="pass at least one feed dict (e.g. tokenize_batches(tokenizer, sentences, ...))")
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
                raise DataError(f"Input {name!r} of feed dict {index} is {array.dtype}, the model takes {dtype}.",
                                fix=f"cast it: array.astype(np.{dtype})")
            if array.ndim != len(dims):
                raise DataError(f"Input {name!r} of feed dict {index} has rank {array.ndim}, the model takes {len(dims)}.")
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


def calibration_key(model_path: str | os.PathLike[str], feeds: Sequence[Mapping[str, np.ndarray]],
                    config: CalibrationConfig) -> str:
    """The cache key: the model's bytes, the data's bytes and the method with its options."""
    options = {k: v for k, v in config.to_dict().items() if k != "chunk_size"}  # chunking does not change ranges
    text = json.dumps({"model": file_digest(model_path), "data": _digest_feeds(feeds), "config": options},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def default_cache_dir() -> Path:
    """Where calibration ranges are cached unless a folder is given: $WORKBENCH_CACHE or ~/.cache/workbench."""
    return Path(os.environ.get("WORKBENCH_CACHE", Path.home() / ".cache" / "workbench")) / "calibration"


def calibrate(
    model_path: str | os.PathLike[str],
    feeds: Sequence[Mapping[str, np.ndarray]],
    config: CalibrationConfig = CalibrationConfig(),
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    progress: bool | ProgressCallback | None = True,
) -> CalibrationResult:
    """Measure activation ranges of `model_path` on `feeds`, or reuse them from the cache.

    Args:
        model_path: The model to calibrate (pre-processed for quantization, see quantize_static).
        feeds: Calibration feed dicts; histogram methods need them all the same shape.
        config: Method and options.
        cache_dir: Folder of cached ranges (default: default_cache_dir()).
        progress: True: a progress bar (tqdm.auto) while collecting; False or None: none; a callable: called with
            a workbench.progress.ProgressEvent after each calibration batch (feed dict), which may raise
            Stopped to end the calibration there (nothing is cached then).

    Raises:
        DataError: The data is empty, has the wrong inputs or dtypes, or mixed shapes for a histogram method.
    """
    validate_feeds(feeds, model_path, equal_shapes=config.method in HISTOGRAM_METHODS)
    cache_path = Path(cache_dir or default_cache_dir()) / f"{calibration_key(model_path, feeds, config)}.json"
    started = time.perf_counter()
    report = Progress(as_callback(progress), f"calibration ({config.method})", "calibration batches",
                      total=len(feeds))
    if cache_path.is_file():
        report(len(feeds), "ranges reused from the cache")
        return CalibrationResult(cache_path, config, True, len(feeds), time.perf_counter() - started)
    calibrate_module = require("onnxruntime.quantization.calibrate", purpose="Calibration")
    import tempfile

    with tempfile.TemporaryDirectory(prefix="workbench-calibrate-") as folder:
        calibrator = calibrate_module.create_calibrator(
            Path(model_path),
            None,
            augmented_model_path=str(Path(folder) / "augmented.onnx"),
            calibrate_method=getattr(calibrate_module.CalibrationMethod, config.method),
            extra_options=config.calibrator_options(),
        )
        chunks = [feeds[i:i + config.chunk_size] for i in range(0, len(feeds), config.chunk_size)]
        # onnxruntime's histogram calibrators print progress lines of their own; the events say it all
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                report(0, "collecting activation ranges")
                for start, chunk in zip(range(0, len(feeds), config.chunk_size), chunks):
                    calibrator.collect_data(FeedReader(chunk, on_next=lambda i, start=start: report(
                        start + i, f"batch {start + i} of {len(feeds)}")))
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
    calibrate_module.save_tensors_data(tensors_data, cache_path)  # writes atomically
    return CalibrationResult(cache_path, config, False, len(feeds), time.perf_counter() - started)


class FeedReader:
    """A rewindable onnxruntime CalibrationDataReader over a list of feed dicts.

    Args:
        feeds: The feed dicts.
        on_next: Called with how many feed dicts were handed out before each next one (the calibration's
            progress; it may raise Stopped).
    """

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]],
                 on_next: Callable[[int], None] | None = None) -> None:
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
