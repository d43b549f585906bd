"""Engines: the one runner protocol (activate, infer, deactivate, or a context manager), and the registry of
engines, each declared once with how it loads a model, whether it is available here, the precision methods it
offers and its Triton backend."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

import numpy as np


@runtime_checkable
class Runner(Protocol):
    """An inference engine behind a uniform, numpy-in numpy-out interface."""

    name: str

    def activate(self) -> None: ...

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def deactivate(self) -> None: ...

    def __enter__(self) -> Runner: ...

    def __exit__(self, *exc: object) -> None: ...


class BaseRunner:
    """Shared context-manager plumbing; subclasses implement `_activate`, `_infer` and `_deactivate`."""

    name: str = "runner"

    def __init__(self) -> None:
        self.is_active = False

    def activate(self) -> None:
        if not self.is_active:
            self._activate()
            self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            self._deactivate()
            self.is_active = False

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.is_active:
            raise RuntimeError(f"Runner {self.name!r} is not active: use it as a context manager or call activate().")
        return self._infer(feeds)

    def __enter__(self) -> BaseRunner:
        self.activate()
        return self

    def __exit__(self, *exc: object) -> None:
        self.deactivate()

    # subclasses -------------------------------------------------------------------------------------------
    def _activate(self) -> None:
        raise NotImplementedError

    def _infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def _deactivate(self) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


# ---------------------------------------------------------------------------------------------------------------
# Engines: one registered object per runtime


@dataclass(frozen=True)
class Availability:
    """Whether an engine can run here, and why (its version, or what is missing). Truthy when available.

    Attributes:
        available: Whether models can be loaded and run with it on this machine.
        reason: One line: the version and device when available, else what is missing and how to get it.
        version: The engine's package version, when it is installed.
    """

    available: bool
    reason: str
    version: str | None = None

    def __bool__(self) -> bool:
        return self.available


class Engine:
    """What the workbench knows about one runtime, declared once (compare optimum's TasksManager).

    Subclasses set the class attributes and implement :meth:`availability` and :meth:`runner`; they are
    registered with :func:`register_engine` and found with :func:`get_engine` / :func:`engine_for_path`.

    Attributes:
        name: Registry key, e.g. "onnxruntime"; a candidate's `engine` field.
        title: For people, e.g. "ONNX Runtime".
        extra: The pip extra that installs it (`pip install "inference-workbench[EXTRA]"`); None: always there.
        suffixes: File suffixes of the models it loads (".onnx", ".xml", ".plan"); empty for in-memory models.
        precisions: The precision methods it offers, by PrecisionPlan method name.
        triton_backend: Triton's backend name for it (config.pbtxt `backend`); None: not deployable to Triton.
        triton_platform: Triton's platform name, where Triton has one (config.pbtxt `platform`).
        model_files: The files of a Triton model version folder, e.g. ("model.onnx",).
        gpu: Whether it needs an NVIDIA GPU (its availability then probes the hardware; nothing else does).
        float_precisions: The precisions it can run a model's floating-point ops in (a Candidate's
            `float_precision`): "fp32" everywhere; OpenVINO adds "bf16" on CPUs with bfloat16 instructions.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    extra: ClassVar[str | None] = None
    suffixes: ClassVar[tuple[str, ...]] = ()
    precisions: ClassVar[tuple[str, ...]] = ()
    triton_backend: ClassVar[str | None] = None
    triton_platform: ClassVar[str | None] = None
    model_files: ClassVar[tuple[str, ...]] = ()
    gpu: ClassVar[bool] = False
    float_precisions: ClassVar[tuple[str, ...]] = ("fp32",)

    def availability(self) -> Availability:
        """Whether it can run here. Imports the engine's package; only GPU engines probe the hardware."""
        raise NotImplementedError

    def runner(
        self, model: Any, *, name: str | None = None, threads: int | None = None, float_precision: str = "fp32"
    ) -> Runner:
        """A runner for `model` (a model file, or an in-memory model for PyTorch), its floating-point ops in
        `float_precision` (one of `float_precisions`). Nothing is loaded until it is activated.

        Raises:
            ConfigError: This engine does not run floating-point ops in `float_precision`.
        """
        raise NotImplementedError

    def require(self) -> None:
        """Raise MissingDependency (or DeviceUnavailable) with the engine's reason unless it is available."""
        from workbench.errors import DeviceUnavailable, MissingDependency

        status = self.availability()
        if status:
            return
        error = DeviceUnavailable if self.gpu and status.version else MissingDependency
        fix = (
            f'pip install "inference-workbench[{self.extra}]" (from a checkout: pip install -e ".[{self.extra}]")'
            if self.extra
            else None
        )
        raise error(f"{self.title} is not available here: {status.reason}", fix=fix)

    def copy_model(self, source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> Path:
        """Copy a model file and the files that go with it (same stem, the suffixes of `model_files`: an OpenVINO
        .xml takes its .bin along), each atomically, the named file last. Returns `destination`."""
        import shutil

        from workbench._files import atomic_path

        source, destination = Path(source), Path(destination)
        companions = [s for s in dict.fromkeys(Path(f).suffix for f in self.model_files) if s != source.suffix]
        for suffix in [*companions, source.suffix]:
            with atomic_path(destination.with_suffix(suffix)) as staged:
                shutil.copyfile(source.with_suffix(suffix), staged)
        return destination

    def handles(self, path: str | os.PathLike[str]) -> bool:
        return Path(path).suffix.lower() in self.suffixes

    def __repr__(self) -> str:
        return f"<engine {self.name}>"


E = TypeVar("E", bound=type[Engine])

_ENGINES: dict[str, Engine] = {}
# The built-in engines' modules: importing one registers its engine (each imports only numpy at module level).
BUILTIN_ENGINE_MODULES = (
    "workbench.engines.pytorch",
    "workbench.engines.onnxruntime",
    "workbench.engines.openvino",
    "workbench.engines.tensorrt",
)


def register_engine(cls: E) -> E:
    """Class decorator: register one instance of an Engine subclass under its `name` (a name registered twice
    is an error: one object per engine)."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no `name`.")
    if cls.__module__ not in BUILTIN_ENGINE_MODULES:
        _load_builtins()  # the built-in engines come first: files are matched to engines in registration order
    existing = _ENGINES.get(cls.name)
    if existing is not None and type(existing).__qualname__ != cls.__qualname__:
        raise ValueError(f"An engine named {cls.name!r} is already registered ({type(existing).__name__}).")
    _ENGINES[cls.name] = cls()
    return cls


def _load_builtins() -> None:
    import importlib

    for module in BUILTIN_ENGINE_MODULES:
        importlib.import_module(module)


def engines() -> dict[str, Engine]:
    """Every registered engine, by name, in registration order."""
    _load_builtins()
    return dict(_ENGINES)


def get_engine(name: str) -> Engine:
    """The engine registered as `name`.

    Raises:
        ConfigError: No such engine (the message lists the registered ones).
    """
    from workbench.errors import ConfigError

    found = engines().get(name)
    if found is None:
        raise ConfigError(f"There is no engine {name!r}.", expected=f"one of {sorted(engines())}")
    return found


def engine_for_path(path: str | os.PathLike[str]) -> Engine:
    """The engine that loads a model file of this kind (by suffix: .onnx -> onnxruntime, .xml -> openvino, ...)."""
    from workbench.errors import ModelSourceError

    for engine in engines().values():
        if engine.handles(path):
            return engine
    suffixes = sorted({s for e in engines().values() for s in e.suffixes})
    raise ModelSourceError(f"No registered engine loads {Path(path).name}.", expected=f"a file ending in {suffixes}")


#: Every float precision an engine may declare (Engine.float_precisions).
FLOAT_PRECISIONS = ("fp32", "bf16")


def check_float_precision(engine: Engine, float_precision: str) -> None:
    """Raise ConfigError unless `engine` runs floating-point ops in `float_precision`."""
    from workbench.errors import ConfigError

    if float_precision not in engine.float_precisions:
        raise ConfigError(
            f"{engine.title} does not run floating-point ops in {float_precision!r}.",
            expected=f"a float precision among {list(engine.float_precisions)} for the {engine.name} engine",
            fix='use float_precision="fp32", or an OpenVINO candidate for bf16',
        )


@dataclass(frozen=True)
class Candidate:
    """A model file that may ship, and the engine that runs it.

    Attributes:
        name: Its name in reports and summary.json, e.g. "int8_dynamic_smoothquant".
        path: The model file (.onnx, OpenVINO .xml, TensorRT .plan).
        engine: The registered engine that runs it.
        precision: How it was made: "fp32", or a PrecisionPlan method ("int8_dynamic", ...).
        float_precision: What its engine runs the ops the model keeps in floating point in: "fp32", or "bf16"
            (OpenVINO on a CPU with bfloat16 instructions: the FP32 ops of an INT8 model, or a whole FP32 model,
            at about half the cost; its accuracy is measured that way too). A runtime setting, so the Triton
            export carries it in the model's config.
    """

    name: str
    path: Path
    engine: str = "onnxruntime"
    precision: str = "fp32"
    float_precision: str = "fp32"

    def __post_init__(self) -> None:
        from workbench.errors import ConfigError

        object.__setattr__(self, "path", Path(self.path))
        if self.float_precision not in FLOAT_PRECISIONS:
            raise ConfigError(
                f"Candidate {self.name!r}: float_precision {self.float_precision!r} is not one of "
                f"{list(FLOAT_PRECISIONS)}.",
                fix='use "fp32", or "bf16" for an OpenVINO candidate on a CPU with bfloat16 instructions',
            )

    def __fspath__(self) -> str:
        # a Candidate is a model file: every stage that takes a path takes a Candidate
        return str(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def runner(self, *, threads: int | None = None) -> Runner:
        return get_engine(self.engine).runner(
            self.path, name=self.name, threads=threads, float_precision=self.float_precision
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "engine": self.engine,
            "precision": self.precision,
            "float_precision": self.float_precision,
        }
