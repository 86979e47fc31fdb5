"""Keeping every result and job event through a full disk: store in the outbox, or hold and retry.

:class:`MessageKeeper` sits in front of :meth:`agent.delivery.transport.MqttTransport.enqueue`.
When the outbox refuses a message for lack of space (:class:`agent.delivery.outbox.OutboxFull`), the
message is held in memory, in order, and retried:

* the job worker (``may_wait()`` true on its thread) waits with backoff until there is room, so its job
  pauses and no new result is made while nothing can be stored;
* any other thread (paho's network thread: "received", "rejected") only holds the message; the worker
  stores held messages before its own;
* when the agent is stopping, a held message is published straight to the broker (PUBACK awaited) and,
  failing that, logged whole at CRITICAL (``UNSTORED ...``) so that the journal keeps it.

Nothing already in the outbox is touched: SQLite rolls the failed transaction back.

Before any of this, the device's outbox (:class:`agent.delivery.room.RoomMakingOutbox`) has already asked the
artifact cache for room (least recently used models, never the running job's): OutboxFull reaches the
keeper only when no cached model is left to give.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from agent.delivery.errors import PayloadTooLarge
from agent.delivery.outbox import OutboxError, OutboxFull

log = logging.getLogger("edgebench.agent")

__all__ = ["MessageKeeper"]


class _Message(NamedTuple):
    topic: str
    payload: bytes
    what: str  # for people: "result <id>", "job event <job> <state>"
    key: str | None  # delivery key (wire.receipts), None: the enqueue function finds it


class MessageKeeper:
    def __init__(
        self,
        enqueue: Callable[..., object],
        publish_direct: Callable[[str, bytes], None],
        *,
        stopping: threading.Event,
        may_wait: Callable[[], bool],
        on_error: Callable[[str], None],
        max_delay_s: float = 30.0,
    ):
        self._enqueue = enqueue  # (topic, payload) or, for a message with a key, (topic, payload, key=)
        self._publish_direct = publish_direct  # raises unless the broker acknowledged it
        self._stopping = stopping
        self._may_wait = may_wait
        self._on_error = on_error
        self._max_delay_s = max_delay_s
        self._held: deque[_Message] = deque()
        self.disk_full = False  # the outbox refused a message for space (cleared once one goes in)
        self.unstored = 0  # held messages that neither the outbox nor the broker took (logged whole)
        self._waiting = False  # the worker waits with its own message

    @property
    def held(self) -> int:
        """Messages in memory for lack of disk space (the held queue and the one the worker waits on)."""
        return len(self._held) + int(self._waiting)

    def store(self, topic: str, payload: bytes, what: str, key: str | None = None) -> None:
        """Into the outbox, or held (full disk). PayloadTooLarge and other OutboxErrors raise.

        ``key``: the message's delivery key, passed on to the enqueue function (which otherwise reads
        it from the payload)."""
        message = _Message(topic, payload, what, key)
        if not self._may_wait():
            if self._held:  # keep the order behind what is already held
                self._held.append(message)
                return
            try:
                self._put(message)
            except OutboxFull as exc:
                self._note_full(what, exc)
                self._held.append(message)
            else:
                self._note_room(what)
            return
        delay = 1.0
        try:
            while True:
                self.store_held()  # what others held goes first (when stopping: their last resort)
                if not self._held:
                    try:
                        self._put(message)
                    except OutboxFull as exc:
                        self._note_full(what, exc)
                    else:
                        self._note_room(what)
                        return
                if self._stopping.is_set():
                    self._last_resort(message)
                    return
                self._waiting = True
                self._stopping.wait(delay)
                delay = min(delay * 2, self._max_delay_s)
        finally:
            # whatever ends the wait (stored, last resort, or an error such as a payload over the
            # limit) ends the count: a flag left set read as a phantom "1 pending" in every heartbeat
            self._waiting = False

    def store_held(self) -> None:
        """Store what was held, in order, while there is room; when stopping, the last resort."""
        while self._held:
            message = self._held[0]
            try:
                self._put(message)
            except OutboxFull as exc:
                self._note_full(message.what, exc)
                if not self._stopping.is_set():
                    return
                self._last_resort(message)
            except (PayloadTooLarge, OutboxError) as exc:
                self._on_error(f"{message.what} not stored: {exc}")
            self._held.popleft()
        self._note_room("held messages")

    def _put(self, message: _Message) -> None:
        if message.key is None:
            self._enqueue(message.topic, message.payload)
        else:
            self._enqueue(message.topic, message.payload, key=message.key)

    def _note_full(self, what: str, exc: Exception) -> None:
        if not self.disk_full:
            self._on_error(f"{what} not stored: {exc}; held in memory and retried until there is room")
        self.disk_full = True

    def _note_room(self, what: str) -> None:
        if self.disk_full and not self._held:
            log.warning("the outbox takes messages again (%s stored)", what)
            self.disk_full = False

    def _last_resort(self, message: _Message) -> None:
        topic, payload, what, _key = message
        try:
            self._publish_direct(topic, payload)
            log.warning("%s published directly at shutdown (the outbox had no room)", what)
            return
        except Exception as exc:
            log.error("%s: direct publish failed: %s", what, exc)
        self.unstored += 1
        log.critical("UNSTORED %s on %s (no disk space, no broker): %s", what, topic, payload.decode())
