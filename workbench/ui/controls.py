"""Widgets for the fields of a stage config, and the config back from those widgets.

`controls_for` builds one widget per field of a frozen dataclass config from its type hints;
`config_from_controls` reads them back through `Config.from_dict`, so every check (and every ConfigError) stays
in the library. The widget chosen for each field type, and how its value is read back:

===========================  ========================  ==================================================
field type                   widget                    read back as
===========================  ========================  ==================================================
bool                         Checkbox                  the bool
int / float                  IntText / FloatText       the number
str                          Text                      the text, as typed (not stripped)
any type, with `choices`     Dropdown                  the chosen value (None is offered for `X | None`)
Literal["a", "b"]            Dropdown                  the chosen value
tuple[int, ...] (any tuple)  Text "1, 8"               a tuple; items split on commas and converted to the
                                                       item type; "" is the empty tuple
dict / list / anything else  Text holding JSON         json.loads of the text
X | None (int, float, str,   Text; empty means None    None for an empty (blank) text, else as for X, so
tuple, dict)                 (the placeholder says     an optional str cannot hold "" (use a choice list)
                             what None means, from
                             the field's docstring)
bool | None                  Dropdown None/True/False  the chosen value
===========================  ========================  ==================================================

Text that cannot be read as its field's type raises ConfigError naming the field, as a bad config value does.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, Literal, Union

import ipywidgets as widgets

from workbench.errors import ConfigError

__all__ = ["controls_for", "config_from_controls", "field_labels"]

_NONE_LABEL = "None"
_STYLE = {"description_width": "14em"}
_LAYOUT = {"width": "36em"}


def controls_for(
    config: Any,
    *,
    exclude: Iterable[str] = (),
    labels: Mapping[str, str] | None = None,
    choices: Mapping[str, Iterable[Any]] | None = None,
) -> dict[str, widgets.Widget]:
    """One widget per field of a frozen dataclass config, in field order, keyed by field name.

    Args:
        config: A config class (widgets start at the field defaults) or instance (widgets start at its values).
        exclude: Field names to leave out (config_from_controls fills them from `base` or the defaults).
        labels: Field name -> widget description; default: the field name with spaces for underscores.
        choices: Field name -> allowed values; the field becomes a Dropdown over them (with a None option
            first when the field is `X | None`).

    Widgets carry the field's docstring line (the class's "Attributes:" section) as their tooltip.
    """
    cls = config if isinstance(config, type) else type(config)
    _check_dataclass(cls)
    hints = typing.get_type_hints(cls)
    labels = dict(labels or {})
    choices = {k: tuple(v) for k, v in (choices or {}).items()}
    excluded = set(exclude)
    field_names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted((excluded | set(labels) | set(choices)) - field_names)
    if unknown:
        raise ConfigError(
            f"{cls.__name__} has no field(s) {unknown}.",
            expected=f"fields among {sorted(field_names)}",
            fix="check the names passed as exclude=, labels= or choices=",
        )
    docs = _attribute_docs(cls)
    controls: dict[str, widgets.Widget] = {}
    for field in dataclasses.fields(cls):
        if field.name in excluded:
            continue
        value = getattr(config, field.name) if not isinstance(config, type) else _default(field)
        allowed = choices.get(field.name)
        widget = _widget_for(
            hints[field.name], value, tuple(allowed) if allowed is not None else None, docs.get(field.name, "")
        )
        widget.description = labels.get(field.name, field.name.replace("_", " "))
        widget.style = dict(_STYLE)
        widget.layout = widgets.Layout(**_LAYOUT)
        if field.name in docs:
            widget.tooltip = docs[field.name]
        controls[field.name] = widget
    return controls


def config_from_controls(config_cls: Any, controls: Mapping[str, widgets.Widget], base: Any = None) -> Any:
    """Build a config from widget values, through `config_cls.from_dict` (validation stays in the library).

    Args:
        config_cls: The config class, or an instance (then it is also the default `base`).
        controls: Field name -> widget, as from controls_for (or any widgets whose `.value` fits the field).
            Keys that are not fields of the config are ignored, so a view may keep other controls in the
            same dict.
        base: A config instance whose values fill the fields that have no control; default the field defaults.

    Raises:
        ConfigError: A text cannot be read as its field's type, or the config rejects a value.
    """
    if not isinstance(config_cls, type):
        base = config_cls if base is None else base
        config_cls = type(config_cls)
    _check_dataclass(config_cls)
    hints = typing.get_type_hints(config_cls)
    fields = [f.name for f in dataclasses.fields(config_cls)]
    values: dict[str, Any] = {}
    if base is not None:
        values.update({name: getattr(base, name) for name in fields})
    for name in fields:
        if name in controls:
            label = getattr(controls[name], "description", "") or name.replace("_", " ")
            values[name] = _read(config_cls.__name__, name, hints[name], controls[name].value, label)
    if hasattr(config_cls, "from_dict"):
        return config_cls.from_dict(values)
    try:
        return config_cls(**values)
    except TypeError as exc:  # a missing required field, for a plain dataclass
        raise ConfigError(f"{config_cls.__name__}: {exc}") from exc


def field_labels(config: Any) -> dict[str, str]:
    """Field name -> its one-line description from the class docstring's "Attributes:" section."""
    return _attribute_docs(config if isinstance(config, type) else type(config))


# -- building widgets ------------------------------------------------------------------------------------------


def _empty_means(doc: str) -> str:
    """What an empty optional field means, from its docstring ("...; None: all cores." -> "all cores")."""
    match = re.search(r"\bNone(?: means|:)\s*([^.;]+)", doc)
    return match.group(1).strip() if match else "not set"


def _tuple_placeholder(hint: Any) -> str:
    """A placeholder that shows what the tuple's items look like."""
    args = typing.get_args(hint)
    item = args[0] if len(args) == 2 and args[1] is Ellipsis else None
    placeholders: dict[Any, str] = {
        int: "comma-separated whole numbers, e.g. 1, 8",
        float: "comma-separated numbers, e.g. 0.5, 1",
        str: "comma-separated names",
    }
    return placeholders.get(item, "comma-separated values")


def _widget_for(hint: Any, value: Any, choices: tuple[Any, ...] | None, doc: str = "") -> widgets.Widget:
    inner, optional = _unwrap_optional(hint)
    if choices is None and typing.get_origin(inner) is Literal:
        choices = typing.get_args(inner)
    if choices is None and optional and inner is bool:
        choices = (True, False)
    if choices is not None:
        values = ([None] if optional else []) + list(choices)
        if all(v is not value and v != value for v in values):
            values.append(value)  # show what the config holds, even if it is outside the list
        if all(isinstance(v, str) for v in values):
            return widgets.Dropdown(options=tuple(values), value=value)  # options read as given
        return widgets.Dropdown(options=[(_NONE_LABEL if v is None else str(v), v) for v in values], value=value)
    if optional:
        return widgets.Text(
            value="" if value is None else _as_text(inner, value), placeholder=f"empty: {_empty_means(doc)}"
        )
    if inner is bool:
        return widgets.Checkbox(value=bool(value), indent=True)
    if inner is int:
        return widgets.IntText(value=0 if value is None else value)
    if inner is float:
        return widgets.FloatText(value=0.0 if value is None else value)
    if inner is str:
        return widgets.Text(value="" if value is None else value)
    if _is_tuple(inner):
        return widgets.Text(value=_as_text(inner, value), placeholder=_tuple_placeholder(inner))
    return widgets.Text(value=_as_text(inner, value), placeholder="JSON")


def _as_text(hint: Any, value: Any) -> str:
    if value is None:
        return ""
    if hint in (int, float, str):
        return str(value)
    if _is_tuple(hint):
        return ", ".join(str(v) for v in value)
    return json.dumps(_plain(value))


# -- reading widgets -------------------------------------------------------------------------------------------


def _read(cls_name: str, name: str, hint: Any, value: Any, label: str = "") -> Any:
    """A widget value converted to the field's type; text fields are parsed, other values pass through."""
    if not isinstance(value, str):
        return value  # Checkbox, IntText, FloatText, Dropdown: already typed; the config checks the rest
    inner, optional = _unwrap_optional(hint)
    if optional and not value.strip():
        return None
    if inner is str or typing.get_origin(inner) is Literal:
        return value
    try:
        if inner in (int, float):
            return _scalar(inner, value.strip())
        if _is_tuple(inner):
            items = [item.strip() for item in value.split(",") if item.strip()]
            return tuple(_scalar(t, item) for t, item in zip(_item_types(inner, len(items)), items))
        return json.loads(value)
    except (ValueError, TypeError) as exc:
        raise ConfigError(
            f"{cls_name}.{name}: cannot read {value!r} as {_type_name(hint)} ({exc}).",
            expected=_expected_text(inner, optional),
            fix=f"correct the '{label or name.replace('_', ' ')}' control",
        ) from None


def _scalar(kind: Any, text: str) -> Any:
    if kind is bool:
        lowered = text.lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"{text!r} is not true or false")
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    if kind is str or kind is Any:
        return text
    return json.loads(text)


def _item_types(hint: Any, count: int) -> list[Any]:
    args = typing.get_args(hint)
    if not args:
        return [Any] * count
    if len(args) == 2 and args[1] is Ellipsis:
        return [args[0]] * count
    if len(args) != count:
        raise ValueError(f"expected {len(args)} comma-separated values, got {count}")
    return list(args)


def _expected_text(inner: Any, optional: bool) -> str:
    if inner is int:
        text = "a whole number"
    elif inner is float:
        text = "a number, e.g. 0.001 or 1e-3"
    elif _is_tuple(inner):
        item = _item_types(inner, 1)[0] if typing.get_args(inner)[1:2] == (Ellipsis,) else None
        lists: dict[Any, str] = {
            int: "comma-separated whole numbers, e.g. 1, 8",
            float: "comma-separated numbers, e.g. 0.5, 1",
        }
        text = lists.get(item, "comma-separated values")
    else:
        text = 'JSON, e.g. {"key": 1}'
    return text + (", or empty for None" if optional else "")


# -- type helpers ----------------------------------------------------------------------------------------------


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    """(X, True) for `X | None` / Optional[X]; (hint, False) otherwise."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) < len(typing.get_args(hint)):
            return (args[0] if len(args) == 1 else Union[tuple(args)]), True  # noqa: UP007 (built at run time)
    return hint, False


def _is_tuple(hint: Any) -> bool:
    return hint is tuple or typing.get_origin(hint) is tuple


def _type_name(hint: Any) -> str:
    return str(getattr(hint, "__name__", hint)) if isinstance(hint, type) else str(hint).replace("typing.", "")


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _check_dataclass(cls: type) -> None:
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a dataclass; controls are built from a dataclass config's fields.")


def _attribute_docs(cls: type) -> dict[str, str]:
    """Parse the Google-style "Attributes:" section of a class docstring into name -> text (one line)."""
    doc = cls.__doc__ or ""
    match = re.search(r"^(\s*)Attributes:\s*$", doc, flags=re.MULTILINE)
    if not match:
        return {}
    docs: dict[str, str] = {}
    current: str | None = None
    item_indent: int | None = None
    for line in doc[match.end() :].splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip())
        if indent <= len(match.group(1)):
            break  # the section ended
        entry = re.match(r"\s*(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line)
        if entry and (item_indent is None or indent == item_indent):
            item_indent = indent
            current = entry.group(1)
            docs[current] = entry.group(2).strip()
        elif current is not None:
            docs[current] += " " + line.strip()
    return docs
