"""Which store a ``--db`` names: a ``postgresql://`` URL is PostgreSQL, anything else an SQLite file.

:func:`open_store` opens either as a :class:`collector.store.api.ResultStore` (created and migrated);
:func:`check_store` is the serve command's early check. For ingest, :class:`SqliteBatchTarget` puts the
SQLite store behind its database-file watch (:mod:`collector.store.watch`), and
:class:`collector.store.postgres.PostgresStore` is its own :class:`collector.store.api.BatchTarget`.
psycopg is imported only when a URL asks for PostgreSQL (the ``postgres`` extra).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from collector.store.api import INTERNAL, REFUSED, TRANSIENT, Begin, ErrorKind, ResultStore
from collector.store.sqlite import SqliteStore, StoreError, transaction

if TYPE_CHECKING:
    from collector.store.postgres import PostgresStore
    from collector.store.watch import DbWatch

T = TypeVar("T")

__all__ = [
    "POSTGRES_SCHEMES",
    "SqliteBatchTarget",
    "check_store",
    "classify_sqlite",
    "is_postgres_url",
    "open_postgres",
    "open_store",
    "redact",
]

POSTGRES_SCHEMES = ("postgresql", "postgres")


def is_postgres_url(db: str | Path) -> bool:
    """``postgresql://...`` (or ``postgres://...``): a PostgreSQL server, not a file."""
    return isinstance(db, str) and db.partition("://")[0].lower() in POSTGRES_SCHEMES and "://" in db


def redact(db: str | Path) -> str:
    """What to print for ``--db``: a URL without its password; a path as it is."""
    if not is_postgres_url(db):
        return str(db)
    parts = urlsplit(str(db))
    if parts.password is None:
        return str(db)
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def open_postgres(url: str, **kw: Any) -> PostgresStore:
    """:meth:`PostgresStore.open` (connected, migrated); StoreError without psycopg installed."""
    try:
        from collector.store.postgres import PostgresStore
    except ImportError as exc:
        raise StoreError(
            f"{redact(url)} needs PostgreSQL support: pip install 'edgebench[postgres]' ({exc})"
        ) from None
    return PostgresStore.open(url, **kw)


def open_store(url_or_path: str | Path, **kw: Any) -> ResultStore:
    """The store ``url_or_path`` names, created if needed and migrated: PostgreSQL for a
    ``postgresql://`` URL, else the SQLite file (WAL). StoreError if it cannot be used."""
    if is_postgres_url(url_or_path):
        return open_postgres(str(url_or_path), **kw)
    return SqliteStore.open(url_or_path, **kw)


def check_store(url_or_path: str | Path, *, create: bool = False) -> None:
    """Open (create, migrate) once and close; an EdgebenchError if the store cannot be used and waiting
    would not help. SQLite: :func:`collector.store.watch.check_database` (``create``: see there)."""
    if is_postgres_url(url_or_path):
        open_postgres(str(url_or_path)).close()
        return
    from collector.store.watch import check_database

    check_database(url_or_path, create=create)


def classify_sqlite(exc: BaseException) -> ErrorKind:
    """SQLite's word on a failed write: OperationalError (locked, read-only, full, I/O) is TRANSIENT
    (the watch retries), any other sqlite3.Error REFUSED, anything else INTERNAL."""
    if isinstance(exc, sqlite3.OperationalError):
        return TRANSIENT
    if isinstance(exc, sqlite3.Error):
        return REFUSED
    return INTERNAL


class SqliteBatchTarget:
    """:class:`collector.store.api.BatchTarget` on the SQLite file behind its watch: ``write`` returns
    once committed to the file at the path (:meth:`collector.store.watch.DbWatch.write`)."""

    def __init__(self, watch: DbWatch) -> None:
        self.watch = watch

    def write(self, fn: Callable[[Begin], T], stop: threading.Event) -> T:
        return self.watch.write(lambda conn: fn(lambda: transaction(conn)), stop)

    def classify(self, exc: BaseException) -> ErrorKind:
        return classify_sqlite(exc)
