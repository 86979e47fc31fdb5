"""Fill a collector DB with N results (default 1,000,000) and time the cross-device latency report.

    python bench/report_scale.py [--rows 1000000] [--db /tmp/edgebench-scale.db] [--keep]

How the DB is filled: a few hundred schema-valid ResultRecords (20 devices x 5 variants x 2 thread
counts, some with raw samples, most with quantiles only) go through collector.store.sqlite.insert_results; the
rest are copies made in SQL (new result_ids, spread over 90 days). Then the report index is brought up to
date once (that is amortised at ingest in production) and the report is timed on its own, cold (fresh
connection) and warm. Prints the figures; no assertions.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collector.reports.latency import ReportFilter, latency_report
from collector.store.report_index import refresh_index
from collector.store.sqlite import connect, insert_results, open_db
from testkit.report_records import VARIANTS, make_record


def fill(path: Path, rows: int, devices: int = 20) -> float:
    t0 = time.perf_counter()
    db = open_db(path)
    templates = []
    seed = 0
    for d in range(devices):
        for variant in VARIANTS:
            for threads in (1, 4):
                for k in range(3):
                    seed += 1
                    templates.append(
                        make_record(
                            f"pi-{d:02d}",
                            variant,
                            base_ms=5.0 + d,
                            n=100,
                            seed=seed,
                            threads=threads,
                            tags=("lab" if d % 2 else "field",),
                            keep_samples=(k == 0),
                        )
                    )
    insert_results(db, templates)
    have = len(templates)
    conn = db.conn
    while have < rows:
        step = min(100_000, rows - have)
        with conn:
            conn.execute(
                f"""WITH RECURSIVE seq(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM seq WHERE i < {step - 1})
                INSERT INTO results SELECT
                  lower(hex(randomblob(16))), device_id, model, artifact_name, artifact_sha256, variant,
                  format,
                  precision, size_bytes, runtime, runtime_version, threads, batch, status, error, n, mean_ms,
                  std_ms, cv, min_ms, p50_ms * (0.97 + (abs(random()) % 60) / 1000.0), p50_ci_low_ms,
                  p50_ci_high_ms, p90_ms, p99_ms, max_ms, throughput_ips, stable, load_ms, first_inference_ms,
                  load_peak_mb, inference_peak_mb, cpu_s_per_inference, energy_j_per_inference, energy_method,
                  avg_power_w, temp_start_c, temp_max_c, temp_end_c, freq_start_mhz, freq_end_mhz, throttled,
                  accuracy_metric, accuracy_value, accuracy_delta, job_id,
                  strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-' || (abs(random()) % 7776000) || ' seconds'),
                  strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-' || (abs(random()) % 7776000) || ' seconds'),
                  received_at, record, profile_ops
                FROM seq JOIN results t ON t.rowid = 1 + (seq.i * 7919 + {have}) % {len(templates)}"""
            )
        have += step
        print(f"  filled {have:,} rows ({time.perf_counter() - t0:.0f} s)", flush=True)
    conn.close()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--db", type=Path, default=Path("/tmp/edgebench-scale.db"))
    ap.add_argument("--keep", action="store_true", help="reuse the DB if it already has the rows")
    args = ap.parse_args()
    path: Path = args.db
    existing = 0
    if args.keep and path.exists():
        c = connect(path)
        existing = c.execute("SELECT COUNT(*) FROM results").fetchone()[0]
        c.close()
    if existing < args.rows:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        print(f"filling {path} with {args.rows:,} results ...")
        print(f"fill: {fill(path, args.rows):.1f} s")
    db = open_db(path)
    t0 = time.perf_counter()
    added = refresh_index(db.conn, progress=None)
    print(
        f"report index: {added:,} rows indexed in {time.perf_counter() - t0:.1f} s "
        "(once; amortised at ingest)"
    )
    db.conn.close()
    for label in ("cold", "warm", "warm"):
        db = open_db(path)
        t0 = time.perf_counter()
        report = latency_report(db.conn, ReportFilter(), max_accuracy_drop=1.0)
        elapsed = time.perf_counter() - t0
        runs = sum(r.runs for r in report.rows)
        print(
            f"report ({label}): {elapsed:.2f} s over {report.results_total:,} results, "
            f"{runs:,} runs pooled into {len(report.rows)} rows"
        )
        db.conn.close()
    db = open_db(path)
    t0 = time.perf_counter()
    report = latency_report(
        db.conn, ReportFilter(tag="lab", since="2000-01-01T00:00:00.000Z"), max_accuracy_drop=1.0
    )
    print(f"report (tag=lab, since): {time.perf_counter() - t0:.2f} s, {len(report.rows)} rows")
    print(
        f"target < 2 s for the report: {'met' if elapsed < 2 else 'NOT met'} (machine shared, figures noisy)"
    )


if __name__ == "__main__":
    main()
