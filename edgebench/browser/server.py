"""Serve the browser agent page and its assets from the installed package (stdlib only).

The page is built from ``web/`` into ``edgebench/browser/static/`` by ``npm ci --prefix web && npm run
--prefix web build``; nothing is fetched from a CDN at run time. Every response carries the
cross-origin isolation headers (COOP ``same-origin``, COEP ``require-corp``) that onnxruntime-web's
threaded wasm needs (``SharedArrayBuffer``). A model file given on the command line is served at
``/model/<name>`` for the bare onnxruntime-web loop (``bare.html``).
"""

from __future__ import annotations

import mimetypes
import threading
import urllib.parse
from collections.abc import Iterable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from wire.errors import EdgebenchError

__all__ = ["STATIC_DIR", "BUILD_COMMAND", "PageServer", "PageServerError", "page_url", "check_built"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
BUILD_COMMAND = "npm ci --prefix web && npm run --prefix web build"
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
TYPES = {
    ".wasm": "application/wasm",
    ".mjs": "text/javascript",
    ".js": "text/javascript",
    ".json": "application/json",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css",
    ".map": "application/json",
    ".onnx": "application/octet-stream",
    ".tflite": "application/octet-stream",
}


class PageServerError(EdgebenchError):
    """The page was not built, or the server cannot start."""

    reason = "browser-page"


def check_built(static_dir: Path = STATIC_DIR) -> Path:
    """The static directory with an index.html, or PageServerError saying how to build it."""
    if not (static_dir / "index.html").is_file():
        raise PageServerError(
            f"the browser page is not built ({static_dir}/index.html missing): run {BUILD_COMMAND}"
        )
    return static_dir


def page_url(
    base: str,
    *,
    broker: str | None = None,
    device: str | None = None,
    keys: Iterable[str] = (),
    tags: Iterable[str] = (),
    budget_mb: float | None = None,
    user: str | None = None,
    password: str | None = None,
    threads: int | None = None,
    ep: str | None = None,
    page: str = "index.html",
) -> str:
    """The page's URL with its query parameters (``key`` repeated, ``tags`` comma-separated)."""
    params: list[tuple[str, str]] = []
    for name, value in (("device", device), ("broker", broker)):
        if value:
            params.append((name, value))
    params += [("key", k) for k in keys]
    tags = list(tags)
    if tags:
        params.append(("tags", ",".join(tags)))
    for name, value in (("budget_mb", budget_mb), ("user", user), ("password", password)):
        if value is not None:
            params.append((name, f"{value:g}" if isinstance(value, float) else str(value)))
    if threads is not None:
        params.append(("threads", str(threads)))
    if ep:
        params.append(("ep", ep))
    query = urllib.parse.urlencode(params)
    return f"{base.rstrip('/')}/{page}" + (f"?{query}" if query else "")


class _Handler(SimpleHTTPRequestHandler):
    server: _Server

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        request, client, server = args
        super().__init__(request, client, server, directory=str(server.static_dir), **kwargs)

    def end_headers(self) -> None:
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        self.send_header("Cache-Control", "no-cache")
        super().end_headers()

    def guess_type(self, path: str | Path) -> str:
        suffix = Path(str(path)).suffix.lower()
        return TYPES.get(suffix) or mimetypes.guess_type(str(path))[0] or "application/octet-stream"

    def list_directory(self, path: str | Path) -> None:  # type: ignore[override]
        self.send_error(HTTPStatus.NOT_FOUND, "no directory listings")
        return None

    def translate_path(self, path: str) -> str:
        """A path inside the static directory (or a served model); anything else maps to nowhere."""
        clean = urllib.parse.unquote(urllib.parse.urlsplit(path).path, errors="strict")
        if clean.startswith("/model/"):
            model = self.server.models.get(clean[len("/model/") :])
            return str(model) if model else str(self.server.static_dir / "__edgebench_not_found__")
        root = self.server.static_dir.resolve()
        target = (root / clean.lstrip("/")).resolve()
        if "\0" in clean or (target != root and root not in target.parents):
            return str(root / "__edgebench_not_found__")
        return str(target)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.log is not None:
            self.server.log.append(format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    static_dir: Path
    models: dict[str, Path]
    log: list[str] | None


@dataclass
class PageServer:
    """The page server, in a thread of this process (``serve_forever`` for the CLI)."""

    host: str = "127.0.0.1"
    port: int = 0
    static_dir: Path = STATIC_DIR
    models: list[Path] = field(default_factory=list)
    log: list[str] | None = None
    _httpd: _Server | None = None
    _thread: threading.Thread | None = None

    def bind(self) -> PageServer:
        check_built(self.static_dir)
        for model in self.models:
            if not Path(model).is_file():
                raise PageServerError(f"{model}: no such model file")
        try:
            httpd = _Server((self.host, self.port), _Handler)
        except OSError as exc:
            raise PageServerError(f"cannot listen on {self.host}:{self.port}: {exc.strerror}") from None
        httpd.static_dir = Path(self.static_dir)
        httpd.models = {Path(m).name: Path(m).resolve() for m in self.models}
        httpd.log = self.log
        self._httpd = httpd
        self.port = httpd.server_address[1]
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def model_url(self, model: Path) -> str:
        return f"{self.url}/model/{urllib.parse.quote(Path(model).name)}"

    def start(self) -> PageServer:
        if self._httpd is None:
            self.bind()
        assert self._httpd is not None
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="page-server", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        if self._httpd is None:
            self.bind()
        assert self._httpd is not None
        try:
            self._httpd.serve_forever()
        finally:
            self._httpd.server_close()

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> PageServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
