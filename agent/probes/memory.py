"""Memory by phase, read from /proc/self/status of the process that runs the model.

Run it in a fresh process per configuration (agent.measure.worker does): a child's ``ru_maxrss`` can
report its big parent, while ``VmHWM`` starts fresh after exec and is reset by writing ``5`` to
``/proc/self/clear_refs``. Phases: baseline (interpreter + agent), after importing the runtime, load peak
(VmHWM over loading the model), inference peak (VmHWM over the runs), RssAnon / RssFile at the end, and
growth (VmRSS after the timed runs minus after warmup: a leak or creep shows here). Where /proc lacks a
field the figure is None; without /proc at all psutil's RSS is used and the method says so.
"""

from __future__ import annotations

from pathlib import Path

from wire.schema import MemoryStats

MB = 1024.0  # status values are in kB


def read_status(proc_self: Path = Path("/proc/self")) -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon, RssFile... in MB (fields absent from this kernel are left out)."""
    out: dict[str, float] = {}
    try:
        text = (proc_self / "status").read_text()
    except OSError:
        return out
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        parts = value.split()
        if sep and len(parts) == 2 and parts[1] == "kB":
            out[key] = int(parts[0]) / MB
    return out


def reset_peak(proc_self: Path = Path("/proc/self")) -> bool:
    try:
        (proc_self / "clear_refs").write_text("5")
        return True
    except OSError:
        return False


class MemoryProbe:
    def __init__(self, proc_self: Path = Path("/proc/self")) -> None:
        self.proc_self = Path(proc_self)
        self.status_ok = bool(read_status(self.proc_self).get("VmRSS"))
        self.resettable = True
        self.values: dict[str, float | None] = {}

    def rss(self) -> float | None:
        if self.status_ok:
            return read_status(self.proc_self).get("VmRSS")
        try:
            import psutil

            return psutil.Process().memory_info().rss / (1024.0 * 1024.0)
        except Exception:
            return None

    def peak(self) -> float | None:
        return read_status(self.proc_self).get("VmHWM") if self.status_ok else None

    def reset(self) -> None:
        if self.status_ok and not reset_peak(self.proc_self):
            self.resettable = False

    def mark(self, phase: str) -> None:
        """Record a phase: baseline, after_import, load_peak, after_warmup, inference_peak, end."""
        if phase in ("load_peak", "inference_peak"):
            self.values[phase] = self.peak() if self.resettable else None
        else:
            self.values[phase] = self.rss()
        if phase == "end" and self.status_ok:
            status = read_status(self.proc_self)
            self.values["rss_anon"] = status.get("RssAnon")
            self.values["rss_file"] = status.get("RssFile")

    def stats(self, fresh_process: bool) -> MemoryStats:
        v = self.values
        if not self.status_ok:
            method = "psutil-rss (no /proc/self/status; no peaks)" if v.get("baseline") else "unavailable"
        elif not self.resettable:
            method = "proc-status-vmrss (clear_refs not writable; no peaks)"
        else:
            method = "proc-status-vmhwm " + (
                "(fresh process)" if fresh_process else "(in-process, shares the caller's heap)"
            )
        growth = None
        if v.get("end") is not None and v.get("after_warmup") is not None:
            growth = v["end"] - v["after_warmup"]  # type: ignore[operator]
        return MemoryStats(
            method=method,
            baseline_rss_mb=_r(v.get("baseline")),
            after_import_rss_mb=_r(v.get("after_import")),
            load_peak_mb=_r(v.get("load_peak")),
            inference_peak_mb=_r(v.get("inference_peak")),
            rss_anon_mb=_r(v.get("rss_anon")),
            rss_file_mb=_r(v.get("rss_file")),
            growth_mb=_r(growth),
        )


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)
