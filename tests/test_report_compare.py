"""`report compare`: a run-level test (Welch on ln run medians), its verdicts, selectors, bad input.

The calibration (false alarms, power) is proved by simulation in tests/test_compare_calibration.py."""

from __future__ import annotations

import json
import math
import uuid

import numpy as np
import pytest
from click.testing import CliRunner

from collector.reports.compare import compare_runs
from collector.reports.stats import (
    NO_CHANGE,
    TOO_FEW_RUNS,
    compare_run_medians,
    runs_needed,
    t_quantile,
    t_two_sided_p,
)
from collector.store.report_index import ReportError
from collector.store.sqlite import insert_results, open_db
from testkit.report_records import make_record

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
    assert reg.method == "Welch t-test on ln(run median)"
    assert reg.p_value < 0.05 and reg.change_ci_low > 0 and reg.threshold >= reg.run_cv


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


def test_a_big_difference_from_too_few_noisy_runs_says_how_many_runs_it_needs():
    # 20 % apart on paper, but the runs of each side differ by 15 %: two runs a side cannot decide.
    t = compare_run_medians([10.0, 11.5], [12.0, 13.8])
    assert not t.flagged and t.p_value > 0.05
    assert t.runs_needed is not None and t.runs_needed > 2
    assert t.verdict == f"inconclusive (needs {t.runs_needed} runs a side)"
    # with that many runs a side (the same spread) the same change is flagged
    n = t.runs_needed
    spread = [1.0 + 0.15 * (i % 2) for i in range(n)]
    assert compare_run_medians([10.0 * f for f in spread], [12.0 * f for f in spread]).verdict == "regression"


def test_one_run_a_side_is_never_tested():
    t = compare_run_medians([10.0], [20.0])
    assert t.verdict == TOO_FEW_RUNS and t.p_value is None and t.ratio == pytest.approx(2.0)


def test_the_minimum_effect_is_at_least_the_run_to_run_variation():
    # 60 runs a side varying by ~4 %: a 3 % shift is significant, but smaller than what runs vary by
    spread = np.exp(0.04 * np.random.default_rng(1).standard_normal(60))
    t = compare_run_medians(10 * spread, 10.3 * spread, min_effect=0.01)
    assert t.p_value < 0.05 and t.run_cv > 0.03 and t.threshold == t.run_cv
    assert t.verdict == NO_CHANGE
    # a user minimum larger than the variation wins
    assert compare_run_medians([10, 10.1], [12, 12.1], min_effect=0.5).threshold == 0.5


def test_identical_runs_and_identical_sides():
    assert compare_run_medians([10.0, 10.0], [10.0, 10.0]).verdict == NO_CHANGE
    t = compare_run_medians([10.0, 10.0], [11.0, 11.0])
    assert t.verdict == "regression" and t.p_value == 0.0


@pytest.mark.parametrize(
    ("q", "df", "want"),
    [
        (0.975, 1, 12.706204736174694),
        (0.975, 2, 4.302652729749462),
        (0.975, 2.7, 3.3921483831737507),
        (0.975, 5, 2.5705818356363146),
        (0.975, 10, 2.228138851986274),
        (0.8, 8, 0.8888895177670202),
        (0.995, 30, 2.7499956535672254),
    ],
)
def test_t_quantile_matches_scipy(q, df, want):  # reference values from scipy.stats.t.ppf
    assert t_quantile(q, df) == pytest.approx(want, rel=1e-8)
    assert t_quantile(1 - q, df) == pytest.approx(-want, rel=1e-8)


@pytest.mark.parametrize(
    ("t", "df", "want"),
    [(2.0, 3, 0.13932596855884305), (4.3, 2, 0.05005715411709159), (1.0, 1.5, 0.45113536727671033),
     (10.0, 7.2, 1.7688330161257123e-05)],
)  # fmt: skip
def test_t_p_value_matches_scipy(t, df, want):  # 2 * scipy.stats.t.sf
    assert t_two_sided_p(t, df) == pytest.approx(want, rel=1e-9)
    assert t_two_sided_p(-t, df) == pytest.approx(want, rel=1e-9)


def test_runs_needed():
    # a shift of one SD needs 17 runs a side for 80 % power at 0.05; of 3 SD, 4
    assert runs_needed(0.03, 0.03) == 17
    assert runs_needed(0.09, 0.03) == 4
    assert runs_needed(0.05, 0.0) == 2
    assert runs_needed(1e-6, 1.0) is None


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


def test_cli_fail_on_regression_only_on_calibrated_regressions(db, db_path):
    from edgebench.cli import main

    def run(*args):
        return CliRunner().invoke(main, ["report", "compare", *args, "--db", str(db_path)])

    res = run(f"job:{JOB_A}", f"job:{JOB_B}", "--fail-on-regression", "-f", "json")
    assert res.exit_code == 1  # pi-a int8 is 8 % slower over 3 runs a side
    data = json.loads(res.output)
    row = next(r for r in data["rows"] if r["verdict"] == "regression")
    assert {"p_value", "change_ci_low", "change_ci_high", "run_cv", "threshold", "runs_needed"} <= set(row)
    assert "Welch" in data["notes"][0] and "p < 0.05" in data["notes"][0]
    # the other way round, it is an improvement: no failure
    assert run(f"job:{JOB_B}", f"job:{JOB_A}", "--fail-on-regression").exit_code == 0
    # a minimum effect above the 8 %: nothing flagged
    assert run(f"job:{JOB_A}", f"job:{JOB_B}", "--fail-on-regression", "--min-effect", "10").exit_code == 0
    # a stricter level still flags it (p is tiny); a bad level is a one-line error
    assert run(f"job:{JOB_A}", f"job:{JOB_B}", "--fail-on-regression", "--alpha", "0.001").exit_code == 1
    bad = run(f"job:{JOB_A}", f"job:{JOB_B}", "--alpha", "2")
    assert bad.exit_code == 1 and "--alpha must be between 0 and 1" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    for fmt in ("table", "csv", "md"):
        out = run(f"job:{JOB_A}", f"job:{JOB_B}", "-f", fmt)
        assert out.exit_code == 0 and "regression" in out.output


def test_runs_stored_without_samples_count_the_same(db_path):
    # a run's median is its record's p50: runs kept without raw samples are compared the same way
    db = open_db(db_path)
    kept = [make_record("pi-a", "fp32", seed=s, job_id=JOB_A) for s in range(3)]
    bare = [make_record("pi-a", "fp32", seed=10 + s, job_id=JOB_B, keep_samples=False) for s in range(3)]
    insert_results(db, kept + bare)
    row = compare_runs(db.conn, f"job:{JOB_A}", f"job:{JOB_B}").rows[0]
    assert row.verdict == NO_CHANGE and row.method == "Welch t-test on ln(run median)"
    assert row.baseline_p50_ms == pytest.approx(math.exp(sum(math.log(r.latency.p50_ms) for r in kept) / 3))
