"""The end-to-end fault scenarios of tests/test_faults_e2e.py at a larger scale, as a table.

    python bench/faults.py                 # everything: 3 agents, a 9-artifact push, 20,000 streamed results
    python bench/faults.py --quick         # the CI sizes (2 agents, 3 artifacts, 4,000 results)
    python bench/faults.py --only broker-20s --only collector-kill
    python bench/faults.py --list

Real processes throughout: mosquitto (persistence on), `edgebench collector serve` with its default
settings (2 workers on 2 cores), `edgebench agent run` per device, `edgebench fleet push`. Exit code 1 if
any scenario lost or duplicated a result. The device-disk scenario needs root (it mounts a 4 MB tmpfs).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from testkit import fault_scenarios as fs  # noqa: E402
from testkit.fault_fleet import Outcome  # noqa: E402


def _disk(work: Path, scale: fs.Scale) -> Outcome:
    import subprocess

    root = work / "disk"
    root.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4096k", "tmpfs", str(root)], capture_output=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        return fs.disk_too_small(work / "work", replace(scale, devices=1), root)
    finally:
        subprocess.run(["umount", "-l", str(root)], capture_output=True)


def scenarios(quick: bool) -> dict:
    broker_60 = (
        (lambda w, s: fs.broker_outage(w, replace(s, devices=1, artifacts=2), 60.0))
        if quick
        else (lambda w, s: fs.broker_outage(w, s, 60.0))
    )
    out = dict(fs.SCENARIOS)
    out["broker-60s"] = broker_60
    out["disk-too-small"] = _disk
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", action="append", metavar="NAME", help="run only this scenario (repeatable)")
    parser.add_argument("--quick", action="store_true", help="the CI sizes of tests/test_faults_e2e.py")
    parser.add_argument("--list", action="store_true", help="list the scenario names")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    args = parser.parse_args()
    table = scenarios(args.quick)
    if args.list:
        print("\n".join(table))
        return 0
    names = args.only or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)}; one of: {', '.join(table)}")
    scale = fs.CI if args.quick else fs.BENCH
    if "disk-too-small" in names and os.geteuid() != 0 and not args.only:
        names.remove("disk-too-small")
        print("skipping disk-too-small: mounting a tmpfs needs root", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="edgebench-faults-"))
    print(
        f"scale: {scale.devices} agents, {scale.artifacts} artifacts per push, "
        f"{2 * scale.stream_per_device} streamed results (+{2 * scale.stream_resent} sent twice); "
        f"work {work}",
        file=sys.stderr,
    )
    rows: list[Outcome] = []
    for name in names:
        t0 = time.monotonic()
        try:
            out = table[name](work / name, scale)
        except Exception as exc:  # a scenario step that did not happen: a row that says so
            out = Outcome(name, 0, 0, -1, -1, notes=[f"ERROR {type(exc).__name__}: {str(exc)[:300]}"])
        out.seconds = time.monotonic() - t0
        rows.append(out)
        print(out.line(), f"[{out.seconds:.0f} s]", file=sys.stderr, flush=True)
    headers = ["scenario", "produced", "stored unique", "lost", "duplicated", "seconds"]
    cells = [[r.scenario, str(r.produced), str(r.stored), str(r.lost), str(r.duplicated), f"{r.seconds:.0f}"]
             for r in rows]  # fmt: skip
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells:
        print("| " + " | ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)) + " |")
    notes = [
        (r.scenario, n)
        for r in rows
        for n in ([f"{r.absorbed} copies absorbed"] if r.absorbed else []) + r.notes
    ]
    if notes:
        print()
        for scenario, note in notes:
            print(f"- {scenario}: {note[:400]}")
    if not args.keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    bad = [r for r in rows if not r.ok or any(n.startswith(("NOT SETTLED", "ERROR")) for n in r.notes)]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
