"""Energy, with the method named on every figure. Where the board has no sensor: "unavailable".

In order of preference:

* ``rapl``: Intel RAPL package counters ``energy_uj`` (CPU package, not the wall), read at start, at every
  1 Hz sample and at the end, so several wraparounds (``max_energy_range_uj``) are handled;
* ``hwmon:<chip>``: INA219/INA226/INA260 power monitors via hwmon ``power1_input`` (microwatts), averaged
  over the samples;
* ``vcgencmd-pmic``: Pi 5 PMIC rails (sum of V*A from ``vcgencmd pmic_read_adc``), averaged over samples;
  the 5 V input conversion losses are not included.

Every figure covers the whole board or package, other processes included: compare runs made on a quiet
device.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from agent.probes.board import BoardProbe
from wire.schema import EnergyStats

INA_CHIPS = ("ina219", "ina226", "ina260", "ina3221", "ina238")


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def rapl_domains(root: Path) -> list[Path]:
    """Top-level package domains (intel-rapl:N), not their sub-zones, with a readable counter."""
    base = root / "sys/class/powercap"
    found = []
    for d in sorted(base.glob("intel-rapl:*")):
        if d.name.count(":") == 1 and _read_int(d / "energy_uj") is not None:
            found.append(d)
    return found


def hwmon_power_sensor(root: Path) -> tuple[str, Path] | None:
    for d in sorted((root / "sys/class/hwmon").glob("hwmon*")):
        try:
            name = (d / "name").read_text().strip().lower()
        except OSError:
            continue
        if name in INA_CHIPS and (d / "power1_input").exists():
            return name, d / "power1_input"
    return None


class EnergyMeter:
    """start() -> poll() (from the sampler, any number of times) -> stop(n) -> EnergyStats."""

    def __init__(
        self,
        root: Path = Path("/"),
        probe: BoardProbe | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        import time

        self.root = Path(root)
        self.probe = probe
        self.clock = clock or time.monotonic
        self._lock = threading.Lock()
        self._rapl = rapl_domains(self.root)
        self._hwmon = None if self._rapl else hwmon_power_sensor(self.root)
        pmic = None
        if not self._rapl and not self._hwmon and probe is not None and probe.vcgencmd:
            pmic = probe.pmic_power_w()
        self._pmic = pmic is not None
        if self._rapl:
            self.method = "rapl"
        elif self._hwmon:
            self.method = f"hwmon:{self._hwmon[0]}"
        elif self._pmic:
            self.method = "vcgencmd-pmic"
        else:
            self.method = "unavailable"
        self._last: list[int] = []
        self._joules = 0.0
        self._powers: list[float] = []
        self._t0 = 0.0

    def _rapl_read(self) -> None:
        for i, d in enumerate(self._rapl):
            now = _read_int(d / "energy_uj")
            if now is None:
                continue
            delta = now - self._last[i]
            if delta < 0:  # the counter wrapped
                delta += _read_int(d / "max_energy_range_uj") or 0
            self._joules += max(delta, 0) / 1e6
            self._last[i] = now

    def start(self) -> None:
        with self._lock:
            self._t0 = self.clock()
            self._joules, self._powers = 0.0, []
            if self._rapl:
                self._last = [_read_int(d / "energy_uj") or 0 for d in self._rapl]
        self.poll()

    def poll(self) -> float | None:
        """Take one reading; returns the instantaneous power in W when the method gives one."""
        with self._lock:
            if self._rapl:
                self._rapl_read()
                return None
            power = None
            if self._hwmon:
                micro = _read_int(self._hwmon[1])
                power = micro / 1e6 if micro is not None else None
            elif self._pmic and self.probe is not None:
                power = self.probe.pmic_power_w()
            if power is not None:
                self._powers.append(power)
            return power

    def stop(self, inferences: int, duration_s: float | None = None) -> EnergyStats:
        self.poll()
        elapsed = duration_s if duration_s is not None else self.clock() - self._t0
        if self.method == "unavailable":
            return EnergyStats(
                method="unavailable", note="no RAPL, INA hwmon or Pi 5 PMIC sensor on this device"
            )
        if self._rapl:
            joules = self._joules
            avg = joules / elapsed if elapsed > 0 else None
            note = f"CPU package energy ({len(self._rapl)} domain(s)), whole package incl. other processes"
        else:
            if not self._powers:
                return EnergyStats(method=self.method, note="the sensor gave no reading")
            avg = sum(self._powers) / len(self._powers)
            joules = avg * elapsed
            note = f"mean of {len(self._powers)} power readings x duration; whole board incl. other processes"
            if self._pmic:
                note += "; PMIC rails only (5 V input losses excluded)"
        per = joules / inferences if inferences > 0 else None
        return EnergyStats(method=self.method, joules_per_inference=per, avg_power_w=avg, note=note)
