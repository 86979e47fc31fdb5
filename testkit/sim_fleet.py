"""Serve a share of the simulated fleet in one process (bench/fleet_sim.py starts several)."""

from __future__ import annotations

import random
import selectors
import time
from dataclasses import replace
from typing import Any

from wire.signing import load_trusted_keys

__all__ = ["serve_devices"]

from testkit.sim_common import SimConfig, SimLoop, SimStats
from testkit.sim_device import SimDevice


def serve_devices(conn: Any, device_specs: list[tuple[str, tuple[str, ...]]], cfg: SimConfig) -> None:
    """One simulator process: connect every device, then obey the pipe until "stop".

    Commands (tuples): ("stats",) -> a SimStats snapshot (without produced ids); ("burst", k) -> every
    device publishes k results; ("stop",) -> shutdown statuses, disconnect, reply the produced ids."""
    loop, stats = SimLoop(), SimStats(devices=len(device_specs))
    keys = load_trusted_keys([cfg.trusted_key])
    devices = [SimDevice(d, tags, cfg, loop, stats, keys) for d, tags in device_specs]
    done = [False]

    def on_command() -> None:
        command = conn.recv()
        if command[0] == "stats":
            snap = replace(stats, produced_ids=[], jobs={k: replace(v) for k, v in stats.jobs.items()})
            snap.connected = sum(d.client.is_connected() for d in devices)
            conn.send(snap)
        elif command[0] == "burst":
            for d in devices:
                for _ in range(command[1]):
                    d.publish_result(None, None)
        elif command[0] == "stop":
            for d in devices:
                d.stopping = True  # type: ignore[attr-defined]
                d.publish_status("offline", "shutdown")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and any(d.client.want_write() for d in devices):
                loop.run_once(0.05)
            for d in devices:
                d.client.disconnect()
            for _ in range(20):
                loop.run_once(0.01)
            conn.send(stats)
            done[0] = True

    loop.sel.register(conn.fileno(), selectors.EVENT_READ, on_command)
    loop.every(1.0, lambda: [c.loop_misc() for c in loop.clients])
    loop.every(5.0, lambda: [d.resend_overdue() for d in devices])
    for i, d in enumerate(devices):
        d.connect()
        loop.every(cfg.heartbeat_s, d.heartbeat, first_s=cfg.heartbeat_s * random.random())
        if i % 20 == 19:
            loop.run_once(0.0)
    while not done[0]:
        loop.run_once(0.2)
