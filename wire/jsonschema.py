"""The wire format as a JSON Schema (draft 2020-12), generated from the dataclasses (stdlib only).

The frozen dataclasses of :mod:`wire.schema` are the one definition of the wire format; this module walks
their type hints (the same walk :mod:`wire.codec` makes) and writes one ``$defs`` entry per message kind
and per part, for the parts of edgebench written in other languages (the browser agent page validates what
it sends and receives against it). ``python3 -m wire.jsonschema --out web/src/wire.schema.json`` writes
the file, ``--check`` fails when the file is not what this module generates.

What the type hints cannot say, the range rules of the dataclasses' ``__post_init__`` (``must be >= 0``,
a sha256, a UUID, a UTC time), is in :data:`FIELD_RULES`; tests/test_wire_jsonschema.py checks by
mutation that the schema and :func:`wire.schema.parse_message` agree, except for :data:`KNOWN_GAPS`:
rules a JSON Schema cannot express, where the codec is the stricter side.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from wire import schema as ws
from wire.codec import INT_MAX, INT_MIN, encode
from wire.schema_parts import _LATENCIES, _MEMORY_SIZES

__all__ = ["FIELD_RULES", "KNOWN_GAPS", "SCHEMA_ID", "MESSAGES", "build_schema", "render", "main"]

SCHEMA_ID = "urn:edgebench:wire:v1"
DRAFT = "https://json-schema.org/draft/2020-12/schema"

MESSAGES: tuple[type, ...] = (
    ws.ResultRecord,
    ws.Job,
    ws.CancelJob,
    ws.JobEvent,
    ws.DeviceStatus,
    ws.ChunkRequest,
    ws.Receipt,
)  # JSON messages, each with a ``kind``; ArtifactChunk is binary: its JSON header is described apart

_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
# the canonical spelling (uuid.uuid4() as str, any case); Python's uuid.UUID also takes other spellings
_UUID = {"pattern": "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"}
# what wire.schema.utc_now writes (milliseconds, Z) and what parse_wire reads (any fraction, +00:00)
_UTC = {
    "pattern": (
        "^([1-9][0-9]{3}|0[1-9][0-9]{2}|00[1-9][0-9]|000[1-9])-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
        "(\\.[0-9]{1,6})?(Z|\\+00:00)$"
    ),
}
_GE0 = {"minimum": 0}
_GT0 = {"exclusiveMinimum": 0}

_LATENCY_RULES: dict[str, dict[str, Any]] = {
    **{name: _GT0 for name in _LATENCIES},
    **{name: _GE0 for name in ("std_ms", "cv", "mad_ms", "outliers", "warmup_runs", "throughput_ips")},
    "n": {"minimum": 1},
    "repeat_medians_ms": {"items": _GT0},
}

# (class name, field) -> JSON Schema keywords added to the field's type (to its non-null branch)
FIELD_RULES: dict[tuple[str, str], dict[str, Any]] = {
    **{(c, "sha256"): _SHA256 for c in ("ArtifactInfo", "ArtifactRef", "ChunkRequest")},
    ("ResultRecord", "result_id"): _UUID,
    ("Job", "job_id"): _UUID,
    ("ResultRecord", "started_at"): _UTC,
    ("ResultRecord", "finished_at"): _UTC,
    ("DeviceStatus", "at"): _UTC,
    **{("DeviceInfo", n): _GE0 for n in ("cpu_cores", "ram_mb")},
    ("ArtifactInfo", "size_bytes"): _GE0,
    ("ArtifactRef", "size_bytes"): _GT0,
    ("RunConfig", "threads"): _GE0,
    ("RunConfig", "batch"): {"minimum": 1},
    **{("ColdStart", n): _GE0 for n in ("load_ms", "first_inference_ms")},
    **{("LatencyStats", n): rule for n, rule in _LATENCY_RULES.items()},
    **{("MemoryStats", n): _GE0 for n in _MEMORY_SIZES},
    **{("CpuStats", n): _GE0 for n in ("cpu_s_per_inference", "user_s", "system_s")},
    **{("EnergyStats", n): _GE0 for n in ("joules_per_inference", "avg_power_w")},
    ("OpProfile", "mean_ms"): _GE0,
    ("OpProfile", "share"): {"minimum": 0, "maximum": 1 + 1e-9},
    ("JobEvent", "progress"): {"minimum": 0, "maximum": 1},
    **{("DeviceStatus", n): _GE0 for n in ("outbox_pending", "outbox_dropped", "uptime_s")},
    ("ChunkRequest", "chunk_size"): _GT0,
    ("Job", "artifacts"): {"minItems": 1},
    ("Job", "target"): {"pattern": "^(all$|device:|tag:)"},
}

# Rules of the codec a JSON Schema cannot express (or this one does not): the codec is stricter there.
# (dotted field path, with * for any class, what the codec refuses that the schema accepts)
KNOWN_GAPS: tuple[tuple[str, str], ...] = (
    ("*", "an integer field given as 1.0: JSON Schema counts 1.0 as an integer (JS cannot tell them apart)"),
    ("LatencyStats.*", "orderings: min <= p50 <= p90 <= p99 <= max, ci_low <= p50 <= ci_high"),
    ("LatencyStats.outliers", "outliers <= n"),
    ("ArtifactChunk.index", "index < total"),
    ("*.at/_at", "calendar dates: the pattern takes 2025-02-30, datetime.fromisoformat does not"),
    ("*", "JSON text: duplicate keys, lone surrogates, a BOM, NUL bytes, nesting over 32 (wire.codec)"),
)
# And where the codec is looser than the schema (the schema states the canonical form senders write):
# Python's uuid.UUID also takes braces, "urn:uuid:", no hyphens; datetime.fromisoformat also takes
# "2025-01-01T00:00Z" and basic formats; ArtifactChunk headers may carry extra keys (ignored).


def _doc(cls: type) -> str | None:
    doc = cls.__doc__ or ""
    if not doc or doc.startswith(f"{cls.__name__}("):  # the docstring dataclass() makes up
        return None
    return " ".join(doc.split())


def _nullable(sub: dict[str, Any]) -> dict[str, Any]:
    if isinstance(sub.get("type"), str):
        return {**sub, "type": [sub["type"], "null"]}
    return {"anyOf": [sub, {"type": "null"}]}


def _with_rules(sub: dict[str, Any], rules: dict[str, Any]) -> dict[str, Any]:
    out = dict(sub)
    for key, value in rules.items():
        if key == "items":
            out["items"] = {**out["items"], **value}
        elif key == "minimum" and "minimum" in out:
            out["minimum"] = max(out["minimum"], value)
        else:
            out[key] = value
    return out


class _Walker:
    def __init__(self) -> None:
        self.defs: dict[str, dict[str, Any]] = {}

    def type_schema(self, tp: Any, rules: dict[str, Any] | None = None) -> dict[str, Any]:
        rules = rules or {}
        origin = get_origin(tp)
        if origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            if len(args) != 1 or len(get_args(tp)) != 2:
                raise TypeError(f"only X | None unions are supported, got {tp!r}")
            return _nullable(self.type_schema(args[0], rules))
        if dataclasses.is_dataclass(tp):
            self.add(tp)
            return {"$ref": f"#/$defs/{tp.__name__}"}
        if origin is Literal:
            return {"enum": list(get_args(tp))}
        if origin is tuple:
            args = get_args(tp)
            if len(args) == 2 and args[1] is Ellipsis:
                return _with_rules({"type": "array", "items": self.type_schema(args[0])}, rules)
            items = [self.type_schema(a) for a in args]
            return {"type": "array", "prefixItems": items, "minItems": len(items), "maxItems": len(items)}
        if origin is dict:
            return {"type": "object", "additionalProperties": self.type_schema(get_args(tp)[1])}
        scalar = {bool: {"type": "boolean"}, float: {"type": "number"}, str: {"type": "string"}}
        if tp is int:
            return _with_rules({"type": "integer", "minimum": INT_MIN, "maximum": INT_MAX}, rules)
        if tp in scalar:
            return _with_rules(scalar[tp], rules)
        raise TypeError(f"unsupported annotation {tp!r}")

    def add(self, cls: type) -> None:
        name = cls.__name__
        if name in self.defs:
            return
        self.defs[name] = {}  # placeholder: recursion guard, keeps the walk's order
        hints = typing.get_type_hints(cls)
        props: dict[str, Any] = {}
        required: list[str] = []
        kind = getattr(cls, "KIND", None)
        if kind is not None:
            props["kind"] = {"const": kind}
            required.append("kind")
        for f in dataclasses.fields(cls):
            if f.name == "schema_version":
                props[f.name] = {"const": ws.SCHEMA_VERSION}
                required.append(f.name)
                continue
            props[f.name] = self.type_schema(hints[f.name], FIELD_RULES.get((name, f.name)))
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                required.append(f.name)
            else:
                factory = f.default_factory
                default = f.default if factory is dataclasses.MISSING else factory()  # type: ignore[misc]
                props[f.name] = {**props[f.name], "default": encode(default)}
        body: dict[str, Any] = {"type": "object"}
        doc = _doc(cls)
        if doc:
            body["description"] = doc
        body.update(properties=props, required=required, additionalProperties=False)
        if cls is ws.ResultRecord:
            body["allOf"] = _result_conditions()
        self.defs[name] = body


def _result_conditions() -> list[dict[str, Any]]:
    """ResultRecord.__post_init__: ok carries latency; anything else says why."""
    return [
        {
            "if": {"properties": {"status": {"const": "ok"}}},
            "then": {"required": ["latency"], "properties": {"latency": {"not": {"type": "null"}}}},
            "else": {"required": ["error"], "properties": {"error": {"type": "string", "minLength": 1}}},
        }
    ]


def _chunk_header() -> dict[str, Any]:
    counts = {"type": "integer", "minimum": 0, "maximum": INT_MAX}
    return {
        "type": "object",
        "description": (
            "The JSON header of an ArtifactChunk message. On the wire a chunk is binary: this header as "
            "one line of JSON, a newline (0x0a), then exactly `length` raw bytes of the artifact, starting "
            "at byte index * chunk_size. `size_bytes` is the whole artifact's size; index < total."
        ),
        "properties": {
            "kind": {"const": "chunk"},
            "schema_version": {"const": ws.SCHEMA_VERSION},
            "sha256": _SHA256,
            "index": counts,
            "total": counts,
            "size_bytes": counts,
            "length": counts,
        },
        "required": ["kind", "schema_version", "sha256", "index", "total", "size_bytes", "length"],
    }


def build_schema() -> dict[str, Any]:
    walker = _Walker()
    for cls in MESSAGES:
        walker.add(cls)
    defs = dict(walker.defs)
    defs["ArtifactChunk"] = _chunk_header()
    return {
        "$schema": DRAFT,
        "$id": SCHEMA_ID,
        "title": f"edgebench wire format, schema_version {ws.SCHEMA_VERSION}",
        "description": (
            "Generated from wire/schema.py by `python3 -m wire.jsonschema`; do not edit. Every JSON "
            "message is one of the message kinds (see `kind`); ArtifactChunk is the header of a binary "
            "chunk message. Times are ISO-8601 UTC with Z, units are in the field names."
        ),
        "oneOf": [{"$ref": f"#/$defs/{cls.__name__}"} for cls in MESSAGES],
        "$defs": defs,
    }


def render() -> str:
    return json.dumps(build_schema(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m wire.jsonschema", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="write the schema here (default: stdout)")
    parser.add_argument("--check", action="store_true", help="fail if --out is not up to date")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if args.out is None:
            parser.error("--check needs --out")
        try:
            current = args.out.read_text(encoding="utf-8")
        except OSError as exc:  # a missing file is out of date too
            print(
                f"{args.out}: cannot read ({exc.strerror}); run: python3 -m wire.jsonschema --out {args.out}"
            )
            return 1
        if current != text:
            print(f"{args.out} is out of date: run python3 -m wire.jsonschema --out {args.out}")
            return 1
        print(f"{args.out} is up to date")
        return 0
    if args.out is None:
        sys.stdout.write(text)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out} ({len(build_schema()['$defs'])} definitions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
