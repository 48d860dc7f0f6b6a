"""JSON into dataclasses, checked, with errors that name the bad field.

What serde does for the Rust SDK: ``decode(Input, value)`` builds an ``Input``
dataclass from parsed JSON and raises :class:`DecodeError` with the path of the
first bad field (``apps[2].id: invalid type: integer `7`, expected a string``).

Supported annotations: ``str``, ``int``, ``float``, ``bool``, ``Any``,
``T | None`` (``Optional[T]``), ``list[T]``, ``dict[str, T]``, nested
dataclasses, :class:`datetime.datetime` (RFC 3339 with an offset) and
:class:`datetime.timedelta` (``"24h"``, ``"PT90M"``). Fields with defaults may
be left out. ``strict=True`` refuses unknown fields (task input does);
answers from APIs are read leniently.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from datetime import datetime, timedelta
from typing import Any, TypeVar

from .timeutil import parse_duration, parse_timestamp

__all__ = ["decode", "DecodeError"]

T = TypeVar("T")


class DecodeError(ValueError):
    """A value that does not fit the type asked for. ``path`` locates it
    (``""`` for the whole value), ``problem`` says what is wrong."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


def decode(cls: Any, value: Any, *, strict: bool = False) -> Any:
    """``value`` (parsed JSON) as ``cls``; raises :class:`DecodeError`."""
    return _decode(cls, value, "", strict)


def _describe(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value}`"
    if isinstance(value, str):
        return f"string {_quote(value)}"
    if isinstance(value, list):
        return "sequence"
    if isinstance(value, dict):
        return "map"
    return type(value).__name__


def _quote(text: str) -> str:
    shown = text if len(text) <= 60 else text[:57] + "..."
    return '"' + shown.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _expected(cls: Any) -> str:
    if dataclasses.is_dataclass(cls) and isinstance(cls, type):
        return f"struct {cls.__name__}"
    return {
        str: "a string",
        int: "an integer",
        float: "a number",
        bool: "a boolean",
        datetime: "an RFC 3339 timestamp string",
        timedelta: "a duration string",
    }.get(cls, getattr(cls, "__name__", str(cls)))


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = hints
    return hints


def _decode(cls: Any, value: Any, path: str, strict: bool) -> Any:
    if cls is Any or cls is object:
        return value
    origin = typing.get_origin(cls)
    args = typing.get_args(cls)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        others = [a for a in args if a is not type(None)]
        if value is None and len(others) < len(args):
            return None
        if len(others) == 1:
            return _decode(others[0], value, path, strict)
        raise TypeError(f"decode: unions other than `T | None` are not supported ({cls})")
    if cls is type(None):
        if value is not None:
            raise DecodeError(path, f"invalid type: {_describe(value)}, expected null")
        return None
    if origin in (list, typing.List):
        if not isinstance(value, list):
            raise DecodeError(path, f"invalid type: {_describe(value)}, expected a sequence")
        item = args[0] if args else Any
        return [_decode(item, v, f"{path}[{i}]", strict) for i, v in enumerate(value)]
    if origin in (dict, typing.Dict):
        if not isinstance(value, dict):
            raise DecodeError(path, f"invalid type: {_describe(value)}, expected a map")
        item = args[1] if len(args) == 2 else Any
        return {k: _decode(item, v, _join(path, k), strict) for k, v in value.items()}
    if cls is list or cls is dict:
        if not isinstance(value, cls):
            raise DecodeError(path, f"invalid type: {_describe(value)}, expected a {'sequence' if cls is list else 'map'}")
        return value
    if dataclasses.is_dataclass(cls) and isinstance(cls, type):
        return _decode_struct(cls, value, path, strict)
    if cls is bool:
        if not isinstance(value, bool):
            raise DecodeError(path, f"invalid type: {_describe(value)}, expected a boolean")
        return value
    if cls is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise DecodeError(path, f"invalid type: {_describe(value)}, expected an integer")
        return value
    if cls is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DecodeError(path, f"invalid type: {_describe(value)}, expected a number")
        return float(value)
    if cls is str:
        if not isinstance(value, str):
            raise DecodeError(path, f"invalid type: {_describe(value)}, expected a string")
        return value
    if cls is datetime or cls is timedelta:
        if not isinstance(value, str):
            raise DecodeError(path, f"invalid type: {_describe(value)}, expected {_expected(cls)}")
        try:
            return parse_timestamp(value) if cls is datetime else parse_duration(value)
        except ValueError as err:
            raise DecodeError(path, str(err)) from None
    raise TypeError(f"decode: unsupported type {cls!r}")


def _optional(cls: Any) -> bool:
    origin = typing.get_origin(cls)
    is_union = origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType)
    return is_union and type(None) in typing.get_args(cls)


def _decode_struct(cls: type, value: Any, path: str, strict: bool) -> Any:
    if not isinstance(value, dict):
        raise DecodeError(path, f"invalid type: {_describe(value)}, expected struct {cls.__name__}")
    fields = [f for f in dataclasses.fields(cls) if f.init]
    names = [f.name for f in fields]
    if strict:
        for key in value:
            if key not in names:
                expected = ", ".join(f"`{n}`" for n in names)
                raise DecodeError(path, f"unknown field `{key}`, expected one of {expected}")
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    for field in fields:
        if field.name in value:
            kwargs[field.name] = _decode(hints.get(field.name, Any), value[field.name], _join(path, field.name), strict)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            if _optional(hints.get(field.name)):
                kwargs[field.name] = None  # as serde: a missing option is none
            else:
                raise DecodeError(path, f"missing field `{field.name}`")
    return cls(**kwargs)
