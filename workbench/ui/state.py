"""The Workbench's state on disk, so that a re-run cell or a reloaded page re-attaches to its output folder.

After every step, the Workbench writes <output_dir>/workbench_state.pkl (atomically) beside recipe.json: the
pipeline's parameters, its step records, every step's typed result (ExportResult, ComparisonReport,
BenchmarkResult, Choice, ...), its candidates, plans and logs, the configs the steps ran with, and each panel's
state. A Workbench built on the same parameters (the cell run again, or after a kernel restart) loads it and shows
the finished steps as done, with their results, without running anything.

Why pickled results rather than replaying the recorded steps: replaying would run them again (the benchmark alone
takes a minute on MiniLM, and its timings would differ), and rebuilding each result from its JSON would need a
reader for every result type of every stage. Pickles restore the very objects the panels show, in milliseconds.
The cost: the file is only read back by the same workbench version (else it is ignored, and the steps show "not
run"), and, like any pickle, it must come from a folder you trust (it is the Workbench's own output).

Nothing is restored when the parameters differ (another model, other data, other sample counts: the folder then
holds another run's results, and the next step overwrites the file), or when a file a step wrote has changed or
gone since (its size or modification time differs).
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["STATE_FILE", "STATE_VERSION", "SavedState", "save_state", "load_state"]

STATE_FILE = "workbench_state.pkl"
STATE_VERSION = 1


@dataclass(frozen=True)
class SavedState:
    """What a Workbench re-attached to (or why it did not).

    Attributes:
        path: The state file.
        steps: The steps restored, in the order they ran.
        states: Step key -> the panel state it had ("done", "stale").
        reason: Why nothing was restored (empty when something was).
    """

    path: Path
    steps: tuple[str, ...] = ()
    states: Mapping[str, str] = field(default_factory=dict)
    reason: str = ""

    def __bool__(self) -> bool:
        return bool(self.steps)


def _version() -> str:
    from workbench import __version__

    return str(__version__)


def _files(pipeline: Any) -> dict[str, tuple[int, int]]:
    """Every file the recorded steps wrote -> (size, mtime_ns) now."""
    found = {}
    for record in pipeline.history:
        for name in record.outputs:
            path = Path(name) if Path(name).is_absolute() else pipeline.output_dir / name
            if path.is_file():
                stat = path.stat()
                found[str(path)] = (stat.st_size, stat.st_mtime_ns)
    return found


def save_state(pipeline: Any, states: Mapping[str, str]) -> Path:
    """Write the pipeline's run (results included) and the panels' states to <output_dir>/workbench_state.pkl."""
    from workbench._files import atomic_path

    payload = {
        "version": STATE_VERSION,
        "workbench_version": _version(),
        "pipeline_class": f"{type(pipeline).__module__}.{type(pipeline).__qualname__}",
        "parameters": pipeline.initial_parameters.to_dict(),
        "source": str(getattr(pipeline.source, "path", pipeline.source.name)),
        "history": list(pipeline.history),
        "results": dict(pipeline.results),
        "candidates": dict(pipeline.candidates),
        "plans": dict(pipeline.plans),
        "logs": dict(pipeline.logs),
        "unavailable_engines": dict(pipeline.unavailable_engines),
        "configs": {name: getattr(pipeline, name) for name in type(pipeline).config_types if hasattr(pipeline, name)},
        "parameters_now": pipeline.parameters.to_dict(),
        "files": _files(pipeline),
        "states": dict(states),
    }
    path = pipeline.output_dir / STATE_FILE
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            pickle.dump(payload, handle, protocol=pickle.HIGHEST_PROTOCOL)
    return path


def load_state(pipeline: Any) -> SavedState:
    """Restore a saved run into a freshly loaded `pipeline` when it is the same run; say why not otherwise.

    Restores the results, step records, candidates, plans, logs and configs; the pipeline's parameters become the
    ones the last step ran with. A state that does not fit is left alone (the next step overwrites it).
    """
    from workbench.pipeline import PipelineParameters

    path = pipeline.output_dir / STATE_FILE
    if not path.is_file():
        return SavedState(path, reason="no saved state")
    try:
        with open(path, "rb") as handle:
            payload = pickle.load(handle)  # the Workbench's own file in its own output folder (see the docstring)
    except Exception as exc:  # unreadable: an older library's classes, a truncated file
        return SavedState(path, reason=f"the saved state could not be read ({type(exc).__name__}: {exc})")
    if not isinstance(payload, dict) or payload.get("version") != STATE_VERSION:
        return SavedState(path, reason="the saved state has another format")
    if payload.get("workbench_version") != _version():
        return SavedState(path, reason=f"the saved state is from workbench {payload.get('workbench_version')}")
    kind = f"{type(pipeline).__module__}.{type(pipeline).__qualname__}"
    if payload.get("pipeline_class") != kind:
        return SavedState(path, reason=f"the saved state is of another pipeline ({payload.get('pipeline_class')})")
    if payload["parameters"] != pipeline.initial_parameters.to_dict():
        changed = sorted(
            k for k, v in pipeline.initial_parameters.to_dict().items() if payload["parameters"].get(k) != v
        )
        return SavedState(path, reason="the folder holds a run with other parameters (" + ", ".join(changed) + ")")
    if payload["source"] != str(getattr(pipeline.source, "path", pipeline.source.name)):
        return SavedState(path, reason="the folder holds a run of another model")
    history = payload["history"]
    probe = type("Probe", (), {"history": history, "output_dir": pipeline.output_dir})()
    if _files(probe) != payload["files"]:
        return SavedState(path, reason="files the steps wrote changed since they ran")
    steps = [name for name in payload["results"] if name in pipeline.steps]
    for name in steps:
        pipeline.results._set(name, payload["results"][name])
    pipeline.history[:] = history
    pipeline.candidates.update(payload["candidates"])
    pipeline.plans.update(payload["plans"])
    pipeline.logs.update(payload["logs"])
    pipeline.unavailable_engines = dict(payload["unavailable_engines"])
    for name, config in payload["configs"].items():
        setattr(pipeline, name, config)
    pipeline.parameters = PipelineParameters.from_dict(payload["parameters_now"])
    order = list(dict.fromkeys(record.step for record in history if record.step in steps))
    order += [name for name in steps if name not in order]
    return SavedState(path, tuple(order), {k: v for k, v in payload["states"].items() if k in steps})
