"""Frozen, typed, validated configs with named presets and a JSON form.

One config object feeds a widget, a papermill parameter, a recipe and a provenance record, so every stage
config derives from :class:`StageConfig`. Every subclass that is a dataclass checks its fields at construction,
before its own ``__post_init__`` runs: the type of every field from its annotation (bool, int, float, str,
tuples, mappings, ``Literal``, ``Optional``/unions, paths and nested configs) and, where a field's metadata has
``"range": (low, high)`` (inclusive, None for open), its range; a field whose metadata has
``"checked_in_post_init": True`` is left to the class (which accepts looser forms of it). Nothing per class is
needed: subclassing StageConfig wraps the class's ``__post_init__`` (see ``StageConfig.__init_subclass__``).

The checks are strict where a loose reading would silently change a run (``overwrite="no"`` is an error, not
True; ``sequence_length=64.5`` is an error, not 64) and lenient where nothing is lost: an int is accepted for a
float field (stored as float), a list for a tuple field (JSON has no tuples; stored as a tuple), a dict for a
nested config, and a path object for a str field (stored as its string).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import json
import math
import numbers
import os
import types
import typing
from pathlib import PurePath
from typing import Any, ClassVar, TypeVar

from typing_extensions import Self

from workbench.errors import ConfigError

C = TypeVar("C", bound="StageConfig")

_HINTS: dict[type, dict[str, Any]] = {}


class StageConfig:
    """Mixin for frozen dataclass configs: checked types and ranges, JSON round-trip, presets, and `replace`."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Runs before @dataclass processes the class, so the generated __init__ calls this wrapper. It checks the
        # fields, then runs the class's own __post_init__ (or the one it inherits).
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("__post_init__")
        original = own if own is not None else getattr(cls, "_unchecked_post_init", None)

        def __post_init__(self: StageConfig) -> None:
            check_fields(self)
            if original is not None:
                original(self)

        __post_init__.__doc__ = getattr(original, "__doc__", None)
        cls.__post_init__ = __post_init__  # type: ignore[attr-defined]
        cls._unchecked_post_init = original  # type: ignore[attr-defined]

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        """Build from a dict; unknown keys are an error (a typo must not be silently ignored)."""
        if not isinstance(values, collections.abc.Mapping):
            raise ConfigError(
                f"{cls.__name__} needs a mapping of field names to values, got {type(values).__name__}.",
                fix="pass a dict (a JSON object) such as {'field': value}",
            )
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ConfigError(
                f"{cls.__name__} has no field(s) {unknown}{closest_hint(unknown, fields)}.",
                expected=f"fields among {sorted(fields)}",
                fix="check the spelling of the keys",
            )
        missing = sorted(
            name
            for name, f in fields.items()
            if name not in values
            and f.init
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise ConfigError(
                f"{cls.__name__} needs the field(s) {missing}, which are missing.",
                fix=f"give {', '.join(missing)} a value",
            )
        return cls(**values)

    @classmethod
    def from_json(cls, text: str) -> Self:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(
                f"{cls.__name__} JSON does not parse: {exc}.",
                fix="write the config with to_json(), or repair the JSON by hand",
            ) from exc
        return cls.from_dict(values)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Self:
        """A named preset, optionally with some fields overridden."""
        if name not in cls.PRESETS:
            raise ConfigError(
                f"{cls.__name__} has no preset {name!r}{closest_hint([name], cls.PRESETS)}.",
                expected=f"one of {sorted(cls.PRESETS)}",
            )
        return cls.from_dict({**cls.PRESETS[name], **overrides})

    def replace(self, **changes: Any) -> Self:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def closest_hint(unknown: typing.Iterable[str], allowed: typing.Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the first unknown name with a close allowed one, else ''."""
    allowed = [str(a) for a in allowed]
    for name in unknown:
        match = difflib.get_close_matches(str(name), allowed, n=1, cutoff=0.6)
        if match:
            return f" (did you mean {match[0]!r} instead of {name!r}?)"
    return ""


# --------------------------------------------------------------------------------------------------------------
# Type checks from annotations


class _Mismatch(Exception):
    """A value does not fit a type: `expected` says what would, `where` the part of the value that did not."""

    def __init__(self, expected: str, where: str = "", value: Any = None) -> None:
        super().__init__(expected)
        self.expected, self.where, self.value = expected, where, value


class _Range(_Mismatch):
    """A number outside its field's range."""


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        try:
            _HINTS[cls] = typing.get_type_hints(cls, include_extras=True)
        except (NameError, TypeError):  # a class defined in a function: resolve what can be, leave the rest
            import sys

            hints: dict[str, Any] = {}
            for klass in reversed(cls.__mro__):
                namespace = vars(sys.modules.get(klass.__module__, object()))
                for name, annotation in vars(klass).get("__annotations__", {}).items():
                    try:
                        hints[name] = eval(annotation, dict(namespace)) if isinstance(annotation, str) else annotation
                    except Exception:  # noqa: BLE001 - an annotation that cannot be resolved is not checked
                        hints[name] = Any
            _HINTS[cls] = hints
    return _HINTS[cls]


def check_fields(config: Any) -> None:
    """Check and normalise every field of a dataclass config in place; raise ConfigError naming the field.

    Called automatically for every StageConfig subclass; call it yourself only for other frozen dataclasses.
    """
    if not dataclasses.is_dataclass(config):
        return
    cls = type(config)
    hints = _hints(cls)
    for f in dataclasses.fields(config):
        if f.metadata and f.metadata.get("checked_in_post_init"):
            continue  # the class accepts looser forms of this field and checks it itself
        hint = hints.get(f.name, Any)
        value = getattr(config, f.name)
        if value is None and f.metadata and "gate" in f.metadata:
            continue  # a Budget gate (workbench.tasks.base.gate): None switches it off, whatever its annotation
        try:
            checked = _check(hint, value, "")
            bounds = f.metadata.get("range") if f.metadata else None
            if bounds is not None:
                _check_range(checked, bounds, "")
        except _Range as exc:
            raise ConfigError(f"{cls.__name__}.{f.name}{exc.where} must be {exc.expected}, got {exc.value}.") from None
        except _Mismatch as exc:
            raise _config_error(cls, f, exc) from None
        if checked is not value:
            object.__setattr__(config, f.name, checked)


def _config_error(cls: type, f: dataclasses.Field, exc: _Mismatch) -> ConfigError:
    name = f"{cls.__name__}.{f.name}{exc.where}"
    value = exc.value
    fix = None
    if isinstance(value, str) and exc.expected == "True or False":
        fix = f"write {f.name}=True or {f.name}=False without quotes (papermill: -p {f.name} False)"
    elif isinstance(value, str) and exc.expected.startswith(("an integer", "a number")):
        fix = f"write the number without quotes: {f.name}={value.strip()}"
    elif isinstance(value, float) and exc.expected.startswith("an integer"):
        fix = f"pass a whole number, for example {f.name}={math.floor(value)}" if math.isfinite(value) else None
    return ConfigError(f"{name} must be {exc.expected}, got {value!r} ({type(value).__name__}).", fix=fix)


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        return _describe(args[0])
    if hint is type(None):
        return "None"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return f"one of {list(args)}"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a tuple of {_plural(args[0])}"
        return f"a tuple of {len(args)} ({', '.join(_describe(a) for a in args)})" if args else "a tuple"
    if origin in (dict, collections.abc.Mapping):
        return "a mapping" + (f" of {_describe(args[0])} to {_describe(args[1])}" if args else "")
    simple = {bool: "True or False", int: "an integer", float: "a number", str: "a string"}
    if hint in simple:
        return simple[hint]
    if isinstance(hint, type) and issubclass(hint, PurePath):
        return "a path"
    if isinstance(hint, type):
        return f"a {hint.__name__}"
    return str(hint)


def _plural(hint: Any) -> str:
    plural = {bool: "True/False values", int: "integers", float: "numbers", str: "strings"}
    return plural.get(hint, f"({_describe(hint)})")


def _check(hint: Any, value: Any, where: str) -> Any:
    """`value` checked against `hint` (normalised: lists -> tuples, ints -> floats, dicts -> nested configs)."""
    if hint is Any or hint is object or isinstance(hint, (str, typing.TypeVar)):
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Annotated:
        checked = _check(args[0], value, where)
        for extra in args[1:]:
            if isinstance(extra, Range):
                _check_range(checked, (extra.low, extra.high), where)
        return checked
    if origin is typing.ClassVar:
        return value
    if hint is type(None):
        if value is None:
            return None
        raise _Mismatch("None", where, value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for option in args:
            if option is type(None):
                continue
            try:
                return _check(option, value, where)
            except _Mismatch as exc:
                if exc.where != where:  # it was the right kind of container with a bad element: say which
                    raise
        raise _Mismatch(_describe(hint), where, value)
    if origin is typing.Literal:
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _Mismatch(f"one of {list(args)}", where, value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch("True or False", where, value)
    if hint is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, bool):
            return value if type(value) is int else int(value)
        raise _Mismatch("an integer", where, value)
    if hint is float:
        if isinstance(value, numbers.Real) and not isinstance(value, bool):
            if math.isnan(float(value)):
                raise _Mismatch("a number (not NaN)", where, value)
            return value if type(value) is float else float(value)
        raise _Mismatch("a number", where, value)
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise _Mismatch("a string", where, value)
    if isinstance(hint, type) and issubclass(hint, PurePath):
        if isinstance(value, hint):
            return value
        if isinstance(value, (str, os.PathLike)):
            return hint(value)
        raise _Mismatch("a path", where, value)
    if origin is tuple or hint is tuple:
        if not isinstance(value, (tuple, list)):
            raise _Mismatch(_describe(hint), where, value)
        if not args:
            return tuple(value)
        if len(args) == 2 and args[1] is Ellipsis:
            items = [_check(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
        else:
            if len(value) != len(args):
                raise _Mismatch(_describe(hint), where, value)
            items = [_check(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
        same = isinstance(value, tuple) and all(a is b for a, b in zip(items, value))
        return value if same else tuple(items)
    if origin in (dict, collections.abc.Mapping) or hint in (dict, collections.abc.Mapping):
        if not isinstance(value, collections.abc.Mapping):
            raise _Mismatch(_describe(hint), where, value)
        if not args:
            return value
        checked = {
            _check(args[0], k, f"{where} key {k!r}"): _check(args[1], v, f"{where}[{k!r}]") for k, v in value.items()
        }
        same = all(checked[k] is v for k, v in value.items())
        return value if same else checked
    if isinstance(hint, type) and issubclass(hint, StageConfig):
        if isinstance(value, hint):
            return value
        if isinstance(value, collections.abc.Mapping):
            return hint.from_dict(dict(value))
        raise _Mismatch(f"a {hint.__name__} (or a dict of its fields)", where, value)
    if isinstance(hint, type):
        if isinstance(value, hint):
            return value
        raise _Mismatch(_describe(hint), where, value)
    return value  # a typing construct this check does not know: left to the class's own __post_init__


@dataclasses.dataclass(frozen=True)
class Range:
    """An inclusive range for `Annotated[int, Range(1, None)]` fields (None: open); metadata {"range": ...} too."""

    low: float | None = None
    high: float | None = None


def _check_range(value: Any, bounds: tuple[Any, Any], where: str) -> None:
    if isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            _check_range(item, bounds, f"{where}[{i}]")
        return
    if value is None or isinstance(value, bool) or not isinstance(value, numbers.Real):
        return
    low, high = bounds
    if (low is not None and value < low) or (high is not None and value > high):
        shown = f">= {low}" if high is None else f"<= {high}" if low is None else f"in [{low}, {high}]"
        raise _Range(shown, where, value)


def _plain(value: Any) -> Any:
    if isinstance(value, StageConfig):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, collections.abc.Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, PurePath):
        return str(value)
    return value


def check_choice(config: object, field: str, allowed: typing.Iterable[Any]) -> None:
    """Raise ConfigError unless config.field is one of `allowed`."""
    value = getattr(config, field)
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(
            f"{type(config).__name__}.{field} = {value!r} is not one of {list(allowed)}"
            f"{closest_hint([str(value)], allowed) if isinstance(value, str) else ''}."
        )


def check_positive(config: object, *fields: str) -> None:
    """Raise ConfigError unless each named field (a number or a tuple of numbers) is > 0."""
    for field in fields:
        value = getattr(config, field)
        values = value if isinstance(value, tuple) else (value,)
        if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in values):
            raise ConfigError(f"{type(config).__name__}.{field} must be positive, got {value!r}.")
