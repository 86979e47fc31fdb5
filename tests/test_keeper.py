"""MessageKeeper's rules, exact: order kept, the worker waits, other threads hold, the last resort.

The outbox here is a real MemoryOutbox behind a switch that answers OutboxFull while "the disk is
full" (the real full disk is in tests/test_disk_full.py)."""

from __future__ import annotations

import threading

from agent.delivery.keeper import MessageKeeper
from agent.delivery.outbox import MemoryOutbox, OutboxFull


class Disk:
    def __init__(self) -> None:
        self.full = False
        self.box = MemoryOutbox()

    def enqueue(self, topic: str, payload: bytes) -> int:
        if self.full:
            raise OutboxFull("database or disk is full")
        return self.box.put(topic, payload)

    def stored(self) -> list[bytes]:
        return [r.payload for r in self.box.pending()]


def make(disk: Disk, *, worker: threading.Thread | None = None, direct=None):
    errors: list[str] = []
    published: list[bytes] = []

    def publish(topic: str, payload: bytes) -> None:
        if direct is not None:
            direct(payload)
        published.append(payload)

    keeper = MessageKeeper(
        disk.enqueue,
        publish,
        stopping=threading.Event(),
        may_wait=lambda: threading.current_thread() is worker,
        on_error=errors.append,
        max_delay_s=0.05,
    )
    return keeper, errors, published


def test_non_worker_holds_in_order_and_the_worker_stores_held_first():
    disk = Disk()
    done = threading.Event()
    worker = threading.Thread(target=lambda: (keeper.store("t", b"w1", "w1"), done.set()))
    keeper, errors, _ = make(disk, worker=worker)
    disk.full = True
    keeper.store("t", b"n1", "n1")
    keeper.store("t", b"n2", "n2")
    assert keeper.held == 2 and keeper.disk_full and len(errors) == 1  # reported once
    worker.start()
    assert not done.wait(0.2)  # the worker waits while the disk is full
    disk.full = False
    assert done.wait(5)
    worker.join()
    assert disk.stored() == [b"n1", b"n2", b"w1"]
    assert keeper.held == 0 and not keeper.disk_full


def test_once_something_is_held_later_messages_queue_behind_it_even_with_room():
    disk = Disk()
    keeper, _, _ = make(disk)
    disk.full = True
    keeper.store("t", b"a", "a")
    disk.full = False
    keeper.store("t", b"b", "b")  # room now, but "a" is still held: "b" waits behind it
    assert disk.stored() == [] and keeper.held == 2
    keeper.store_held()
    assert disk.stored() == [b"a", b"b"]


def test_stopping_with_a_full_disk_publishes_directly_in_order():
    disk = Disk()
    keeper, _, published = make(disk)
    disk.full = True
    keeper.store("t", b"a", "a")
    keeper.store("t", b"b", "b")
    keeper._stopping.set()
    keeper.store_held()
    assert published == [b"a", b"b"] and keeper.unstored == 0 and keeper.held == 0


def test_with_neither_disk_nor_broker_the_message_is_logged_whole(caplog):
    disk = Disk()

    def broker_down(_payload: bytes) -> None:
        raise ConnectionError("not connected")

    keeper, _, _ = make(disk, direct=broker_down)
    disk.full = True
    keeper.store("t", b'{"result_id": "r1"}', "result r1")
    keeper._stopping.set()
    keeper.store_held()
    assert keeper.unstored == 1
    assert any("UNSTORED result r1" in r.message and '"r1"' in r.message for r in caplog.records)


def test_the_delivery_key_travels_with_the_message_also_when_held():
    """The service knows each message's key: it reaches the outbox without a second parse."""
    calls: list[tuple] = []
    full = [True]

    def enqueue(topic: str, payload: bytes, key: str | None = None) -> int:
        calls.append((payload, key))
        if full[0]:
            raise OutboxFull("database or disk is full")
        return len(calls)

    keeper = MessageKeeper(
        enqueue,
        lambda t, p: None,
        stopping=threading.Event(),
        may_wait=lambda: False,
        on_error=lambda m: None,
    )
    keeper.store("t", b"not json", "result r1", "r:r1")
    keeper.store("t", b"no key", "other")
    full[0] = False
    keeper.store_held()
    assert calls[-2:] == [(b"not json", "r:r1"), (b"no key", None)] and keeper.held == 0
