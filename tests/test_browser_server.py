"""`edgebench browser serve`: real HTTP requests against the page server (a built page is faked by files)."""

from __future__ import annotations

import http.client
import urllib.parse
from pathlib import Path

import pytest

from edgebench.browser.server import BUILD_COMMAND, PageServer, PageServerError, check_built, page_url


@pytest.fixture
def static(tmp_path: Path) -> Path:
    root = tmp_path / "static"
    (root / "ort").mkdir(parents=True)
    (root / "index.html").write_text("<html>agent</html>")
    (root / "agent.js").write_text("console.log(1)")
    (root / "ort" / "ort-wasm-simd-threaded.wasm").write_bytes(b"\0asm\1\0\0\0")
    (root / "ort" / "ort.mjs").write_text("export {}")
    (tmp_path / "secret.txt").write_text("outside")
    return root


def _get(server: PageServer, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def test_serves_with_isolation_headers_and_types(static: Path, tmp_path: Path) -> None:
    model = tmp_path / "tiny.onnx"
    model.write_bytes(b"onnx-bytes")
    with PageServer(static_dir=static, models=[model]) as server:
        status, headers, body = _get(server, "/index.html")
        assert status == 200 and body == b"<html>agent</html>"
        assert headers["cross-origin-opener-policy"] == "same-origin"
        assert headers["cross-origin-embedder-policy"] == "require-corp"
        assert headers["content-type"].startswith("text/html")
        assert _get(server, "/ort/ort-wasm-simd-threaded.wasm")[1]["content-type"] == "application/wasm"
        assert _get(server, "/ort/ort.mjs")[1]["content-type"] == "text/javascript"
        assert _get(server, "/agent.js")[1]["content-type"] == "text/javascript"
        status, headers, body = _get(server, server.model_url(model)[len(server.url) :])
        assert status == 200 and body == b"onnx-bytes"
        assert headers["cross-origin-embedder-policy"] == "require-corp"
        assert _get(server, "/model/other.onnx")[0] == 404


@pytest.mark.parametrize(
    "path",
    ["/../secret.txt", "/%2e%2e/secret.txt", "/ort/../../secret.txt", "/%2e%2e%2fsecret.txt", "/ort/", "/"],
)
def test_no_traversal_no_listing(static: Path, path: str) -> None:
    with PageServer(static_dir=static) as server:
        status, _headers, body = _get(server, path)
        assert b"outside" not in body
        if path != "/":
            assert status == 404
        else:
            assert status == 200 and body == b"<html>agent</html>"  # / is index.html


def test_not_built_says_the_npm_command(tmp_path: Path) -> None:
    with pytest.raises(PageServerError, match="npm ci --prefix web"):
        check_built(tmp_path)
    assert BUILD_COMMAND == "npm ci --prefix web && npm run --prefix web build"


def test_page_url_carries_the_parameters() -> None:
    url = page_url(
        "http://127.0.0.1:8765",
        broker="ws://127.0.0.1:9001",
        device="br-1",
        keys=["k1 a", "k2"],
        tags=["lab", "x"],
    )
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert url.startswith("http://127.0.0.1:8765/index.html?")
    assert query == {
        "device": ["br-1"],
        "broker": ["ws://127.0.0.1:9001"],
        "key": ["k1 a", "k2"],
        "tags": ["lab,x"],
    }
    assert "budget_mb=5" in page_url("http://h:1", budget_mb=5.0)


def test_missing_model_is_one_line(static: Path, tmp_path: Path) -> None:
    with pytest.raises(PageServerError, match="no such model file"):
        PageServer(static_dir=static, models=[tmp_path / "nope.onnx"]).bind()
