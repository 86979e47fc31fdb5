"""Strict conversion between frozen dataclasses and JSON-compatible values (stdlib only).

The wire format is declared as type-hinted frozen dataclasses; this module walks those hints
to encode them to plain dicts and to decode and *validate* plain dicts back. Any mismatch raises
:class:`SchemaError` naming the dotted path of the offending field, e.g. ``latency.p50_ms``.

Supported annotations: ``int``, ``float`` (ints accepted), ``str``, ``bool``, ``None`` unions
(``X | None``), ``Literal[...]``, ``tuple[X, ...]``, ``dict[str, X]`` and nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from functools import cache
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

T = TypeVar("T")


class SchemaError(ValueError):
    """A message does not match the wire format. ``field`` is the dotted path of the culprit."""

    def __init__(self, message: str, field: str | None = None):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def encode(obj: Any) -> Any:
    """Dataclass (or nested value) -> JSON-compatible value. Tuples become lists."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (tuple, list)):
        return [encode(v) for v in obj]
    if isinstance(obj, dict):
        return {k: encode(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        raise SchemaError(f"non-finite float {obj!r} cannot go on the wire")
    return obj


def decode(cls: type[T], data: Any, path: str = "") -> T:
    """Validate ``data`` against dataclass ``cls`` and build it. Unknown keys are rejected."""
    return _decode_value(cls, data, path)


def _describe(value: Any) -> str:
    return type(value).__name__ if value is not None else "null"


def _decode_dataclass(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise SchemaError(f"expected an object for {cls.__name__}, got {_describe(data)}", path or None)
    hints = _hints(cls)
    kwargs: dict[str, Any] = {}
    names = set()
    for f in dataclasses.fields(cls):
        names.add(f.name)
        sub = f"{path}.{f.name}" if path else f.name
        if f.name in data:
            kwargs[f.name] = _decode_value(hints[f.name], data[f.name], sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise SchemaError("missing required field", sub)
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise SchemaError(f"unknown field (known: {', '.join(sorted(names))})", where)
    try:
        return cls(**kwargs)
    except SchemaError as exc:  # __post_init__ validation names a field relative to cls
        message = str(exc)[len(exc.field) + 2 :] if exc.field else str(exc)
        inner = f"{path}.{exc.field}" if path and exc.field else (exc.field or path or None)
        raise SchemaError(message, inner) from None
    except (TypeError, ValueError) as exc:
        raise SchemaError(str(exc), path or None) from exc


def _decode_value(tp: Any, value: Any, path: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _decode_dataclass(tp, value, path)
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise SchemaError("must not be null", path)
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _decode_value(arg, value, path)
            except SchemaError as exc:
                errors.append(exc)
        raise (
            errors[0]
            if len(errors) == 1
            else SchemaError(f"no variant of {tp} accepts {_describe(value)}", path)
        )
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed or isinstance(value, bool) != any(isinstance(a, bool) for a in allowed):
            raise SchemaError(f"must be one of {list(allowed)}, got {value!r}", path)
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise SchemaError(f"expected a list, got {_describe(value)}", path)
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode_value(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise SchemaError(f"expected {len(args)} items, got {len(value)}", path)
        return tuple(
            _decode_value(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True))
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise SchemaError(f"expected an object, got {_describe(value)}", path)
        _key_t, val_t = get_args(tp)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise SchemaError("object keys must be strings", path)
            out[k] = _decode_value(val_t, v, f"{path}.{k}")
        return out
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise SchemaError(f"expected a boolean, got {_describe(value)}", path)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(f"expected an integer, got {_describe(value)}", path)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(f"expected a number, got {_describe(value)}", path)
        if not math.isfinite(value):
            raise SchemaError(f"expected a finite number, got {value!r}", path)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise SchemaError(f"expected a string, got {_describe(value)}", path)
        return value
    if tp is type(None):
        if value is not None:
            raise SchemaError(f"expected null, got {_describe(value)}", path)
        return None
    raise SchemaError(f"unsupported annotation {tp!r}", path)  # a bug in the schema itself
