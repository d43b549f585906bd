"""What libraries print during a step goes to the step's log, not to stderr (workbench._capture)."""

from __future__ import annotations

import logging
import sys
import warnings

from workbench._capture import captured_output


def test_warnings_log_records_and_stderr_writes_are_captured_and_nothing_reaches_stderr(capfd):
    root = logging.getLogger()
    handlers_before = list(root.handlers)
    library = logging.getLogger("transformers")
    library_handlers = list(library.handlers)
    with captured_output() as log:
        warnings.warn("exporting aten::index may be wrong", UserWarning, stacklevel=1)
        logging.warning("Please consider to run pre-processing before quantization.")  # the root logger
        logging.getLogger("onnxruntime.quantization").warning("quantizer says %s", "hello")
        library.warning("weights not initialised")
        print("a library's own stderr line", file=sys.stderr)
        logging.getLogger("onnxruntime").info("too quiet to keep")
    out, err = capfd.readouterr()
    assert err == "" and out == ""
    text = log.text
    assert "UserWarning: exporting aten::index may be wrong" in text
    assert "WARNING root: Please consider to run pre-processing" in text
    assert "WARNING onnxruntime.quantization: quantizer says hello" in text
    assert "WARNING transformers: weights not initialised" in text
    assert "a library's own stderr line" in text and "too quiet" not in text
    # put back as it was: no handler left on the root logger, the library's handlers restored
    assert root.handlers == handlers_before and library.handlers == library_handlers
    with warnings.catch_warnings(record=True) as after:
        warnings.simplefilter("always")
        warnings.warn("outside", UserWarning, stacklevel=1)
    assert len(after) == 1  # warnings work as before once the block ended


def test_the_log_is_kept_when_the_block_fails():
    before = list(logging.getLogger().handlers)
    try:
        with captured_output() as log:
            logging.warning("about to fail")
            raise ValueError("boom")
    except ValueError:
        pass
    assert "about to fail" in log.text and logging.getLogger().handlers == before
