"""Durable store-and-forward outbox for everything the agent must not lose (results, job events).

Every message is written here first. A row with a delivery key (results and job events, see
:mod:`wire.receipts`) leaves only when the collector's :class:`~wire.schema.Receipt` says it is
committed to the database (:meth:`Outbox.confirm`); the broker's PUBACK only marks it sent
(:meth:`Outbox.mark_sent`), one hop of two. A row without a key leaves on the PUBACK
(:meth:`Outbox.ack`). paho-mqtt's own queue lives in memory and dies with the process, so this is what
survives kill -9, reboots and broker outages. The transport sends every row again after a restart, and
re-sends a sent row that stays unconfirmed after a timeout.

* :class:`SqliteOutbox` - one SQLite file in WAL mode (``synchronous=FULL``), for the device.
* :class:`MemoryOutbox` - same behaviour, in memory (tests, tools that need no durability).

Bounded: at ``max_rows`` the oldest pending rows are dropped to make room and counted
(``stats().dropped``), never silently. A row the broker refuses (MQTT v5 reason code >= 0x80, e.g.
0x87 Not authorized) is moved aside with its reason (``stats().rejected``) and never re-sent.

A full disk raises :class:`OutboxFull` from :meth:`Outbox.put` and stores nothing; every row stored
before stays (the failed transaction rolls back). The service holds the message and retries.
"""

from __future__ import annotations

from agent.delivery.outbox_memory import MemoryOutbox
from agent.delivery.outbox_protocol import Outbox, OutboxError, OutboxFull, OutboxRow, OutboxStats
from agent.delivery.outbox_sqlite import SqliteOutbox, open_outbox, read_stats

__all__ = [
    "MemoryOutbox",
    "Outbox",
    "OutboxError",
    "OutboxFull",
    "OutboxRow",
    "OutboxStats",
    "SqliteOutbox",
    "open_outbox",
    "read_stats",
]
