"""Ids by unique prefix (collector.store.ids): the one resolver, the reports and the fleet commands.

A unique prefix resolves, an exact id wins over the longer ids it is a prefix of, an ambiguous prefix is a
one-line error naming the candidates, a prefix that matches nothing says so."""

from __future__ import annotations

from dataclasses import replace

import pytest
from click.testing import CliRunner

from collector.fleet.cli import fleet_group
from collector.fleet.operations import FleetError, build_job, collect_artifacts, list_jobs, resolve_target
from collector.reports.compare import compare_runs
from collector.reports.query import ReportFilter, expand_selector, resolve_devices
from collector.store.ids import (
    DEVICE,
    JOB,
    MAX_LISTED,
    RESULT,
    AmbiguousIdError,
    UnknownIdError,
    matching_ids,
    pick_unique,
    resolve_id,
)
from collector.store.report_index import ReportError
from collector.store.sqlite import insert_results, open_db, record_job, upsert_device
from edgebench.cli import main
from testkit.records import make_status
from testkit.report_records import make_record
from wire.schema import BenchSettings

JOB_A = "cf660957-0000-4000-8000-00000000000a"
JOB_B = "cf660957-1111-4000-8000-00000000000b"  # the same first 8 characters as JOB_A
JOB_C = "0badc0de-0000-4000-8000-00000000000c"
DEVICES = ("pi-a", "pi-b", "jetson-1")


@pytest.fixture
def db(db_path):
    db = open_db(db_path)
    recs = [
        make_record(dev, variant, seed=10 * i + k, job_id=job)
        for i, dev in enumerate(DEVICES)
        for k, (variant, job) in enumerate(
            (("fp32", JOB_A), ("fp32", JOB_A), ("fp32", JOB_C), ("fp32", JOB_C), ("int8-static", JOB_B))
        )
    ]
    insert_results(db, recs)
    yield db
    db.close()


# ---------------------------------------------------------------- the resolver


def test_unique_prefix_resolves_and_exact_wins(db):
    assert resolve_id(db.conn, JOB, "0bad") == JOB_C
    assert resolve_id(db.conn, JOB, f"  {JOB_A[:-1]} ") == JOB_A  # spaces around are no part of an id
    assert resolve_id(db.conn, JOB, JOB_B) == JOB_B
    assert resolve_id(db.conn, DEVICE, "jet") == "jetson-1"
    result_id = db.conn.execute("SELECT result_id FROM results LIMIT 1").fetchone()[0]
    assert resolve_id(db.conn, RESULT, result_id[:13]) == result_id
    assert pick_unique("pi", ["pi", "pi-2"], "device") == "pi"  # an exact id is never ambiguous
    assert pick_unique("pi-", ["pi", "pi-2"], "device") == "pi-2"


def test_ambiguous_prefix_is_one_line_naming_the_candidates(db):
    with pytest.raises(AmbiguousIdError) as err:
        resolve_id(db.conn, JOB, "cf660957")
    message = str(err.value)
    assert "ambiguous job id 'cf660957'" in message and JOB_A in message and JOB_B in message
    assert "\n" not in message and err.value.reason == "ambiguous_id"
    assert err.value.candidates == (JOB_A, JOB_B)
    with pytest.raises(AmbiguousIdError, match=r"'pi-': 2 ids start with it \(pi-a, pi-b\)"):
        resolve_id(db.conn, DEVICE, "pi-")


def test_many_candidates_are_counted_not_all_listed(db):
    ids = [f"node-{i:03d}" for i in range(MAX_LISTED + 5)]
    with pytest.raises(AmbiguousIdError, match=f"{len(ids)} ids start with it .* and 5 more"):
        pick_unique("node-", ids, "device")
    insert_results(db, [make_record(d, "fp32", seed=1000 + i) for i, d in enumerate(ids)])
    with pytest.raises(AmbiguousIdError, match=f"{len(ids)} ids start with it .*node-007 and 5 more") as err:
        resolve_id(db.conn, DEVICE, "node-")
    assert len(err.value.candidates) == MAX_LISTED + 1


def test_no_match_says_so(db):
    with pytest.raises(UnknownIdError, match="unknown job 'ffff': no job id starts with it"):
        resolve_id(db.conn, JOB, "ffff")
    with pytest.raises(UnknownIdError, match=r"unknown device 'pi-z' \(known: jetson-1, pi-a, pi-b\)"):
        resolve_id(db.conn, DEVICE, "pi-z")
    with pytest.raises(UnknownIdError, match="an empty result id"):
        resolve_id(db.conn, RESULT, " ")


def test_like_wildcards_and_quotes_are_plain_characters(db):
    assert matching_ids(db.conn, DEVICE, "pi_") == []  # no LIKE: '_' is not "any character"
    assert matching_ids(db.conn, DEVICE, "%") == []
    with pytest.raises(UnknownIdError):
        resolve_id(db.conn, JOB, "' OR 1=1 --")


# ---------------------------------------------------------------- reports


def run_report(*args):
    return CliRunner().invoke(main, ["report", *map(str, args)], catch_exceptions=False)


def test_report_device_prefix(db, db_path):
    assert resolve_devices(db.conn, ReportFilter(devices=("jet",))) == {"jetson-1"}
    ok = run_report("latency", "--db", db_path, "--device", "jet", "-f", "csv")
    assert ok.exit_code == 0, ok.output
    assert "jetson-1" in ok.output and "pi-a" not in ok.output
    bad = run_report("latency", "--db", db_path, "--device", "pi")
    assert bad.exit_code == 1 and len(bad.output.strip().splitlines()) == 1
    assert "ambiguous device id 'pi'" in bad.output and "pi-a, pi-b" in bad.output
    none = run_report("ops", "--db", db_path, "--device", "nano")
    assert none.exit_code == 1 and "unknown device 'nano'" in none.output


def test_compare_selectors_take_prefixes(db):
    assert expand_selector(db.conn, "job:0badc0de") == f"job:{JOB_C}"
    assert expand_selector(db.conn, f"job:{JOB_A[:-1]}, 0bad") == f"job:{JOB_A},{JOB_C}"
    assert expand_selector(db.conn, "0badc0de") == f"job:{JOB_C}"  # a bare prefix names a job first
    result_id = db.conn.execute("SELECT result_id FROM results LIMIT 1").fetchone()[0]
    assert expand_selector(db.conn, f"ids:{result_id[:12]}") == f"ids:{result_id}"
    assert expand_selector(db.conn, result_id[:12]) in (f"ids:{result_id}", f"job:{JOB_C}")
    for unchanged in (JOB_A, "7d..1d", "ids:@file.txt", "nope"):  # the selector parser judges these
        assert expand_selector(db.conn, unchanged) == unchanged
    with pytest.raises(ReportError, match=f"ambiguous job id 'cf660957'.*{JOB_A}, {JOB_B}"):
        expand_selector(db.conn, "job:cf660957")
    with pytest.raises(ReportError, match="unknown job 'ffff': no job id starts with it"):
        expand_selector(db.conn, "job:ffff")
    cmp = compare_runs(db.conn, expand_selector(db.conn, "job:cf660957-0000-4000-8000-00000000000a"),
                       expand_selector(db.conn, "job:0bad"))  # fmt: skip
    assert {r.device_id for r in cmp.rows} == set(DEVICES)


# ---------------------------------------------------------------- fleet


def test_fleet_jobs_and_push_take_prefixes(db, db_path, tiny_mlp_onnx):
    for device in DEVICES:
        upsert_device(db, make_status(device, tags=("lab",)))
    job = build_job(collect_artifacts([tiny_mlp_onnx]), "all", BenchSettings())
    for job_id in (JOB_A, JOB_B, JOB_C):
        record_job(db, replace(job, job_id=job_id))
    [row] = list_jobs(db, job="0bad")
    assert row.job_id == JOB_C
    runner = CliRunner()
    listed = runner.invoke(fleet_group, ["jobs", "--db", str(db_path)])
    assert listed.exit_code == 0 and "cf660957" in listed.output
    one = runner.invoke(fleet_group, ["jobs", JOB_A[:-2], "--db", str(db_path)])
    assert one.exit_code == 0, one.output
    assert JOB_A in one.output and JOB_B not in one.output  # one job, its full id
    ambiguous = runner.invoke(fleet_group, ["jobs", "cf660957", "--db", str(db_path)])
    assert ambiguous.exit_code == 1 and len(ambiguous.output.strip().splitlines()) == 1
    assert f"ambiguous job id 'cf660957': 2 ids start with it ({JOB_A}, {JOB_B})" in ambiguous.output
    none = runner.invoke(fleet_group, ["jobs", "ffff", "--db", str(db_path)])
    assert none.exit_code == 1 and "unknown job 'ffff': no job id starts with it" in none.output
    assert resolve_target(db, "jet") == ("device:jetson-1", ["jetson-1"])
    assert resolve_target(db, "device:pi-b") == ("device:pi-b", ["pi-b"])
    with pytest.raises(FleetError, match=r"ambiguous device id 'pi-': 2 ids start with it \(pi-a, pi-b\)"):
        resolve_target(db, "pi-")
    with pytest.raises(FleetError, match="unknown device 'nano'"):
        resolve_target(db, "nano")
    push = runner.invoke(fleet_group, ["push", str(tiny_mlp_onnx), "--to", "pi", "--db", str(db_path)])
    assert push.exit_code == 1 and "ambiguous device id 'pi'" in push.output
