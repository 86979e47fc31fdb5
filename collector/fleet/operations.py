"""Fleet operations (library): register artifacts, resolve targets, build and sign jobs, push them,
serve their chunks and follow each device's progress. No click here; errors are :class:`FleetError`.

A push publishes one signed :class:`~wire.schema.Job` (QoS 1) to the target's topic
(:func:`wire.topics.jobs_topic_for_target`). Devices that are offline get it when they come back
(their persistent sessions hold it). Chunks are served by this process while it waits and by
``collector serve`` at any time (both on the shared subscription ``$share/edgebench-chunks/...``,
so each request is answered once), from the path registered in the ``artifacts`` table; this process
serves its own job's artifacts only to the devices the job addresses (:func:`addressed_by`).

Every pushed job carries ``expires_at`` = ``created_at`` + ``--expires-in`` (default: the config's
``job_expiry_s``); agents refuse it after that, and refuse jobs created before they joined
(:mod:`agent.jobs.replay`).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import sqlite_utils

from collector.config import CollectorConfig
from collector.fleet.chunks import ChunkServer
from collector.ingest.parse import CHUNK_SHARE
from collector.mqtt_client import connect_kwargs, make_client
from collector.store.sqlite import insert_job_events, record_job, register_artifact, set_job_state
from wire import topics
from wire.artifacts import ArtifactError, artifact_info, file_sha256
from wire.errors import EdgebenchError
from wire.schema import ArtifactRef, BenchSettings, Job, JobEvent, SchemaError, new_id
from wire.timestamps import Clock, system_clock, to_wire

log = logging.getLogger("edgebench.fleet")


class FleetError(EdgebenchError):
    """A user mistake or an unusable input (unknown device, bad artifact, wrong hash, no key...)."""


# ---------------------------------------------------------------- artifacts


@dataclass(frozen=True)
class RegisteredArtifact:
    ref: ArtifactRef
    path: Path
    source: str  # "file" or the manifest's path
    fidelity: dict[str, Any] | None = None


def _check_model_bytes(path: Path, fmt: str) -> None:
    """Cheap content check so a renamed text file is refused before any device downloads it."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if fmt == "tflite" and head[4:8] != b"TFL3":
        raise FleetError(f"{path}: not a TFLite flatbuffer (no 'TFL3' identifier)")
    if fmt == "onnx" and (not head or head[0] != 0x08):  # ModelProto starts with ir_version (field 1)
        raise FleetError(f"{path}: not an ONNX model (does not start with an ir_version field)")


def artifact_from_file(path: Path) -> RegisteredArtifact:
    try:
        info = artifact_info(path)
    except (ArtifactError, OSError) as exc:
        raise FleetError(str(exc)) from None
    _check_model_bytes(path, info.format)
    ref = ArtifactRef(
        name=info.name,
        sha256=info.sha256,
        size_bytes=info.size_bytes,
        format=info.format,
        precision=info.precision,
        model=info.model or path.stem,
        variant=info.variant,
    )
    return RegisteredArtifact(ref, path.resolve(), "file")


def artifacts_from_manifest(manifest_path: Path) -> list[RegisteredArtifact]:
    """Every ``ok`` artifact of a converter manifest, each verified against its declared sha256."""
    from wire.manifest import ManifestError, load_manifest

    try:
        manifest = load_manifest(manifest_path)
    except ManifestError as exc:
        raise FleetError(str(exc)) from None
    mpath = manifest_path / "manifest.json" if manifest_path.is_dir() else manifest_path
    out = []
    for a in manifest.artifacts:
        if a.status != "ok":
            continue
        path = a.path(mpath)
        if not path.is_file():
            raise FleetError(f"{mpath}: artifact {a.name!r}: file {path} is missing")
        size = path.stat().st_size
        actual = file_sha256(path)
        if actual != a.sha256:
            raise FleetError(
                f"{mpath}: artifact {a.name!r}: sha256 mismatch (manifest says {a.sha256[:12]}..., "
                f"{path.name} has {actual[:12]}...): refusing to push it"
            )
        if size != a.size_bytes:
            raise FleetError(f"{mpath}: artifact {a.name!r}: size {size} != manifest's {a.size_bytes}")
        try:
            ref = ArtifactRef(
                name=a.name,
                sha256=a.sha256,
                size_bytes=size,
                format=a.format,  # type: ignore[arg-type]
                precision=a.precision,
                model=a.model or manifest.source.name,
                variant=a.variant,
            )
        except SchemaError as exc:
            raise FleetError(f"{mpath}: artifact {a.name!r}: {exc}") from None
        fidelity = {k: v for k, v in vars(a.fidelity).items()}
        out.append(RegisteredArtifact(ref, path.resolve(), str(mpath.resolve()), fidelity))
    if not out:
        raise FleetError(f"{mpath}: no artifact with status 'ok' to push")
    return out


def collect_artifacts(paths: Iterable[str | Path]) -> list[RegisteredArtifact]:
    """Files (.onnx/.tflite) and manifests (manifest.json or a directory holding one), de-duplicated."""
    found: dict[str, RegisteredArtifact] = {}
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FleetError(f"{path}: no such file or directory")
        if path.is_dir() or path.suffix.lower() == ".json":
            items = artifacts_from_manifest(path)
        else:
            items = [artifact_from_file(path)]
        for item in items:
            found.setdefault(item.ref.sha256, item)
    if not found:
        raise FleetError("nothing to push: give model files or a manifest.json")
    return list(found.values())


def register(db: sqlite_utils.Database, artifacts: Sequence[RegisteredArtifact]) -> None:
    for a in artifacts:
        register_artifact(db, a.ref, path=a.path, source=a.source, fidelity=a.fidelity)


# ---------------------------------------------------------------- targets


def _device_tags(db: sqlite_utils.Database) -> dict[str, tuple[str, ...]]:
    out = {}
    for device_id, tags in db.conn.execute("SELECT device_id, tags FROM devices ORDER BY device_id"):
        try:
            parsed = json.loads(tags) if tags else []
        except ValueError:
            parsed = []
        out[device_id] = tuple(t for t in parsed if isinstance(t, str))
    return out


def resolve_target(db: sqlite_utils.Database, to: str) -> tuple[str, list[str]]:
    """``DEVICE`` | ``device:DEVICE`` | ``tag:TAG`` | ``all`` -> (job target, known devices it reaches)."""
    known = _device_tags(db)
    to = to.strip()
    if to == "all":
        if not known:
            raise FleetError("no device has registered yet: start an agent, or push to a device id")
        return "all", sorted(known)
    if to.startswith("tag:"):
        tag = to[4:]
        try:
            topics.check_id(tag, "tag")
        except topics.TopicError as exc:
            raise FleetError(str(exc)) from None
        devices = sorted(d for d, tags in known.items() if tag in tags)
        if not devices:
            in_use = sorted({t for tags in known.values() for t in tags})
            raise FleetError(f"no device has the tag {tag!r} (tags in use: {', '.join(in_use) or 'none'})")
        return f"tag:{tag}", devices
    device = to[len("device:") :] if to.startswith("device:") else to
    try:
        topics.check_id(device)
    except topics.TopicError as exc:
        raise FleetError(str(exc)) from None
    if device not in known:
        hint = ", ".join(list(known)[:10]) or "none registered yet"
        raise FleetError(f"unknown device {device!r} (known: {hint}); use tag:TAG or all")
    return f"device:{device}", [device]


# ---------------------------------------------------------------- jobs

_DURATION = re.compile(r"(\d+)([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """``30m``, ``12h``, ``7d``, ``1w``, ``1d12h`` or plain seconds -> seconds (> 0); FleetError if not."""
    raw = text.strip().lower()
    if raw.isdigit():
        seconds = int(raw)
    elif raw and re.fullmatch(f"(?:{_DURATION.pattern})+", raw):
        seconds = sum(int(n) * _UNIT_S[unit] for n, unit in _DURATION.findall(raw))
    else:
        raise FleetError(f"expected a duration such as 30m, 12h or 7d, got {text!r}")
    if seconds <= 0:
        raise FleetError(f"the duration must be more than 0 seconds, got {text!r}")
    return seconds


def build_job(
    artifacts: Sequence[RegisteredArtifact],
    target: str,
    settings: BenchSettings,
    *,
    expires_in_s: float | None = None,
    clock: Clock = system_clock,
) -> Job:
    """A new unsigned job created now; with ``expires_in_s``, ``expires_at`` = created + that."""
    created = clock()
    expires_at = None if expires_in_s is None else to_wire(created + timedelta(seconds=expires_in_s))
    try:
        return Job(
            job_id=new_id(),
            created_at=to_wire(created),
            target=target,
            artifacts=tuple(a.ref for a in artifacts),
            settings=settings,
            expires_at=expires_at,
        )
    except (SchemaError, OverflowError) as exc:
        raise FleetError(f"invalid job: {exc}") from None


def addressed_by(
    target: str, devices: Sequence[str], artifacts: Sequence[RegisteredArtifact]
) -> Callable[[str, str], bool]:
    """The push's own chunk policy (no database): its artifacts, to the devices its target reached when
    resolved (``all``: any device). A device enrolled later gets chunks from ``collector serve``."""
    shas = frozenset(a.ref.sha256 for a in artifacts)
    allowed = frozenset(devices)

    def addressed(device_id: str, sha256: str) -> bool:
        return sha256 in shas and (target == "all" or device_id in allowed)

    return addressed


def sign(job: Job, key_path: str | Path) -> Job:
    from wire.signing import SignatureError, sign_job

    if not Path(key_path).is_file():
        raise FleetError(
            f"no signing key at {key_path}: create one with `edgebench keys generate --out DIR` "
            "and give it with --key (agents must trust the .pub)"
        )
    try:
        return sign_job(job, key_path)
    except SignatureError as exc:
        raise FleetError(str(exc)) from None


# ---------------------------------------------------------------- progress

FINAL = {"done": "done", "failed": "failed", "rejected": "failed", "cancelled": "failed", "aborted": "failed"}
DISPLAY = {
    "received": "queued",
    "fetching": "transferring",
    "verifying": "transferring",
    "running": "running",
}


@dataclass
class DeviceProgress:
    device_id: str
    state: str = "queued"  # queued | transferring | running | done | failed
    agent_state: str = ""  # the agent's own word (received, fetching, verifying, rejected...)
    progress: float | None = None
    detail: str = ""
    results: int = 0
    chunks_sent: int = 0
    updated: float = field(default_factory=time.monotonic)

    @property
    def final(self) -> bool:
        return self.state in ("done", "failed")


def apply_event(progress: dict[str, DeviceProgress], event: JobEvent) -> DeviceProgress:
    p = progress.setdefault(event.device_id, DeviceProgress(event.device_id))
    if p.final and event.state not in FINAL:  # late, reordered event: keep the final word
        return p
    p.agent_state = event.state
    p.state = FINAL.get(event.state) or DISPLAY.get(event.state, event.state)
    p.progress = event.progress
    p.detail = event.detail
    p.results = max(p.results, len(event.result_ids))
    p.updated = time.monotonic()
    return p


@dataclass(frozen=True)
class PushOutcome:
    job: Job
    devices: dict[str, DeviceProgress]
    waited: bool
    timed_out: bool

    @property
    def ok(self) -> bool:
        return all(p.state == "done" for p in self.devices.values()) and not self.timed_out


class Pusher:
    """One push: connect, serve chunks, publish the job, follow the events (until done or timeout)."""

    def __init__(
        self,
        config: CollectorConfig,
        db: sqlite_utils.Database,
        *,
        on_update: Callable[[dict[str, DeviceProgress]], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config
        self.db = db
        self.on_update = on_update
        self.clock = clock
        self.progress: dict[str, DeviceProgress] = {}
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._job_id = ""
        self._connected = threading.Event()
        self._events: list[JobEvent] = []

    def _on_connect(self, client: Any, _u: Any, _f: Any, reason_code: Any, _p: Any) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        shared = self.config.broker.mqtt_version == 5
        client.subscribe(
            [(topics.ALL_EVENTS, 1), ((CHUNK_SHARE if shared else "") + topics.ALL_CHUNK_REQUESTS, 1)]
        )
        self._connected.set()

    def _on_message(self, client: Any, _u: Any, msg: Any) -> None:
        from collector.ingest.parse import parse

        parsed = parse(msg.topic, msg.payload, self.config.max_payload_bytes)
        if parsed.kind == "chunk_request":
            self.chunks.handle(parsed.message)
        elif parsed.kind == "event" and parsed.message.job_id == self._job_id:
            with self._lock:
                apply_event(self.progress, parsed.message)
                self._events.append(parsed.message)
            self._changed.set()

    def _served(self, request: Any, sent: int) -> None:
        with self._lock:
            p = self.progress.get(request.device_id)
            if p is not None:
                p.chunks_sent += sent
                if p.state == "queued":
                    p.state = "transferring"
        self._changed.set()

    def push(
        self,
        artifacts: Sequence[RegisteredArtifact],
        target: str,
        devices: Sequence[str],
        settings: BenchSettings,
        *,
        key_path: str | Path,
        wait: bool = True,
        timeout_s: float = 600.0,
        connect_timeout_s: float = 10.0,
        expires_in_s: float | None = None,
    ) -> PushOutcome:
        """``expires_in_s``: how long devices accept the job (default: the config's ``job_expiry_s``)."""
        expiry = self.config.job_expiry_s if expires_in_s is None else expires_in_s
        job = sign(build_job(artifacts, target, settings, expires_in_s=expiry), key_path)
        register(self.db, artifacts)
        self._job_id = job.job_id
        self.progress = {d: DeviceProgress(d) for d in devices}
        self.chunks = ChunkServer(
            paths={a.ref.sha256: a.path for a in artifacts},
            on_served=self._served,
            addressed=addressed_by(target, devices, artifacts),
        )
        client = make_client(
            self.config.broker, f"edgebench-push-{job.job_id[:8]}", persistent=False, manual_ack=False
        )
        client.on_connect = self._on_connect
        client.on_message = self._on_message
        self.chunks.attach(client)
        try:
            client.connect(**connect_kwargs(self.config.broker, persistent=False, session_expiry_s=0))
        except (OSError, ValueError) as exc:
            self.chunks.close()
            raise FleetError(
                f"cannot reach the broker at {self.config.broker.host}:{self.config.broker.port}: {exc}"
            ) from None
        client.loop_start()
        timed_out = False
        try:
            if not self._connected.wait(connect_timeout_s):
                raise FleetError(
                    f"no answer from the broker at {self.config.broker.host}:{self.config.broker.port}"
                )
            time.sleep(0.1)  # SUBACK before anyone can answer
            record_job(self.db, job, state="published")
            info = client.publish(topics.jobs_topic_for_target(target), job.to_json(), qos=1)
            info.wait_for_publish(timeout=connect_timeout_s)
            if not info.is_published():
                set_job_state(self.db, job.job_id, "unpublished")
                raise FleetError("the broker did not acknowledge the job")
            if self.on_update:
                self.on_update(self.progress)
            if wait:
                deadline = self.clock() + timeout_s
                while True:
                    self._changed.wait(0.25)
                    self._changed.clear()
                    with self._lock:
                        snapshot = dict(self.progress)
                        events, self._events = self._events, []
                    if events:
                        insert_job_events(self.db, events)
                    if self.on_update:
                        self.on_update(snapshot)
                    if snapshot and all(p.final for p in snapshot.values()):
                        break
                    if self.clock() >= deadline:
                        timed_out = True
                        break
                states = {p.state for p in self.progress.values()}
                summary = "timeout" if timed_out else ("done" if states == {"done"} else "failed")
                set_job_state(self.db, job.job_id, summary)
        finally:
            client.disconnect()
            client.loop_stop()
            self.chunks.close()
        return PushOutcome(job, dict(self.progress), wait, timed_out)


# ---------------------------------------------------------------- listings


@dataclass(frozen=True)
class DeviceRow:
    device_id: str
    board: str
    tags: tuple[str, ...]
    online: bool
    last_seen: str
    results: int
    agent_version: str
    current_job: str
    outbox_pending: int | None = None  # from its last status: results/events not yet delivered


def list_devices(db: sqlite_utils.Database) -> list[DeviceRow]:
    counts = dict(db.conn.execute("SELECT device_id, COUNT(*) FROM results GROUP BY device_id").fetchall())
    tags = _device_tags(db)
    rows = db.conn.execute(
        "SELECT device_id, board, online, last_seen, agent_version, current_job, outbox_pending FROM devices "
        "ORDER BY device_id"
    ).fetchall()
    out = [
        DeviceRow(
            d, b or "", tags.get(d, ()), bool(on), ls or "", int(counts.pop(d, 0)), av or "", cj or "", op
        )
        for d, b, on, ls, av, cj, op in rows
    ]
    # devices that sent results but never a status message (e.g. the registry was reset)
    out += [DeviceRow(d, "", (), False, "", int(n), "", "") for d, n in sorted(counts.items())]
    return out


@dataclass(frozen=True)
class JobRow:
    job_id: str
    created_at: str
    target: str
    artifacts: tuple[str, ...]
    state: str
    devices: dict[str, str]  # device -> latest agent state


def list_jobs(db: sqlite_utils.Database, limit: int = 50) -> list[JobRow]:
    jobs = db.conn.execute(
        "SELECT job_id, created_at, target, artifacts, state FROM jobs ORDER BY created_at DESC LIMIT ?",
        (limit,),
    ).fetchall()
    out = []
    for job_id, created, target, artifacts, state in jobs:
        latest = db.conn.execute(
            "SELECT device_id, state FROM job_events WHERE id IN "
            "(SELECT MAX(id) FROM job_events WHERE job_id = ? GROUP BY device_id) ORDER BY device_id",
            (job_id,),
        ).fetchall()
        try:
            names = tuple(a.get("name", "?") for a in json.loads(artifacts or "[]"))
        except (ValueError, AttributeError):
            names = ()
        out.append(JobRow(job_id, created or "", target or "", names, state or "", dict(latest)))
    return out
