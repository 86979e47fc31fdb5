"""collector.messages.parse on hostile input: arbitrary bytes on every topic leaf and structured mutations of
valid records (other encodings, deep nesting, huge numbers, NaN, lone surrogates, duplicate keys,
wrong types, removed fields, impossible latencies). parse() never raises; every message is parsed
or a dead letter whose class is one of DEAD_CLASSES."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.messages.parse import DEAD_CLASSES, Parsed, parse
from testkit import hostile as h
from testkit.records import make_record
from wire.codec import MAX_DEPTH, load_json
from wire.schema import ResultRecord, SchemaError, parse_message

KINDS = {"result", "status", "event", "chunk_request", "drop", "dead"}
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check(parsed: Parsed) -> str:
    """The outcome's class: the parsed kind, or the dead letter's class (which must be a known one)."""
    assert parsed.kind in KINDS
    if parsed.kind != "dead":
        return parsed.kind
    cls, sep, detail = parsed.reason.partition(": ")
    assert sep and detail, parsed.reason
    assert cls in DEAD_CLASSES, parsed.reason
    return cls


@FAST
@given(st.sampled_from(h.LEAVES), st.binary(max_size=2000))
def test_arbitrary_bytes_on_every_leaf(leaf, payload):
    _check(parse(f"edgebench/v1/devices/{h.DEVICE}/{leaf}", payload, h.MAX_BYTES))


@FAST
@given(st.text(max_size=60), st.binary(max_size=200))
def test_arbitrary_topics(topic, payload):
    _check(parse(topic, payload, h.MAX_BYTES))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(h.MESSAGE_LEAVES), st.sampled_from(list(h.MUTATIONS)), st.randoms(use_true_random=False)
)
def test_mutations_of_valid_messages(leaf, mutation, rnd):
    msg = h.mutated(leaf, mutation, rnd)
    outcome = _check(parse(msg.topic, msg.payload, h.MAX_BYTES))
    if msg.expect is not None:
        assert outcome == msg.expect, parse(msg.topic, msg.payload, h.MAX_BYTES).reason


@FAST
@given(st.randoms(use_true_random=False))
def test_hostile_mix(rnd):
    msg = h.hostile(rnd)
    outcome = _check(parse(msg.topic, msg.payload, h.MAX_BYTES))
    if msg.expect is not None:
        assert outcome == msg.expect


@FAST
@given(st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-be", "utf-8-sig", "latin-1"]))
def test_a_valid_record_in_another_encoding_is_bad_json(encoding):
    record = make_record(h.DEVICE).to_dict()
    record["error"] = "naïve"
    payload = json.dumps(record, ensure_ascii=False).encode(encoding)
    parsed = parse(f"edgebench/v1/devices/{h.DEVICE}/results", payload, h.MAX_BYTES)
    assert parsed.kind == "dead" and parsed.reason.startswith("bad-json: not valid JSON")


def test_utf8_records_still_parse_and_keep_their_text():
    record = dataclasses.replace(make_record(h.DEVICE), error="naïve ☃ \U0001f600")
    for payload in (record.to_json().encode(), json.dumps(record.to_dict(), ensure_ascii=False).encode()):
        parsed = parse(f"edgebench/v1/devices/{h.DEVICE}/results", payload, h.MAX_BYTES)
        assert parsed.kind == "result" and parsed.message == record
        assert parsed.text == payload.decode()


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1000, 200_000])
def test_deep_nesting_is_refused_without_recursion(depth):
    payload = b"[" * depth + b"]" * depth
    parsed = parse(f"edgebench/v1/devices/{h.DEVICE}/results", payload, 10**7)
    assert parsed.reason == f"bad-json: not valid JSON: nested {depth} deep (limit {MAX_DEPTH})"


def test_nesting_within_the_limit_is_parsed_then_checked():
    assert load_json(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH) is not None
    assert load_json('["[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\\"["]') is not None  # in strings


@pytest.mark.parametrize(
    ("token", "why"),
    [
        ("NaN", "NaN is not JSON"),
        ("-Infinity", "-Infinity is not JSON"),
        ("1e400", "out of range"),
        ("9223372036854775808", "out of the 64-bit range"),
        ("1" * 5000, "out of the 64-bit range"),
    ],
)
def test_numbers_json_cannot_carry_faithfully(token, why):
    text = make_record(h.DEVICE).to_json().replace('"n":100', f'"n":{token}')
    parsed = parse(f"edgebench/v1/devices/{h.DEVICE}/results", text.encode(), 10**6)
    assert parsed.reason.startswith("bad-json: not valid JSON") and why in parsed.reason


def test_duplicate_keys_and_lone_surrogates_are_refused_on_both_sides():
    text = make_record(h.DEVICE).to_json()
    dup = text.replace('"board":"test board"', '"board":"a","board":"test board"')
    lone = text.replace('"board":"test board"', '"board":"\\ud800"')
    for payload, why in ((dup, "duplicate key 'board'"), (lone, "lone surrogate")):
        parsed = parse(f"edgebench/v1/devices/{h.DEVICE}/results", payload.encode(), 10**6)
        assert parsed.reason.startswith("bad-json") and why in parsed.reason
        with pytest.raises(SchemaError, match=why):  # the agent's decoder is the same function
            parse_message(payload.encode())


@pytest.mark.parametrize(
    ("path", "value", "field", "rule"),
    [
        ("latency.p50_ms", -1.0, "latency.p50_ms", "must be > 0"),
        ("latency.min_ms", 0, "latency.min_ms", "must be > 0"),
        ("latency.min_ms", 5.0, "latency.min_ms", "must be <= p50_ms"),
        ("latency.p99_ms", 100.0, "latency.p99_ms", "must be <= max_ms"),
        ("latency.p50_ci_low_ms", 1.6, "latency.p50_ci_low_ms", "must be <= p50_ms"),
        ("latency.n", 0, "latency.n", "must be >= 1"),
        ("latency.outliers", 101, "latency.outliers", "must be <= n"),
        ("artifact.size_bytes", -1, "artifact.size_bytes", "must be >= 0"),
        ("memory.load_peak_mb", -80.0, "memory.load_peak_mb", "must be >= 0"),
        ("cold_start.load_ms", -1.0, "cold_start.load_ms", "must be >= 0"),
        ("config.batch", 0, "config.batch", "must be >= 1"),
        ("finished_at", "yesterday", "finished_at", "must be an ISO-8601 time in UTC"),
        ("started_at", "2025-01-01T00:00:00+02:00", "started_at", "must be an ISO-8601 time in UTC"),
    ],
)
def test_range_rules_name_the_field_and_the_rule(path, value, field, rule):
    doc = make_record(h.DEVICE).to_dict()
    *parents, leaf = path.split(".")
    node = doc
    for p in parents:
        node = node[p]
    node[leaf] = value
    payload = json.dumps(doc).encode()
    parsed = parse(f"edgebench/v1/devices/{h.DEVICE}/results", payload, 10**6)
    assert parsed.reason.startswith(f"invalid-field: {field}: {rule}"), parsed.reason
    with pytest.raises(SchemaError) as info:
        ResultRecord.from_json(payload)
    assert info.value.field == field
