"""The collector's Prometheus endpoint (`collector serve --metrics-port`): one for the whole collector.

The source is what the writers already record, read at scrape time (nothing is counted twice):

- each worker's ``collector_health`` row (:mod:`collector.ingest.health_writer`, written about every
  second inside its own commits): messages received and committed, results new and absorbed, lag,
  queue, chunks served;
- each worker's sidecar state file (:mod:`collector.store.sidecar`): whether it can write the database
  and whether its subscriptions stand;
- the database itself: devices (online), dead letters by reason class;
- ``/proc/<pid>``: each worker's CPU time and resident memory.

Why the health rows and not prometheus_client's multiprocess mode: the workers are separate processes
(``spawn``) whose counters live in :class:`collector.ingest.stats.IngestStats`; the rows are already
the one aggregated, committed view ``collector status`` reads, they need no shared mmap directory to
set up and wipe, and the endpoint lives in the parent, so it answers even while a worker is stuck
(its ``health_age_seconds`` grows). The cost: values are up to ~1 s behind, far below a scrape interval.

Only this run's writers count: a row or state file is taken when its client id is one of this
collector's (``<client_id>`` for one worker, ``<client_id>-w<i>`` for several) and it was started after
the endpoint. Counters are per worker process (label ``worker``) and start again at 0 when it restarts,
which Prometheus' ``rate()`` handles. The metric names are in the README (Observability).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from collector.config import CollectorConfig
from collector.store.sidecar import read_states
from collector.store.sqlite import connect
from wire.errors import EdgebenchError

log = logging.getLogger("edgebench.collector")

__all__ = ["PREFIX", "CollectorMetrics", "MetricsEndpoint", "MetricsError", "start_metrics", "writer_ids"]

PREFIX = "edgebench_collector_"

# (health row column, metric name without prefix, help): counters, one series per worker
HEALTH_COUNTERS = (
    ("received", "messages_received", "MQTT messages received (results, status, job events, chunk requests)"),
    ("committed", "messages_committed", "Messages committed to the database (then acknowledged)"),
    ("results_inserted", "results_inserted", "Result rows stored (new result ids)"),
    ("results_duplicate", "results_duplicate", "Result copies absorbed (id already stored)"),
    ("chunks_served", "chunks_served", "Model chunks published to devices"),
    ("chunk_bytes_served", "chunk_bytes_served", "Model chunk bytes published to devices"),
)
# (health row column, metric name without prefix, help): gauges, one series per worker
HEALTH_GAUGES = (
    ("lag_s", "ingest_lag_seconds", "Age of the oldest message of the last committed batch (0 when idle)"),
    ("queue_depth", "queue_depth", "Messages received, not yet committed"),
    ("connected", "worker_connected", "1 while the worker is connected to the broker"),
)
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


class MetricsError(EdgebenchError):
    """The metrics endpoint cannot start (the port is taken, the address is not local)."""


def writer_ids(config: CollectorConfig, workers: int) -> tuple[str, ...]:
    """The client ids this collector's writers use (see collector/service/workers.py)."""
    if workers == 1:
        return (config.client_id,)
    return tuple(f"{config.client_id}-w{i}" for i in range(workers))


def _stamp(text: object) -> datetime | None:
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def _proc_usage(pid: int) -> tuple[float, int] | None:
    """(CPU seconds user+system, resident bytes) of a live pid, from /proc (None elsewhere)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        statm = Path(f"/proc/{pid}/statm").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()  # after "pid (comm)": state is fields[0]
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK, int(statm.split()[1]) * _PAGE


class CollectorMetrics:
    """A prometheus_client custom collector: every value read when scraped."""

    def __init__(self, db: str | Path, writers: Iterable[str], *, since: datetime | None = None):
        self.db = str(db)
        self.writers = tuple(writers)
        self.since = since or datetime.now(timezone.utc).replace(microsecond=0)

    def _this_run(self, client_id: object, started: object) -> bool:
        """A row or state file of one of this collector's writers, started after the endpoint."""
        at = _stamp(started)
        return client_id in self.writers and at is not None and at >= self.since

    def collect(self) -> Iterator[Metric]:
        now = datetime.now(timezone.utc)
        up = GaugeMetricFamily(PREFIX + "database_up", "1 when the scrape could read the database")
        try:
            conn = connect(self.db, timeout_s=2.0, readonly=True)
        except EdgebenchError as exc:
            log.debug("metrics: %s", exc)
            up.add_metric([], 0)
            yield up
            yield from self._states()
            return
        try:
            rows = self._health_rows(conn)
            health = {str(r["client_id"]): r for r in rows if self._this_run(r["client_id"], r["started_at"])}
            yield from self._from_database(conn)
            up.add_metric([], 1)
        except sqlite3.Error as exc:
            log.debug("metrics: database not read: %s", exc)
            health = {}
            up.add_metric([], 0)
        finally:
            conn.close()
        yield up
        yield from self._from_health(health, now)
        yield from self._states()

    @staticmethod
    def _health_rows(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        cur = conn.execute("SELECT * FROM collector_health")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

    def _from_database(self, conn: sqlite3.Connection) -> Iterator[Metric]:
        devices = GaugeMetricFamily(PREFIX + "devices", "Devices known to the database")
        online = GaugeMetricFamily(PREFIX + "devices_online", "Devices whose last status says online")
        known, live = conn.execute("SELECT COUNT(*), COALESCE(SUM(online = 1), 0) FROM devices").fetchone()
        devices.add_metric([], known)
        online.add_metric([], live)
        dead = CounterMetricFamily(
            PREFIX + "dead_letters",
            "Dead letters stored, by reason class (the part of the reason before ':')",
            labels=["reason"],
        )
        for reason, n in conn.execute(  # the classes `collector status` shows (collector/ingest/health.py)
            "SELECT substr(reason, 1, instr(reason || ':', ':') - 1) AS c, COUNT(*) "
            "FROM dead_letters GROUP BY c"
        ):
            dead.add_metric([reason], n)
        yield from (devices, online, dead)

    def _from_health(self, rows: dict[str, dict[str, Any]], now: datetime) -> Iterator[Metric]:
        """One series per worker and health-row column (a column an older database lacks is left out)."""
        for column, name, text in HEALTH_COUNTERS:
            family = CounterMetricFamily(PREFIX + name, text, labels=["worker"])
            for worker, row in rows.items():
                if row.get(column) is not None:
                    family.add_metric([worker], float(row[column]))
            yield family
        for column, name, text in HEALTH_GAUGES:
            family = GaugeMetricFamily(PREFIX + name, text, labels=["worker"])
            for worker, row in rows.items():
                family.add_metric([worker], float(row.get(column) or 0))
            yield family
        age = GaugeMetricFamily(
            PREFIX + "health_age_seconds", "Seconds since the worker's last health row", labels=["worker"]
        )
        cpu = CounterMetricFamily(PREFIX + "worker_cpu_seconds", "Worker CPU time", labels=["worker"])
        rss = GaugeMetricFamily(PREFIX + "worker_resident_memory_bytes", "Worker RSS", labels=["worker"])
        for worker, row in rows.items():
            updated = _stamp(row.get("updated_at"))
            if updated is not None:
                age.add_metric([worker], max(0.0, (now - updated).total_seconds()))
            usage = _proc_usage(int(row.get("pid") or 0))  # None once the process is gone
            if usage is not None:
                cpu.add_metric([worker], usage[0])
                rss.add_metric([worker], usage[1])
        workers = GaugeMetricFamily(PREFIX + "workers", "Worker processes of this collector")
        workers.add_metric([], len(self.writers))
        yield from (age, cpu, rss, workers)

    def _states(self) -> Iterator[Metric]:
        """From the sidecar state files, which speak when the database cannot be written."""
        states = {s.client_id: s for s in read_states(self.db) if self._this_run(s.client_id, s.since)}
        state = GaugeMetricFamily(
            PREFIX + "writer_state",
            "1 for each worker's database state (ok, missing, replaced, read-only, full, io-error, waiting)",
            labels=["worker", "state"],
        )
        subscribed = GaugeMetricFamily(
            PREFIX + "broker_subscribed", "1 while every subscription of the worker stands", labels=["worker"]
        )
        errors = GaugeMetricFamily(PREFIX + "writer_errors", "Workers that cannot write the database now")
        for worker, s in states.items():
            state.add_metric([worker, s.db_state], 1)
            subscribed.add_metric([worker], float(s.subscribed))
        errors.add_metric([], sum(1 for s in states.values() if not s.writing))
        yield from (state, subscribed, errors)


@dataclass(frozen=True)
class MetricsEndpoint:
    """The running HTTP server (``/metrics``); :meth:`close` stops it."""

    host: str
    port: int
    server: Any
    thread: threading.Thread

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_metrics(config: CollectorConfig, workers: int) -> MetricsEndpoint:
    """Serve ``/metrics`` on ``config.metrics_host:config.metrics_port`` (a thread of this process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CollectorMetrics(config.db, writer_ids(config, workers)))
    try:
        server, thread = start_http_server(config.metrics_port, config.metrics_host, registry=registry)
    except OSError as exc:
        raise MetricsError(
            f"metrics endpoint {config.metrics_host}:{config.metrics_port}: {exc.strerror or exc}"
        ) from None
    return MetricsEndpoint(config.metrics_host, server.server_port, server, thread)
