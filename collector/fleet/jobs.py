"""A job to push: its target (a device, a tag or all), its expiry, the job itself, its chunk policy and
its signature."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

import sqlite_utils

from collector.fleet.artifacts import RegisteredArtifact
from collector.fleet.errors import FleetError
from collector.fleet.listings import device_tags
from collector.store.ids import DEVICE, AmbiguousIdError, IdError, pick_unique
from wire import topics
from wire.schema import BenchSettings, Job, SchemaError, new_id
from wire.timestamps import Clock, system_clock, to_wire


def resolve_target(db: sqlite_utils.Database, to: str) -> tuple[str, list[str]]:
    """``DEVICE`` | ``device:DEVICE`` | ``tag:TAG`` | ``all`` -> (job target, known devices it reaches).

    ``DEVICE`` is a known device id or a unique prefix of one."""
    known = device_tags(db)
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
    try:  # a unique prefix names its device
        device = pick_unique(device, known, DEVICE.noun)
    except AmbiguousIdError as exc:
        raise FleetError(str(exc)) from None
    except IdError:
        hint = ", ".join(list(known)[:10]) or "none registered yet"
        raise FleetError(f"unknown device {device!r} (known: {hint}); use tag:TAG or all") from None
    return f"device:{device}", [device]


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
