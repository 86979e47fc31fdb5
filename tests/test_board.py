"""Board, energy and device-fact probes against fixture sysfs trees (a Pi 4, a Pi 5, an x86 box with
RAPL, a VM with nothing) and fake vcgencmd scripts: the only fakes, for hardware this machine lacks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.probes.board import (
    BoardProbe,
    BoardSampler,
    board_state,
    parse_pmic,
    parse_throttled,
    wait_for_cooldown,
)
from agent.probes.energy import EnergyMeter
from agent.probes.facts import device_info

SYSFS = Path(__file__).parent / "fixtures" / "sysfs"


def probe_for(name: str, **kw) -> BoardProbe:
    fake = SYSFS / name / "bin" / "vcgencmd"
    return BoardProbe(SYSFS / name, vcgencmd=str(fake) if fake.exists() else None, **kw)


class Ticks:
    """A monotonic clock that only moves when told."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_pi4_thermal_cpufreq_throttled_psi():
    p = probe_for("pi4")
    assert p.temp_c() == pytest.approx(61.317)
    assert p.freq_mhz() == 1500.0 and p.freq_max_mhz() == 1800.0 and p.governor() == "ondemand"
    assert p.throttled() == 0x50005
    assert p.psi_cpu_some_avg10() == 1.5
    state = board_state(p, [p.sample(0.0), p.sample(1.0)], p.cpu_times(), p.cpu_times())
    assert (
        state.throttled_now is True and state.throttled_since_boot is True and state.throttled_bits == 0x50005
    )
    assert state.throttle_method == "vcgencmd get_throttled"
    assert state.temp_start_c == state.temp_max_c == pytest.approx(61.317)
    assert "cpu-thermal" in state.temp_method


def test_vcgencmd_at_most_once_per_second():
    clock = Ticks()
    p = probe_for("pi4", clock=clock)
    for _ in range(5):
        assert p.throttled() == 0x50005
    assert p.vcgencmd_calls == 1
    clock.t += 0.99
    p.throttled()
    assert p.vcgencmd_calls == 1
    clock.t += 0.02
    p.throttled()
    assert p.vcgencmd_calls == 2


def test_pi4_energy_from_ina219_hwmon():
    meter = EnergyMeter(SYSFS / "pi4", probe_for("pi4"))
    assert meter.method == "hwmon:ina219"
    meter.start()
    meter.poll()
    stats = meter.stop(inferences=100, duration_s=2.0)
    assert stats.avg_power_w == pytest.approx(3.45)
    assert stats.joules_per_inference == pytest.approx(3.45 * 2.0 / 100)
    assert stats.method == "hwmon:ina219"


def test_pi5_pmic_rails_power():
    p = probe_for("pi5")
    assert p.throttled() == 0
    assert p.pmic_power_w() == pytest.approx(0.1 * 3.7 + 0.2 * 3.3 + 2.0 * 0.9)
    meter = EnergyMeter(SYSFS / "pi5", p)
    assert meter.method == "vcgencmd-pmic"
    meter.start()
    stats = meter.stop(inferences=10, duration_s=1.0)
    assert stats.avg_power_w == pytest.approx(2.83)
    assert stats.joules_per_inference == pytest.approx(0.283)
    assert "5 V input" in stats.note
    state = board_state(p, [p.sample(0.0)])
    assert state.throttled_now is False and state.throttled_since_boot is False


def test_parsers():
    assert parse_throttled("throttled=0x0\n") == 0
    assert parse_throttled("garbage") is None
    assert parse_pmic("nothing here") is None
    assert parse_pmic(" VDD_CORE_A current(7)=1.5A\n VDD_CORE_V volt(15)=1.0V\n") == pytest.approx(1.5)


def test_x86_rapl_wraparound(tmp_path):
    root = tmp_path / "x86"
    shutil.copytree(SYSFS / "x86", root)
    counter = root / "sys/class/powercap/intel-rapl:0/energy_uj"
    meter = EnergyMeter(root, BoardProbe(root, vcgencmd=None))
    assert meter.method == "rapl"  # the package, not its core sub-zone
    start, top = 262_143_000_000, 262_143_328_850
    meter.start()
    counter.write_text("1000000\n")  # wrapped: (top - start) + 1_000_000 uJ
    meter.poll()
    counter.write_text("3000000\n")  # +2 J
    stats = meter.stop(inferences=4, duration_s=2.0)
    joules = ((top - start) + 1_000_000 + 2_000_000) / 1e6
    assert stats.joules_per_inference == pytest.approx(joules / 4)
    assert stats.avg_power_w == pytest.approx(joules / 2.0)
    p = BoardProbe(root, vcgencmd=None)
    assert p.temp_c() == 45.0 and p.freq_max_mhz() == 4800.0 and p.governor() == "powersave"


def test_vm_has_nothing_and_says_so():
    p = probe_for("vm")
    assert p.temp_c() is None and p.freq_mhz() is None and p.governor() is None and p.throttled() is None
    assert p.psi_cpu_some_avg10() is None
    state = board_state(p, [p.sample(0.0)], (300, 9920), (400, 10920))
    assert state.temp_method == "unavailable" and state.throttle_method == "unavailable"
    assert state.throttled_now is None
    assert state.steal_pct == pytest.approx(10.0)
    meter = EnergyMeter(SYSFS / "vm", p)
    meter.start()
    stats = meter.stop(10, 1.0)
    assert stats.method == "unavailable" and stats.joules_per_inference is None and stats.avg_power_w is None
    assert wait_for_cooldown(p, 50.0) == "cooldown skipped: no temperature sensor"


def test_cooldown_waits_then_gives_up(tmp_path):
    root = tmp_path / "pi5"
    shutil.copytree(SYSFS / "pi5", root)
    temp = root / "sys/class/thermal/thermal_zone0/temp"
    clock, slept = Ticks(), []

    def sleep(s: float) -> None:
        slept.append(s)
        clock.t += s
        if len(slept) == 3:
            temp.write_text("44000\n")

    p = BoardProbe(root, vcgencmd=str(root / "bin/vcgencmd"), clock=clock)
    assert wait_for_cooldown(p, 45.0, sleep=sleep, clock=clock, poll_s=2.0).startswith("cooled to 44.0 C")
    assert len(slept) == 3
    temp.write_text("80000\n")
    assert "gave up" in wait_for_cooldown(p, 45.0, max_wait_s=10, sleep=sleep, clock=clock)


def test_sampler_collects_start_and_end():
    p = probe_for("pi4")
    sampler = BoardSampler(p, EnergyMeter(SYSFS / "pi4", p), interval_s=0.05).start()
    samples = sampler.stop()
    assert len(samples) >= 2
    assert all(s.power_w == pytest.approx(3.45) and s.temp_c == pytest.approx(61.317) for s in samples)


@pytest.mark.parametrize(
    ("name", "board", "cpu", "cores", "ram"),
    [
        ("pi4", "Raspberry Pi 4 Model B Rev 1.4", "Cortex-A72", 4, 3793.1),
        ("pi5", "Raspberry Pi 5 Model B Rev 1.0", "Cortex-A76", 4, 8052.7),
        ("x86", "Dell Inc. OptiPlex 7080", "Intel(R) Core(TM) i7-10700 CPU @ 2.90GHz", 2, 15921.3),
        ("vm", "unknown", "QEMU Virtual CPU version 2.5+", 1, 1982.4),
    ],
)
def test_device_facts(name, board, cpu, cores, ram):
    info = device_info("dev-1", ("lab",), root=SYSFS / name)
    assert info.device_id == "dev-1" and info.tags == ("lab",)
    assert info.board == board and info.cpu_model == cpu and info.cpu_cores == cores
    assert info.ram_mb == pytest.approx(ram, abs=0.1)
    assert info.python and info.runtimes.get("onnxruntime")
