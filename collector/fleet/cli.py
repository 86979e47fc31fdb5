"""`edgebench fleet devices|jobs|push` (thin wrappers over collector.fleet.listings / artifacts / jobs /
push)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from collector.config import CollectorConfig
from collector.fleet.enroll_cli import enroll
from collector.options import broker_options, config_from_options


@click.group("fleet")
def fleet_group() -> None:
    """List devices and jobs; push artifacts to devices and watch them run."""


fleet_group.add_command(enroll)


def _open(db: str | None, config_path: str | None):
    from collector.store.sqlite import StoreError, open_db, require_database

    config = config_from_options(db, None, config_path=config_path)
    if not Path(config.db).exists():
        raise click.ClickException(
            f"no database at {config.db} (start `edgebench collector serve --db PATH`)"
        )
    try:
        require_database(config.db)  # an empty or foreign file is an error, never given a schema
        return config, open_db(config.db)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


db_option = click.option("--db", type=click.Path(dir_okay=False), help="Collector database.")
config_option = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="collector.toml"
)


@fleet_group.command("devices")
@db_option
@config_option
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def devices(db: str | None, config_path: str | None, as_json: bool) -> None:
    """Every known device: id, board, tags, online, last seen, results stored, messages still pending
    on the device (its outbox plus what it holds in memory, from its last status)."""
    import dataclasses
    import json

    from collector.fleet.listings import list_devices

    _, database = _open(db, config_path)
    rows = list_devices(database)
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        return
    if not rows:
        click.echo("no devices yet: start an agent (`edgebench agent run`) pointed at this broker")
        return
    click.echo(
        _table(
            ["DEVICE", "BOARD", "TAGS", "ONLINE", "LAST SEEN", "RESULTS", "PENDING", "JOB"],
            [
                [
                    r.device_id,
                    r.board or "-",
                    ",".join(r.tags) or "-",
                    "yes" if r.online else "no",
                    r.last_seen or "-",
                    str(r.results),
                    "-" if r.outbox_pending is None else str(r.outbox_pending),
                    r.current_job[:8] or "-",
                ]
                for r in rows
            ],
        )
    )


@fleet_group.command("jobs")
@click.argument("job", required=False)
@db_option
@config_option
@click.option("--limit", type=click.IntRange(1, 10000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def jobs(job: str | None, db: str | None, config_path: str | None, limit: int, as_json: bool) -> None:
    """Recent jobs with each device's latest state, as the devices' job events arrive; JOB (an id or a
    unique prefix of one, e.g. the 8 characters listed): that job only, with its full id."""
    import dataclasses
    import json

    from collector.fleet.listings import list_jobs
    from collector.store.ids import IdError

    _, database = _open(db, config_path)
    try:
        rows = list_jobs(database, limit, job=job)
    except IdError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(r) for r in rows], indent=2))
        return
    if not rows:
        click.echo("no jobs yet: `edgebench fleet push MODEL --to DEVICE|tag:TAG|all`")
        return
    click.echo(
        _table(
            ["JOB", "CREATED", "TARGET", "ARTIFACTS", "STATE", "DEVICES"],
            [
                [
                    r.job_id if job else r.job_id[:8],
                    r.created_at,
                    r.target,
                    ", ".join(r.artifacts),
                    r.state,
                    " ".join(f"{d}:{s}" for d, s in r.devices.items()) or "-",
                ]
                for r in rows
            ],
        )
    )


class _Live:
    """A live per-device table on a terminal; one line per state change otherwise."""

    def __init__(self, stream: Any = None):
        self.stream = stream or sys.stdout
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.drawn = 0
        self.seen: dict[str, tuple[str, str]] = {}

    def __call__(self, progress: dict[str, Any]) -> None:
        if self.tty:
            lines = [self._line(p) for p in sorted(progress.values(), key=lambda p: p.device_id)]
            if self.drawn:
                self.stream.write(f"\x1b[{self.drawn}F")
            for line in lines:
                self.stream.write("\x1b[2K" + line + "\n")
            self.drawn = len(lines)
            self.stream.flush()
            return
        for p in sorted(progress.values(), key=lambda p: p.device_id):
            key = (p.state, p.detail)
            if self.seen.get(p.device_id) != key:
                self.seen[p.device_id] = key
                click.echo(self._line(p), file=self.stream)

    @staticmethod
    def _line(p: Any) -> str:
        parts = [f"  {p.device_id:<24} {p.state:<12}"]
        if p.progress is not None and p.state in ("transferring", "running"):
            filled = round(20 * max(0.0, min(1.0, p.progress)))
            parts.append(f" [{'#' * filled}{'.' * (20 - filled)}] {100 * p.progress:3.0f}%")
        if p.results:
            parts.append(f" {p.results} result(s)")
        if p.detail:
            parts.append(f" {p.detail}")
        return "".join(parts).rstrip()[:200]


@fleet_group.command("push")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--to", "to", required=True, help="DEVICE, tag:TAG or all.")
@click.option("--db", type=click.Path(dir_okay=False), help="Collector database (artifacts, jobs).")
@click.option("--key", "signing_key", type=click.Path(dir_okay=False), help="Ed25519 signing key (PEM).")
@broker_options
@click.option(
    "--preset", type=click.Choice(["quick", "default", "thorough"]), default="default", show_default=True
)
@click.option("--threads", help="Comma list for a thread sweep, e.g. 1,2,4 (default: the device's).")
@click.option("--batch", type=click.IntRange(1, 4096), default=1, show_default=True)
@click.option("--min-runs", type=click.IntRange(1), help="Timed runs at least.")
@click.option("--min-time", "min_time_s", type=click.FloatRange(0), help="Seconds of timed runs at least.")
@click.option("--max-time", "max_time_s", type=click.FloatRange(0), help="Seconds of timed runs at most.")
@click.option("--repeats", type=click.IntRange(1, 100), default=1, show_default=True)
@click.option("--profile-ops", is_flag=True, help="Per-operator profile.")
@click.option("--cooldown", "cooldown_c", type=float, help="Wait until the board is below this temperature.")
@click.option("--no-wait", is_flag=True, help="Publish and return; devices report to `collector serve`.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(1), default=600, show_default=True)
@click.option(
    "--expires-in",
    help="How long devices accept the job: 30m, 12h, 7d (default: job_expiry_s in the config, "
    f"{CollectorConfig().job_expiry_s / 86400:g} days).",
)
def push(artifacts: tuple[Path, ...], to: str, db: str | None, signing_key: str | None, preset: str,
         threads: str | None, batch: int, min_runs: int | None, min_time_s: float | None,
         max_time_s: float | None, repeats: int, profile_ops: bool, cooldown_c: float | None, no_wait: bool,
         timeout_s: float, expires_in: str | None, **kw: Any) -> None:  # fmt: skip
    """Register ARTIFACTS (model files or a converter manifest.json), sign a job, publish it to the
    target, serve the model chunks and show each device's progress until done or --timeout."""
    from collector.fleet.artifacts import collect_artifacts
    from collector.fleet.errors import FleetError
    from collector.fleet.jobs import parse_duration, resolve_target
    from collector.fleet.push import Pusher
    from collector.store.sqlite import StoreError, open_db
    from wire.schema import BenchSettings

    config = config_from_options(db, None, signing_key=signing_key, **kw)
    try:
        expires_in_s = parse_duration(expires_in) if expires_in is not None else config.job_expiry_s
    except FleetError as exc:
        raise click.BadParameter(str(exc), param_hint="--expires-in") from None
    try:
        thread_list = tuple(int(t) for t in threads.split(",") if t.strip()) if threads else ()
    except ValueError:
        raise click.BadParameter(
            f"expected a comma list of integers, got {threads!r}", param_hint="--threads"
        ) from None
    if any(t < 1 for t in thread_list):
        raise click.BadParameter("thread counts must be >= 1", param_hint="--threads")
    settings = BenchSettings(
        preset=preset, threads=thread_list, batch=batch, min_runs=min_runs, min_time_s=min_time_s,
        max_time_s=max_time_s, repeats=repeats, profile_ops=profile_ops, cooldown_c=cooldown_c,
    )  # fmt: skip
    try:
        database = open_db(config.db)
    except StoreError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        items = collect_artifacts(artifacts)
        target, devices = resolve_target(database, to)
        click.echo(
            f"pushing {len(items)} artifact(s) to {target} ({len(devices)} known device(s)): "
            + ", ".join(f"{a.ref.name} [{a.ref.sha256[:12]}]" for a in items)
        )
        live = _Live()
        started = time.monotonic()
        outcome = Pusher(config, database, on_update=None if no_wait else live).push(
            items,
            target,
            devices,
            settings,
            key_path=config.signing_key,
            wait=not no_wait,
            timeout_s=timeout_s,
            expires_in_s=expires_in_s,
        )
    except FleetError as exc:
        raise click.ClickException(str(exc)) from None
    job = outcome.job.job_id
    if no_wait:
        click.echo(f"job {job} published; follow it with `edgebench fleet jobs`")
        return
    counts: dict[str, int] = {}
    for p in outcome.devices.values():
        counts[p.state] = counts.get(p.state, 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    click.echo(f"job {job}: {summary} in {time.monotonic() - started:.1f} s")
    if outcome.timed_out:
        waiting = [d for d, p in outcome.devices.items() if not p.final]
        raise click.ClickException(
            f"timed out after {timeout_s:g} s waiting for {', '.join(waiting)} "
            "(offline devices get the job when they come back)"
        )
    if not outcome.ok:
        raise click.ClickException("some devices failed: see the details above and `edgebench fleet jobs`")
