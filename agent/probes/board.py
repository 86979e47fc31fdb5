"""Board state from a sysfs/procfs root that tests can point at a fixture tree.

Thermal zones, cpufreq (current/max/governor), ``vcgencmd get_throttled`` and Pi 5
``vcgencmd pmic_read_adc`` (each vcgencmd command at most once per second; a cached answer otherwise),
PSI ``/proc/pressure/cpu`` and steal time from ``/proc/stat``. :class:`BoardSampler` samples at 1 Hz in a
thread during the timed runs. Everything missing reads as ``None`` / "unavailable", never a guess.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from wire.schema import BoardSample, BoardState

THROTTLE_NOW_MASK = 0xF  # under-voltage, arm freq capped, throttled, soft temp limit (now)
THROTTLE_BOOT_MASK = 0xF0000  # the same, since boot
_PMIC_LINE = re.compile(r"^\s*(\S+)_([AV])\s+(?:current|volt)\(\d+\)=([-0-9.eE+]+)[AV]\s*$")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, ValueError):
        return None


def _read_float(path: Path) -> float | None:
    text = _read(path)
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def parse_throttled(text: str) -> int | None:
    """'throttled=0x50005' -> 0x50005."""
    match = re.search(r"throttled=(0x[0-9a-fA-F]+|\d+)", text)
    return int(match.group(1), 0) if match else None


def parse_pmic(text: str) -> float | None:
    """Sum of V*A over the PMIC rails that report both (Pi 5 ``vcgencmd pmic_read_adc``), in watts."""
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in text.splitlines():
        match = _PMIC_LINE.match(line)
        if match:
            rail, kind, value = match.group(1), match.group(2), float(match.group(3))
            (amps if kind == "A" else volts)[rail] = value
    rails = set(amps) & set(volts)
    if not rails:
        return None
    return sum(amps[r] * volts[r] for r in rails)


class BoardProbe:
    def __init__(
        self,
        root: Path = Path("/"),
        vcgencmd: str | None = "auto",
        clock: Callable[[], float] = time.monotonic,
        min_interval_s: float = 1.0,
    ) -> None:
        self.root = Path(root)
        self.vcgencmd = shutil.which("vcgencmd") if vcgencmd == "auto" else vcgencmd
        self.clock = clock
        self.min_interval_s = min_interval_s
        self._cache: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()
        self.vcgencmd_calls = 0

    # ------------------------------------------------------------ vcgencmd (rate limited)
    def _vcgencmd(self, *args: str) -> str | None:
        if not self.vcgencmd:
            return None
        key = " ".join(args)
        with self._lock:
            now = self.clock()
            cached = self._cache.get(key)
            if cached is not None and now - cached[0] < self.min_interval_s:
                return cached[1]
            try:
                out = subprocess.run(
                    [self.vcgencmd, *args], capture_output=True, text=True, timeout=3, check=False
                )
                text = out.stdout if out.returncode == 0 else None
            except (OSError, subprocess.SubprocessError):
                text = None
            self.vcgencmd_calls += 1
            self._cache[key] = (now, text)
            return text

    def throttled(self) -> int | None:
        text = self._vcgencmd("get_throttled")
        return parse_throttled(text) if text else None

    def pmic_power_w(self) -> float | None:
        text = self._vcgencmd("pmic_read_adc")
        return parse_pmic(text) if text else None

    # ------------------------------------------------------------ sysfs
    def thermal_zones(self) -> dict[str, float]:
        zones: dict[str, float] = {}
        for zone in sorted((self.root / "sys/class/thermal").glob("thermal_zone*")):
            milli = _read_float(zone / "temp")
            if milli is None:
                continue
            kind = _read(zone / "type") or zone.name
            zones[f"{zone.name}:{kind}"] = milli / 1000.0
        return zones

    def temp_c(self) -> float | None:
        """The hottest thermal zone (on a Pi that is the SoC's cpu-thermal)."""
        zones = self.thermal_zones()
        return max(zones.values()) if zones else None

    def temp_method(self) -> str:
        zones = self.thermal_zones()
        return "sysfs-thermal (max of " + ", ".join(sorted(zones)) + ")" if zones else "unavailable"

    def _cpufreq(self, name: str) -> str | None:
        return _read(self.root / "sys/devices/system/cpu/cpu0/cpufreq" / name)

    def freq_mhz(self) -> float | None:
        text = self._cpufreq("scaling_cur_freq") or self._cpufreq("cpuinfo_cur_freq")
        try:
            return float(text) / 1000.0 if text else None
        except ValueError:
            return None

    def freq_max_mhz(self) -> float | None:
        text = self._cpufreq("cpuinfo_max_freq") or self._cpufreq("scaling_max_freq")
        try:
            return float(text) / 1000.0 if text else None
        except ValueError:
            return None

    def governor(self) -> str | None:
        return self._cpufreq("scaling_governor")

    def psi_cpu_some_avg10(self) -> float | None:
        text = _read(self.root / "proc/pressure/cpu")
        match = re.search(r"^some .*?avg10=([0-9.]+)", text or "", re.M)
        return float(match.group(1)) if match else None

    def cpu_times(self) -> tuple[int, int] | None:
        """(steal, total) jiffies from the aggregate line of /proc/stat."""
        text = _read(self.root / "proc/stat")
        if not text or not text.startswith("cpu "):
            return None
        fields = [int(x) for x in text.splitlines()[0].split()[1:]]
        steal = fields[7] if len(fields) > 7 else 0
        return steal, sum(fields[:8])

    def sample(self, t_s: float, power_w: float | None = None) -> BoardSample:
        return BoardSample(
            t_s=t_s,
            temp_c=self.temp_c(),
            freq_mhz=self.freq_mhz(),
            power_w=power_w,
            throttled=self.throttled(),
        )


def steal_pct(start: tuple[int, int] | None, end: tuple[int, int] | None) -> float | None:
    if start is None or end is None or end[1] <= start[1]:
        return None
    return 100.0 * (end[0] - start[0]) / (end[1] - start[1])


def board_state(
    probe: BoardProbe,
    samples: list[BoardSample],
    cpu_start: tuple[int, int] | None = None,
    cpu_end: tuple[int, int] | None = None,
) -> BoardState:
    """Summarize the samples (the first is taken at the start of the timed runs, the last at the end)."""
    temps = [s.temp_c for s in samples if s.temp_c is not None]
    freqs = [s.freq_mhz for s in samples if s.freq_mhz is not None]
    bits = [s.throttled for s in samples if s.throttled is not None]
    combined = 0
    for b in bits:
        combined |= b
    return BoardState(
        temp_start_c=temps[0] if temps else None,
        temp_end_c=temps[-1] if temps else None,
        temp_max_c=max(temps) if temps else None,
        temp_method=probe.temp_method(),
        freq_start_mhz=freqs[0] if freqs else None,
        freq_end_mhz=freqs[-1] if freqs else None,
        freq_max_mhz=probe.freq_max_mhz(),
        governor=probe.governor(),
        throttled_now=bool(combined & THROTTLE_NOW_MASK) if bits else None,
        throttled_since_boot=bool(combined & THROTTLE_BOOT_MASK) if bits else None,
        throttled_bits=combined if bits else None,
        throttle_method="vcgencmd get_throttled" if bits else "unavailable",
        psi_cpu_some_avg10=probe.psi_cpu_some_avg10(),
        steal_pct=steal_pct(cpu_start, cpu_end),
        samples=tuple(samples),
    )


class BoardSampler:
    """Samples the board (and the energy meter) every ``interval_s`` in a daemon thread until stopped."""

    def __init__(
        self,
        probe: BoardProbe,
        energy: object | None = None,
        interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.probe, self.energy, self.interval_s, self.clock = probe, energy, interval_s, clock
        self.samples: list[BoardSample] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def _take(self) -> None:
        power = self.energy.poll() if self.energy is not None else None  # type: ignore[attr-defined]
        self.samples.append(self.probe.sample(round(self.clock() - self._t0, 3), power))

    def start(self) -> BoardSampler:
        self._t0 = self.clock()
        self._take()
        self._thread = threading.Thread(target=self._loop, name="edgebench-board-sampler", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._take()

    def stop(self) -> list[BoardSample]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        # the end sample: vcgencmd answers may be cached from <1 s ago, which the rate limit allows
        self._take()
        return self.samples


def wait_for_cooldown(
    probe: BoardProbe,
    below_c: float,
    max_wait_s: float = 300.0,
    poll_s: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Pre-flight: wait until the board is below ``below_c`` and not throttled. Returns what happened."""
    if probe.temp_c() is None:
        return "cooldown skipped: no temperature sensor"
    start = clock()
    while True:
        temp, bits = probe.temp_c(), probe.throttled()
        hot = temp is not None and temp >= below_c
        throttled = bits is not None and bool(bits & THROTTLE_NOW_MASK)
        if not hot and not throttled:
            return f"cooled to {temp:.1f} C after {clock() - start:.0f} s"
        if clock() - start >= max_wait_s:
            return f"cooldown gave up after {max_wait_s:.0f} s at {temp:.1f} C"
        sleep(poll_s)
