"""Device facts: board, CPU, RAM, OS, kernel, Python and runtime versions (root injectable)."""

from __future__ import annotations

import os
import platform
import socket
from importlib import metadata
from pathlib import Path

from agent import __version__
from wire.schema import DeviceInfo

ARM_PARTS = {
    "0xd03": "Cortex-A53",
    "0xd04": "Cortex-A35",
    "0xd05": "Cortex-A55",
    "0xd07": "Cortex-A57",
    "0xd08": "Cortex-A72",
    "0xd09": "Cortex-A73",
    "0xd0b": "Cortex-A76",
    "0xd0c": "Neoverse-N1",
    "0xd41": "Cortex-A78",
    "0xd46": "Cortex-A510",
    "0xd47": "Cortex-A710",
}
RUNTIME_DISTRIBUTIONS = {
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "litert": ("ai-edge-litert",),
    "tflite-runtime": ("tflite-runtime",),
}


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace").replace("\x00", "").strip()
    except OSError:
        return ""


def board_model(root: Path = Path("/")) -> str:
    """/proc/device-tree/model on ARM boards, the DMI product name on PCs, else "unknown"."""
    for rel in ("proc/device-tree/model", "sys/firmware/devicetree/base/model"):
        text = _read(root / rel)
        if text:
            return text
    vendor = _read(root / "sys/class/dmi/id/sys_vendor")
    product = _read(root / "sys/class/dmi/id/product_name")
    joined = " ".join(x for x in (vendor, product) if x)
    return joined or "unknown"


def cpu_model(root: Path = Path("/")) -> str:
    """x86 "model name"; on ARM the core from "CPU part" (the "Model" line there is the board)."""
    text = _read(root / "proc/cpuinfo")
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields and value.strip():
            fields[key.strip()] = value.strip()
    if "model name" in fields:
        return fields["model name"]
    part = fields.get("CPU part", "").lower()
    if part:
        return ARM_PARTS.get(part, f"ARM implementer {fields.get('CPU implementer', '?')} part {part}")
    return fields.get("Hardware") or fields.get("cpu model") or platform.processor() or "unknown"


def cpu_cores(root: Path = Path("/")) -> int:
    text = _read(root / "proc/cpuinfo")
    count = sum(1 for line in text.splitlines() if line.startswith("processor"))
    return count or os.cpu_count() or 0


def ram_mb(root: Path = Path("/")) -> float:
    for line in _read(root / "proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return round(int(line.split()[1]) / 1024.0, 1)
    return 0.0


def os_name(root: Path = Path("/")) -> str:
    for line in _read(root / "etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.partition("=")[2].strip().strip('"')
    return platform.system()


def kernel(root: Path = Path("/")) -> str:
    text = _read(root / "proc/sys/kernel/osrelease")
    return text or platform.release()


def runtime_versions() -> dict[str, str]:
    """Installed runtimes, by distribution metadata (imports nothing)."""
    found: dict[str, str] = {}
    for name, dists in RUNTIME_DISTRIBUTIONS.items():
        for dist in dists:
            try:
                found[name] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return found


def device_info(
    device_id: str | None = None, tags: tuple[str, ...] = (), root: Path = Path("/")
) -> DeviceInfo:
    root = Path(root)
    hostname = socket.gethostname()
    return DeviceInfo(
        device_id=device_id or hostname,
        hostname=hostname,
        board=board_model(root),
        arch=platform.machine(),
        cpu_model=cpu_model(root),
        cpu_cores=cpu_cores(root),
        ram_mb=ram_mb(root),
        os=os_name(root),
        kernel=kernel(root),
        python=platform.python_version(),
        agent_version=__version__,
        runtimes=runtime_versions(),
        tags=tuple(tags),
    )
