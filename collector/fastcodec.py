"""A compiled fast path for decoding wire messages on the collector's hot path.

:func:`agent.codec.decode` walks type hints for every value (~200 us for a full result record).
Here each dataclass's hints are compiled once into closures that do the same checks with plain
``type(x) is ...`` tests. The fast path is only ever *as strict or stricter* than the reference:
whenever it has any doubt (a failed check, a ``__post_init__`` error, an exotic annotation) it
falls back to the reference decoder, which either accepts or raises the exact same
:class:`~agent.codec.SchemaError` the agent side would. Equivalence is property-tested.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from agent.codec import SchemaError
from agent.schema import SUPPORTED_VERSIONS

try:  # a collector dependency (the "collector" extra); the standard library decides on any doubt
    from orjson import JSONDecodeError as _FastJSONError
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - orjson missing
    _fast_loads = None

T = TypeVar("T")
Decoder = Callable[[Any], Any]


class _Doubt(Exception):
    """The fast path is not sure; the reference decoder decides."""


_DOUBT = _Doubt()


def _fail() -> Any:
    raise _DOUBT


def _compile(tp: Any, cache: dict[Any, Decoder]) -> Decoder:
    if tp in cache:
        return cache[tp]
    dec = _compile_dataclass(tp, cache) if dataclasses.is_dataclass(tp) else _compile_value(tp, cache)
    cache[tp] = dec
    return dec


def _inline_check(tp: Any, var: str, name: str, ns: dict[str, Any], cache: dict[Any, Decoder]) -> list[str]:
    """Source lines that validate/convert ``var`` in place for annotation ``tp`` (raise _DOUBT on doubt)."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(get_args(tp)) == 2:
            inner = _inline_check(args[0], var, name, ns, cache)
            return [f"if {var} is not None:", *("    " + line for line in inner)]
    if tp is int:
        return [f"if type({var}) is not int: raise _D"]
    if tp is str:
        return [f"if type({var}) is not str: raise _D"]
    if tp is bool:
        return [f"if type({var}) is not bool: raise _D"]
    if tp is float:
        return [
            f"if type({var}) is float:",
            f"    if {var} - {var} != 0.0: raise _D",  # inf - inf and nan - nan are nan: not finite
            f"elif type({var}) is int: {var} = float({var})",
            "else: raise _D",
        ]
    if origin is Literal and all(type(a) is str for a in get_args(tp)):
        ns[f"_L_{name}"] = frozenset(get_args(tp))
        return [f"if type({var}) is not str or {var} not in _L_{name}: raise _D"]
    ns[f"_C_{name}"] = _compile(tp, cache)
    return [f"{var} = _C_{name}({var})"]


def _compile_dataclass(cls: type, cache: dict[Any, Decoder]) -> Decoder:
    """Generate one flat function per dataclass: no per-field calls for scalars."""
    hints = typing.get_type_hints(cls)
    all_fields = dataclasses.fields(cls)
    missing = dataclasses.MISSING
    ns: dict[str, Any] = {
        "_D": _DOUBT,
        "_Doubt": _Doubt,
        "_isfinite": math.isfinite,
        "_cls": cls,
        "_names": frozenset(f.name for f in all_fields),
        "_required": frozenset(
            f.name for f in all_fields if f.init and f.default is missing and f.default_factory is missing
        ),
    }
    lines = [
        "def decode(v):",
        "    if type(v) is not dict: raise _D",
        "    keys = v.keys()",
        "    if not (_required <= keys and keys <= _names): raise _D",
    ]
    if _plain_dataclass(cls):
        # What the generated (frozen) __init__ does, without one object.__setattr__ per field: fill the
        # instance dict (defaults, then each checked value) and run the class's own __post_init__.
        ns["_new"] = object.__new__
        ns["_defaults"] = {f.name: f.default for f in all_fields if f.default is not missing}
        lines += ["    o = _new(_cls)", "    d = o.__dict__", "    d.update(_defaults)"]
        for n, f in enumerate(all_fields):
            check = _inline_check(hints[f.name], "x", f"{n}", ns, cache)
            if f.name in ns["_required"]:  # present: checked above
                lines.append(f"    x = v[{f.name!r}]")
                lines += ["    " + line for line in check]
                lines.append(f"    d[{f.name!r}] = x")
                continue
            lines.append(f"    if {f.name!r} in v:")
            lines.append(f"        x = v[{f.name!r}]")
            lines += ["        " + line for line in check]
            lines.append(f"        d[{f.name!r}] = x")
            if f.default is missing and f.default_factory is not missing:
                ns[f"_F_{n}"] = f.default_factory
                lines.append(f"    else: d[{f.name!r}] = _F_{n}()")
        if hasattr(cls, "__post_init__"):
            lines += [
                "    try:",
                "        o.__post_init__()",
                "    except Exception:",
                "        raise _D from None",
            ]
        lines.append("    return o")
    else:
        lines.append("    kw = {}")
        for n, f in enumerate(all_fields):
            lines.append(f"    if {f.name!r} in v:")
            lines.append(f"        x = v[{f.name!r}]")
            lines += ["        " + line for line in _inline_check(hints[f.name], "x", f"{n}", ns, cache)]
            lines.append(f"        kw[{f.name!r}] = x")
        lines += [
            "    try:",
            "        return _cls(**kw)",
            "    except Exception:",
            "        raise _D from None",
        ]
    exec(compile("\n".join(lines), f"<fastcodec {cls.__name__}>", "exec"), ns)
    return ns["decode"]


def _plain_dataclass(cls: type) -> bool:
    """A dataclass whose instances are plain ``__dict__`` objects built by the generated ``__init__``."""
    params = getattr(cls, "__dataclass_params__", None)
    return (
        params is not None
        and params.init
        and "__slots__" not in cls.__dict__
        and "__init__" in cls.__dict__
        and getattr(getattr(cls.__init__, "__code__", None), "co_filename", "") == "<string>"
        and not any(isinstance(f.type, dataclasses.InitVar) for f in dataclasses.fields(cls))
        and all(f.init for f in dataclasses.fields(cls))
        and type(cls).__call__ is type.__call__
        and cls.__new__ is object.__new__
    )


def _dec_int(v: Any) -> int:
    if type(v) is int:
        return v
    raise _DOUBT


def _dec_float(v: Any) -> float:
    t = type(v)
    if t is float:
        if math.isfinite(v):
            return v
        raise _DOUBT
    if t is int:
        return float(v)
    raise _DOUBT


def _dec_str(v: Any) -> str:
    if type(v) is str:
        return v
    raise _DOUBT


def _dec_bool(v: Any) -> bool:
    if type(v) is bool:
        return v
    raise _DOUBT


def _dec_none(v: Any) -> None:
    if v is None:
        return None
    raise _DOUBT


def _compile_value(tp: Any, cache: dict[Any, Decoder]) -> Decoder:
    simple = {int: _dec_int, float: _dec_float, str: _dec_str, bool: _dec_bool, type(None): _dec_none}
    if tp in simple:
        return simple[tp]
    if tp is Any:
        return lambda v: v
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        nullable = len(args) < len(get_args(tp))
        if len(args) != 1:
            return lambda v: _fail()
        inner = _compile(args[0], cache)
        if not nullable:
            return inner
        return lambda v: None if v is None else inner(v)
    if origin is Literal:
        allowed = get_args(tp)
        if not all(type(a) is str for a in allowed):
            return lambda v: _fail()
        allowed_set = frozenset(allowed)

        def dec_literal(v: Any) -> Any:
            if type(v) is str and v in allowed_set:
                return v
            raise _DOUBT

        return dec_literal
    if origin is tuple:
        args = get_args(tp)
        if len(args) != 2 or args[1] is not Ellipsis:
            return lambda v: _fail()
        item = _compile(args[0], cache)

        def dec_tuple(v: Any) -> tuple:
            if type(v) is not list:
                raise _DOUBT
            return tuple([item(x) for x in v])

        return dec_tuple
    if origin is dict:
        val = _compile(get_args(tp)[1], cache)

        def dec_dict(v: Any) -> dict:
            if type(v) is not dict:
                raise _DOUBT
            out = {}
            for k, x in v.items():
                if type(k) is not str:
                    raise _DOUBT
                out[k] = val(x)
            return out

        return dec_dict
    return lambda v: _fail()


_CACHE: dict[Any, Decoder] = {}


def decode_dict(cls: type[T], data: Any) -> T:
    """Like ``cls.from_dict(data)`` for a top-level message class, fast when the message is valid."""
    if (
        type(data) is dict
        and type(data.get("schema_version")) is int
        and data["schema_version"] in SUPPORTED_VERSIONS
        and data.get("kind", cls.KIND) == cls.KIND  # type: ignore[attr-defined]
    ):
        body = dict(data)
        body.pop("kind", None)
        decoder = _CACHE.get(cls) or _compile(cls, _CACHE)
        try:
            return decoder(body)
        except _Doubt:
            pass
        except RecursionError:
            pass
    return cls.from_dict(data)  # type: ignore[attr-defined]


def _loads(payload: str | bytes) -> Any:
    """``json.loads``, via orjson (~2x faster) when it accepts the text.

    Where orjson refuses (NaN/Infinity literals, integers beyond 64 bits, non-UTF-8 encodings, ...) the
    standard library parses or raises, so the outcome and the error text are exactly those of
    ``json.loads``; a document both accept decodes to the same values.
    """
    if _fast_loads is not None:
        try:
            return _fast_loads(payload)
        except _FastJSONError:
            pass
    return json.loads(payload)


def decode_json(cls: type[T], payload: str | bytes) -> T:
    """Like ``cls.from_json(payload)``: strict, raising the reference :class:`SchemaError`."""
    try:
        data = _loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SchemaError(f"not valid JSON: {exc}") from None
    return decode_dict(cls, data)
