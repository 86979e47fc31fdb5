"""Results from a device without a broker: `edgebench agent export` and `edgebench collector import`.

Real `edgebench bench --out` files, a real agent outbox (SqliteOutbox, held open as a running agent
holds it), real SQLite databases; no broker anywhere.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.delivery.outbox_sqlite import SqliteOutbox, read_stats
from agent.service.export import export_outbox
from collector.ingest.file_import import import_files
from edgebench.cli import main
from testkit.records import make_record, make_status
from wire import topics
from wire.receipts import event_key, result_key
from wire.schema import JobEvent

FAST = ["--quick", "--runs", "20", "--min-time", "0.05", "--max-time", "1"]
DEVICE = "pi-offline"


def cli(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def rows(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def dead_letters(db: Path) -> list[str]:
    return [r[0] for r in rows(db, "SELECT reason FROM dead_letters ORDER BY id")]


@pytest.fixture(scope="module")
def bench_out(tmp_path_factory, tiny_mlp_tflite) -> Path:
    """A real `edgebench bench --out r.json` on the device."""
    out = tmp_path_factory.mktemp("pi") / "r.json"
    res = cli("bench", str(tiny_mlp_tflite), *FAST, "--device-id", DEVICE, "--out", str(out))
    assert res.exit_code == 0, res.output
    return out


def test_bench_out_round_trip_into_report_and_reimport_adds_nothing(bench_out, tmp_path):
    db = tmp_path / "edgebench.db"
    records = json.loads(bench_out.read_text())
    res = cli("collector", "import", str(bench_out), "--db", str(db))
    assert res.exit_code == 0, res.output
    n = len(records)
    assert f"read {n}, stored {n} new, 0 already there, 0 dead-lettered" in res.output
    stored = rows(db, "SELECT result_id, device_id FROM results")
    assert sorted(stored) == sorted((r["result_id"], DEVICE) for r in records)

    report = cli("report", "latency", "--db", str(db))
    assert report.exit_code == 0 and DEVICE in report.output and "tiny_mlp.tflite" in report.output

    again = cli("collector", "import", str(bench_out), "--db", str(db))
    assert f"read {n}, stored 0 new, {n} already there, 0 dead-lettered" in again.output
    assert len(rows(db, "SELECT * FROM results")) == n


def test_bad_records_dead_lettered_while_good_ones_land(tmp_path):
    good = [make_record(DEVICE).to_dict() for _ in range(2)]
    wrong_type = make_record(DEVICE).to_dict()
    wrong_type["latency"]["n"] = "many"
    no_device = make_record(DEVICE).to_dict()
    del no_device["device"]
    bad_id = make_record("has space").to_dict()
    future = dict(make_record(DEVICE).to_dict(), schema_version=99)
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps([good[0], wrong_type, no_device, bad_id, future, good[1]], indent=1))
    db = tmp_path / "e.db"

    res = cli("collector", "import", str(path), "--db", str(db))
    assert res.exit_code == 0
    assert "read 6, stored 2 new, 0 already there, 4 dead-lettered" in res.output
    assert sorted(r[0] for r in rows(db, "SELECT result_id FROM results")) == sorted(
        g["result_id"] for g in good
    )
    reasons = dead_letters(db)
    assert [r.split(":")[0] for r in reasons] == [
        "invalid-field",
        "missing-field",
        "invalid-field",
        "unknown-schema-version",
    ]
    assert reasons[0].startswith(f"invalid-field: {path} record 2: latency.n")
    assert f"{path} record 3: device.device_id" in reasons[1]

    again = cli("collector", "import", str(path), "--db", str(db))
    assert "stored 0 new, 2 already there, 4 dead-lettered (4 recorded before)" in again.output
    assert dead_letters(db) == reasons  # the same bad records are not recorded twice
    status = cli("collector", "status", "--db", str(db))
    assert "dead letters    4" in status.output


def test_jsonl_single_object_and_events(tmp_path):
    records = [make_record(DEVICE) for _ in range(3)]
    event = JobEvent(job_id="job-1", device_id=DEVICE, state="done", at="2025-01-01T00:00:02.000Z")
    lines = tmp_path / "r.jsonl"
    body = [r.to_json() for r in records] + ["", event.to_json(), "{broken"]
    lines.write_text("\r\n".join(body) + "\r\n")  # blank line skipped, CRLF accepted
    one = tmp_path / "one.json"
    one.write_text(json.dumps(make_record("pi-2").to_dict(), indent=2))
    db = tmp_path / "e.db"

    res = cli("collector", "import", str(lines), str(one), "--db", str(db))
    assert "read 6, stored 5 new, 0 already there, 1 dead-lettered" in res.output
    assert rows(db, "SELECT job_id, device_id, state FROM job_events") == [("job-1", DEVICE, "done")]
    assert sorted(r[0] for r in rows(db, "SELECT DISTINCT device_id FROM results")) == ["pi-2", DEVICE]
    assert dead_letters(db)[0].startswith(f"bad-json: {lines} line 6: not valid JSON")
    # the stored JSON is the record's text as it was in the file (as received, like MQTT input)
    stored = rows(db, f"SELECT record FROM results WHERE result_id = '{records[0].result_id}'")
    assert stored == [(records[0].to_json(),)]


def _outbox(path: Path) -> SqliteOutbox:
    """A device's outbox with results and job events pending, one row refused by the broker."""
    outbox = SqliteOutbox(path)
    for i in range(3):
        r = make_record(DEVICE, job_id="job-7", finished_at=f"2025-01-01T00:00:0{i}.000Z")
        outbox.put(topics.results(DEVICE), r.to_json().encode(), key=result_key(r.result_id))
    for state in ("running", "done"):
        e = JobEvent(job_id="job-7", device_id=DEVICE, state=state, at=f"2025-01-01T00:01:0{len(state)}.000Z")
        outbox.put(topics.events(DEVICE), e.to_json().encode(), key=event_key(e.job_id, e.state, e.at))
    refused = make_record(DEVICE)
    row = outbox.put(topics.results(DEVICE), refused.to_json().encode(), key=result_key(refused.result_id))
    outbox.reject(row, "0x97 Quota exceeded")
    return outbox


def test_agent_export_from_a_live_outbox_and_import(tmp_path):
    data_dir = tmp_path / "agent-data"
    outbox = _outbox(data_dir / "outbox.db")  # held open, as by a running agent
    try:
        before = read_stats(data_dir / "outbox.db")
        out = tmp_path / "pi-offline.jsonl"
        res = cli("agent", "export", "--data-dir", str(data_dir), "--out", str(out))
        assert res.exit_code == 0, res.output
        assert "exported 5 message(s) (3 result(s), 2 job event(s))" in res.output
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        assert [x["topic"] for x in lines] == [topics.results(DEVICE)] * 3 + [topics.events(DEVICE)] * 2
        assert [x["payload"].encode() for x in lines] == [r.payload for r in outbox.pending()]
        assert read_stats(data_dir / "outbox.db") == before  # nothing removed, nothing written
        outbox.put(topics.events(DEVICE), b"{}")  # the agent goes on writing: not locked out

        every = tmp_path / "all.jsonl"
        summary = export_outbox(data_dir / "outbox.db", every, include_rejected=True)
        assert summary.lines == 7 and summary.rejected == 1
        assert json.loads(every.read_text().splitlines()[-1])["rejected"] == "0x97 Quota exceeded"
    finally:
        outbox.close()

    db = tmp_path / "e.db"
    res = cli("collector", "import", str(out), "--db", str(db))
    assert "read 5, stored 5 new, 0 already there, 0 dead-lettered" in res.output
    assert len(rows(db, "SELECT * FROM results WHERE job_id = 'job-7'")) == 3
    assert len(rows(db, "SELECT * FROM job_events")) == 2
    res = cli("collector", "import", str(every), "--db", str(db))  # the `{}` event is a dead letter
    assert "read 7, stored 1 new, 5 already there, 1 dead-lettered" in res.output
    report = cli("report", "latency", "--db", str(db))
    assert DEVICE in report.output


def test_export_errors_are_one_line(tmp_path):
    res = CliRunner().invoke(main, ["agent", "export", "--data-dir", str(tmp_path / "none")])
    assert res.exit_code == 1 and "no outbox at" in res.output and res.exception is not None
    assert isinstance(res.exception, SystemExit)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "outbox.db").write_text("not a database")
    res = CliRunner().invoke(main, ["agent", "export", "--data-dir", str(tmp_path / "d")])
    assert res.exit_code == 1 and "cannot read outbox" in res.output


def test_unreadable_files_reported_and_the_others_imported(tmp_path, bench_out):
    (tmp_path / "adir").mkdir()
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "cut.json").write_text(bench_out.read_text()[:200])
    (tmp_path / "x.db").write_bytes(b"SQLite format 3\x00" + bytes(100))
    (tmp_path / "latin1.json").write_bytes(b'[{"a": "\xe9"}]')
    (tmp_path / "empty.jsonl").write_text("")
    names = ["adir", "missing.json", "notes.txt", "cut.json", "x.db", "latin1.json", "empty.jsonl"]
    db = tmp_path / "e.db"
    res = CliRunner().invoke(
        main, ["collector", "import", *(str(tmp_path / n) for n in names), str(bench_out), "--db", str(db)]
    )
    assert res.exit_code == 1 and "Traceback" not in res.output
    errors = [line for line in res.output.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 6
    for fragment in ("is a directory", "no such file", "not JSON or JSON lines", "truncated file",
                     "agent export", "not UTF-8"):  # fmt: skip
        assert any(fragment in e for e in errors), (fragment, errors)
    n = len(json.loads(bench_out.read_text()))
    assert f"read {n}, stored {n} new" in res.output and "6 file(s) not imported" in res.output
    assert len(rows(db, "SELECT * FROM results")) == n


def test_database_that_cannot_be_used_is_one_line(tmp_path, bench_out):
    bad = tmp_path / "e.db"
    bad.write_text("not sqlite at all, but a text file" * 10)
    res = CliRunner().invoke(main, ["collector", "import", str(bench_out), "--db", str(bad)])
    assert res.exit_code == 1 and "Traceback" not in res.output and str(bad) in res.output


# ---------------------------------------------------------------- mutated files never break it


def _seed_files() -> list[bytes]:
    """A bench --out array, an agent export, an export with a status line."""
    array = json.dumps(
        [
            make_record(DEVICE, result_id=f"00000000-0000-4000-8000-00000000000{i}").to_dict()
            for i in range(2)
        ],
        indent=1,
    )
    export = "\n".join(
        json.dumps(
            {
                "topic": topics.results(DEVICE),
                "payload": make_record(DEVICE, result_id=f"00000000-0000-4000-8000-00000000001{i}").to_json(),
            }
        )
        for i in range(2)
    )
    status = json.dumps({"topic": topics.status(DEVICE), "payload": make_status(DEVICE).to_json()})
    return [array.encode(), export.encode(), (export + "\n" + status).encode()]


SEEDS = _seed_files()


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "delete"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "cut":
            del data[at:]
        elif op == "insert":
            data[at:at] = draw(
                st.sampled_from([b"[", b"]", b"{", b"}", b",", b'"', b"\n", b"\\", b"\xff", b"NaN"])
            )
        elif data:
            del data[at : at + draw(st.integers(1, 40))]
    return bytes(data)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=mutated())
def test_mutated_files_never_a_traceback(tmp_path, content):
    path = tmp_path / "in.json"
    path.write_bytes(content)
    db = tmp_path / "fuzz.db"
    res = CliRunner().invoke(main, ["collector", "import", str(path), "--db", str(db)])
    assert res.exit_code in (0, 1), res.output
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.output
    summary = import_files(db, [path])  # the same file again: every record accounted for, nothing new
    c = summary.counts
    if summary.errors:
        assert c.read == 0 and len(summary.errors) == 1 and "\n" not in summary.errors[0]
    assert c.read == c.new + c.duplicate + c.dead + c.statuses + c.ignored
    assert c.new == 0 and c.dead == c.dead_known
