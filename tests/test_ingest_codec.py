"""collector.ingest.fastcodec accepts exactly what wire.codec accepts: the same result or the same error."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.ingest.fastcodec import decode_json
from tests.support.records import make_record
from tests.test_schema import _records_unchecked, strategy_for
from wire.schema import DeviceStatus, JobEvent, ResultRecord, SchemaError

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def _reference(cls, payload):
    try:
        return ("ok", cls.from_json(payload))
    except SchemaError as exc:
        return ("error", str(exc))


def _fast(cls, payload):
    try:
        return ("ok", decode_json(cls, payload))
    except SchemaError as exc:
        return ("error", str(exc))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_records_unchecked())
def test_valid_records_decode_identically(record):
    payload = record.to_json()
    assert _fast(ResultRecord, payload) == ("ok", record)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
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
    payload = json.dumps(doc)
    assert _fast(ResultRecord, payload) == _reference(ResultRecord, payload)


@settings(max_examples=80, deadline=None)
@given(strategy_for(DeviceStatus), strategy_for(JobEvent))
def test_other_messages(status, event):
    assert _fast(DeviceStatus, status.to_json()) == ("ok", status)
    assert _fast(JobEvent, event.to_json()) == ("ok", event)


def test_bad_json_and_versions_match_reference():
    for payload in (b"{", b"\xff", b"[]", b'{"schema_version": 2}', b'{"schema_version": true}', b"{}"):
        assert _fast(ResultRecord, payload) == _reference(ResultRecord, payload)
