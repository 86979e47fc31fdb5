"""Regenerate (or --check) the example outputs in README.md by running the commands on tiny inputs.

A fenced block right after ``<!-- output: NAME -->`` is generated: the script runs the commands of NAME
(STEPS in tools/readme_steps.py) in a scratch directory, against a real mosquitto on a free loopback
port, and writes ``$ command`` plus what it printed. A block after ``<!-- not generated: why -->`` is
hand-written; any other block showing ``$ edgebench`` is an error, so a pasted output cannot slip in.

README shows the real values of the last regeneration. ``--check`` runs everything again and compares
after masking what changes from run to run (MASKS: times, latencies and other decimals, ids and hashes,
ports, pids, byte counts; plus each command's own masks, and lines sorted where the order is not
deterministic); it prints a unified diff of the masked texts and exits 1 when they differ.

    python3 tools/readme_outputs.py            # rewrite README.md's generated blocks
    python3 tools/readme_outputs.py --check    # exit 1 (with a diff) when README.md is stale
"""

from __future__ import annotations

import argparse
import difflib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
sys.path[:0] = [str(ROOT), str(ROOT / "tools")]

from readme_steps import STEPS, Scratch, Step  # noqa: E402

from edgebench.broker import MosquittoBroker, stop_process  # noqa: E402

OUTPUT_MARK = re.compile(r"^<!-- output: (?P<name>[\w-]+) -->$")
HAND_MARK = re.compile(r"^<!-- not generated: .+ -->$")
FENCE = "```"

# (pattern, replacement) applied to every line before comparing, in this order
MASKS: tuple[tuple[str, str], ...] = (
    # the host timing verdict beside a speedup's CI flips between runs when the CI touches 1.0
    (r"(\(\d+\.\d+-\d+\.\d+\)\s+)(?:faster|slower|same)\b", r"\1<verdict>"),
    # the drift sampling stride follows the run count a time-bound measurement reached
    (r"\bevery \d+(?:st|nd|rd|th) run\b", "every <k>th run"),
    (r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", "<id>"),
    (r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z", "<time>"),
    (r"\b[0-9a-f]{8,}\b", "<hex>"),
    (r"127\.0\.0\.1:\d+", "<loopback>:<port>"),
    (r"(--broker-port |--port )\d+", r"\1<port>"),
    (r"\bpid \d+(?:, \d+)*", "pid <n>"),
    (r"[-+]?\d+(?:,\d{3})*\.\d+", "<n>"),
    (r"\b\d{1,3}(?:,\d{3})+\b", "<n>"),
    (r"-{2,}", "--"),  # table rules follow the column widths
    (r"\s+", " "),  # and so does the padding
)


# ------------------------------------------------------------------ running
def prepare(path: Path) -> None:
    """The scratch directory: repository inputs linked in, an `edgebench` on PATH that runs this tree."""
    (path / "tests").mkdir()
    (path / "tests" / "data").symlink_to(ROOT / "tests" / "data")
    (path / "converter").mkdir()
    (path / "converter" / "models").symlink_to(ROOT / "converter" / "models")
    (path / "bin").mkdir()
    wrapper = path / "bin" / "edgebench"
    wrapper.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m edgebench "$@"\n')
    wrapper.chmod(0o755)


def run_step(step: Step, s: Scratch) -> tuple[str, list[str]]:
    """Run one step; return the command as shown and the lines it printed (stdout and stderr)."""
    shown = re.sub(r"\{(\w+)\}", lambda m: s.values.get(m[1], m[0]), step.text)
    if step.before:
        step.before(s)
    command = shown[:-1].rstrip() if step.background else shown
    if step.background:
        out = s.path / f"background-{len(s.children)}.out"
        log = open(out, "ab")  # noqa: SIM115 - kept open for the child's lifetime
        proc = subprocess.Popen(
            ["bash", "-c", "exec " + command], cwd=s.path, env=s.env(), stdout=log, stderr=log,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        s.children.append((proc, out))
        if step.after:
            step.after(s)
        text = out.read_text(errors="replace") if step.show_output else ""
    else:
        done = subprocess.run(
            ["bash", "-c", command], cwd=s.path, env=s.env(), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, timeout=600, check=False,
        )  # fmt: skip
        text = done.stdout.decode(errors="replace")
        if done.returncode != 0:
            raise SystemExit(f"readme_outputs: `{command}` exited {done.returncode}:\n{text}")
        if step.after:
            step.after(s)
    text = text.replace(str(s.path), "$SCRATCH")
    for pattern, repl in step.shown_as:
        text = re.sub(pattern, repl, text)
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return shown, (step.select(lines) if step.select else lines)


def run_all(trace: bool = False) -> dict[str, list[tuple[str, list[str]]]]:
    """Run every step in order; block name -> [(command, output lines)]. ``trace``: print each output."""
    blocks: dict[str, list[tuple[str, list[str]]]] = {}
    with tempfile.TemporaryDirectory(prefix="readme-") as tmp:
        path = Path(tmp)
        prepare(path)
        broker = MosquittoBroker(workdir=path / ".mosquitto").start()
        s = Scratch(path, broker, values={"port": str(broker.port)})
        try:
            for step in STEPS:
                started = time.monotonic()
                blocks.setdefault(step.block, []).append(run_step(step, s))
                if trace:
                    print("\n".join(render(blocks[step.block][-1:])), file=sys.stderr)
                print(f"[{time.monotonic() - started:5.1f} s] {step.text.splitlines()[0]}", file=sys.stderr)
        finally:
            for proc, _ in reversed(s.children):
                stop_process(proc, signal.SIGTERM, 20)
            broker.stop()
            shutil.rmtree(path / ".mosquitto", ignore_errors=True)
    return blocks


# ------------------------------------------------------------------ README blocks
def render(commands: list[tuple[str, list[str]]]) -> list[str]:
    lines: list[str] = []
    for shown, output in commands:
        lines += ("$ " + shown).splitlines() + output
    return lines


def find_blocks(text: list[str]) -> dict[str, tuple[int, int]]:
    """Generated block name -> (first, last) line index of its content; refuses unmarked outputs."""
    blocks: dict[str, tuple[int, int]] = {}
    i = 0
    while i < len(text):
        if not text[i].startswith(FENCE):
            i += 1
            continue
        end = next((j for j in range(i + 1, len(text)) if text[j].startswith(FENCE)), len(text))
        mark = text[i - 1] if i else ""
        if m := OUTPUT_MARK.match(mark):
            blocks[m["name"]] = (i + 1, end)
        elif not HAND_MARK.match(mark) and any(ln.startswith("$ edgebench") for ln in text[i + 1 : end]):
            raise SystemExit(f"README.md:{i + 1}: a `$ edgebench` block without an output/not generated mark")
        i = end + 1
    return blocks


def split_commands(lines: list[str]) -> list[list[str]]:
    """A block's lines cut at each `$ ` line (a command's continuation lines stay with it)."""
    parts: list[list[str]] = []
    for k, line in enumerate(lines):
        continued = k > 0 and lines[k - 1].endswith("\\") and parts and parts[-1][-1] == lines[k - 1]
        if line.startswith("$ ") and not continued:
            parts.append([line])
        elif parts:
            parts[-1].append(line)
    return parts


def masked(lines: list[str], step: Step) -> list[str]:
    out = []
    for line in lines:
        for pattern, repl in (*MASKS[:-2], *step.masks, *MASKS[-2:]):
            line = re.sub(pattern, repl, line)
        out.append(line.strip())
    return sorted(out) if step.unordered else out


def compare(readme: list[str], blocks: dict[str, list[tuple[str, list[str]]]]) -> list[str]:
    """Unified diffs (masked) of every generated block that differs from what the commands printed."""
    where = find_blocks(readme)
    diff: list[str] = []
    for name in sorted(set(where) ^ set(blocks)):
        diff.append(f"block {name!r}: {'not in README.md' if name in blocks else 'no such output in STEPS'}")
    for name, commands in blocks.items():
        if name not in where:
            continue
        first, last = where[name]
        have = split_commands(readme[first:last])
        steps = [step for step in STEPS if step.block == name]
        want = [("$ " + shown).splitlines() + output for shown, output in commands]
        for k, step in enumerate(steps):
            old = masked(have[k], step) if k < len(have) else []
            new = masked(want[k], step)
            diff += difflib.unified_diff(
                old, new, f"README.md {name}[{k}]", f"printed {name}[{k}]", lineterm=""
            )
        if len(have) > len(steps):
            diff.append(
                f"block {name!r}: {len(have) - len(steps)} command(s) more in README.md than in STEPS"
            )
    return diff


def rewrite(readme: list[str], blocks: dict[str, list[tuple[str, list[str]]]]) -> list[str]:
    where = find_blocks(readme)
    for name, (first, last) in sorted(where.items(), key=lambda item: -item[1][0]):
        if name in blocks:
            readme[first:last] = render(blocks[name])
    return readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing; exit 1 on a diff")
    parser.add_argument("--print", action="store_true", help="print the generated blocks, write nothing")
    args = parser.parse_args(argv)
    readme = README.read_text().splitlines()
    if not args.print:
        find_blocks(readme)  # refuse an unmarked block before running anything
    blocks = run_all(trace=args.print)
    if args.print:
        for name, commands in blocks.items():
            print(f"<!-- output: {name} -->\n{FENCE}\n" + "\n".join(render(commands)) + f"\n{FENCE}\n")
        return 0
    if args.check:
        diff = compare(readme, blocks)
        if diff:
            print("\n".join(diff))
            print("README.md is stale: run python3 tools/readme_outputs.py", file=sys.stderr)
            return 1
        print("README.md outputs match the commands (masked)", file=sys.stderr)
        return 0
    README.write_text("\n".join(rewrite(readme, blocks)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
