"""A compiled fast path for decoding wire messages on the collector's hot path.

:func:`wire.codec.decode` walks type hints for every value (~200 us for a full result record).
Here each dataclass's hints are compiled once into closures that do the same checks with plain
``type(x) is ...`` tests. The fast path is only ever *as strict or stricter* than the reference:
whenever it has any doubt (a failed check, a ``__post_init__`` error, an exotic annotation, a
document orjson refuses or that may carry duplicate keys) the reference decides:
``cls.from_json(payload)`` (:func:`wire.codec.load_json`, the same strict decoder the agent uses),
which either accepts or raises the exact same :class:`~wire.codec.SchemaError` the agent side
would. The fast path therefore only ever *accepts*; every error is the reference's. Equivalence is
property-tested.

Why an accepted document is one the reference accepts too: orjson refuses what ``load_json``
refuses (BOMs, non-UTF-8, lone surrogates, NaN/Infinity, overflowing numbers; it turns integers
beyond 64 bits into floats, which the checks here doubt), the compiled checks bound integers and
floats to 64 bits, a decoded message is at most as deep as the schema (no ``Any``), and
:func:`_unique_keys` doubts any document that repeated a key (orjson keeps the last).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from wire.codec import INT_MAX, INT_MIN
from wire.schema import SUPPORTED_VERSIONS

try:  # a collector dependency (the "collector" extra); the reference decides on any doubt
    from orjson import JSONDecodeError as _FastJSONError
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover - orjson missing
    _fast_loads = None

_FLOAT_BOUND = 2.0**63  # |x| beyond: orjson may have made it from an integer token too big for int64

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
        return [f"if type({var}) is not int or not _IMIN <= {var} <= _IMAX: raise _D"]
    if tp is str:
        return [f"if type({var}) is not str: raise _D"]
    if tp is bool:
        return [f"if type({var}) is not bool: raise _D"]
    if tp is float:
        return [
            f"if type({var}) is float:",
            f"    if not -_FB < {var} < _FB: raise _D",  # also NaN (every comparison is false) and inf
            f"elif type({var}) is int and -_FB < {var} < _FB: {var} = float({var})",
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
        "_IMIN": INT_MIN,
        "_IMAX": INT_MAX,
        "_FB": _FLOAT_BOUND,
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
    if type(v) is int and INT_MIN <= v <= INT_MAX:
        return v
    raise _DOUBT


def _dec_float(v: Any) -> float:
    t = type(v)
    if (t is float or t is int) and -_FLOAT_BOUND < v < _FLOAT_BOUND:
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
    if tp is Any:  # unbounded depth and values: the reference decides
        return lambda v: _fail()
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


def _fast_decode(cls: type[T], data: Any) -> T:
    """The compiled path only: the message, or :class:`_Doubt`."""
    if not (
        type(data) is dict
        and type(data.get("schema_version")) is int
        and data["schema_version"] in SUPPORTED_VERSIONS
        and data.get("kind", cls.KIND) == cls.KIND  # type: ignore[attr-defined]
    ):
        raise _DOUBT
    body = dict(data)
    body.pop("kind", None)
    decoder = _CACHE.get(cls) or _compile(cls, _CACHE)
    try:
        return decoder(body)
    except RecursionError:
        raise _DOUBT from None


def decode_dict(cls: type[T], data: Any) -> T:
    """Like ``cls.from_dict(data)`` for a top-level message class, fast when the message is valid."""
    try:
        return _fast_decode(cls, data)
    except _Doubt:
        return cls.from_dict(data)  # type: ignore[attr-defined]


def _zero(_v: Any) -> int:
    return 0


def _str_colons(v: str) -> int:
    return v.count(":")


def _compile_counter(tp: Any, cache: dict[Any, Callable[[Any], int]]) -> Callable[[Any], int]:
    """For a value the compiled decoder of ``tp`` accepted: its keys plus the colons in its strings.

    Generated like the decoders (a dataclass's keys are its field names, so they hold no colon;
    a ``tuple[X, ...]`` of numbers is skipped without a look at each sample).
    """
    if tp in cache:
        return cache[tp]
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        (tp,) = [a for a in get_args(tp) if a is not type(None)]  # accepted: one variant besides None
        origin = get_origin(tp)
    zero = _zero
    if tp is str:
        counter: Callable[[Any], int] = _str_colons
    elif dataclasses.is_dataclass(tp):
        ns: dict[str, Any] = {}
        lines = ["def count(v):", "    n = len(v)"]
        for k, f in enumerate(dataclasses.fields(tp)):
            sub = _compile_counter(typing.get_type_hints(tp)[f.name], cache)
            if sub is zero:
                continue
            ns[f"_K{k}"] = sub
            count = 'x.count(":")' if sub is _str_colons else f"_K{k}(x)"
            lines += [f"    x = v.get({f.name!r})", f"    if x: n += {count}"]
        lines.append("    return n")
        exec(compile("\n".join(lines), f"<fastcodec count {tp.__name__}>", "exec"), ns)
        counter = ns["count"]
    elif origin is tuple:
        item = _compile_counter(get_args(tp)[0], cache)
        counter = zero if item is zero else (lambda v: sum(map(item, v)))
    elif origin is dict:
        val = _compile_counter(get_args(tp)[1], cache)
        counter = lambda v: len(v) + sum(k.count(":") + val(x) for k, x in v.items())  # noqa: E731
    else:  # numbers, booleans, literals (no colon in the schema's literals), None
        counter = zero
    cache[tp] = counter
    return counter


_COUNTERS: dict[Any, Callable[[Any], int]] = {}


def _unique_keys(cls: type, payload: bytes, data: dict[str, Any]) -> bool:
    """True only when no object of the (decoded, schema-checked) document repeated a key.

    Outside strings every colon separates a key from its value; inside, a colon is itself unless
    spelled ``\\u003a``. So without such escapes, the payload holds exactly as many colons as the
    decoded document has keys plus colons in its strings, and more when orjson dropped a repeated
    key (and everything in its earlier value).
    """
    if b"\\" in payload and b"\\u00" in payload:  # single-byte search first: fast
        return False
    counter = _COUNTERS.get(cls) or _compile_counter(cls, _COUNTERS)
    return payload.count(b":") == counter(data)


def decode_json(cls: type[T], payload: str | bytes) -> T:
    """Like ``cls.from_json(payload)``: strict, raising the reference :class:`SchemaError`."""
    if _fast_loads is not None and type(payload) is bytes:
        try:
            data = _fast_loads(payload)
            message = _fast_decode(cls, data)
            if _unique_keys(cls, payload, data):
                return message
        except (_FastJSONError, _Doubt):
            pass
    return cls.from_json(payload)  # type: ignore[attr-defined]
