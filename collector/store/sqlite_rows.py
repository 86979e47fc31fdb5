"""The SQLite rows and statements of what ingest writes: pure (they never touch a database).

:func:`result_row` gives the ``results`` row in :data:`RESULT_COLUMN_NAMES` order, :func:`device_params`
the named parameters of :data:`DEVICE_UPSERT_SQL`, :func:`job_event_row` / :func:`dead_letter_row` /
:func:`health_params` those of :data:`JOB_EVENT_SQL` / :data:`DEAD_LETTER_SQL` / :data:`HEALTH_UPSERT_SQL`,
so that a writer can build them outside its transaction and batch them (collector.store.sqlite).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from collector.store.api import HealthRow
from collector.store.migrations import RESULT_COLUMN_NAMES
from wire.codec import encode
from wire.schema import ArtifactInfo, ArtifactRef, DeviceStatus, JobEvent, ResultRecord, utc_now


def _throttled(record: ResultRecord) -> int | None:
    board = record.board
    if board is None:
        return None
    flags = [
        board.throttled_now,
        *(bool(s.throttled & 0xF) for s in board.samples if s.throttled is not None),
    ]
    known = [f for f in flags if f is not None]
    if not known:
        return None
    return int(any(known))


def result_row(record: ResultRecord, received_at: str, record_json: str | None = None) -> tuple[Any, ...]:
    """The ``results`` row for one record, in :data:`RESULT_COLUMN_NAMES` order.

    ``record_json`` is the message as received (already validated); it is re-encoded when absent.
    """
    a, c, lat = record.artifact, record.config, record.latency
    cs, mem, cpu, en, b, acc = (
        record.cold_start,
        record.memory,
        record.cpu,
        record.energy,
        record.board,
        record.accuracy,
    )
    return (
        record.result_id,
        record.device.device_id,
        a.model,
        a.name,
        a.sha256,
        a.variant,
        a.format,
        a.precision,
        a.size_bytes,
        c.runtime,
        c.runtime_version,
        c.threads,
        c.batch,
        record.status,
        record.error,
        lat.n if lat else None,
        lat.mean_ms if lat else None,
        lat.std_ms if lat else None,
        lat.cv if lat else None,
        lat.min_ms if lat else None,
        lat.p50_ms if lat else None,
        lat.p50_ci_low_ms if lat else None,
        lat.p50_ci_high_ms if lat else None,
        lat.p90_ms if lat else None,
        lat.p99_ms if lat else None,
        lat.max_ms if lat else None,
        lat.throughput_ips if lat else None,
        int(lat.stable) if lat else None,
        cs.load_ms if cs else None,
        cs.first_inference_ms if cs else None,
        mem.load_peak_mb if mem else None,
        mem.inference_peak_mb if mem else None,
        cpu.cpu_s_per_inference if cpu else None,
        en.joules_per_inference if en else None,
        en.method if en else None,
        en.avg_power_w if en else None,
        b.temp_start_c if b else None,
        b.temp_max_c if b else None,
        b.temp_end_c if b else None,
        b.freq_start_mhz if b else None,
        b.freq_end_mhz if b else None,
        _throttled(record),
        acc.metric if acc else None,
        acc.value if acc else None,
        acc.delta if acc else None,
        record.job_id,
        record.started_at,
        record.finished_at,
        received_at,
        record_json if record_json is not None else record.to_json(),
        len(record.profile),
    )


INSERT_RESULT_SQL = (
    f"INSERT INTO results ({', '.join(f'[{c}]' for c in RESULT_COLUMN_NAMES)}) "
    f"VALUES ({', '.join('?' for _ in RESULT_COLUMN_NAMES)}) ON CONFLICT(result_id) DO NOTHING"
)


DEVICE_UPSERT_SQL = """
INSERT INTO devices (device_id, hostname, board, arch, cpu_model, cpu_cores, ram_mb, os, kernel,
  agent_version, tags, facts, online, state, first_seen, last_seen, last_reason, outbox_pending,
  outbox_dropped, current_job)
VALUES (:device_id, :hostname, :board, :arch, :cpu_model, :cpu_cores, :ram_mb, :os, :kernel,
  :agent_version, :tags, :facts, :online, :state, :at, :at, :reason, :outbox_pending, :outbox_dropped,
  :current_job)
ON CONFLICT(device_id) DO UPDATE SET
  hostname = COALESCE(excluded.hostname, devices.hostname),
  board = COALESCE(excluded.board, devices.board),
  arch = COALESCE(excluded.arch, devices.arch),
  cpu_model = COALESCE(excluded.cpu_model, devices.cpu_model),
  cpu_cores = COALESCE(excluded.cpu_cores, devices.cpu_cores),
  ram_mb = COALESCE(excluded.ram_mb, devices.ram_mb),
  os = COALESCE(excluded.os, devices.os),
  kernel = COALESCE(excluded.kernel, devices.kernel),
  agent_version = COALESCE(excluded.agent_version, devices.agent_version),
  tags = COALESCE(excluded.tags, devices.tags),
  facts = COALESCE(excluded.facts, devices.facts),
  online = CASE WHEN excluded.last_seen >= COALESCE(devices.last_seen, '') THEN excluded.online
           ELSE devices.online END,
  state = CASE WHEN excluded.last_seen >= COALESCE(devices.last_seen, '') THEN excluded.state
          ELSE devices.state END,
  last_reason = CASE WHEN excluded.last_seen >= COALESCE(devices.last_seen, '') THEN excluded.last_reason
                ELSE devices.last_reason END,
  last_seen = MAX(excluded.last_seen, COALESCE(devices.last_seen, '')),
  outbox_pending = COALESCE(excluded.outbox_pending, devices.outbox_pending),
  outbox_dropped = COALESCE(excluded.outbox_dropped, devices.outbox_dropped),
  current_job = CASE WHEN excluded.last_seen >= COALESCE(devices.last_seen, '') THEN excluded.current_job
                ELSE devices.current_job END
"""


def device_params(status: DeviceStatus) -> dict[str, Any]:
    """Named parameters of :data:`DEVICE_UPSERT_SQL` for one status message.

    A status without facts (a last will, a heartbeat) keeps the facts already stored. A message older
    than the stored ``last_seen`` (a late retained message) never flips the online state back.
    """
    f = status.facts
    tags = status.tags or (f.tags if f else ())
    return {
        "device_id": status.device_id,
        "hostname": f.hostname if f else None,
        "board": f.board if f else None,
        "arch": f.arch if f else None,
        "cpu_model": f.cpu_model if f else None,
        "cpu_cores": f.cpu_cores if f else None,
        "ram_mb": f.ram_mb if f else None,
        "os": f.os if f else None,
        "kernel": f.kernel if f else None,
        "agent_version": f.agent_version if f else None,
        "tags": json.dumps(list(tags)) if (tags or f) else None,
        "facts": json.dumps(encode(f), separators=(",", ":")) if f else None,
        "online": 1 if status.state == "online" else 0,
        "state": status.state,
        "at": status.at,
        "reason": status.reason,
        "outbox_pending": status.outbox_pending,
        "outbox_dropped": status.outbox_dropped,
        "current_job": status.current_job,
    }


JOB_EVENT_SQL = (
    "INSERT OR IGNORE INTO job_events "
    "(job_id, device_id, state, at, detail, result_ids, progress, received_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def job_event_row(event: JobEvent, received_at: str) -> tuple[Any, ...]:
    return (
        event.job_id,
        event.device_id,
        event.state,
        event.at,
        event.detail,
        json.dumps(list(event.result_ids)),
        event.progress,
        received_at,
    )


DEAD_LETTER_SQL = "INSERT INTO dead_letters (topic, reason, excerpt, received_at) VALUES (?, ?, ?, ?)"
EXCERPT_BYTES = 512


def excerpt(payload: bytes, limit: int = EXCERPT_BYTES) -> str:
    """A bounded, printable excerpt of a payload for the dead-letter table."""
    text = payload[:limit].decode("utf-8", errors="replace")
    return text + (f"... ({len(payload)} bytes)" if len(payload) > limit else "")


def dead_letter_row(topic: str, reason: str, payload: bytes, received_at: str) -> tuple[str, str, str, str]:
    return (topic, reason[:500], excerpt(payload), received_at)


HEALTH_COLUMNS = (
    "client_id", "pid", "started_at", "updated_at", "connected", "received", "committed", "results_inserted",
    "results_duplicate", "dead_letters", "queue_depth", "rate_per_s", "lag_s", "chunks_served",
)  # fmt: skip
HEALTH_UPSERT_SQL = (
    f"INSERT OR REPLACE INTO collector_health ({', '.join(HEALTH_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in HEALTH_COLUMNS)})"
)


def health_params(row: HealthRow) -> tuple[Any, ...]:
    """The parameters of :data:`HEALTH_UPSERT_SQL`, in :data:`HEALTH_COLUMNS` order."""
    return tuple(int(v) if isinstance(v, bool) else v for v in (getattr(row, c) for c in HEALTH_COLUMNS))


def artifact_params(
    info: ArtifactInfo | ArtifactRef,
    path: str | Path | None,
    source: str,
    fidelity: dict[str, Any] | None,
    registered_at: str | None,
) -> dict[str, Any]:
    """The ``artifacts`` row of one registration (both stores)."""
    return {
        "sha256": info.sha256,
        "name": info.name,
        "format": info.format,
        "precision": info.precision,
        "size_bytes": info.size_bytes,
        "model": info.model,
        "variant": info.variant,
        "source": source,
        "path": str(path) if path is not None else None,
        "fidelity": json.dumps(fidelity) if fidelity is not None else None,
        "registered_at": registered_at or utc_now(),
    }
