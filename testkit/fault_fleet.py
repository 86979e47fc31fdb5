"""A whole fleet of real processes for the end-to-end fault suite (tests/test_faults_e2e.py, bench/faults.py).

* a real mosquitto (:class:`edgebench.broker.MosquittoBroker`, persistence on, as in production) on a free
  loopback port, killed with -9 or stopped and started again on the same port and persistence directory;
* the collector as ``python -m edgebench collector serve`` with its DEFAULT settings (2 workers on a
  2-core machine, shared subscription, receipts) on a SQLite file;
* agents as ``python -m edgebench agent run`` processes with a config (a trusted key, quick reconnects and
  a short ``[outbox] confirm_timeout_s`` so re-sends happen within the test);
* jobs pushed with ``python -m edgebench fleet push --no-wait`` (signed; the collector serves the chunks).

Every process here is one this module started, and it is stopped by its own PID.

:meth:`Fleet.outcome` counts, for one job: *produced* = the result ids the agents say they measured (their
job files, the same list the final event carries); *stored unique* = distinct result ids of that job in
the collector's database; *lost* = produced and not stored; *duplicated* = rows sharing a result id (0 by
the primary key) plus results measuring the same (device, artifact, threads, batch) twice under different
ids (a re-measurement after a restart); *absorbed* = copies the collector received and dropped by the
primary key (``collector_health.results_duplicate`` of the running processes).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from edgebench.broker import MosquittoBroker, stop_process
from testkit.mqtt_peer import wait_for as _wait_for

ROOT = Path(__file__).resolve().parents[1]
FINAL_STATES = ("done", "failed", "rejected", "cancelled", "aborted")


def wait_for(predicate: Callable[[], bool], timeout_s: float, every_s: float = 0.2) -> bool:
    """testkit.mqtt_peer.wait_for, polling less often (the predicates here query SQLite files)."""
    return _wait_for(predicate, timeout_s, every_s)


def query(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Read-only query; [] while the file or its tables do not exist (or the file is being swapped)."""
    if not Path(db).exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        return []
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def scalar(db: Path, sql: str, params: tuple = ()) -> int:
    rows = query(db, sql, params)
    return int(rows[0][0] or 0) if rows else 0


@dataclass
class Outcome:
    scenario: str
    produced: int
    stored: int
    lost: int
    duplicated: int
    absorbed: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def line(self) -> str:
        text = (
            f"{self.scenario}: produced {self.produced} / stored unique {self.stored} / "
            f"lost {self.lost} / duplicated {self.duplicated}"
        )
        extra = [f"{self.absorbed} copies absorbed"] if self.absorbed else []
        extra += self.notes
        return text + (f" ({'; '.join(extra)})" if extra else "")

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.stored == self.produced


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill9(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(timeout=15)

    def stop(self, timeout_s: float = 20.0) -> None:
        stop_process(self.proc, signal.SIGTERM, timeout_s)

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def spawn(name: str, args: Sequence[str], log: Path) -> Child:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgebench", *args],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=ROOT,
            env=env,
            start_new_session=True,  # our signals only, never the terminal's
        )
    return Child(name, proc, log)


@dataclass
class Fleet:
    """Broker + collector + agents under ``work``. Use as a context manager: everything is stopped after."""

    work: Path
    devices: tuple[str, ...] = ("dev-a",)
    confirm_timeout_s: float = 2.0
    broker_extra: tuple[str, ...] = ()
    data_dirs: dict[str, Path] = field(default_factory=dict)  # device -> data_dir (default under work)
    agent_log_level: str = "info"

    def __post_init__(self) -> None:
        from wire.signing import generate_keypair

        self.work.mkdir(parents=True, exist_ok=True)
        self.db = self.work / "collector.db"
        self.key, self.pub = generate_keypair(self.work / "keys", "collector")
        self.broker = MosquittoBroker(workdir=self.work / "mosquitto", extra_config=list(self.broker_extra))
        self.collector: Child | None = None
        self.agents: dict[str, Child] = {}
        self._children: list[Child] = []

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for child in reversed(self._children):
            child.stop()
        self.broker.stop()

    def start_broker(self) -> None:
        self.broker.start(timeout_s=20)

    def kill_broker(self) -> None:
        """kill -9 of the broker: whatever it had not saved is gone, connections drop without a word."""
        self.broker.stop(signal.SIGKILL)

    def stop_broker(self) -> None:
        self.broker.stop(signal.SIGTERM)

    # ------------------------------------------------------------------ collector
    def start_collector(self, *, wait: bool = True, extra: Sequence[str] = ()) -> Child:
        args = [
            "collector",
            "serve",
            "--db",
            str(self.db),
            "--broker",
            f"{self.broker.host}:{self.broker.port}",
        ]
        child = spawn("collector", [*args, *extra], self.work / "logs" / "collector.log")
        self.collector = child
        self._children.append(child)
        if wait:
            ok = wait_for(lambda: self.collector_connected() >= self.collector_workers(), 60)
            assert ok, f"collector did not connect: {child.tail()}"
        return child

    def collector_workers(self) -> int:
        """From the collector's start line: `(... 2 workers)` (the default on 2 cores)."""
        found = re.findall(
            r"session '[^']*', (\d+) workers?\)", self.collector.tail(20000) if self.collector else ""
        )
        return int(found[-1]) if found else 99

    def collector_connected(self) -> int:
        return scalar(self.db, "SELECT COUNT(*) FROM collector_health WHERE connected = 1")

    def kill_collector(self) -> None:
        assert self.collector is not None
        self.collector.kill9()  # the workers die with the parent (PR_SET_PDEATHSIG)

    def absorbed(self) -> int:
        return scalar(self.db, "SELECT SUM(results_duplicate) FROM collector_health")

    # ------------------------------------------------------------------ agents
    def data_dir(self, device: str) -> Path:
        return self.data_dirs.get(device, self.work / "devices" / device)

    def agent_config(self, device: str) -> Path:
        home = self.work / "devices" / device
        home.mkdir(parents=True, exist_ok=True)
        path = home / "agent.toml"
        path.write_text(
            f'device_id = "{device}"\ndata_dir = "{self.data_dir(device)}"\n'
            "[broker]\n"
            f'host = "{self.broker.host}"\nport = {self.broker.port}\n'
            "reconnect_min_s = 0.2\nreconnect_max_s = 2.0\n"
            "[outbox]\n"
            f"confirm_timeout_s = {self.confirm_timeout_s}\n"
            f"confirm_timeout_max_s = {4 * self.confirm_timeout_s}\n"
            "[jobs]\n"
            f'trusted_keys = ["{self.pub}"]\nchunk_timeout_s = 2.0\nmax_threads = 1\n'
            "[heartbeat]\ninterval_s = 2\n"
        )
        return path

    def start_agent(self, device: str) -> Child:
        config = self.agent_config(device)
        args = ["agent", "run", "--config", str(config), "--log-level", self.agent_log_level]
        child = spawn(f"agent {device}", args, self.work / "logs" / f"{device}.log")
        self.agents[device] = child
        self._children.append(child)
        return child

    def start_agents(self, devices: Iterable[str] | None = None) -> None:
        for d in devices or self.devices:
            self.start_agent(d)

    def wait_online(self, devices: Iterable[str] | None = None, timeout_s: float = 60) -> None:
        want = tuple(devices or self.devices)
        marks = ",".join("?" * len(want))
        sql = f"SELECT COUNT(*) FROM devices WHERE online = 1 AND device_id IN ({marks})"
        ok = wait_for(lambda: scalar(self.db, sql, want) == len(want), timeout_s)
        assert ok, "devices not online: " + " | ".join(
            self.agents[d].tail(1500) for d in want if d in self.agents
        )

    def agent_log_count(self, text: str) -> int:
        """Lines with ``text`` in every agent's log (e.g. PUBACK 0x10 "no subscriber" re-sends)."""
        return sum(c.tail(10**8).count(text) for c in {id(c): c for c in self.agents.values()}.values())

    def kill_agent(self, device: str) -> int:
        return self.agents[device].kill9()

    def job_entry(self, device: str, job_id: str) -> dict | None:
        path = self.data_dir(device) / "jobs" / f"{job_id}.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def job_state(self, device: str, job_id: str) -> str | None:
        entry = self.job_entry(device, job_id)
        return entry.get("state") if entry else None

    def outbox_pending(self, device: str) -> int:
        from agent.delivery.outbox import OutboxError, read_stats

        path = self.data_dir(device) / "outbox.db"
        if not path.exists():
            return 0
        try:
            return read_stats(path).pending
        except OutboxError:
            return -1

    # ------------------------------------------------------------------ jobs
    def push(
        self,
        artifacts: Sequence[Path],
        to: str = "all",
        *,
        min_runs: int = 5,
        min_time_s: float = 0.2,
        max_time_s: float = 0.5,
    ) -> str:
        """`edgebench fleet push --no-wait`; returns the job id (the collector serves the chunks)."""
        args = [
            sys.executable, "-m", "edgebench", "fleet", "push", *map(str, artifacts), "--to", to,
            "--db", str(self.db), "--key", str(self.key),
            "--broker", f"{self.broker.host}:{self.broker.port}",
            "--preset", "quick", "--threads", "1", "--min-runs", str(min_runs), "--min-time", str(min_time_s),
            "--max-time", str(max_time_s), "--no-wait",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        found = re.search(r"job (\S+) published", done.stdout)
        assert found, done.stdout
        return found.group(1)

    def events(self, job_id: str, state: str | None = None) -> list[tuple]:
        sql = "SELECT device_id, state, detail, result_ids FROM job_events WHERE job_id = ?"
        params: tuple = (job_id,)
        if state:
            sql += " AND state = ?"
            params = (job_id, state)
        return query(self.db, sql + " ORDER BY id", params)

    def devices_in_state(self, job_id: str, state: str) -> set[str]:
        return {r[0] for r in self.events(job_id, state)}

    def produced_ids(self, job_id: str, devices: Iterable[str] | None = None) -> set[str]:
        ids: set[str] = set()
        for d in devices or self.devices:
            entry = self.job_entry(d, job_id)
            if entry:
                ids.update(entry.get("result_ids", ()))
        return ids

    def stored_rows(self, job_id: str) -> list[tuple]:
        sql = "SELECT result_id, device_id, artifact_sha256, threads, batch FROM results WHERE job_id = ?"
        return query(self.db, sql, (job_id,))

    def settled(self, job_id: str, devices: Iterable[str] | None = None) -> bool:
        """Every agent finished the job, emptied its outbox, and the collector stored what it produced."""
        devs = tuple(devices or self.devices)
        if any(self.job_state(d, job_id) not in FINAL_STATES for d in devs):
            return False
        if any(self.outbox_pending(d) != 0 for d in devs):
            return False
        stored = {r[0] for r in self.stored_rows(job_id)}
        return self.produced_ids(job_id, devs) <= stored

    def wait_settled(self, job_id: str, timeout_s: float, devices: Iterable[str] | None = None) -> bool:
        return wait_for(lambda: self.settled(job_id, devices), timeout_s, every_s=0.5)

    def outcome(self, scenario: str, job_id: str, devices: Iterable[str] | None = None, **kw) -> Outcome:
        devs = tuple(devices or self.devices)
        produced = self.produced_ids(job_id, devs)
        rows = [r for r in self.stored_rows(job_id) if r[1] in devs]
        ids = {r[0] for r in rows}
        cells = {r[1:] for r in rows}
        stored = ids & produced
        duplicated = (len(rows) - len(ids)) + (len(ids) - len(cells))
        return Outcome(scenario, len(produced), len(stored), len(produced - stored), duplicated,
                       absorbed=self.absorbed(), **kw)  # fmt: skip

    def diagnose(self, job_id: str) -> str:
        parts = [f"db results for job: {len(self.stored_rows(job_id))}"]
        for d in self.devices:
            entry = self.job_entry(d, job_id) or {}
            parts.append(
                f"{d}: state={entry.get('state')} detail={entry.get('detail')!r} "
                f"ids={len(entry.get('result_ids', ()))} pending={self.outbox_pending(d)}"
            )
            if d in self.agents:
                parts.append(self.agents[d].tail(1500))
        if self.collector is not None:
            parts.append("collector: " + self.collector.tail(1500))
        parts.append("broker: " + self.broker.log_tail(800))
        return "\n".join(parts)


def make_artifacts(directory: Path, n: int) -> list[Path]:
    """``n`` distinct tiny ONNX models (MLPs of different widths and seeds): each its own sha256."""
    from testkit.models import make_mlp_onnx

    directory.mkdir(parents=True, exist_ok=True)
    return [make_mlp_onnx(directory / f"mlp_{i}.onnx", hidden=16 + 8 * i, seed=i) for i in range(n)]
