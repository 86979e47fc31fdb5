"""`report compare`: significance from raw samples, selectors, bad input."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from collector.reports.compare import compare_runs
from collector.reports.stats import bootstrap_median_diff
from collector.store.report_index import ReportError
from collector.store.sqlite import insert_results, open_db
from tests.support.report_records import make_record

JOB_A = str(uuid.UUID(int=1))
JOB_B = str(uuid.UUID(int=2))


def _verdicts(cmp):
    return {(r.device_id, r.variant): r.verdict for r in cmp.rows}


@pytest.fixture
def db(db_path):
    db = open_db(db_path)
    recs = []
    for i, dev in enumerate(("pi-a", "pi-b")):
        # Job A: baseline. Job B: pi-a's int8 got 8 % slower, pi-b's got 0.2 % slower (noise), fp32 unchanged.
        for k in range(3):
            recs.append(
                make_record(
                    dev, "fp32", seed=100 * i + k, job_id=JOB_A, finished_at=f"2024-05-0{1 + k}T00:00:00Z"
                )
            )
            recs.append(
                make_record(
                    dev,
                    "int8-static",
                    seed=100 * i + 10 + k,
                    job_id=JOB_A,
                    finished_at=f"2024-05-0{1 + k}T00:00:00Z",
                )
            )
            recs.append(
                make_record(
                    dev,
                    "fp32",
                    seed=100 * i + 20 + k,
                    job_id=JOB_B,
                    finished_at=f"2024-06-0{1 + k}T00:00:00Z",
                )
            )
            slower = 1.08 if dev == "pi-a" else 1.002
            late = f"2024-06-0{1 + k}T00:00:00Z"
            recs.append(
                make_record(
                    dev,
                    "int8-static",
                    base_ms=10.0 * slower,
                    seed=100 * i + 30 + k,
                    job_id=JOB_B,
                    finished_at=late,
                )
            )
    insert_results(db, recs)
    return db


def test_flags_only_significant_changes(db):
    cmp = compare_runs(db.conn, f"job:{JOB_A}", f"job:{JOB_B}")
    v = _verdicts(cmp)
    assert v[("pi-a", "int8-static")] == "regression"
    assert v[("pi-b", "int8-static")] == "no significant change"
    assert v[("pi-a", "fp32")] == "no significant change"
    reg = next(r for r in cmp.rows if r.verdict == "regression")
    assert reg.change == pytest.approx(0.08, abs=0.03)
    assert reg.ci_low_ms > 0 and reg.baseline_runs == 3 and reg.candidate_runs == 3
    assert "runs, then samples" in reg.method


def test_date_range_and_bare_job_id_and_result_ids_select_the_same(db, tmp_path):
    by_job = compare_runs(db.conn, JOB_A, JOB_B)
    by_date = compare_runs(db.conn, "2024-05-01..2024-05-31", "2024-06-01..")
    assert _verdicts(by_job) == _verdicts(by_date)
    ids = [r[0] for r in db.conn.execute("SELECT result_id FROM results WHERE job_id = ?", (JOB_B,))]
    (tmp_path / "ids.txt").write_text("\n".join(ids))
    by_ids = compare_runs(db.conn, f"job:{JOB_A}", f"ids:@{tmp_path / 'ids.txt'}")
    assert _verdicts(by_ids) == _verdicts(by_job)


def test_improvement_and_unmatched_rows(db):
    extra = make_record("pi-c", "fp32", seed=999, job_id=JOB_B)
    insert_results(db, [extra])
    cmp = compare_runs(db.conn, f"job:{JOB_B}", f"job:{JOB_A}")
    v = _verdicts(cmp)
    assert v[("pi-a", "int8-static")] == "improvement"
    assert v[("pi-c", "fp32")] == "only in baseline"


def test_a_big_difference_from_too_little_data_is_not_flagged():
    rng = np.random.default_rng(0)
    base = [rng.lognormal(np.log(10), 0.5, 5)]
    cand = [rng.lognormal(np.log(12), 0.5, 5)]
    d = bootstrap_median_diff(base, cand)
    assert not d.significant  # 20 % apart on paper, but five noisy samples each prove nothing


@pytest.mark.parametrize(
    ("base", "cand", "message"),
    [
        ("nope", f"job:{JOB_B}", "neither a job id nor a result id"),
        ("' OR 1=1 --", f"job:{JOB_B}", "neither a job id nor a result id"),
        ("job:", f"job:{JOB_B}", "no job id"),
        ("2030-01-01..", f"job:{JOB_B}", "no successful results match"),
        ("yesterday..", f"job:{JOB_B}", "cannot read the time"),
        ("ids:@/nonexistent/ids.txt", f"job:{JOB_B}", "cannot read result ids"),
    ],
)
def test_bad_selectors(db, base, cand, message):
    with pytest.raises(ReportError, match=message):
        compare_runs(db.conn, base, cand)


def test_empty_database(db_path):
    with pytest.raises(ReportError, match="no results yet"):
        compare_runs(open_db(db_path).conn, "a", "b")
