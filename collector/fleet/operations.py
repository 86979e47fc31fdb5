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

This module gathers the names of the parts: :mod:`~collector.fleet.artifacts` (files, manifests,
registration), :mod:`~collector.fleet.jobs` (targets, expiry, building, chunk policy, signing),
:mod:`~collector.fleet.push` (the push and its progress), :mod:`~collector.fleet.listings` (devices,
jobs), :mod:`~collector.fleet.errors`.
"""

from __future__ import annotations

from collector.fleet.artifacts import (
    RegisteredArtifact,
    artifact_from_file,
    artifacts_from_manifest,
    collect_artifacts,
    register,
)
from collector.fleet.errors import FleetError
from collector.fleet.jobs import addressed_by, build_job, parse_duration, resolve_target, sign
from collector.fleet.listings import DISPLAY, FINAL, DeviceRow, JobRow, device_tags, list_devices, list_jobs
from collector.fleet.push import DeviceProgress, Pusher, PushOutcome, apply_event

__all__ = [
    "DISPLAY",
    "FINAL",
    "DeviceProgress",
    "DeviceRow",
    "FleetError",
    "JobRow",
    "PushOutcome",
    "Pusher",
    "RegisteredArtifact",
    "addressed_by",
    "apply_event",
    "artifact_from_file",
    "artifacts_from_manifest",
    "build_job",
    "collect_artifacts",
    "device_tags",
    "list_devices",
    "list_jobs",
    "parse_duration",
    "register",
    "resolve_target",
    "sign",
]
