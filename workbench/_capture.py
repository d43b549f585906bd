"""What libraries say while a step runs, kept in the step's log instead of printed to stderr.

The exporter (torch's TracerWarning and UserWarnings), onnxruntime's quantizer (`logging.warning("Please consider
to run pre-processing before quantization ...")` on the root logger, which configures a stderr handler the
first time it is called) and transformers (its own stderr handler) would otherwise each put a pink stderr box
under a notebook cell. Inside :func:`captured_output` their warnings, log records and writes to sys.stderr go to
one :class:`CapturedLog`; everything is put back as it was when the block ends.

What it changes while the block runs (and restores): the `warnings` module's showwarning (through
warnings.catch_warnings), sys.stderr, a handler on the root logger, and the handlers of the LIBRARY_LOGGERS.
These are process-wide, so output that another thread writes to them meanwhile lands in the log too. Output
written by C++ code straight to file descriptor 2 is not captured (none appears on the default path;
redirecting the descriptor would also swallow the terminal's progress bars).
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["CapturedLog", "captured_output", "LIBRARY_LOGGERS"]

#: Loggers of the libraries the stages call; their own handlers are set aside while a step runs.
LIBRARY_LOGGERS = (
    "transformers",
    "torch",
    "onnxruntime",
    "onnx",
    "onnxscript",
    "polygraphy",
    "nncf",
    "openvino",
    "huggingface_hub",
    "tritonclient",
    "optimum",
)


@dataclass
class CapturedLog:
    """The lines captured while a step ran (warnings, log records, stderr writes), in order."""

    lines: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def __bool__(self) -> bool:
        return bool(self.lines)


class _LogHandler(logging.Handler):
    def __init__(self, log: CapturedLog) -> None:
        super().__init__(level=logging.WARNING)
        self.log = log
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.log.lines.append(self.format(record))
        except Exception:  # a record that cannot be formatted must not break the step
            self.handleError(record)


class _LineWriter(io.TextIOBase):
    """A text stream that appends what is written to the log, line by line (progress-bar redraws end in \\r)."""

    def __init__(self, log: CapturedLog) -> None:
        self.log = log
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self._pending += text
        *complete, self._pending = self._pending.replace("\r", "\n").split("\n")
        self.log.lines.extend(line for line in complete if line.strip())
        return len(text)

    def flush(self) -> None:
        if self._pending.strip():
            self.log.lines.append(self._pending)
        self._pending = ""


@contextlib.contextmanager
def captured_output() -> Iterator[CapturedLog]:
    """Capture warnings, WARNING-and-above log records and sys.stderr writes for the length of the block."""
    log = CapturedLog()
    handler = _LogHandler(log)
    root = logging.getLogger()
    saved = []
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate))
        # a library's own stream handlers would print; the record goes to the log (and nowhere else) instead
        logger.handlers = [h for h in logger.handlers if not isinstance(h, logging.StreamHandler)] + [handler]
        logger.propagate = False
    # with a handler on the root logger, logging.warning() no longer calls basicConfig() (a stderr handler)
    root.addHandler(handler)
    writer = _LineWriter(log)

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: object = None,
        line: str | None = None,
    ) -> None:
        log.lines.append(f"{category.__name__}: {message} ({filename}:{lineno})")

    try:
        # the filters stay as they are (what Python or the caller would show); showing goes to the log
        with warnings.catch_warnings(), contextlib.redirect_stderr(writer):
            warnings.showwarning = show
            try:
                yield log
            finally:
                writer.flush()
    finally:
        root.removeHandler(handler)
        for logger, handlers, propagate in saved:
            logger.handlers = handlers
            logger.propagate = propagate
