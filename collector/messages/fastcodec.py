"""The collector's fast path for decoding wire messages: msgspec, with the reference deciding every doubt.

:meth:`wire.schema._Message.from_json` (:func:`wire.codec.load_json` + :func:`wire.codec.decode`) walks
type hints in Python for every value. Here msgspec (C) does the same work, and the reference decoder
still produces every error: :func:`decode_json` either returns the message the reference would return,
or calls the reference, which raises its exact :class:`~wire.codec.SchemaError` (message and
``reason``, the dead-letter class) - or accepts, where msgspec was merely stricter. So the fast path only
ever *accepts*; equivalence is property-tested (tests/test_ingest_codec.py).

Where msgspec alone would be more lenient than the reference, and what closes the gap:

* unknown fields (msgspec ignores them in dataclasses), integers beyond 64 bits (msgspec decodes
  any size), a ``kind`` other than the class's, a missing or unsupported ``schema_version``: the payload
  is first decoded into a *mirror* :class:`msgspec.Struct` of the message (built once per class with
  :func:`msgspec.defstruct`): ``forbid_unknown_fields``, ints bounded to 64 bits, floats to
  ``|x| < 2**63`` (an integer token too big for 64 bits, which the reference refuses, becomes such a
  float), ``schema_version`` a required ``Literal`` of the supported versions, ``kind`` an optional
  ``Literal`` of ``cls.KIND``; every optional field defaults to ``UNSET``, so the mirror knows which
  keys were there.
* duplicate keys (msgspec keeps the last): re-encoding the mirror writes exactly the keys that were
  there once, so the payload has as many colons as the re-encoding unless a key was repeated (or a
  string escaped a colon as ``\\u003a``, which counts as a doubt).
* depth: an accepted document is no deeper than the schema (no ``Any`` field, no unknown field).
* what msgspec already refuses, as the reference does: invalid UTF-8, a BOM, lone surrogates,
  NaN/Infinity, numbers that overflow a double, a boolean for a number.

Then the payload is decoded a second time, straight into the dataclasses (msgspec runs their
``__post_init__`` range checks); a class whose annotations cannot be mirrored always takes the
reference path.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin

import msgspec

from wire.codec import INT_MAX, INT_MIN
from wire.schema import SUPPORTED_VERSIONS

__all__ = ["decode_json"]

T = TypeVar("T")

_INT = Annotated[int, msgspec.Meta(ge=INT_MIN, le=INT_MAX)]
# Beyond: possibly an integer token too big for 64 bits (msgspec makes it a float; the reference refuses).
_FLOAT = Annotated[float, msgspec.Meta(gt=-(2.0**63), lt=2.0**63)]
_SCALARS: dict[Any, Any] = {int: _INT, float: _FLOAT, str: str, bool: bool, type(None): type(None)}


class _Unsupported(Exception):
    """An annotation the mirror cannot express: the class always takes the reference path."""


def _mirror_type(tp: Any, structs: dict[type, Any]) -> Any:
    """The msgspec type that accepts what the reference accepts for ``tp`` (or less, never more)."""
    if tp in _SCALARS:
        return _SCALARS[tp]
    if dataclasses.is_dataclass(tp):
        return _mirror_struct(tp, structs, top_level=False)
    origin, args = get_origin(tp), get_args(tp)
    if origin in (Union, types.UnionType):
        variants = [a for a in args if a is not type(None)]
        if len(variants) != 1:  # the reference tries each variant in turn: msgspec's rules differ
            raise _Unsupported(tp)
        return _mirror_type(variants[0], structs) | None
    if origin is Literal and all(type(a) is str for a in args):
        return tp
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return tuple[_mirror_type(args[0], structs), ...]  # type: ignore[misc]
    if origin is dict and args and args[0] is str:
        return dict[str, _mirror_type(args[1], structs)]  # type: ignore[misc]
    raise _Unsupported(tp)


def _mirror_struct(cls: type, structs: dict[type, Any], *, top_level: bool) -> Any:
    """A Struct with ``cls``'s fields: required where ``cls`` requires them, else ``UNSET`` when absent."""
    if not top_level and cls in structs:
        return structs[cls]
    hints = typing.get_type_hints(cls)
    fields: list[tuple[Any, ...]] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            raise _Unsupported(f"{cls.__name__}.{f.name} is not an __init__ field")
        tp = _mirror_type(hints[f.name], structs)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if top_level and f.name == "schema_version":  # from_dict requires it, whatever the default
            versions = tuple(sorted(SUPPORTED_VERSIONS))
            fields.append((f.name, Literal[versions]))  # type: ignore[valid-type]
        elif required:
            fields.append((f.name, tp))
        else:
            fields.append((f.name, tp | msgspec.UnsetType, msgspec.UNSET))
    if top_level:
        if "kind" in hints:
            raise _Unsupported(f"{cls.__name__} has a field named kind")
        fields.append(("kind", Literal[cls.KIND] | msgspec.UnsetType, msgspec.UNSET))  # type: ignore[attr-defined]
    struct = msgspec.defstruct(
        f"Mirror{cls.__name__}", fields, kw_only=True, forbid_unknown_fields=True, module=__name__
    )
    if not top_level:
        structs[cls] = struct
    return struct


@dataclasses.dataclass(frozen=True)
class _FastPath:
    """The two decoders of one message class: the strict mirror, then the dataclasses themselves."""

    mirror: msgspec.json.Decoder
    message: msgspec.json.Decoder

    def decode(self, payload: str | bytes) -> Any:
        """The message, or None when msgspec cannot vouch for the reference's verdict."""
        colon = b":" if type(payload) is bytes else ":"
        try:
            checked = self.mirror.decode(payload)
            if _ENCODER.encode(checked).count(b":") != payload.count(colon):  # type: ignore[arg-type]
                return None  # a key was repeated (msgspec kept the last one)
            return self.message.decode(payload)
        except Exception:  # any refusal (a ValidationError, UnicodeError, RecursionError...): the reference
            return None


_ENCODER = msgspec.json.Encoder()
_FAST_PATHS: dict[type, _FastPath | None] = {}
# \u003a or \u003A: a colon that the colon count would miss (\u0030-\u003f: a doubt too, and rare)
_COLON_ESCAPE = {bytes: b"\\u003", str: "\\u003"}


def _fast_path(cls: type) -> _FastPath | None:
    """The fast path of a message class (built once), or None when its annotations cannot be mirrored."""
    if cls not in _FAST_PATHS:
        try:
            mirror = _mirror_struct(cls, {}, top_level=True)
        except _Unsupported:
            _FAST_PATHS[cls] = None
        else:
            _FAST_PATHS[cls] = _FastPath(msgspec.json.Decoder(mirror), msgspec.json.Decoder(cls))
    return _FAST_PATHS[cls]


def decode_json(cls: type[T], payload: str | bytes) -> T:
    """Like ``cls.from_json(payload)``: strict, raising the reference :class:`~wire.codec.SchemaError`."""
    escape = _COLON_ESCAPE.get(type(payload))  # bytes or str; a bytearray, memoryview...: the reference
    if escape is not None and escape not in payload:
        fast = _fast_path(cls)
        message = fast.decode(payload) if fast is not None else None
        if message is not None:
            return message
    return cls.from_json(payload)  # type: ignore[attr-defined]
