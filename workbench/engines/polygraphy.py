"""Wrap a workbench runner as a Polygraphy runner, so Polygraphy's Comparator can drive it."""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from workbench._lazy import require
from workbench.engines.base import Runner


def as_polygraphy_runner(runner: Runner) -> Any:
    """Return a `polygraphy.backend.base.BaseRunner` that delegates to `runner`.

    Runners that have an `input_specs()` method (name -> (dtype, shape)) describe their inputs to Polygraphy,
    which checks every feed against them.
    """
    base = require("polygraphy.backend.base", purpose="Comparing models with Polygraphy")
    common = require("polygraphy.common", purpose="Comparing models with Polygraphy")

    class _Adapter(base.BaseRunner):
        def __init__(self) -> None:
            super().__init__(name=runner.name)

        def activate_impl(self) -> None:
            runner.activate()

        def get_input_metadata_impl(self) -> Any:
            metadata = common.TensorMetadata()
            specs = getattr(runner, "input_specs", None)
            for name, (dtype, shape) in (specs() if specs else {}).items():
                metadata.add(name, dtype, [d if isinstance(d, int) else -1 for d in shape])
            return metadata

        def infer_impl(self, feed_dict: Any) -> Any:
            started = time.perf_counter()
            outputs = OrderedDict(runner.infer(feed_dict))
            self.inference_time = time.perf_counter() - started  # Comparator sums it
            return outputs

        def deactivate_impl(self) -> None:
            runner.deactivate()

    return _Adapter()


@contextlib.contextmanager
def quiet_polygraphy(level: str = "CRITICAL") -> Iterator[None]:
    """Polygraphy's logger at `level` for the length of a block, then as it was: the one place the workbench
    changes it (Polygraphy logs every comparison and failing check; the workbench's reports say it all)."""
    logger = require("polygraphy.logger", purpose="Running Polygraphy").G_LOGGER
    previous = logger.module_severity
    logger.module_severity = getattr(logger, level)
    try:
        yield
    finally:
        logger.module_severity = previous
