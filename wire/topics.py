"""The MQTT topic tree, in one place (stdlib only). Documented in README.md ("Topics").

Everything lives under the versioned prefix ``edgebench/v1``. A device writes only below
``edgebench/v1/devices/<device_id>/`` and reads its own job and chunk topics plus the fleet and
tag job topics, which maps directly onto a mosquitto ACL pattern with ``%u`` = device id.

=================================================  ==========  ===========================
topic                                              direction   payload
=================================================  ==========  ===========================
edgebench/v1/devices/<id>/status                   dev -> srv  DeviceStatus (retained; LWT)
edgebench/v1/devices/<id>/results                  dev -> srv  ResultRecord (QoS 1)
edgebench/v1/devices/<id>/events                   dev -> srv  JobEvent (QoS 1)
edgebench/v1/devices/<id>/chunks/request           dev -> srv  ChunkRequest (QoS 1)
edgebench/v1/devices/<id>/jobs                     srv -> dev  Job / CancelJob (QoS 1)
edgebench/v1/devices/<id>/chunks                   srv -> dev  ArtifactChunk (binary, QoS 1)
edgebench/v1/devices/<id>/receipts                 srv -> dev  Receipt: what the collector committed (QoS 1)
edgebench/v1/tags/<tag>/jobs                       srv -> dev  Job / CancelJob for a tag
edgebench/v1/fleet/jobs                            srv -> dev  Job / CancelJob for every device
=================================================  ==========  ===========================
"""

from __future__ import annotations

import re

from wire.errors import EdgebenchError

PREFIX = "edgebench/v1"

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class TopicError(EdgebenchError, ValueError):
    """A device id, tag or topic does not fit the topic tree."""


def check_id(value: str, what: str = "device id") -> str:
    """Device ids and tags become topic levels: no wildcards, slashes or spaces."""
    if not _ID_RE.match(value or ""):
        raise TopicError(
            f"invalid {what} {value!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return value


def device_topic(device_id: str, leaf: str) -> str:
    return f"{PREFIX}/devices/{check_id(device_id)}/{leaf}"


def status(device_id: str) -> str:
    return device_topic(device_id, "status")


def results(device_id: str) -> str:
    return device_topic(device_id, "results")


def events(device_id: str) -> str:
    return device_topic(device_id, "events")


def chunk_requests(device_id: str) -> str:
    return device_topic(device_id, "chunks/request")


def device_jobs(device_id: str) -> str:
    return device_topic(device_id, "jobs")


def device_chunks(device_id: str) -> str:
    return device_topic(device_id, "chunks")


def receipts(device_id: str) -> str:
    """The collector tells a device which of its messages are committed (end-to-end acknowledgement)."""
    return device_topic(device_id, "receipts")


def tag_jobs(tag: str) -> str:
    return f"{PREFIX}/tags/{check_id(tag, 'tag')}/jobs"


FLEET_JOBS = f"{PREFIX}/fleet/jobs"

# Subscriptions of the collector (single-level wildcard for the device id).
ALL_STATUS = f"{PREFIX}/devices/+/status"
ALL_RESULTS = f"{PREFIX}/devices/+/results"
ALL_EVENTS = f"{PREFIX}/devices/+/events"
ALL_CHUNK_REQUESTS = f"{PREFIX}/devices/+/chunks/request"


def job_topics_for(device_id: str, tags: tuple[str, ...] | list[str]) -> list[str]:
    """Every topic a device must subscribe to for its jobs."""
    return [device_jobs(device_id), FLEET_JOBS, *(tag_jobs(t) for t in tags)]


def jobs_topic_for_target(target: str) -> str:
    """Topic a job with ``target`` ("device:<id>", "tag:<tag>", "all") is published to."""
    if target == "all":
        return FLEET_JOBS
    kind, _, name = target.partition(":")
    if kind == "device":
        return device_jobs(name)
    if kind == "tag":
        return tag_jobs(name)
    raise TopicError(f"invalid target {target!r}: use DEVICE, tag:TAG or all")


def parse_device_topic(topic: str) -> tuple[str, str]:
    """``edgebench/v1/devices/<id>/<leaf...>`` -> (device id, leaf). Raises TopicError otherwise."""
    head = f"{PREFIX}/devices/"
    if not topic.startswith(head):
        raise TopicError(f"not a device topic: {topic!r}")
    device_id, _, leaf = topic[len(head) :].partition("/")
    check_id(device_id)
    if not leaf:
        raise TopicError(f"no leaf in device topic: {topic!r}")
    return device_id, leaf
