"""`edgebench report ...`: thin click wrappers over collector.reports.latency / compare / ops / render.

Every command opens the database read-only (collector.reports.source) and never writes it: results
not indexed yet are indexed in memory, an older schema is read as it is."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click

from collector.reports.render import FORMATS

DEFAULT_DB = "edgebench.db"


def _db_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--db",
        "db_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=DEFAULT_DB,
        show_default=True,
        envvar="EDGEBENCH_DB",
        help="Collector SQLite database (env EDGEBENCH_DB).",
    )(f)


def _output_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--out",
        "-o",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Write to this file instead of stdout.",
    )(f)
    return click.option(
        "--format",
        "-f",
        "fmt",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="Output format; html is one self-contained file with plots.",
    )(f)


def _filter_options(f: Callable[..., Any]) -> Callable[..., Any]:
    for opt in reversed(
        [
            click.option("--model", "-m", default=None, help="Only this model (the source model's name)."),
            click.option(
                "--device", "-d", "devices", multiple=True, help="Only this device id (repeatable)."
            ),
            click.option("--tag", "-t", default=None, help="Only devices carrying this tag."),
            click.option(
                "--since", default=None, help="Only runs finished since: 7d, 12h, 2024-05-01, ISO time."
            ),
            click.option("--until", default=None, help="Only runs finished before this time."),
            click.option(
                "--threads", type=int, default=None, help="Only this thread count (default: fastest)."
            ),
        ]
    ):
        f = opt(f)
    return f


def _friendly(f: Callable[..., Any]) -> Callable[..., Any]:
    """Turn the library's errors into one-line click errors (never a traceback for a user mistake)."""

    @wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from collector.store.report_index import ReportError
        from collector.store.sqlite import StoreError

        try:
            return f(*args, **kwargs)
        except (ReportError, StoreError) as exc:
            raise click.ClickException(str(exc)) from None
        except sqlite3.DatabaseError as exc:
            raise click.ClickException(f"database error: {exc}") from None

    return wrapper


def _filters(
    model: str | None,
    devices: tuple[str, ...],
    tag: str | None,
    since: str | None,
    until: str | None,
    batch: int | None,
    threads: int | None,
    baseline: str | None = None,
) -> Any:
    """The filter options as a :class:`collector.reports.latency.ReportFilter` (times parsed)."""
    from collector.reports.latency import ReportFilter, parse_since

    return ReportFilter(
        model=model,
        devices=devices,
        tag=tag,
        since=parse_since(since) if since else None,
        until=parse_since(until) if until else None,
        batch=batch,
        threads=threads,
        baseline=baseline,
    )


def _open(db_path: Path) -> sqlite3.Connection:
    """A read-only connection to a collector database (checked: never created, migrated or written)."""
    from collector.reports.source import check_schema, connect_readonly
    from collector.store.sqlite import StoreError, require_database

    if not db_path.exists():
        raise StoreError(f"no database at {db_path} (pass --db, or run the collector first)")
    require_database(db_path)  # an empty or foreign file is an error, never given a schema
    conn = connect_readonly(db_path)
    try:
        check_schema(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        click.echo(text, nl=False)
        return
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise click.ClickException(f"cannot write {out}: {exc.strerror}") from None
    click.echo(f"wrote {out} ({len(text.encode()):,} bytes)", err=True)


@click.group(name="report")
def report_group() -> None:
    """Cross-device reports from the collector's database."""


@report_group.command("latency")
@_db_option
@_filter_options
@click.option("--batch", type=int, default=1, show_default=True, help="Batch size to report.")
@click.option(
    "--max-accuracy-drop",
    type=float,
    default=None,
    help="Accuracy budget in points; a variant losing more (or with unknown accuracy) is never "
    "recommended. Default: accuracy not considered.",
)
@click.option("--baseline", default=None, help="Variant to use as the fp32 baseline (default: automatic).")
@click.option(
    "--manifest",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="converter manifest.json to read accuracy deltas from (by sha256).",
)
@_output_options
@_friendly
def latency(
    db_path: Path,
    model: str | None,
    devices: tuple[str, ...],
    tag: str | None,
    since: str | None,
    until: str | None,
    threads: int | None,
    batch: int,
    max_accuracy_drop: float | None,
    baseline: str | None,
    manifest: Path | None,
    fmt: str,
    out: Path | None,
) -> None:
    """The devices x variants matrix: p50 (95% CI) and p90 of all runs pooled, speedup vs the fp32
    baseline of the same model on the same device, size, peak memory, energy per inference, accuracy
    delta, and the variant to ship on each device (the fastest within the accuracy budget, never one
    slower than fp32)."""
    from collector.reports.extras import html_extras
    from collector.reports.latency import latency_report
    from collector.reports.render import render_report
    from collector.reports.source import ReportSource, read_snapshot

    filters = _filters(model, devices, tag, since, until, batch, threads, baseline)
    conn = _open(db_path)
    try:
        with read_snapshot(conn):
            source = ReportSource.read(conn)
            report = latency_report(
                conn, filters, max_accuracy_drop=max_accuracy_drop, manifest=manifest, source=source
            )
            extras = html_extras(source, report) if fmt == "html" else None
    finally:
        conn.close()
    _emit(render_report(report, fmt, extras), out)


@report_group.command("compare")
@click.argument("baseline")
@click.argument("candidate")
@_db_option
@click.option("--model", "-m", default=None, help="Only this model.")
@click.option("--device", "-d", "devices", multiple=True, help="Only this device id (repeatable).")
@click.option("--tag", "-t", default=None, help="Only devices carrying this tag.")
@click.option(
    "--min-effect",
    type=float,
    default=1.0,
    show_default=True,
    help="Smallest change (percent) worth flagging; the run-to-run variation raises it.",
)
@click.option(
    "--alpha",
    type=float,
    default=0.05,
    show_default=True,
    help="Significance level: the share of rows of identical work flagged, at most.",
)
@click.option(
    "--fail-on-regression",
    is_flag=True,
    help="Exit with status 1 when a row is a (calibrated) regression, for CI.",
)
@_output_options
@_friendly
def compare(
    baseline: str,
    candidate: str,
    db_path: Path,
    model: str | None,
    devices: tuple[str, ...],
    tag: str | None,
    min_effect: float,
    alpha: float,
    fail_on_regression: bool,
    fmt: str,
    out: Path | None,
) -> None:
    """Compare BASELINE with CANDIDATE per device and variant (same runtime, threads and batch).

    \b
    Each side is one of:
      job:ID[,ID...]     results of these jobs
      ids:ID,ID,...      these result ids (ids:@FILE reads one id per line)
      FROM..TO           runs finished in this range; each end a date, an ISO time or an
                         age (7d, 12h); an end may be empty: 2024-05-01..  14d..7d
      ID                 a bare job id (or, failing that, a result id)

    The run is the unit: each run counts once, by its median, and the sides are compared with
    Welch's t-test on ln(run median) (not a bootstrap of the samples inside runs, which ignores
    what moves whole runs). A row is a regression or an improvement only when p < --alpha AND the
    change is at least the threshold, max(--min-effect, the run-to-run variation of its runs).
    A change at least the threshold but not significant is "inconclusive (needs N runs a side)":
    N runs a side would detect it 80% of the time. Smaller changes are "no significant change";
    one run on a side is never tested. Run several jobs a side: job:A,B,C vs job:D,E,F.
    """
    from collector.reports.compare import compare_runs
    from collector.reports.latency import ReportFilter
    from collector.reports.render import render_comparison

    conn = _open(db_path)
    try:
        result = compare_runs(
            conn,
            baseline,
            candidate,
            filters=ReportFilter(model=model, devices=devices, tag=tag, batch=None),
            min_effect=min_effect / 100,
            alpha=alpha,
        )
    finally:
        conn.close()
    _emit(render_comparison(result, fmt), out)
    if fail_on_regression and result.regressions:
        raise SystemExit(1)


@report_group.command("ops")
@_db_option
@_filter_options
@click.option("--batch", type=int, default=None, help="Only this batch size (default: any).")
@click.option("--top", type=int, default=5, show_default=True, help="Op types shown per row.")
@_output_options
@_friendly
def ops(
    db_path: Path,
    model: str | None,
    devices: tuple[str, ...],
    tag: str | None,
    since: str | None,
    until: str | None,
    threads: int | None,
    batch: int | None,
    top: int,
    fmt: str,
    out: Path | None,
) -> None:
    """Where the time goes on each device: the op types of the per-operator profiles (runs made with
    --profile-ops), by their mean share of the profiled time; for LiteRT, which ops the XNNPACK delegate
    took and which stayed on the CPU kernels."""
    from collector.reports.ops import ops_report
    from collector.reports.render import render_ops

    filters = _filters(model, devices, tag, since, until, batch, threads)
    conn = _open(db_path)
    try:
        report = ops_report(conn, filters)
    finally:
        conn.close()
    _emit(render_ops(report, fmt, max(1, top)), out)
