"""Results from files into the database, without a broker (`edgebench collector import FILE...`).

A device without a broker hands its results over as a file; three shapes are read:

* a JSON array of messages: what ``edgebench bench --out`` / ``--json`` write (result records);
* JSON lines, one message per line (a single JSON object is a one-line file);
* an agent's outbox export (``edgebench agent export``): JSON lines ``{"topic": T, "payload": TEXT}``,
  the message exactly as it would have been published (``"rejected"``: the broker's refusal, kept
  for people, ignored here).

A bare message gets the topic its device would have published it on (:mod:`wire.topics`, from the
record's ``kind`` and device id). Then every record goes through the same :func:`parse` as MQTT
input (size, topic, strict schema, device in the topic) and the same store transaction as ingest
(:class:`collector.store.sqlite.SqliteTransaction`): results by ``result_id`` with ``ON CONFLICT DO
NOTHING``, so a re-import adds nothing; a bad record becomes a dead letter whose reason says where it
was (``invalid-field: r.json record 3: ...``), and is not recorded twice when the same file comes
again. A file that cannot be read as JSON or JSON lines at all (missing, a directory, binary, a
broken array) is a :class:`FileImportError` of that file only: the other files are imported.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from collector.messages.parse import Parsed, parse
from collector.store.api import DeadLetter
from collector.store.sqlite import SQLITE_HEADER, StoreError, dead_letter_row, open_db, transaction
from collector.store.watch import DbWatchError, require_db
from wire import topics
from wire.codec import SchemaError, load_json
from wire.errors import EdgebenchError
from wire.schema import utc_now

__all__ = [
    "FileImportError",
    "ImportCounts",
    "ImportDbError",
    "ImportSummary",
    "Record",
    "import_files",
    "read_file",
    "to_record",
]

BATCH = 500  # records per transaction
ENVELOPE_KEYS = frozenset({"topic", "payload", "rejected"})  # one line of `edgebench agent export`
_TOPIC_BY_KIND: dict[str, Callable[[str], str]] = {
    "result": topics.results,
    "job_event": topics.events,
    "status": topics.status,
}
_WS = re.compile(r"[ \t\n\r]*")  # JSON whitespace
_BOM = b"\xef\xbb\xbf"


class FileImportError(EdgebenchError):
    """A file cannot be imported at all (unreadable, not JSON)."""


class ImportDbError(FileImportError):
    """The database cannot be opened or written: no file can be imported."""


class _NoTopic(Exception):
    """A bare message names no device a topic can be made of; the argument is the dead-letter reason."""


@dataclass(frozen=True)
class Record:
    """One record of a file, as MQTT would have carried it, and what :func:`parse` made of it."""

    topic: str
    payload: bytes
    parsed: Parsed


@dataclass(frozen=True)
class ImportCounts:
    read: int = 0
    new: int = 0  # results and job events inserted
    duplicate: int = 0  # already in the database (same result_id / same event)
    dead: int = 0  # dead-lettered
    dead_known: int = 0  # of dead: the same dead letter was already recorded (an earlier import)
    statuses: int = 0  # device status messages applied
    ignored: int = 0  # valid but nothing to store offline (chunk requests, empty status)

    def __add__(self, other: ImportCounts) -> ImportCounts:
        names = self.__dataclass_fields__
        return ImportCounts(**{n: getattr(self, n) + getattr(other, n) for n in names})


@dataclass(frozen=True)
class ImportSummary:
    counts: ImportCounts = ImportCounts()
    errors: tuple[str, ...] = ()  # one line per file that could not be read

    def line(self) -> str:
        """``read 5, stored 3 new, 1 already there, 1 dead-lettered``."""
        c = self.counts
        text = f"read {c.read}, stored {c.new} new, {c.duplicate} already there, {c.dead} dead-lettered"
        if c.dead_known:
            text += f" ({c.dead_known} recorded before)"
        if c.statuses:
            text += f", {c.statuses} device status(es) applied"
        if c.ignored:
            text += f", {c.ignored} ignored"
        if self.errors:
            text += f"; {len(self.errors)} file(s) not imported"
        return text


# ---------------------------------------------------------------- reading files


def _dead(reason: str, where: str) -> Parsed:
    """A dead letter whose reason keeps its class first and says where the record was."""
    cls, _, detail = reason.partition(": ")
    return Parsed("dead", reason=f"{cls}: {where}: {detail}")


def _bare_topic(data: dict) -> str:
    """The topic a device publishes this message on; _NoTopic(reason) when it names no device."""
    kind = data.get("kind", "result")
    make = _TOPIC_BY_KIND.get(kind) if isinstance(kind, str) else None
    if make is None:
        raise _NoTopic(f"invalid-field: kind {kind!r} (a file holds {', '.join(_TOPIC_BY_KIND)})")
    owner, name = (data.get("device"), "device.device_id") if kind == "result" else (data, "device_id")
    if not isinstance(owner, dict) or "device_id" not in owner:
        raise _NoTopic(f"missing-field: {name}: missing required field")
    try:
        return make(owner["device_id"])
    except (topics.TopicError, TypeError) as exc:
        raise _NoTopic(f"invalid-field: {name}: {exc}") from None


def to_record(raw: bytes, where: str, max_bytes: int) -> Record:
    """One record's bytes (a bare message or an export line) -> the message as MQTT input, parsed."""
    try:
        data = load_json(raw)
    except SchemaError as exc:
        return Record("", raw, _dead(f"bad-json: {exc}", where))
    if not isinstance(data, dict):
        return Record("", raw, _dead("bad-json: a message must be a JSON object", where))
    if "topic" not in data:
        try:
            topic = _bare_topic(data)
        except _NoTopic as exc:
            return Record("", raw, _dead(str(exc), where))
        return _parsed(topic, raw, where, max_bytes)
    topic, payload = data["topic"], data.get("payload")
    extra = sorted(set(data) - ENVELOPE_KEYS)
    if not isinstance(topic, str):
        return Record("", raw, _dead(f"unknown-topic: topic must be a string, got {topic!r}", where))
    if extra or not isinstance(payload, str):
        why = f"unknown member(s) {extra}" if extra else "payload must be the message's JSON text"
        return Record(topic, raw, _dead(f"invalid-field: export line: {why}", where))
    return _parsed(topic, payload.encode("utf-8"), where, max_bytes)


def _parsed(topic: str, payload: bytes, where: str, max_bytes: int) -> Record:
    parsed = parse(topic, payload, max_bytes)
    if parsed.kind == "dead":
        parsed = _dead(parsed.reason, where)
    return Record(topic, payload, parsed)


def _array_spans(text: str, start: int) -> list[tuple[int, int]]:
    """Where each element of the JSON array at ``text[start]`` is (the elements' exact text is what is
    validated). FileImportError unless the whole text is one well-formed array."""
    decoder = json.JSONDecoder()
    spans: list[tuple[int, int]] = []
    i = _WS.match(text, start + 1).end()
    closed = text.startswith("]", i)
    while not closed:
        try:
            _, end = decoder.raw_decode(text, i)
        except json.JSONDecodeError as exc:
            hint = "" if text.rstrip().endswith("]") else " (a truncated file?)"
            where = f"line {exc.lineno} column {exc.colno}"
            raise FileImportError(f"not valid JSON: {exc.msg} ({where}){hint}") from None
        except RecursionError:
            raise FileImportError("not valid JSON: nested too deep") from None
        spans.append((i, end))
        i = _WS.match(text, end).end()
        closed = text.startswith("]", i)
        if not closed and not text.startswith(",", i):
            _bad(text, i, "expected ',' or ']'")
        i = _WS.match(text, i + 1).end() if not closed else i
    rest = _WS.match(text, i + 1).end()
    if rest < len(text):
        _bad(text, rest, "data after the array")
    return spans


def _bad(text: str, i: int, why: str) -> NoReturn:
    line, column = text.count("\n", 0, i) + 1, i - text.rfind("\n", 0, i)
    hint = "" if text.rstrip().endswith("]") else " (a truncated file?)"
    raise FileImportError(f"not valid JSON: {why} (line {line} column {column}){hint}")


def _single_object(data: bytes) -> bool:
    """Is the whole file one JSON object (pretty-printed over several lines)?"""
    try:
        text = data.decode("utf-8")
        _, end = json.JSONDecoder().raw_decode(text, _WS.match(text).end())
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return _WS.match(text, end).end() == len(text)


def read_file(path: str | Path, max_bytes: int = 1024 * 1024) -> Iterator[Record]:
    """The records of one file, in order. FileImportError (before any record) if it cannot be read."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except IsADirectoryError:
        raise FileImportError(f"{p}: is a directory") from None
    except FileNotFoundError:
        raise FileImportError(f"{p}: no such file") from None
    except OSError as exc:
        raise FileImportError(f"{p}: {exc.strerror or exc}") from None
    data = data.removeprefix(_BOM)
    if data.startswith(SQLITE_HEADER):
        raise FileImportError(
            f"{p}: an SQLite database, not JSON (an agent's outbox? `edgebench agent export` writes it out)"
        )
    first = data.lstrip(b" \t\r\n")[:1]
    if not first:  # an export of an empty outbox
        return iter(())
    if first == b"[":
        return _array_records(p, data, max_bytes)
    if first != b"{":
        raise FileImportError(f"{p}: not JSON or JSON lines (it starts with {data.lstrip()[:12]!r})")
    if b"\n" in data.strip() and _single_object(data):
        return iter([to_record(data.strip(), f"{p} record 1", max_bytes)])
    return _line_records(p, data, max_bytes)


def _array_records(p: Path, data: bytes, max_bytes: int) -> Iterator[Record]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileImportError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        spans = _array_spans(text, _WS.match(text).end())
    except FileImportError as exc:
        raise FileImportError(f"{p}: {exc}") from None
    return (to_record(text[a:b].encode(), f"{p} record {n}", max_bytes) for n, (a, b) in enumerate(spans, 1))


def _line_records(p: Path, data: bytes, max_bytes: int) -> Iterator[Record]:
    for n, line in enumerate(data.split(b"\n"), 1):
        line = line.strip(b" \t\r")
        if line:
            yield to_record(line, f"{p} line {n}", max_bytes)


# ---------------------------------------------------------------- writing


def _recorded(conn: sqlite3.Connection, letter: DeadLetter) -> bool:
    """The same dead letter (topic, reason with its file and place, excerpt) is already in the table."""
    topic, reason, excerpt, _ = dead_letter_row(letter.topic, letter.reason, letter.payload, "")
    sql = "SELECT 1 FROM dead_letters WHERE topic = ? AND reason = ? AND excerpt = ? LIMIT 1"
    return conn.execute(sql, (topic, reason, excerpt)).fetchone() is not None


def _write(conn: sqlite3.Connection, records: Sequence[Record], at: str) -> ImportCounts:
    """One transaction, as an ingest batch (collector.ingest.writer) writes it."""
    by_kind: dict[str, list[Record]] = {}
    for r in records:
        by_kind.setdefault(r.parsed.kind, []).append(r)
    results, events = by_kind.get("result", []), by_kind.get("event", [])
    letters = [DeadLetter(r.topic, r.parsed.reason, r.payload) for r in by_kind.get("dead", [])]
    with transaction(conn) as tx:
        inserted = tx.insert_results(
            [r.parsed.message for r in results], [r.parsed.text for r in results], at
        )
        tx.upsert_statuses(r.parsed.message for r in by_kind.get("status", []))
        new_events = tx.insert_job_events([r.parsed.message for r in events], at)
        fresh = [d for d in letters if not _recorded(conn, d)]
        tx.insert_dead_letters(fresh, at)
    return ImportCounts(
        read=len(records),
        new=inserted + new_events,
        duplicate=len(results) + len(events) - inserted - new_events,
        dead=len(letters),
        dead_known=len(letters) - len(fresh),
        statuses=len(by_kind.get("status", [])),
        ignored=len(by_kind.get("chunk_request", [])) + len(by_kind.get("drop", [])),
    )


def _write_batch(conn: sqlite3.Connection, records: Sequence[Record], at: str) -> ImportCounts:
    """The batch in one transaction; after an error that is not the database's (locked, read-only,
    full, I/O: ImportDbError), one by one, the culprit a dead letter (``store-error``, or
    ``internal-error`` for an exception nobody foresaw), as the ingest writer does."""
    try:
        return _write(conn, records, at)
    except sqlite3.OperationalError as exc:
        raise ImportDbError(f"the database cannot be written: {exc}") from None
    except Exception:  # isolated below, record by record
        pass
    counts = ImportCounts()
    for r in records:
        try:
            counts += _write(conn, [r], at)
            continue
        except sqlite3.OperationalError as exc:
            raise ImportDbError(f"the database cannot be written: {exc}") from None
        except sqlite3.Error as exc:
            reason = f"store-error: {exc}"
        except Exception as exc:  # a poison record: quarantined, the rest goes on
            reason = f"internal-error: {type(exc).__name__}: {str(exc)[:200]}"
        counts += _write(conn, [Record(r.topic, r.payload, Parsed("dead", reason=reason))], at)
    return counts


def _import_one(conn: sqlite3.Connection, path: str | Path, max_bytes: int, batch: int) -> ImportCounts:
    counts, pending, at = ImportCounts(), [], utc_now()
    for record in read_file(path, max_bytes):
        pending.append(record)
        if len(pending) >= batch:
            counts, pending = counts + _write_batch(conn, pending, at), []
    return counts + (_write_batch(conn, pending, at) if pending else ImportCounts())


def import_files(
    db_path: str | Path,
    files: Sequence[str | Path],
    *,
    max_payload_bytes: int = 1024 * 1024,
    batch: int = BATCH,
    on_error: Callable[[str], None] | None = None,
) -> ImportSummary:
    """Import ``files`` into the database at ``db_path`` (created if missing, unless a collector used
    one there: :func:`collector.store.watch.require_db`). A file that cannot be read is an entry of
    ``errors`` (and ``on_error(line)``) and the next file is read; FileImportError when the database
    cannot be opened or written (ImportDbError; what earlier files brought stays). No broker is
    involved."""
    try:
        require_db(db_path)
        db = open_db(db_path)
    except (DbWatchError, StoreError) as exc:
        raise ImportDbError(str(exc)) from None
    counts, errors = ImportCounts(), []
    try:
        for path in files:
            try:
                counts += _import_one(db.conn, path, max_payload_bytes, batch)
            except ImportDbError as exc:
                raise ImportDbError(f"{db_path}: {exc} (while importing {path})") from None
            except FileImportError as exc:
                errors.append(str(exc))
                if on_error is not None:
                    on_error(str(exc))
    finally:
        db.close()
    return ImportSummary(counts, tuple(errors))
