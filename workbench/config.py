"""Frozen, typed, validated configs with named presets and a JSON form.

One config object feeds a widget, a papermill parameter, a recipe and a provenance record, so every stage
config derives from :class:`StageConfig`.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, ClassVar, TypeVar

from workbench.errors import ConfigError

C = TypeVar("C", bound="StageConfig")


class StageConfig:
    """Mixin for frozen dataclass configs: JSON round-trip, presets, and `replace`."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any]) -> C:
        """Build from a dict; unknown keys are an error (a typo must not be silently ignored)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ConfigError(
                f"{cls.__name__} has no field(s) {unknown}.",
                expected=f"fields among {sorted(fields)}",
                fix="check the spelling of the keys",
            )
        hints = typing.get_type_hints(cls)
        converted = {k: _tuple_if_sequence(hints.get(k), v) for k, v in values.items()}
        return cls(**converted)

    @classmethod
    def from_json(cls: type[C], text: str) -> C:
        return cls.from_dict(json.loads(text))

    @classmethod
    def preset(cls: type[C], name: str, **overrides: Any) -> C:
        """A named preset, optionally with some fields overridden."""
        if name not in cls.PRESETS:
            raise ConfigError(
                f"{cls.__name__} has no preset {name!r}.", expected=f"one of {sorted(cls.PRESETS)}"
            )
        return cls.from_dict({**cls.PRESETS[name], **overrides})

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _tuple_if_sequence(hint: Any, value: Any) -> Any:
    # JSON has no tuples: turn lists back into tuples where the field is typed as one.
    if isinstance(value, list) and hint is not None and "tuple" in str(hint).lower():
        return tuple(value)
    return value


def check_choice(config: object, field: str, allowed: typing.Iterable[Any]) -> None:
    """Raise ConfigError unless config.field is one of `allowed`."""
    value = getattr(config, field)
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"{type(config).__name__}.{field} = {value!r} is not one of {list(allowed)}.")


def check_positive(config: object, *fields: str) -> None:
    """Raise ConfigError unless each named field (a number or a tuple of numbers) is > 0."""
    for field in fields:
        value = getattr(config, field)
        values = value if isinstance(value, tuple) else (value,)
        if not values or any(not isinstance(v, (int, float)) or v <= 0 for v in values):
            raise ConfigError(f"{type(config).__name__}.{field} must be positive, got {value!r}.")
