"""One suite, every outbox implementation (memory and SQLite), plus durability of the SQLite file."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from agent.delivery.outbox import MemoryOutbox, OutboxError, SqliteOutbox

IMPLEMENTATIONS = ["memory", "sqlite"]


@pytest.fixture(params=IMPLEMENTATIONS)
def make_outbox(request, tmp_path):
    made = []

    def make(max_rows: int = 1000, max_payload_bytes: int = 1024):
        if request.param == "memory":
            box = MemoryOutbox(max_rows=max_rows, max_payload_bytes=max_payload_bytes)
        else:
            box = SqliteOutbox(tmp_path / f"outbox{len(made)}.db", max_rows, max_payload_bytes)
        made.append(box)
        return box

    yield make
    for box in made:
        box.close()


def test_put_then_pending_in_order(make_outbox):
    box = make_outbox()
    ids = [box.put("t/a", f"m{i}".encode()) for i in range(5)]
    assert ids == sorted(ids)
    rows = box.pending()
    assert [r.payload for r in rows] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    assert [r.id for r in box.pending(after_id=ids[1], limit=2)] == ids[2:4]
    assert box.stats().pending == 5


def test_row_leaves_only_on_ack(make_outbox):
    box = make_outbox()
    a, b = box.put("t", b"a"), box.put("t", b"b", qos=1, retain=True)
    assert box.ack(a) is True
    assert box.ack(a) is False  # a second PUBACK for the same row changes nothing
    (row,) = box.pending()
    assert row.id == b and row.retain is True and row.qos == 1
    stats = box.stats()
    assert (stats.pending, stats.acked, stats.dropped, stats.rejected) == (1, 1, 0, 0)


def test_bounded_drops_oldest_and_counts(make_outbox):
    box = make_outbox(max_rows=3)
    for i in range(7):
        box.put("t", bytes([i]))
    assert [r.payload for r in box.pending()] == [bytes([4]), bytes([5]), bytes([6])]
    assert box.stats().dropped == 4
    assert box.stats().pending == 3


def test_rejected_row_kept_aside_with_reason(make_outbox):
    box = make_outbox()
    a = box.put("t", b"denied")
    box.put("t", b"fine")
    assert box.reject(a, "Not authorized (0x87)") is True
    assert [r.payload for r in box.pending()] == [b"fine"]
    stats = box.stats()
    assert stats.rejected == 1 and "0x87" in stats.last_reject_reason


def test_oversized_and_invalid_refused(make_outbox):
    box = make_outbox(max_payload_bytes=10)
    with pytest.raises(OutboxError, match="exceeds the payload limit of 10 bytes"):
        box.put("t", b"x" * 11)
    with pytest.raises(OutboxError, match="invalid topic"):
        box.put("t/+/x", b"x")
    with pytest.raises(OutboxError, match="invalid qos"):
        box.put("t", b"x", qos=3)
    assert box.stats().pending == 0


def test_concurrent_puts_and_acks_lose_nothing(make_outbox):
    box = make_outbox(max_rows=10_000)

    def writer(k: int) -> None:
        for i in range(100):
            box.put("t", f"{k}-{i}".encode())

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    rows = box.pending(limit=10_000)
    assert len({r.payload for r in rows}) == 400
    for r in rows[:150]:
        assert box.ack(r.id)
    assert box.stats().pending == 250 and box.stats().acked == 150


def test_sqlite_survives_reopen(tmp_path):
    path = tmp_path / "outbox.db"
    box = SqliteOutbox(path, max_rows=2)
    ids = [box.put("t", bytes([i])) for i in range(3)]
    box.ack(ids[1])
    box.close()
    again = SqliteOutbox(path, max_rows=2)
    assert [r.payload for r in again.pending()] == [bytes([2])]
    s = again.stats()
    assert (s.dropped, s.acked, s.pending) == (1, 1, 1)
    assert again.put("t", b"next") > ids[-1]  # ids never reused (AUTOINCREMENT)
    again.close()


def test_sqlite_rows_survive_kill_9(tmp_path):
    """A process that committed rows and was killed with SIGKILL leaves them all in the file."""
    path = tmp_path / "outbox.db"
    code = (
        "import os, signal, sys\n"
        "from agent.delivery.outbox import SqliteOutbox\n"
        f"box = SqliteOutbox({str(path)!r})\n"
        "for i in range(50): box.put('t', str(i).encode())\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert proc.returncode == -9
    box = SqliteOutbox(path)
    assert [r.payload for r in box.pending()] == [str(i).encode() for i in range(50)]
    box.close()


def test_sqlite_unusable_path_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutboxError, match="cannot open outbox"):
        SqliteOutbox(tmp_path / "file" / "outbox.db")
