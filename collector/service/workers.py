"""Run the collector as one process, or as several worker processes sharing the results stream.

One Python process tops out at a few thousand results/s (paho's network loop, validation and
SQLite share one GIL). With ``workers > 1`` each worker is a full :class:`~collector.ingest.ingestor.Ingestor`
with its own persistent session (``<client_id>-w<i>``) on an MQTT v5 shared subscription
(``$share/<client_id>/edgebench/v1/devices/+/results``); worker 0 also takes status, job events and
chunk requests. Every worker commits its own batches to the same WAL database and acknowledges
only after its commit, so the no-loss/no-duplicate argument holds per worker. Workers die with the
parent (PR_SET_PDEATHSIG), so ``kill -9`` of the service behaves like a crash of the whole service.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import os
import signal
import threading
from dataclasses import replace

from collector.config import CollectorConfig
from collector.ingest.ingestor import IngestError, Ingestor
from wire.errors import EdgebenchError

log = logging.getLogger("edgebench.collector")


class ServeError(EdgebenchError, RuntimeError):
    """The collector could not start or a worker failed."""


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:  # pragma: no cover - not Linux
        pass


def run_ingestor(
    config: CollectorConfig,
    stop: threading.Event,
    *,
    serve_chunks: bool,
    shared_group: str | None,
    control: bool,
    create_db: bool = False,
) -> None:
    chunk_server = None
    if serve_chunks and control:
        from collector.fleet.chunks import ChunkServer

        chunk_server = ChunkServer(config.db)
    ingestor = Ingestor(
        config,
        on_chunk_request=chunk_server.handle if chunk_server else None,
        shared_group=shared_group,
        control=control,
        create_db=create_db,
    )
    if chunk_server is not None:
        chunk_server.attach(ingestor.client)
        ingestor.chunk_counter = chunk_server
    ingestor.start()
    try:
        ingestor.run(stop)
    finally:
        if chunk_server is not None:
            chunk_server.close()


def _worker_main(config: CollectorConfig, index: int, serve_chunks: bool, parent: int, level: int) -> None:
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    logging.basicConfig(level=level, format=f"%(asctime)s w{index} %(levelname)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides
    worker_config = replace(config, client_id=f"{config.client_id}-w{index}")
    try:
        run_ingestor(
            worker_config, stop, serve_chunks=serve_chunks, shared_group=config.client_id, control=index == 0
        )
    except IngestError as exc:
        log.error("%s", exc)
        raise SystemExit(2) from None


def default_workers(config: CollectorConfig) -> int:
    """2 with MQTT 5 on a machine with 2 cores or more, else 1.

    Measured with ``python bench/ingest.py`` on 2 cores (2026-12-02): 1 worker 0.77x the rate of a bare
    paho subscriber (8,242/s), 2 workers 1.19x (12,760/s): paho's loop and validation share one GIL per
    process, and two sessions drain the broker's queue in parallel.
    """
    return 2 if config.broker.mqtt_version == 5 and (os.cpu_count() or 1) >= 2 else 1


def serve(
    config: CollectorConfig,
    stop: threading.Event,
    *,
    workers: int | None = None,
    serve_chunks: bool = True,
    create_db: bool = False,
) -> None:
    """Run until ``stop`` is set. ``workers > 1`` needs MQTT v5 (shared subscriptions); ``None``:
    :func:`default_workers`. ``create_db``: start an empty database where a collector used one that is
    now missing (otherwise ServeError; a first run creates it anyway)."""
    if workers is None:
        workers = default_workers(config)
    if workers < 1:
        raise ServeError("--workers must be >= 1")
    endpoint = None
    if config.metrics_port:  # prometheus_client is imported only then
        from collector.service.metrics import MetricsError, start_metrics

        try:
            endpoint = start_metrics(config, workers)
        except MetricsError as exc:
            raise ServeError(str(exc)) from None
        log.info("metrics on %s", endpoint.url)
    try:
        _serve(config, stop, workers, serve_chunks=serve_chunks, create_db=create_db)
    finally:
        if endpoint is not None:
            endpoint.close()


def _serve(
    config: CollectorConfig, stop: threading.Event, workers: int, *, serve_chunks: bool, create_db: bool
) -> None:
    if workers == 1:
        try:
            run_ingestor(
                config, stop, serve_chunks=serve_chunks, shared_group=None, control=True, create_db=create_db
            )
        except IngestError as exc:
            raise ServeError(str(exc)) from None
        return
    if config.broker.mqtt_version != 5:
        raise ServeError("several workers need MQTT 5 shared subscriptions; use --workers 1 with MQTT 3.1.1")
    try:  # migrate once, in the parent, and fail early with a clear message (the workers find it there)
        Ingestor.check_db(config.db, create=create_db)
    except IngestError as exc:
        raise ServeError(str(exc)) from None
    ctx = mp.get_context("spawn")
    level = logging.getLogger().level
    procs = [
        ctx.Process(
            target=_worker_main, args=(config, i, serve_chunks, os.getpid(), level), name=f"collector-w{i}"
        )
        for i in range(workers)
    ]
    for p in procs:
        p.start()
    failed = None
    try:
        while not stop.wait(0.5):
            dead = [p for p in procs if not p.is_alive()]
            if dead:
                failed = dead[0]
                break
    finally:
        for p in procs:
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            p.join(timeout=15)
            if p.is_alive() and p.pid is not None:
                os.kill(p.pid, signal.SIGKILL)
                p.join(timeout=5)
    if failed is not None:
        raise ServeError(f"worker {failed.name} exited with code {failed.exitcode}")
