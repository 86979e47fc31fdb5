"""Hostile payloads for the collector's parse path: one generator shared by the property tests
(tests/test_parse_hostile.py, through Hypothesis' ``st.randoms()``), the end-to-end test
(tests/test_ingest_hostile.py) and the fuzz benchmark (bench/fuzz_ingest.py, ``random.Random(seed)``).

:func:`hostile` returns a :class:`Hostile`: the topic, the payload bytes, the mutation's name and the
dead-letter class the collector must file it under (``None``: any outcome is acceptable, e.g. an
optional field removed, as long as parsing does not raise).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from testkit.records import make_record, make_status
from wire.schema import JobEvent, new_id

DEVICE = "dev-h"
LEAVES = ("results", "status", "events", "chunks/request", "weather")
MESSAGE_LEAVES = ("results", "status", "events")


@dataclass(frozen=True)
class Hostile:
    topic: str
    payload: bytes
    mutation: str
    expect: str | None  # the dead-letter class, or None when the outcome may be anything but a raise


def valid_doc(leaf: str, rnd: random.Random) -> dict[str, Any]:
    """A valid message (as a JSON-ready dict) for a device topic leaf."""
    if leaf == "results":
        return make_record(DEVICE, result_id=new_id(), p50_ms=rnd.uniform(0.01, 100.0)).to_dict()
    if leaf == "status":
        return make_status(DEVICE, state=rnd.choice(["online", "offline"])).to_dict()
    if leaf == "events":
        return JobEvent(new_id(), DEVICE, "running", "2025-01-01T00:00:00.000Z", progress=0.5).to_dict()
    return {"kind": "chunk_request", "schema_version": 1, "device_id": DEVICE, "sha256": "ab" * 32}


def _topic(leaf: str, device: str) -> str:
    return f"edgebench/v1/devices/{device}/{leaf}"


def _dump(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys / indices) into a JSON value, the root excluded."""
    out = []
    if isinstance(value, dict):
        for k, v in value.items():
            out.append((*prefix, k))
            out += paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.append((*prefix, i))
            out += paths(v, (*prefix, i))
    return out


def _parent(doc: Any, path: tuple) -> tuple[Any, Any]:
    node = doc
    for key in path[:-1]:
        node = node[key]
    return node, path[-1]


def _numeric_paths(doc: Any) -> list[tuple]:
    return [
        p for p in paths(doc) if isinstance(_get(doc, p), (int, float)) and not isinstance(_get(doc, p), bool)
    ]


def _get(doc: Any, path: tuple) -> Any:
    node, last = _parent(doc, path)
    return node[last]


def _token_replace(doc: dict, path: tuple, token: str) -> bytes:
    """The document with the value at ``path`` replaced by a raw JSON token (NaN, 1e999, 10**5000...)."""
    marker = f"@@{new_id()}@@"
    node, last = _parent(doc, path)
    node[last] = marker
    return _dump(doc).replace(f'"{marker}"'.encode(), token.encode())


# ------------------------------------------------------------------ mutations of a valid document
# Each: (doc, leaf, rnd) -> (payload, expected dead class or None)

Mutation = Callable[[dict, str, random.Random], tuple[bytes, str | None]]


_TEXT_FIELD = {"results": "error", "status": "reason", "events": "detail"}  # a free-text field of each


def _encoding(doc: dict, leaf: str, rnd: random.Random) -> tuple[bytes, str | None]:
    doc[_TEXT_FIELD[leaf]] = "é ünïcode"  # so that latin-1 differs from UTF-8
    text = json.dumps(doc, ensure_ascii=False)
    enc = rnd.choice(["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-8-sig", "latin-1"])
    return text.encode(enc), "bad-json"


def _deep(doc: dict, leaf: str, rnd: random.Random) -> tuple[bytes, str | None]:
    depth = rnd.choice([33, 64, 1000, 5000, 200_000])
    opener, closer = rnd.choice([("[", "]"), ('{"a":', "}")])
    nested = opener * depth + "1" + closer * depth
    if rnd.random() < 0.5:
        return nested.encode(), "bad-json"
    path = rnd.choice(paths(doc))
    return _token_replace(doc, path, nested), "bad-json"


def _huge_number(doc: dict, leaf: str, rnd: random.Random) -> tuple[bytes, str | None]:
    token = rnd.choice(
        ["9223372036854775808", "-9223372036854775809", "18446744073709551616", "1" * 5000, "1e400", "-1e999"]
    )
    return _token_replace(doc, rnd.choice(_numeric_paths(doc)), token), "bad-json"


def _nan(doc: dict, leaf: str, rnd: random.Random) -> tuple[bytes, str | None]:
    token = rnd.choice(["NaN", "Infinity", "-Infinity"])
    return _token_replace(doc, rnd.choice(_numeric_paths(doc)), token), "bad-json"


def _surrogate(doc: dict, leaf: str, rnd: random.Random) -> tuple[bytes, str | None]:
    strings = [p for p in paths(doc) if isinstance(_get(doc, p), str)]
    token = rnd.choice(['"\\ud800"', '"x\\udfff"', '"\\ud83d"', '"\\ude00\\ud83d"'])
    return _token_replace(doc, rnd.choice(strings), token), "bad-json"


def _duplicate_key(doc: dict, leaf: str, rnd: random.Random) -> tuple[bytes, str | None]:
    objects = [()] + [p for p in paths(doc) if isinstance(_get(doc, p), dict) and _get(doc, p)]
    where = rnd.choice(objects)
    node = doc if where == () else _get(doc, where)
    key = rnd.choice(list(node))
    marker = f"@@{new_id()}@@"
    node[marker] = 0
    text = _dump(doc).decode()
    value = json.dumps(node[key])
    return text.replace(f'"{marker}":0', f"{json.dumps(key)}:{value}").encode(), "bad-json"


_WRONG = [None, True, "x", -1, 1.5, [], {}, [1, "a"], {"k": "v"}]


def _wrong_type(doc: dict, leaf: str, rnd: random.Random) -> tuple[bytes, str | None]:
    path = rnd.choice(paths(doc))
    node, last = _parent(doc, path)
    node[last] = rnd.choice([w for w in _WRONG if type(w) is not type(node[last])])
    return _dump(doc), None  # often invalid-field; an optional field set to null is still valid


def _remove(doc: dict, leaf: str, rnd: random.Random) -> tuple[bytes, str | None]:
    keyed = [p for p in paths(doc) if isinstance(p[-1], str)]
    node, last = _parent(doc, rnd.choice(keyed))
    del node[last]
    return _dump(doc), None  # required: missing-field; optional: still valid


def _bad_latency(doc: dict, leaf: str, rnd: random.Random) -> tuple[bytes, str | None]:
    if leaf != "results":
        return _wrong_type(doc, leaf, rnd)
    lat = doc["latency"]
    case = rnd.choice(["negative", "zero", "inverted", "ci", "n"])
    if case == "negative":
        lat[rnd.choice(["p50_ms", "min_ms", "max_ms", "mean_ms", "p90_ms"])] = -rnd.uniform(0.001, 10)
    elif case == "zero":
        lat["min_ms"] = 0
    elif case == "inverted":
        lat["min_ms"], lat["max_ms"] = lat["max_ms"], lat["min_ms"]
    elif case == "ci":
        lat["p50_ci_low_ms"] = lat["p50_ms"] * 1.5
    else:
        lat["n"] = rnd.choice([0, -5])
    return _dump(doc), "invalid-field"


def _bad_timestamp(doc: dict, leaf: str, rnd: random.Random) -> tuple[bytes, str | None]:
    if leaf == "events":
        return _wrong_type(doc, leaf, rnd)
    field = "finished_at" if leaf == "results" else "at"
    doc[field] = rnd.choice(["yesterday", "2025-13-01T00:00:00Z", "2025-01-01T00:00:00+02:00", "2025-01-01"])
    return _dump(doc), "invalid-field"


def _truncate(doc: dict, leaf: str, rnd: random.Random) -> tuple[bytes, str | None]:
    data = _dump(doc)[: rnd.randrange(0, len(_dump(doc)) - 1)]
    # an empty status is how a retained status is cleared: counted and dropped, not a dead letter
    return data, "drop" if leaf == "status" and not data else "bad-json"


def _not_object(doc: dict, leaf: str, rnd: random.Random) -> tuple[bytes, str | None]:
    return rnd.choice([b"[]", b"null", b"1", b'"x"', b"[" + _dump(doc) + b"]", b" "]), "bad-json"


def _bad_version(doc: dict, leaf: str, rnd: random.Random) -> tuple[bytes, str | None]:
    doc["schema_version"] = rnd.choice([0, 2, 99])
    return _dump(doc), "unknown-schema-version"


def _oversize(doc: dict, leaf: str, rnd: random.Random) -> tuple[bytes, str | None]:
    return _dump(doc) + b" " * (MAX_BYTES + 1), "oversize"


def _mismatch(doc: dict, leaf: str, rnd: random.Random) -> tuple[bytes, str | None]:
    if leaf == "results":
        doc["device"]["device_id"] = "someone-else"
    else:
        doc["device_id"] = "someone-else"
    return _dump(doc), "topic-mismatch"


MUTATIONS: dict[str, Mutation] = {
    "encoding": _encoding,
    "deep": _deep,
    "huge-number": _huge_number,
    "nan": _nan,
    "lone-surrogate": _surrogate,
    "duplicate-key": _duplicate_key,
    "wrong-type": _wrong_type,
    "remove-field": _remove,
    "bad-latency": _bad_latency,
    "bad-timestamp": _bad_timestamp,
    "truncated": _truncate,
    "not-an-object": _not_object,
    "schema-version": _bad_version,
    "oversize": _oversize,
    "topic-mismatch": _mismatch,
}
MAX_BYTES = 256 * 1024  # the max_payload_bytes the tests and the benchmark give the collector


def mutated(leaf: str, mutation: str, rnd: random.Random) -> Hostile:
    """A valid message for ``leaf`` with one hostile mutation."""
    payload, expect = MUTATIONS[mutation](valid_doc(leaf, rnd), leaf, rnd)
    if len(payload) > MAX_BYTES:  # checked before anything else
        expect = "oversize"
    return Hostile(_topic(leaf, DEVICE), payload, mutation, expect)


def random_bytes(leaf: str, rnd: random.Random) -> Hostile:
    """Arbitrary bytes (sometimes a JSON-looking prefix) on a device topic leaf."""
    n = rnd.choice([0, 1, 2, 16, 300, 5000])
    junk = rnd.randbytes(n)
    if rnd.random() < 0.3:
        junk = rnd.choice([b"{", b'{"kind":"result",', b"[", b"\xef\xbb\xbf", b"\xff\xfe{\x00"]) + junk
    expect = "unknown-topic" if leaf not in ("results", "status", "events", "chunks/request") else None
    return Hostile(_topic(leaf, DEVICE), junk, "random-bytes", expect)


BAD_TOPICS = (
    "edgebench/v1/devices/bad id/results",
    "edgebench/v1/devices//results",
    "edgebench/v1/devices/" + "x" * 99 + "/results",
    "edgebench/v1/fleet/results",
    "edgebench/v2/devices/d/results",
)


def bad_topic(rnd: random.Random) -> Hostile:
    return Hostile(rnd.choice(BAD_TOPICS), _dump(valid_doc("results", rnd)), "bad-topic", "unknown-topic")


def hostile(rnd: random.Random, leaves: tuple[str, ...] = LEAVES) -> Hostile:
    """One hostile message of any kind, on any of ``leaves``."""
    roll = rnd.random()
    leaf = rnd.choice(leaves)
    if roll < 0.2:
        return random_bytes(leaf, rnd)
    if roll < 0.25:
        return bad_topic(rnd)
    if leaf not in MESSAGE_LEAVES:
        leaf = rnd.choice(MESSAGE_LEAVES)
    return mutated(leaf, rnd.choice(list(MUTATIONS)), rnd)
