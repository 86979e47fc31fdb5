"""Chunk assembly, resume, verification and the LRU cache (in-process chunk source; MQTT in service tests)."""

from __future__ import annotations

import hashlib
import os
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.jobs.chunk_fetch import ArtifactCache, ArtifactFetcher, DeliveryError
from wire.schema import ArtifactChunk, ArtifactRef, ChunkRequest


def ref_for(data: bytes, name: str = "m.onnx", sha: str | None = None) -> ArtifactRef:
    return ArtifactRef(
        name=name, sha256=sha or hashlib.sha256(data).hexdigest(), size_bytes=len(data), format="onnx"
    )


class Source:
    """Answers chunk requests from memory, on another thread, optionally losing chunks once."""

    def __init__(self, data: bytes, lose_once: set[int] = frozenset(), sha: str | None = None):
        self.data, self.lose = data, set(lose_once)
        self.sha = sha or hashlib.sha256(data).hexdigest()
        self.requests: list[ChunkRequest] = []
        self.fetcher: ArtifactFetcher | None = None

    def __call__(self, request: ChunkRequest) -> None:
        self.requests.append(request)
        threading.Thread(target=self._serve, args=(request,), daemon=True).start()

    def _serve(self, request: ChunkRequest) -> None:
        size = request.chunk_size
        total = -(-len(self.data) // size)
        for i in request.indices or range(total):
            if i in self.lose:
                self.lose.discard(i)
                continue
            chunk = ArtifactChunk(self.sha, i, total, len(self.data), self.data[i * size : (i + 1) * size])
            self.fetcher.on_chunk(chunk.to_bytes())


def make(tmp_path, source: Source, max_bytes: int = 10**7, **kw) -> tuple[ArtifactCache, ArtifactFetcher]:
    cache = ArtifactCache(tmp_path / "cache", max_bytes)
    opts = dict(chunk_size=1024, chunk_timeout_s=0.3, retries=2)
    opts.update(kw)
    fetcher = ArtifactFetcher(cache, "pi-1", source, **opts)
    source.fetcher = fetcher
    return cache, fetcher


def test_fetch_verify_adopt(tmp_path):
    data = os.urandom(5000)
    source = Source(data)
    cache, fetcher = make(tmp_path, source)
    ref = ref_for(data)
    part = fetcher.fetch(ref)
    final = cache.adopt(part, ref)
    assert final.read_bytes() == data
    assert final.name == f"{ref.sha256}.onnx"
    assert not part.exists() and list(cache.partial_dir.iterdir()) == []
    assert fetcher.cached(ref) == final
    assert len(source.requests) == 1 and source.requests[0].indices == ()


def test_lost_chunks_are_re_requested_and_only_those(tmp_path):
    data = os.urandom(10 * 1024 + 17)
    source = Source(data, lose_once={1, 7, 10})
    cache, fetcher = make(tmp_path, source)
    ref = ref_for(data)
    final = cache.adopt(fetcher.fetch(ref), ref)
    assert final.read_bytes() == data
    assert [r.indices for r in source.requests] == [(), (1, 7, 10)]


def test_no_chunks_at_all_fails_after_retries(tmp_path):
    data = os.urandom(3000)
    source = Source(data, lose_once={0, 1, 2})
    source.lose_forever = True
    cache, fetcher = make(tmp_path, lambda r: source.requests.append(r), retries=2)
    with pytest.raises(DeliveryError, match="3 of 3 chunks missing after 2 re-requests"):
        fetcher.fetch(ref_for(data))
    assert len(source.requests) == 3
    assert list(cache.partial_dir.iterdir()) == []


def test_wrong_sha256_rejected_and_nothing_cached(tmp_path):
    data = os.urandom(4000)
    claimed = hashlib.sha256(b"something else").hexdigest()
    source = Source(data, sha=claimed)
    cache, fetcher = make(tmp_path, source)
    ref = ref_for(data, sha=claimed)
    part = fetcher.fetch(ref)
    with pytest.raises(DeliveryError, match="sha256 mismatch"):
        cache.adopt(part, ref)
    assert cache.entries() == [] and not part.exists()


def test_inconsistent_chunks_ignored(tmp_path):
    data = os.urandom(3000)
    _cache, fetcher = make(tmp_path, lambda r: None)
    ref = ref_for(data)
    done = threading.Event()

    def run():
        with pytest.raises(DeliveryError, match="cancelled"):
            fetcher.fetch(ref, cancel=done)

    t = threading.Thread(target=run)
    t.start()
    time.sleep(0.1)
    wrong_total = ArtifactChunk(ref.sha256, 0, 5, len(data), data[:1024])
    short = ArtifactChunk(ref.sha256, 0, 3, len(data), data[:100])
    assert fetcher.on_chunk(wrong_total.to_bytes()) is False
    assert fetcher.on_chunk(short.to_bytes()) is False
    assert fetcher.on_chunk(b"garbage") is False
    assert fetcher.on_chunk(ArtifactChunk("cd" * 32, 0, 1, 1, b"x").to_bytes()) is False  # not being fetched
    done.set()
    t.join(5)


def test_too_large_for_limits(tmp_path):
    _cache, fetcher = make(tmp_path, lambda r: None, max_bytes=10_000, max_artifact_bytes=5_000)
    with pytest.raises(DeliveryError, match="exceeds the limit"):
        fetcher.fetch(ArtifactRef(name="big.onnx", sha256="ab" * 32, size_bytes=6_000, format="onnx"))


def test_lru_eviction_by_size_keeps_recently_used(tmp_path):
    cache = ArtifactCache(tmp_path / "cache", max_bytes=2500)
    refs = []
    for i in range(3):
        data = bytes([i]) * 1000
        ref = ref_for(data)
        part = cache.partial_dir / f"{ref.sha256}.part"
        part.write_bytes(data)
        path = cache.adopt(part, ref)
        os.utime(path, (1000 + i, 1000 + i))  # deterministic use times
        refs.append(ref)
        if i == 1:
            os.utime(cache.path_for(refs[0].sha256, "onnx"), (2000, 2000))  # artifact 0 used most recently
    present = {p.name[:64] for p in cache.entries()}
    assert present == {refs[0].sha256, refs[2].sha256}  # artifact 1 was the least recently used
    assert cache.total_bytes() <= 2500


def test_corrupt_cached_copy_removed(tmp_path):
    cache = ArtifactCache(tmp_path / "cache", 10**6)
    data = b"x" * 100
    ref = ref_for(data)
    part = cache.partial_dir / "a.part"
    part.write_bytes(data)
    path = cache.adopt(part, ref)
    path.write_bytes(b"y" * 100)
    with pytest.raises(DeliveryError, match="corrupt"):
        cache.verify(path, ref)
    assert cache.get(ref.sha256, "onnx") is None


@settings(max_examples=25, deadline=None)
@given(data=st.binary(min_size=1, max_size=5000), lose=st.sets(st.integers(0, 4), max_size=3))
def test_property_any_bytes_any_losses_roundtrip(tmp_path_factory, data, lose):
    tmp = tmp_path_factory.mktemp("prop")
    source = Source(data, lose_once=lose)
    cache, fetcher = make(tmp, source, chunk_timeout_s=0.1, retries=3)
    ref = ref_for(data)
    assert cache.adopt(fetcher.fetch(ref), ref).read_bytes() == data
