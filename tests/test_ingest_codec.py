"""collector.messages.fastcodec accepts exactly what wire.codec accepts: the same result or the same error.

Payloads are tested as bytes (what MQTT delivers) and as text. Besides structured mutations of valid
messages, the edge cases where msgspec alone is more lenient than the reference decoder (or might
differ): duplicate keys, unknown fields at any depth, integers beyond 64 bits (in integer and float
fields), float tokens and their rounding, NaN/Infinity, booleans for numbers, lone surrogates and
invalid UTF-8, escaped keys and colons, the ``kind`` and ``schema_version`` fields, deep nesting and
whitespace.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.messages.fastcodec import _fast_path, decode_json
from testkit.records import make_record
from tests.test_schema import _records_unchecked, strategy_for
from wire.schema import ChunkRequest, DeviceStatus, JobEvent, ResultRecord, SchemaError

SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large]
chunk_requests = st.builds(
    ChunkRequest,
    device_id=st.text(max_size=20),
    sha256=st.text("0123456789abcdef", min_size=64, max_size=64),
    indices=st.lists(st.integers(0, 2**63 - 1), max_size=3).map(tuple),
    chunk_size=st.integers(1, 2**63 - 1),
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def _outcome(decoder, cls, payload) -> tuple[Any, ...]:
    """ok + the message's repr (int vs float, tuple vs list count), or the error's text, field and reason."""
    try:
        message = decoder(cls, payload)
    except SchemaError as exc:
        return ("error", str(exc), exc.field, exc.reason)
    assert type(message) is cls
    return ("ok", repr(message))


def _reference(cls, payload):
    return _outcome(lambda c, p: c.from_json(p), cls, payload)


def _fast(cls, payload):
    return _outcome(decode_json, cls, payload)


def _same_verdict(cls, payload: bytes) -> tuple[Any, ...]:
    """The fast decoder's verdict equals the reference's, for the bytes and for them as text."""
    expected = _reference(cls, payload)
    assert _fast(cls, payload) == expected, payload[:300]
    try:
        text = payload.decode("utf-8", "surrogatepass")  # may hold a lone surrogate: the str path
    except UnicodeDecodeError:
        return expected
    assert _fast(cls, text) == _reference(cls, text), payload[:300]
    return expected


# ---------------------------------------------------------------- valid messages take the fast path


@settings(max_examples=150, deadline=None, suppress_health_check=SLOW)
@given(_records_unchecked())
def test_valid_records_decode_identically(record):
    payload = record.to_json()
    assert _fast(ResultRecord, payload) == ("ok", repr(record))
    assert _fast(ResultRecord, payload.encode()) == ("ok", repr(record))
    if "\\u003" not in payload:  # an escaped colon is a doubt: the reference decides
        assert _fast_path(ResultRecord).decode(payload.encode()) == record  # msgspec, not the fallback


@settings(max_examples=80, deadline=None, suppress_health_check=SLOW)
@given(strategy_for(DeviceStatus), strategy_for(JobEvent), chunk_requests)
def test_other_messages(status, event, chunk_request):
    for message in (status, event, chunk_request):
        payload = message.to_json().encode()
        assert _fast(type(message), payload) == ("ok", repr(message))
        if b"\\u003" not in payload:
            assert _fast_path(type(message)).decode(payload) == message


def test_kind_is_optional_and_defaults_apply():
    doc = make_record().to_dict()
    del doc["kind"], doc["profile"], doc["accuracy"], doc["device"]["runtimes"]
    payload = json.dumps(doc).encode()
    assert _fast_path(ResultRecord).decode(payload) == ResultRecord.from_json(payload)


# ---------------------------------------------------------------- JSON with duplicate keys and raw tokens


@dataclass(frozen=True)
class Raw:
    """A token emitted as is: any bytes, valid JSON or not."""

    token: bytes


@dataclass
class Obj:
    """A JSON object as pairs: keys may repeat; a key may be Raw (an escaped spelling)."""

    pairs: list[list[Any]]


def _tree(value: Any) -> Any:
    if isinstance(value, dict):
        return Obj([[k, _tree(v)] for k, v in value.items()])
    if isinstance(value, list):
        return [_tree(v) for v in value]
    return value


def _emit(value: Any, ws: bytes = b"") -> bytes:
    if isinstance(value, Raw):
        return value.token
    if isinstance(value, Obj):
        items = [
            (k.token if isinstance(k, Raw) else _emit(k)) + ws + b":" + ws + _emit(v, ws)
            for k, v in value.pairs
        ]
        return b"{" + ws + (b"," + ws).join(items) + ws + b"}"
    if isinstance(value, list):
        return b"[" + ws + (b"," + ws).join(_emit(v, ws) for v in value) + ws + b"]"
    if isinstance(value, str):  # a lone surrogate as its (invalid) UTF-8 bytes, or escaped
        return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return json.dumps(value).encode()


EDGE_TOKENS = [
    *(b"true", b"false", b"null", b"NaN", b"-NaN", b"Infinity", b"-Infinity", b"1.0", b"1e2", b"-0", b"-0.0"),
    *(b"1e400", b"-1e400", b"1e-400", b"1E+2", b"0.1e1", b"01", b"1.", b".5", b"+1", b"0x10"),
    *(b"9223372036854775807", b"9223372036854775808", b"-9223372036854775808", b"-9223372036854775809"),
    *(b"18446744073709551615", b"18446744073709551616", b"1" * 30, b"-" + b"9" * 25, b"1" * 5000),
    *(b"9223372036854775807.0", b"9.223372036854775807e18", b"1e19", b"-1e19", b"4.9e-324", b"2e-324"),
    *(b'"\\ud800"', b'"\\udc00"', b'"\\ud83d\\ude00"', b'"\\ud83dx"', b'"\\ude00\\ud83d"', b'"\\uD800"'),
    *(
        b'"\xed\xa0\x80"',
        b'"\xff"',
        b'"\xc0\x80"',
        b'"\xe2\x82"',
        b'"\xf4\x90\x80\x80"',
        b'"\xf0\x9f\x98\x80"',
    ),
    *(
        b'"\\u003a"',
        b'"\\u003A"',
        b'"a:b"',
        b'"\\u0000"',
        b'"\x00"',
        b'"\x1f"',
        b'"\x7f"',
        b'"\\/"',
        b'"\\x"',
    ),
    *(b'"2025-01-01T00:00:00.000Z"', b'"ok"', b'"failed"', b'"onnx"', b'"result"', b"[]", b"{}", b"[1,]"),
    *(
        b"[" * 33 + b"]" * 33,
        b"[" * 31 + b"]" * 31,
        b'{"a":' * 40 + b"1" + b"}" * 40,
        b"[" * 5000 + b"]" * 5000,
    ),
]
NUMBER_TEXT = st.from_regex(r"-?(0|[1-9][0-9]{0,24})(\.[0-9]{1,24})?([eE][+-]?[0-9]{1,3})?", fullmatch=True)
tokens = (
    st.sampled_from(EDGE_TOKENS)
    | NUMBER_TEXT.map(str.encode)
    | st.integers(-(2**70), 2**70).map(lambda i: str(i).encode())
    | st.text(max_size=6).map(lambda s: _emit(s))  # lone surrogates as raw bytes
    | st.text(max_size=6).map(lambda s: json.dumps(s).encode())  # ... and as escapes
).map(Raw)
WHITESPACE = st.sampled_from([b"", b"", b" ", b"\t", b"\n", b"\r\n", b"\x0c", b"\x0b", b"\xc2\xa0"])


def _escaped(key: str) -> Raw:
    return Raw(b'"' + "".join(f"\\u{ord(c):04x}" for c in key).encode() + b'"')


def _locations(value: Any) -> Any:
    """Every (container, index) below value: Obj pairs and list items."""
    if isinstance(value, Obj):
        for i, pair in enumerate(value.pairs):
            yield value, i
            yield from _locations(pair[1])
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield value, i
            yield from _locations(item)


def _mutate(data, tree: Obj) -> None:
    """One hostile change somewhere in the tree (in place)."""
    container, i = data.draw(st.sampled_from(list(_locations(tree))))
    action = data.draw(
        st.sampled_from(["token", "value", "duplicate", "same-duplicate", "unknown", "escape-key", "delete"])
    )
    if isinstance(container, list) or action in ("token", "value"):
        new = _tree(data.draw(json_values)) if action == "value" else data.draw(tokens)
        if isinstance(container, list):
            container[i] = new
        else:
            container.pairs[i][1] = new
        return
    key, value = container.pairs[i]
    if action == "duplicate":
        container.pairs.insert(data.draw(st.integers(0, len(container.pairs))), [key, data.draw(tokens)])
    elif action == "same-duplicate":
        container.pairs.append([key, value])
    elif action == "unknown":
        name = data.draw(
            st.sampled_from(["kind", "x", "schema_version", "device_id", "n"]) | st.text(max_size=6)
        )
        container.pairs.append(
            [name, data.draw(tokens) if data.draw(st.booleans()) else _tree(data.draw(json_values))]
        )
    elif action == "escape-key" and isinstance(key, str):
        container.pairs[i] = [_escaped(key), value]
    else:
        del container.pairs[i]


def _base_messages():
    return st.one_of(
        st.builds(
            make_record, status=st.sampled_from(["ok", "failed"]), job_id=st.none() | st.uuids().map(str)
        ),
        strategy_for(DeviceStatus),
        strategy_for(JobEvent),
        chunk_requests,
    )


@settings(max_examples=600, deadline=None, suppress_health_check=SLOW)
@given(_base_messages(), st.data())
def test_hostile_mutations_same_verdict(message, data):
    tree = _tree(message.to_dict())
    for _ in range(data.draw(st.integers(1, 3))):
        _mutate(data, tree)
    _same_verdict(type(message), _emit(tree, data.draw(WHITESPACE)))


@settings(max_examples=300, deadline=None, suppress_health_check=SLOW)
@given(st.data())
def test_mutated_records_same_verdict(data):
    doc = make_record().to_dict()
    paths = [p for p in _paths(doc) if p]
    path = data.draw(st.sampled_from(paths))
    action = data.draw(st.sampled_from(["replace", "delete", "add"]))
    target = doc
    for key in path[:-1]:
        target = target[key]
    last = path[-1]
    if action == "replace":
        target[last] = data.draw(json_values)
    elif action == "delete" and isinstance(target, dict):
        del target[last]
    elif isinstance(target, dict):
        target[data.draw(st.text(max_size=8))] = data.draw(json_values)
    _same_verdict(ResultRecord, json.dumps(doc).encode())


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


# ---------------------------------------------------------------- numbers: rounding and 64-bit bounds


@settings(max_examples=400, deadline=None)
@given(NUMBER_TEXT | st.integers(-(2**66), 2**66).map(str))
def test_number_tokens_in_int_and_float_fields(number):
    """growth_mb (float) and throttled_bits (int) carry no range rule: any number token, same verdict."""
    record = make_record()
    doc = _tree(record.to_dict())
    for part, name in (("memory", "growth_mb"), ("board", "throttled_bits")):
        sub = next(v for k, v in doc.pairs if k == part)
        sub.pairs = [[k, Raw(number.encode()) if k == name else v] for k, v in sub.pairs]
        verdict = _same_verdict(ResultRecord, _emit(doc))
        sub.pairs = [[k, None if k == name else v] for k, v in sub.pairs]
        if name == "growth_mb" and verdict[0] == "ok":  # correctly rounded; an integer token (-0 too) as int
            value = float(int(number)) if number.lstrip("-").isdigit() else float(number)
            assert f"growth_mb={value!r}" in verdict[1]


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_float_round_trip(value):
    record = replace(make_record(), memory=replace(make_record().memory, growth_mb=value))
    payload = record.to_json().encode()
    assert _fast(ResultRecord, payload) == _reference(ResultRecord, payload) == ("ok", repr(record))


# ---------------------------------------------------------------- fixed cases


def test_bad_json_and_versions_match_reference():
    good = make_record().to_json().encode()
    for payload in (
        *(b"{", b"\xff", b"[]", b'{"schema_version": 2}', b'{"schema_version": true}', b"{}", b"", b"null"),
        b"\xef\xbb\xbf" + good,
        b"\xff\xfe" + good,
        good.decode().encode("utf-16"),
        good + b"\n",
        b" " + good,
        good + b"x",
        good.replace(b'"kind":"result"', b'"kind":"status"'),
        good.replace(b'"kind":"result"', b'"kind":null'),
        good.replace(b'"kind":"result",', b""),
        good.replace(b'"schema_version":1', b'"schema_version":1.0'),
        good.replace(b'"schema_version":1', b'"schema_version":"1"'),
        good.replace(b'"schema_version":1', b'"schema_version":true'),
        good.replace(b'"schema_version":1,', b""),
        good.replace(b'"n":100', b'"n":true'),
        good.replace(b'"n":100', b'"n":100.0'),
        good.replace(b'"n":100', b'"n":9223372036854775808'),
        good.replace(b'"stable":true', b'"stable":1'),
        good.replace(b'"max_ms":3.0', b'"max_ms":1e400'),
        good.replace(b'"max_ms":3.0', b'"max_ms":30000000000000000000000'),
        good.replace(b'"load_ms":12.0', b'"load_ms":NaN'),
        good.replace(b'"board":"test board"', b'"board":"\\ud800"'),
        good.replace(b'"board":"test board"', b'"board":"a\\u003ab"'),
        good.replace(b'"board":"test board"', b'"board":"test board","board":"x"'),
        good.replace(b'"runtimes":{}', b'"runtimes":{"a":"1","a":"2"}'),
        good.replace(b'"runtimes":{}', b'"runtimes":{"a":"1:2","b":"2"}'),
        good.replace(b'"board":"test board"', b'"board":"x","b\\u006fard":"y"'),
        good.replace(b'"device_id":"dev-1"', b'"\\u0064evice_id":"dev-1"'),
        good.replace(b'"runtimes":{}', b'"runtimes":{"a":' + b"[" * 40 + b"]" * 40 + b"}"),
        good.replace(b'"profile":[]', b'"profile":[' + b"[" * 40 + b"]" * 40 + b"]"),
    ):
        _same_verdict(ResultRecord, payload)
    assert _fast(ResultRecord, bytearray(good)) == _reference(ResultRecord, bytearray(good))
    assert _fast(ResultRecord, memoryview(good)) == _reference(ResultRecord, memoryview(good))
