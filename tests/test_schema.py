"""The wire format: strict round trips (Hypothesis) and clear errors naming the field."""

from __future__ import annotations

import dataclasses
import json
import typing
import uuid
from datetime import timezone
from typing import Literal, get_args, get_origin

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.measure.stats import Kept, summarize
from wire import schema, topics
from wire.schema import (
    ArtifactChunk,
    ArtifactInfo,
    ArtifactRef,
    ChunkRequest,
    DeviceInfo,
    DeviceStatus,
    Job,
    JobEvent,
    LatencyStats,
    ResultRecord,
    RunConfig,
    SchemaError,
    parse_message,
)

finite = st.floats(allow_nan=False, allow_infinity=False, width=64, min_value=-1e12, max_value=1e12)
text = st.text(max_size=20)
sha = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)
uuids = st.uuids().map(str)
timestamps = st.datetimes(timezones=st.just(timezone.utc)).map(
    lambda t: t.isoformat(timespec="milliseconds").replace("+00:00", "Z")
)
unit = st.floats(0.0, 1.0)
# The agent's own statistics of random timings (ns), so every invariant of a measurement holds.
latencies = st.builds(
    summarize,
    st.lists(st.integers(1, 10**10), min_size=1, max_size=200),
    warmup_runs=st.integers(0, 100),
    repeat_medians_ms=st.lists(st.floats(1e-6, 1e6), max_size=3),
    keep_samples=st.booleans(),
)
SPECIAL = {
    "sha256": sha,
    "result_id": uuids,
    "job_id": uuids,
    "size_bytes": st.integers(1, 2**40),
    "latency": latencies,
    "at": timestamps,
    "started_at": timestamps,
    "finished_at": timestamps,
    "progress": st.none() | unit,
    "share": unit,
    "batch": st.integers(1, 2**53),
}
# Fields that may be negative; every other number on the wire is a count, size, duration or rate (>= 0).
SIGNED = {"growth_mb", "drift_pct", "value", "reference", "delta", "temp_start_c", "temp_end_c", "temp_max_c",
          "cooldown_c", "t_s", "temp_c", "power_w", "psi_cpu_some_avg10", "steal_pct"}  # fmt: skip


def strategy_for(tp, name: str = ""):
    if name in SPECIAL:
        return SPECIAL[name]
    if dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        fields = {
            f.name: strategy_for(hints[f.name], f.name)
            for f in dataclasses.fields(tp)
            if f.name not in ("schema_version",)
        }
        return st.builds(tp, **fields)
    origin = get_origin(tp)
    if origin is Literal:
        return st.sampled_from(get_args(tp))
    if origin is tuple:
        return st.lists(strategy_for(get_args(tp)[0]), max_size=3).map(tuple)
    if origin is dict:
        return st.dictionaries(text, strategy_for(get_args(tp)[1]), max_size=3)
    if origin is not None:  # Optional / union
        return st.one_of(*(st.none() if a is type(None) else strategy_for(a, name) for a in get_args(tp)))
    if name not in SIGNED and tp in (int, float):
        return st.integers(0, 2**53) if tp is int else finite.map(abs)
    return {int: st.integers(-(2**53), 2**53), float: finite, str: text, bool: st.booleans()}[tp]


def _records_unchecked():
    hints = typing.get_type_hints(ResultRecord)
    kwargs = {
        f.name: strategy_for(hints[f.name], f.name)
        for f in dataclasses.fields(ResultRecord)
        if f.name not in ("schema_version", "status", "error", "latency")
    }
    lat = latencies

    @st.composite
    def build(draw):
        status = draw(st.sampled_from(["ok", "failed", "aborted"]))
        values = {k: draw(v) for k, v in kwargs.items()}
        latency = draw(lat) if status == "ok" else draw(st.none() | lat)
        error = draw(st.none() | text) if status == "ok" else draw(text.filter(bool))
        return ResultRecord(status=status, latency=latency, error=error, **values)

    return build()


@settings(max_examples=150, deadline=None)
@given(_records_unchecked())
def test_result_record_round_trip(record: ResultRecord):
    assert ResultRecord.from_json(record.to_json()) == record
    assert parse_message(record.to_json()) == record


@settings(max_examples=100, deadline=None)
@given(
    st.builds(
        Job,
        job_id=uuids,
        created_at=text,
        target=st.sampled_from(["all", "device:pi-1", "tag:lab"]),
        artifacts=st.lists(strategy_for(ArtifactRef), min_size=1, max_size=3).map(tuple),
        settings=strategy_for(schema.BenchSettings),
        key_id=text,
        signature=text,
    )
)
def test_job_round_trip(job: Job):
    assert Job.from_json(job.to_json()) == job
    assert job.signing_bytes() == Job.from_json(job.to_json()).signing_bytes()


@settings(max_examples=100, deadline=None)
@given(st.one_of(strategy_for(JobEvent), strategy_for(DeviceStatus)))
def test_event_and_status_round_trip(message):
    assert type(message).from_json(message.to_json()) == message
    assert parse_message(message.to_json()) == message


@settings(max_examples=100, deadline=None)
@given(sha, st.integers(0, 50), st.integers(1, 10**9), st.binary(max_size=4096))
def test_chunk_round_trip(sha256, index, size, data):
    chunk = ArtifactChunk(sha256, index, index + 1, size, data)
    assert ArtifactChunk.from_bytes(chunk.to_bytes()) == chunk


def _ok_record() -> ResultRecord:
    return ResultRecord(
        result_id=str(uuid.uuid4()),
        device=DeviceInfo(device_id="pi-1"),
        artifact=ArtifactInfo(name="m.onnx", sha256="a" * 64, format="onnx", size_bytes=10),
        config=RunConfig(runtime="onnxruntime", runtime_version="1.31.1", threads=1),
        status="ok",
        started_at="2026-01-01T00:00:00.000Z",
        finished_at="2026-01-01T00:00:01.000Z",
        latency=LatencyStats(
            n=3, mean_ms=1.0, std_ms=0.0, cv=0.0, min_ms=1.0, p50_ms=1.0, p50_ci_low_ms=None,
            p50_ci_high_ms=None, p90_ms=None, p99_ms=None, max_ms=1.0, mad_ms=0.0, outliers=0,
            drift_pct=None, throughput_ips=1000.0, warmup_runs=1, stable=True,
        ),
    )  # fmt: skip


def _mutated(path: str, value, drop: bool = False) -> str:
    data = json.loads(_ok_record().to_json())
    *parents, leaf = path.split(".")
    node = data
    for p in parents:
        node = node[p]
    if drop:
        del node[leaf]
    else:
        node[leaf] = value
    return json.dumps(data)


@pytest.mark.parametrize(
    ("payload", "field", "message"),
    [
        (_mutated("schema_version", 2), "schema_version", "unsupported schema version 2"),
        (_mutated("schema_version", None, drop=True), "schema_version", "missing"),
        (_mutated("latency.p50_ms", "fast"), "latency.p50_ms", "expected a number"),
        (_mutated("latency.n", 1.5), "latency.n", "expected an integer"),
        (_mutated("latency.stable", 1), "latency.stable", "expected a boolean"),
        (_mutated("device.device_id", None, drop=True), "device.device_id", "missing"),
        (_mutated("artifact.format", "pt"), "artifact.format", "must be one of"),
        (_mutated("artifact.sha256", "xyz"), "artifact.sha256", "sha256"),
        (_mutated("result_id", "not-a-uuid"), "result_id", "UUID"),
        (_mutated("status", "failed"), "error", "must say why"),
        (_mutated("latency", None), "latency", "must carry latency"),
        (_mutated("surprise", 1), "surprise", "unknown field"),
        (_mutated("config.input_shapes", {"x": [1, "a"]}), "config.input_shapes.x[1]", "integer"),
    ],
)
def test_errors_name_the_field(payload, field, message):
    with pytest.raises(SchemaError) as info:
        ResultRecord.from_json(payload)
    assert info.value.field == field
    assert message in str(info.value)


@pytest.mark.parametrize("payload", ["{not json", "[]", "null", '"x"'])
def test_not_an_object(payload):
    with pytest.raises(SchemaError):
        ResultRecord.from_json(payload)


def test_parse_message_rejects_unknown_kind():
    with pytest.raises(SchemaError, match="unknown message kind"):
        parse_message('{"kind": "weather", "schema_version": 1}')


def test_kind_mismatch_is_rejected():
    status = DeviceStatus(device_id="pi-1", state="online", at="2026-01-01T00:00:00.000Z")
    with pytest.raises(SchemaError, match="expected kind 'result'"):
        ResultRecord.from_json(status.to_json())


def test_nan_never_reaches_the_wire():
    with pytest.raises(SchemaError):
        dataclasses.replace(
            _ok_record(), accuracy=schema.AccuracyInfo(metric="acc", value=float("nan"))
        ).to_json()


def test_job_signature_covers_content_not_signature():
    ref = ArtifactRef(name="m.onnx", sha256="b" * 64, size_bytes=5, format="onnx")
    job = Job(job_id=str(uuid.uuid4()), created_at="t", target="all", artifacts=(ref,))
    signed = job.signed("key1", "c2ln")
    assert signed.signing_bytes() == job.signing_bytes()
    other = dataclasses.replace(job, target="tag:lab")
    assert other.signing_bytes() != job.signing_bytes()


@pytest.mark.parametrize(
    "payload",
    [
        b"no header",
        b'{"kind":"chunk"}\n',
        b'{"kind":"chunk","schema_version":1,"sha256":"' + b"a" * 64 + b'","index":0,"total":1,'
        b'"size_bytes":3,"length":5}\nabc',
        b'{"kind":"chunk","schema_version":9,"sha256":"' + b"a" * 64 + b'","index":0,"total":1,'
        b'"size_bytes":3,"length":3}\nabc',
    ],
)
def test_bad_chunks_are_rejected(payload):
    with pytest.raises(SchemaError):
        ArtifactChunk.from_bytes(payload)


def test_chunk_request_validates_sha():
    with pytest.raises(SchemaError, match="sha256"):
        ChunkRequest(device_id="pi", sha256="nope")


def test_topic_tree():
    assert topics.results("pi-1") == "edgebench/v1/devices/pi-1/results"
    assert topics.job_topics_for("pi-1", ["lab"]) == [
        "edgebench/v1/devices/pi-1/jobs",
        "edgebench/v1/fleet/jobs",
        "edgebench/v1/tags/lab/jobs",
    ]
    assert topics.parse_device_topic("edgebench/v1/devices/pi-1/chunks/request") == ("pi-1", "chunks/request")
    assert topics.jobs_topic_for_target("tag:lab") == "edgebench/v1/tags/lab/jobs"
    for bad in ["", "a/b", "+", "#", "a b", "x" * 65]:
        with pytest.raises(topics.TopicError):
            topics.status(bad)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 10**10), min_size=1, max_size=300))
def test_histogram_statistics_satisfy_the_wire_rules(values):
    """Issue 15: LatencyStats read from a log histogram (past 65,536 runs) obey every rule of the format."""
    kept = Kept.of(values).binned()
    lat = summarize(kept)
    record = dataclasses.replace(_ok_record(), latency=lat)
    record = dataclasses.replace(
        record, config=dataclasses.replace(record.config, options={"samples": kept.describe()})
    )
    assert ResultRecord.from_json(record.to_json()) == record


def test_percentile_floors_and_older_records():
    """p90 needs 64 samples, p99 662 (MLPerf); a record below its floor has None there. An older agent's
    record (max_runs 10000, a p99 from 100 samples) still decodes: readers mark that p99 unsupported."""
    assert schema.PERCENTILE_FLOORS == {"p90_ms": 64, "p99_ms": 662}
    assert not schema.percentile_supported("p99_ms", 661) and schema.percentile_supported("p99_ms", 662)
    assert schema.percentile_supported("p90_ms", 64) and not schema.percentile_supported("p90_ms", 63)
    assert schema.percentile_supported("p50_ms", 1)
    assert schema.ProtocolSettings().max_runs == 0  # no run cap
    old = json.loads(_ok_record().to_json())
    old["config"]["protocol"]["max_runs"] = 10000
    old["latency"].update(n=100, p90_ms=1.0, p99_ms=1.0)
    record = ResultRecord.from_dict(old)
    assert record.latency.p99_ms == 1.0 and not schema.percentile_supported("p99_ms", record.latency.n)
