"""The agent's Prometheus endpoint (`agent run --metrics-port`, ``[metrics] port``).

Imported only when a port is configured, so an agent without it never loads prometheus_client. Every
value is read from the running service when scraped (nothing is counted twice): the outbox's own
counters and rows (persistent across restarts), the message keeper (what a full disk holds in memory),
the transport (connection, receipts, re-sends of this process), the job store and the data
directory's file system. The metric names are in the README (Observability).
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from agent.delivery.outbox import OutboxError
from agent.service.config import AgentConfig
from wire.errors import EdgebenchError

log = logging.getLogger("edgebench.agent")

__all__ = ["PREFIX", "AgentMetrics", "AgentView", "MetricsEndpoint", "MetricsError", "start_metrics"]

PREFIX = "edgebench_agent_"


class MetricsError(EdgebenchError):
    """The metrics endpoint cannot start (the port is taken, the address is not local)."""


class AgentView(Protocol):
    """What the metrics read of :class:`agent.service.daemon.AgentService` (``transport`` once started)."""

    config: AgentConfig
    device_id: str
    current_job: str | None
    undeliverable: int
    outbox: Any
    keeper: Any
    jobs: Any


def _gauge(name: str, text: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(PREFIX + name, text, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    family = CounterMetricFamily(PREFIX + name, text)
    family.add_metric([], value)
    return family


def _stamp(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class AgentMetrics:
    """A prometheus_client custom collector over a running agent."""

    def __init__(self, service: AgentView):
        self.service = service

    def collect(self) -> Iterator[Metric]:
        s = self.service
        yield _gauge("info", "Always 1; the device id as a label", 1, {"device_id": s.device_id})
        yield from self._outbox()
        transport = getattr(s, "transport", None)  # None until start() has made it
        if transport is not None:
            yield _gauge("broker_connected", "1 while connected to the broker", transport.connected.is_set())
            yield _counter(
                "receipts", "Collector receipts applied to the outbox (this process)", transport.receipts
            )
            yield _counter(
                "resent", "Outbox rows sent again for lack of a receipt (this process)", transport.resent
            )
        yield _counter(
            "results_undeliverable", "Results too large to store or send (this process)", s.undeliverable
        )
        yield from self._jobs()
        try:
            usage = shutil.disk_usage(s.config.data_dir)
        except OSError:
            return
        yield _gauge("disk_free_bytes", "Free bytes on the data directory's file system", usage.free)
        yield _gauge("disk_total_bytes", "Size of the data directory's file system", usage.total)

    def _outbox(self) -> Iterator[Metric]:
        s = self.service
        try:
            stats = s.outbox.stats()
        except OutboxError as exc:  # unreadable for now: leave these out, say it in the log
            log.debug("metrics: outbox stats: %s", exc)
            return
        held = s.keeper.held
        yield _gauge(
            "outbox_pending",
            "Results and job events not yet confirmed: in the outbox, or held in memory (full disk)",
            stats.pending + held,
        )
        yield _gauge("outbox_held", "Of outbox_pending: held in memory for lack of disk space", held)
        yield _gauge(
            "outbox_unconfirmed",
            "Of outbox_pending: taken by the broker, no collector receipt yet",
            stats.unconfirmed,
        )
        yield _counter(
            "outbox_sent",
            "Outbox messages the broker took: confirmed + unconfirmed (dips when the collector refuses one)",
            stats.acked + stats.unconfirmed,
        )
        yield _counter(
            "outbox_confirmed",
            "Outbox messages confirmed (collector receipt, or PUBACK without receipts)",
            stats.acked,
        )
        yield _counter("outbox_dropped", "Outbox rows pushed out by [outbox] max_rows", stats.dropped)
        yield _gauge(
            "outbox_rejected",
            "Outbox rows refused (by the broker or the collector), set aside",
            stats.rejected,
        )

    def _jobs(self) -> Iterator[Metric]:
        s = self.service
        entries = s.jobs.entries()
        counts = GaugeMetricFamily(PREFIX + "jobs", "Jobs in the job store, by state", labels=["state"])
        for state in sorted({e.state for e in entries}):
            counts.add_metric([state], sum(1 for e in entries if e.state == state))
        yield counts
        yield _gauge("job_running", "1 while a job runs", s.current_job is not None)
        if not entries:
            return
        last = max(entries, key=lambda e: (e.updated_at, e.received_at))
        yield _gauge("last_job", "Always 1; the most recently updated job and its state", 1,
                     {"job_id": last.job_id, "state": last.state})  # fmt: skip
        updated = _stamp(last.updated_at)
        if updated is not None:
            yield _gauge("last_job_updated_timestamp_seconds", "When the last job's state changed", updated)


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


def start_metrics(service: AgentView) -> MetricsEndpoint:
    """Serve ``/metrics`` on ``[metrics] host:port`` from a daemon thread of this process."""
    settings = service.config.metrics
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentMetrics(service))
    try:
        server, thread = start_http_server(settings.port, settings.host, registry=registry)
    except OSError as exc:
        raise MetricsError(
            f"metrics endpoint {settings.host}:{settings.port}: {exc.strerror or exc}"
        ) from None
    return MetricsEndpoint(settings.host, server.server_port, server, thread)
