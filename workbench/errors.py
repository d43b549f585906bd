"""One small hierarchy of errors that say what failed, what was expected, and how to fix it."""

from __future__ import annotations


class WorkbenchError(Exception):
    """Base class of every error the workbench raises on purpose.

    Args:
        what: What failed, in one sentence.
        expected: What the workbench expected instead (optional).
        fix: What the user can do about it (optional).
    """

    def __init__(self, what: str, *, expected: str | None = None, fix: str | None = None) -> None:
        self.what = what
        self.expected = expected
        self.fix = fix
        lines = [what]
        if expected:
            lines.append(f"  Expected: {expected}")
        if fix:
            lines.append(f"  Fix: {fix}")
        super().__init__("\n".join(lines))


class ConfigError(WorkbenchError, ValueError):
    """A configuration value is invalid."""


class ModelSourceError(WorkbenchError):
    """A model path, directory or file cannot be used as a model source."""


class DataError(WorkbenchError, ValueError):
    """Input data (sentences, feed dicts) is missing or malformed."""


class ExportError(WorkbenchError):
    """Export to ONNX failed, or the exported model does not match PyTorch."""


class QuantizationError(WorkbenchError):
    """A precision conversion (INT8, FP16) failed."""


class AccuracyError(WorkbenchError):
    """A candidate misses its accuracy budget where the caller asked for it to be enforced."""


class TritonExportError(WorkbenchError):
    """A Triton model repository could not be written, or its config is invalid."""


class TritonServerError(TritonExportError):
    """A Triton server did not start, or refused to load a model; the message carries the server's own text."""


class MissingDependency(WorkbenchError, ImportError):
    """An optional package is not installed; the message names the extra that provides it."""


class DependencyConflict(WorkbenchError):
    """Installed packages conflict with each other (for example onnxruntime and onnxruntime-gpu)."""


class DeviceUnavailable(WorkbenchError):
    """The requested device (a GPU) or engine (TensorRT) is not available on this machine."""


class StepNotApplicable(WorkbenchError):
    """A skippable step does not apply to this model (e.g. an engine's candidates for a task it cannot run yet);
    `run_all` skips it with this reason."""


class OutputFolderError(WorkbenchError):
    """An output folder (or file) cannot be used: it is a file, read-only, or holds an earlier run."""


class OutputFolderBusy(OutputFolderError):
    """Another run holds the output folder's lock; the message names it (process id, host, start time)."""


class DiskFullError(OutputFolderError):
    """The disk (or the user's quota) is full: nothing was moved into place."""


class ServingError(WorkbenchError):
    """A served model could not be load-tested: a server did not start or stop, or its requests failed."""
