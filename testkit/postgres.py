"""A real PostgreSQL server for tests and benchmarks: a throw-away cluster in a temp dir.

Debian's ``postgresql`` package (``/usr/lib/postgresql/<version>/bin``): ``initdb`` (trust auth,
locale C, superuser ``edgebench``) into a fresh temp dir, then ``postgres`` itself on a free loopback
port with its socket in that dir, stopped by its PID (SIGINT: fast shutdown; SIGQUIT if it lingers),
the dir removed. PostgreSQL refuses to run as root (CI runs as root), so as root both run as
``nobody`` through ``setpriv`` (which execs, so the PID is the postmaster's) and the dir is given to
it. ``fsync=off``: the tests kill collectors, never the server.

    with PostgresServer.start_new() as server:
        url = server.create_database("t1")   # postgresql://edgebench@127.0.0.1:PORT/t1

The pytest fixtures ``postgres_server`` (one per session) and ``pg_url`` (a fresh database per test)
are defined here; a test module imports them (or conftest lists ``testkit.postgres`` as a plugin).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from wire.errors import EdgebenchError

USER = "edgebench"
RUN_AS = "nobody"  # when root: PostgreSQL will not run as root


class PostgresUnavailable(EdgebenchError, RuntimeError):
    """No PostgreSQL server: the binaries are missing (apt-get install postgresql) or it did not start."""


def pg_bindir() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` with initdb and postgres."""
    found = [Path(p).parent for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")]
    found = [d for d in found if (d / "postgres").exists()]
    if not found:
        raise PostgresUnavailable(
            "PostgreSQL is not installed; .ci/run installs it (apt-get install postgresql)"
        )
    return max(found, key=lambda d: int(re.sub(r"\D", "", d.parent.name) or 0))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_user() -> list[str]:
    """The command prefix that drops root (none when not root)."""
    if os.geteuid() != 0:
        return []
    pw = pwd.getpwnam(RUN_AS)
    return ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups", "--"]


@dataclass
class PostgresServer:
    workdir: Path
    port: int
    bindir: Path
    process: subprocess.Popen | None = None
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "postgres.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    @classmethod
    def start_new(cls, *, timeout_s: float = 30.0) -> PostgresServer:
        """initdb into a new temp dir and start the server; PostgresUnavailable without the binaries."""
        bindir = pg_bindir()
        workdir = Path(tempfile.mkdtemp(prefix="edgebench-pg-"))
        if os.geteuid() == 0:
            pw = pwd.getpwnam(RUN_AS)
            os.chown(workdir, pw.pw_uid, pw.pw_gid)
        server = cls(workdir, free_port(), bindir)
        try:
            server._initdb()
            server._start(timeout_s)
        except BaseException:
            server.stop()
            raise
        return server

    def _initdb(self) -> None:
        cmd = [*_as_user(), str(self.bindir / "initdb"), "-D", str(self.workdir / "data"), "-U", USER,
               "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=self.workdir, timeout=120)
        if done.returncode != 0:
            raise PostgresUnavailable(f"initdb failed ({done.returncode}): {done.stderr.strip()[-2000:]}")

    def _start(self, timeout_s: float) -> None:
        import psycopg

        settings = {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.workdir),
            "fsync": "off",
            "full_page_writes": "off",
            "max_connections": "50",
            "shared_buffers": "32MB",
        }
        cmd = [
            *_as_user(),
            str(self.bindir / "postgres"),
            "-D",
            str(self.workdir / "data"),
            "-p",
            str(self.port),
        ]
        for key, value in settings.items():
            cmd += ["-c", f"{key}={value}"]
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise PostgresUnavailable(f"postgres exited ({self.process.returncode}): {self.log_tail()}")
            try:
                psycopg.connect(self.url(), connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise PostgresUnavailable(
                        f"postgres not ready in {timeout_s}s: {self.log_tail()}"
                    ) from None
                time.sleep(0.1)

    def log_tail(self, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-chars:]
        return ""

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name`` (a plain identifier); its URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def stop(self, timeout_s: float = 15.0) -> None:
        """Fast shutdown by PID (SIGINT), immediate (SIGQUIT) after ``timeout_s``; the dir removed."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            for sig, wait_s in ((signal.SIGINT, timeout_s), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, sig)
                try:
                    proc.wait(wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def postgres_server() -> PostgresServer:
    """One server for the session (fails, like the mosquitto fixture, when PostgreSQL is missing)."""
    try:
        server = PostgresServer.start_new()
    except PostgresUnavailable as exc:
        pytest.fail(str(exc))
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database of this test's own on the session's server."""
    name = (
        re.sub(r"[^a-z0-9_]", "_", f"t_{request.node.name}".lower())[:50] + f"_{time.monotonic_ns() % 10**6}"
    )
    return postgres_server.create_database(name)
