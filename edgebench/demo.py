"""`edgebench demo`: the whole system on one machine, end to end.

A broker (mosquitto, or the embedded amqtt), a collector on a named SQLite file and a few local agents
posing as different devices (ids, tags, thread limits) are started as real processes; the model is
converted with a recipe; the artifacts are pushed to the fleet as a signed job; the devices fetch them
over MQTT, benchmark them and report; the cross-device report is printed and written as HTML. Every
process the demo started is stopped by its PID; the database stays for `edgebench report` and datasette.

Each run starts afresh (:func:`clear_previous_run`): the previous run's database, broker persistence and
device state in the work folder are removed first, so the report shows this run's devices and results
only. ``keep=True`` (``--keep``) accumulates runs in one database instead (the closing line says what
the report pooled then).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from edgebench.broker import BrokerError, EmbeddedBroker, MosquittoBroker, start_local_broker, stop_process
from edgebench.demo_workdir import MARKER, clear_previous_run
from wire.errors import EdgebenchError


class DemoError(EdgebenchError, RuntimeError):
    """The demo could not go on; the message says which step and why."""


@dataclass(frozen=True)
class DemoDevice:
    device_id: str
    tags: tuple[str, ...]
    max_threads: int


DEFAULT_DEVICES = (
    DemoDevice("pi4-kitchen", ("pi4", "lab"), 1),
    DemoDevice("pi5-garage", ("pi5", "lab"), 2),
    DemoDevice("x86-gateway", ("x86", "edge"), 2),
)


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path = Path("edgebench-demo")
    devices: tuple[DemoDevice, ...] = DEFAULT_DEVICES
    model: str | None = None  # None: the shipped digits CNN
    calib: Path | None = None
    val: Path | None = None
    recipe: str = "default"
    max_accuracy_drop: float = 1.0
    broker: str = "auto"  # auto | mosquitto | embedded
    preset: str = "quick"
    min_time_s: float = 1.0
    timeout_s: float = 600.0
    keep: bool = False  # accumulate runs in the same database (default: each run starts afresh)


@dataclass
class DemoResult:
    db_path: Path
    html_path: Path
    manifest_path: Path
    broker: str
    report_text: str
    devices: tuple[str, ...]
    variants: tuple[str, ...]
    results: int
    seconds: float
    job_states: dict[str, str] = field(default_factory=dict)
    report_results: int = 0  # what the report pooled: every result in the database (more with keep)
    report_devices: tuple[str, ...] = ()
    kept: bool = False


@dataclass
class _Child:
    name: str
    process: subprocess.Popen
    log: Path

    def stop(self, timeout_s: float = 20.0) -> None:
        stop_process(self.process, signal.SIGTERM, timeout_s)

    def tail(self, n: int = 1500) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def _spawn(name: str, args: list[str], log: Path) -> _Child:
    log.parent.mkdir(parents=True, exist_ok=True)
    handle: IO[bytes] = open(log, "ab")  # noqa: SIM115 - handed to the child
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgebench", *args],
        stdout=handle,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=env,
        start_new_session=True,
    )
    handle.close()
    return _Child(name, proc, log)


def _agent_config(device: DemoDevice, data_dir: Path, host: str, port: int, version: int, pub: Path) -> str:
    tags = ", ".join(f'"{t}"' for t in device.tags)
    return (
        f'device_id = "{device.device_id}"\ntags = [{tags}]\ndata_dir = "{data_dir}"\n\n'
        f'[broker]\nhost = "{host}"\nport = {port}\nmqtt_version = {version}\n\n'
        f'[jobs]\ntrusted_keys = ["{pub}"]\nmax_threads = {device.max_threads}\n\n'
        "[heartbeat]\ninterval_s = 5.0\n"
    )


def _wait(what: str, check: Callable[[], bool], timeout_s: float, children: list[_Child]) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        for child in children:
            if child.process.poll() is not None:
                raise DemoError(f"{child.name} exited (code {child.process.returncode}): {child.tail()}")
        time.sleep(0.2)
    raise DemoError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def _query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []  # tables not created yet
    finally:
        conn.close()


def run_demo(options: DemoOptions = DemoOptions(), log: Callable[[str], None] = print) -> DemoResult:
    """Run the demo. Raises DemoError with the failing step; always stops what it started."""
    started = time.monotonic()
    work = options.workdir.resolve()
    if not options.devices:
        raise DemoError("the demo needs at least one device")
    work.mkdir(parents=True, exist_ok=True)
    db = work / "edgebench.db"
    if not options.keep and clear_previous_run(work):
        log("      a fresh start: the previous run's database, broker and device state removed (--keep adds)")
    (work / MARKER).write_text("edgebench demo work folder: `edgebench demo` clears its run state\n")
    children: list[_Child] = []
    broker = None
    try:
        # 1. broker
        try:
            broker = start_local_broker(work, options.broker)
        except BrokerError as exc:
            raise DemoError(f"broker: {exc}") from None
        log(f"[1/6] broker: {broker.name} on {broker.host}:{broker.port} (MQTT {broker.mqtt_version})")

        # 2. keys, collector, agents
        key, pub = _signing_keys(work / "keys")
        from wire.signing import secret_file_warning

        if warning := secret_file_warning(key):
            log(f"      {warning}")
        _spawn_collector_and_agents(options, work, db, broker, pub, children)
        ids = tuple(d.device_id for d in options.devices)
        _wait_online(db, ids, children)
        log(
            f"[2/6] collector on {db.name}; {len(ids)} agents online: "
            + ", ".join(
                f"{d.device_id} ({'/'.join(d.tags)}, {d.max_threads} thread(s))" for d in options.devices
            )
        )

        # 3. convert
        manifest_path = _convert(options, work, log)

        # 4. push and follow
        outcome = _push(options, work, db, key, broker, ids, manifest_path, log)

        # 5. wait until every reported result is stored
        count = _wait_stored(db, outcome, children)
        log(f"[5/6] {count} results stored in {db}")

        # 6. report
        report_text, html_path, variants, pooled = _report(db, work, options.max_accuracy_drop)
        log("[6/6] cross-device report (p50 pooled over runs; * = the variant to ship on that device)\n")
        log(report_text)
        log(f"\nHTML report: {html_path}")
        return DemoResult(
            db_path=db,
            html_path=html_path,
            manifest_path=manifest_path,
            broker=broker.name,
            report_text=report_text,
            devices=ids,
            variants=variants,
            results=count,
            seconds=time.monotonic() - started,
            job_states=outcome.states,
            report_results=pooled[0],
            report_devices=pooled[1],
            kept=options.keep,
        )
    finally:
        for child in reversed(children):
            child.stop()
        if broker is not None:
            broker.stop()


def _signing_keys(keys: Path) -> tuple[Path, Path]:
    """The collector's (private, public) job-signing key pair in ``keys``: kept if whole, else made anew."""
    from wire.signing import generate_keypair

    key, pub = keys / "collector.key", keys / "collector.pub"
    if not (key.exists() and pub.exists()):
        key.unlink(missing_ok=True)
        pub.unlink(missing_ok=True)
        key, pub = generate_keypair(keys, "collector")
    return key, pub


def _spawn_collector_and_agents(
    options: DemoOptions,
    work: Path,
    db: Path,
    broker: MosquittoBroker | EmbeddedBroker,
    pub: Path,
    children: list[_Child],
) -> None:
    """Start the collector and one agent per device (each with its own data dir and agent.toml).

    Each process is appended to ``children`` as soon as it runs, so the caller stops it even if a later
    one fails to start."""
    broker_args = ["--broker", f"{broker.host}:{broker.port}", "--mqtt-version", str(broker.mqtt_version)]
    collector_args = ["collector", "serve", "--db", str(db), "--client-id", "edgebench-demo-collector"]
    children.append(_spawn("collector", collector_args + broker_args, work / "logs" / "collector.log"))
    for device in options.devices:
        home = work / "devices" / device.device_id
        home.mkdir(parents=True, exist_ok=True)
        config = home / "agent.toml"
        config.write_text(_agent_config(device, home, broker.host, broker.port, broker.mqtt_version, pub))
        args = ["agent", "run", "--config", str(config), "--log-level", "warning"]
        children.append(_spawn(f"agent {device.device_id}", args, work / "logs" / f"{device.device_id}.log"))


def _wait_online(db: Path, ids: tuple[str, ...], children: list[_Child]) -> None:
    """Until the collector's database shows every device in ``ids`` online (60 s)."""
    marks = ",".join("?" * len(ids))

    def all_online() -> bool:
        rows = _query(db, f"SELECT COUNT(*) FROM devices WHERE online = 1 AND device_id IN ({marks})", ids)
        return bool(rows) and rows[0][0] == len(ids)

    _wait("the devices to come online", all_online, 60, children)


def _wait_stored(db: Path, outcome: _PushSummary, children: list[_Child]) -> int:
    """Until the collector has stored every result the devices reported (60 s); returns how many it has."""
    sql = "SELECT COUNT(*) FROM results WHERE job_id = ?"

    def stored() -> bool:
        rows = _query(db, sql, (outcome.job_id,))
        return bool(rows) and rows[0][0] >= outcome.expected_results

    _wait("the collector to store every result", stored, 60, children)
    return _query(db, sql, (outcome.job_id,))[0][0]


def _convert(options: DemoOptions, work: Path, log: Callable[[str], None]) -> Path:
    from converter.errors import ConvertError
    from converter.pipeline import convert

    if options.model is None:
        from converter.models import digits_paths

        digits = digits_paths()
        model, calib, val = digits.factory, options.calib or digits.calib, options.val or digits.val
        label = "the shipped digits CNN"
    else:
        if options.calib is None or options.val is None:
            raise DemoError("--model needs --calib and --val data (.npy/.npz or an image folder)")
        model, calib, val, label = options.model, options.calib, options.val, options.model
    log(f"[3/6] converting {label} with the {options.recipe!r} recipe")
    try:
        result = convert(
            model,
            calib=calib,
            val=val,
            out_dir=work / "artifacts",
            recipe=options.recipe,
            max_accuracy_drop=options.max_accuracy_drop,
            log=lambda line: log(f"      {line}"),
        )
    except ConvertError as exc:
        raise DemoError(f"convert: {exc}") from None
    ok = [a for a in result.manifest.artifacts if a.status == "ok"]
    log(f"      {len(ok)} artifacts in {result.manifest_path}")
    return result.manifest_path


@dataclass
class _PushSummary:
    job_id: str
    states: dict[str, str]
    expected_results: int


def _push(options, work, db, key, broker, ids, manifest_path, log) -> _PushSummary:
    from collector.config import BrokerSettings, CollectorConfig
    from collector.fleet.operations import FleetError, Pusher, collect_artifacts
    from collector.store.sqlite import open_db
    from wire.schema import BenchSettings

    config = CollectorConfig(
        db=str(db),
        signing_key=str(key),
        broker=BrokerSettings(host=broker.host, port=broker.port, mqtt_version=broker.mqtt_version),
    )
    # profile_ops: each device also profiles every artifact after its timed runs (a separate session,
    # so the timings are untouched) and the HTML report shows where the time goes.
    settings = BenchSettings(preset=options.preset, min_time_s=options.min_time_s, profile_ops=True)
    database = open_db(db)
    shown: dict[str, str] = {}

    def on_update(progress: dict[str, Any]) -> None:
        for device_id, p in sorted(progress.items()):
            line = f"{p.state}" + (f" ({p.detail})" if p.detail else "")
            if shown.get(device_id) != line:
                shown[device_id] = line
                log(f"      {device_id:<14} {line}")

    try:
        artifacts = collect_artifacts([manifest_path])
        log(f"[4/6] pushing {len(artifacts)} artifacts to all {len(ids)} devices (signed job, MQTT chunks)")
        pusher = Pusher(config, database, on_update=on_update)
        outcome = pusher.push(
            artifacts, "all", list(ids), settings, key_path=key, wait=True, timeout_s=options.timeout_s
        )
    except FleetError as exc:
        raise DemoError(f"push: {exc}") from None
    finally:
        database.close()
    states = {d: p.state for d, p in outcome.devices.items()}
    if outcome.timed_out:
        raise DemoError(f"push: timed out after {options.timeout_s:.0f} s ({states})")
    bad = {d: p.detail for d, p in outcome.devices.items() if p.state != "done"}
    if bad:
        raise DemoError(f"push: some devices failed: {bad}")
    expected = sum(p.results for p in outcome.devices.values())
    return _PushSummary(outcome.job.job_id, states, expected)


Pooled = tuple[int, tuple[str, ...]]  # the results and devices a report pooled


def _report(db: Path, work: Path, max_drop: float) -> tuple[str, Path, tuple[str, ...], Pooled]:
    from collector.reports.extras import html_extras
    from collector.reports.html import render_html
    from collector.reports.latency import latency_report
    from collector.reports.render import render_report
    from collector.reports.source import ReportSource

    conn = sqlite3.connect(db)
    try:
        report = latency_report(conn, max_accuracy_drop=max_drop, refresh=False)  # read-only, as `report`
        text = render_report(report, "table")
        html = render_html(report, html_extras(ReportSource.read(conn), report))
        results = int(conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])
    finally:
        conn.close()
    html_path = work / "report.html"
    html_path.write_text(html, encoding="utf-8")
    variants = tuple(sorted({r.variant or r.artifact_name for r in report.rows}))
    devices = tuple(sorted({r.device_id for r in report.rows}))
    return text, html_path, variants, (results, devices)
