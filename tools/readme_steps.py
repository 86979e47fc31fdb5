"""What tools/readme_outputs.py runs: each README block's commands, in the order they run.

A Step is one ``$ command`` of a README block; the steps share one scratch directory (Scratch) where
`edgebench` runs this tree, tests/data and converter/models are linked in, and a mosquitto listens on
``{port}``. Waits (``before``/``after``) poll the real SQLite files, never a fixed sleep.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from edgebench.broker import MosquittoBroker
from testkit.mqtt_peer import db_count, wait_for

ROOT = Path(__file__).resolve().parents[1]
ELIDED = "..."

INTEGERS = (r"\b\d+\b", "<i>")
VERDICT = (r"\b(un)?stable\b.*$", "<verdict>")


@dataclass(frozen=True)
class Step:
    """One ``$ command`` of README block ``block``, run with bash in the scratch directory.

    ``text`` is shown as is after ``{name}`` substitution (port, job ids), continuation lines included.
    ``shown_as`` rewrites what it printed before anything else (e.g. a password), ``select`` picks the
    lines worth showing (elisions become ``...``), ``masks`` add to tools/readme_outputs.py's MASKS for
    this command, ``unordered`` compares its lines sorted, ``before``/``after`` wait for a condition.
    """

    block: str
    text: str
    background: bool = False
    show_output: bool = True
    shown_as: tuple[tuple[str, str], ...] = ()
    select: Callable[[list[str]], list[str]] | None = None
    masks: tuple[tuple[str, str], ...] = ()
    unordered: bool = False
    before: Callable[[Scratch], None] | None = None
    after: Callable[[Scratch], None] | None = None


@dataclass
class Scratch:
    """The scratch directory, the broker and the background processes of one run."""

    path: Path
    broker: MosquittoBroker
    values: dict[str, str] = field(default_factory=dict)
    children: list[tuple[subprocess.Popen, Path]] = field(default_factory=list)

    @property
    def db(self) -> Path:
        return self.path / "fleet.db"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEBENCH_")}
        env["PATH"] = f"{self.path / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["PYTHONPATH"] = str(ROOT)
        env["PYTHONWARNINGS"] = "ignore"
        env["COLUMNS"] = "200"
        return env


# ------------------------------------------------------------------ selections and waits
def elide(head: int, tail_from: str | None = None) -> Callable[[list[str]], list[str]]:
    """The first ``head`` lines, ``...``, then everything from the first line matching ``tail_from``."""

    def pick(lines: list[str]) -> list[str]:
        start = next((i for i, line in enumerate(lines) if tail_from and re.search(tail_from, line)), None)
        if start is None:
            return lines[:head] + ([ELIDED] if len(lines) > head else [])
        return lines[:head] + ([ELIDED] if start > head else []) + lines[max(start, head) :]

    return pick


def first_table(lines: list[str]) -> list[str]:
    """Up to the first blank line (the first model's table), then ``...``."""
    end = lines.index("") if "" in lines else len(lines)
    return lines[:end] + ([ELIDED] if end < len(lines) else [])


def matching(pattern: str) -> Callable[[list[str]], list[str]]:
    """Only the lines matching ``pattern``; each run of dropped lines becomes one ``...``."""

    def pick(lines: list[str]) -> list[str]:
        out: list[str] = []
        for line in lines:
            if re.search(pattern, line):
                out.append(line)
            elif not out or out[-1] != ELIDED:
                out.append(ELIDED)
        return out

    return pick


def _query(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _must(what: str, predicate: Callable[[], bool], timeout_s: float = 90.0) -> None:
    if not wait_for(predicate, timeout_s):
        raise SystemExit(f"readme_outputs: timed out waiting for {what}")


def collector_ready(s: Scratch) -> None:
    proc, out = s.children[-1]

    def ready() -> bool:
        if proc.poll() is not None:
            raise SystemExit(f"readme_outputs: collector serve exited {proc.returncode}:\n{out.read_text()}")
        return any(line.startswith("collector:") for line in out.read_text(errors="replace").splitlines())

    _must("the collector", ready)


def devices_online(s: Scratch) -> None:
    _must("2 devices online", lambda: db_count(s.db, "SELECT COUNT(*) FROM devices WHERE online = 1") == 2)


def all_stored(s: Scratch) -> None:
    _must(f"{PUSHED} results stored", lambda: db_count(s.db) == PUSHED)
    jobs = [row[0] for row in _query(s.db, "SELECT job_id FROM jobs ORDER BY created_at")]
    s.values.update(job1=jobs[0], job2=jobs[-1])


def outbox_empty(s: Scratch) -> None:
    outbox = s.path / "a1" / "outbox.db"
    _must("a1's outbox to empty", lambda: db_count(outbox, "SELECT COUNT(*) FROM outbox") == 0, 60)


# ------------------------------------------------------------------ the walk-throughs
PUSHED = 2 * 2 * 4  # results of the two pushes: 2 devices x (3 converted artifacts + tiny_mlp.tflite)
PUSH_FLAGS = "--db fleet.db --key keys/collector.key --broker 127.0.0.1:{port} --preset quick"
PUSH = "edgebench fleet push pt/manifest.json tests/data/tiny_mlp.tflite --to {to} \\\n    " + PUSH_FLAGS
PUSH_LINES = matching(r"^pushing|^job | done ")

STEPS: tuple[Step, ...] = (
    Step("keys", "edgebench keys generate --out keys", masks=((r"key id .*", "key id <hex>"),)),
    Step(
        "enroll",
        "edgebench fleet enroll pi-kitchen --broker-host broker.example.lan --no-tls \\\n"
        "    --trusted-key keys/collector.pub --tags pi4,lab --password-file ./edgebench.passwd "
        "--bundle ./pi-kitchen",
        shown_as=((r"--password \S+", "--password ..."),),
    ),
    Step("convert", """echo '[{"pass": "fp16"}, {"pass": "int8_static"}]' > quick.json"""),
    Step(
        "convert",
        "edgebench convert converter/models/digits_cnn.onnx --recipe quick.json \\\n"
        "    --calib converter/models/digits_calib.npz --val converter/models/digits_val.npz --out pt",
        masks=((r" \*", ""), (r"^recommended: \S+", "recommended: <name>"), (r"\bin \d+ s\b", "")),
        select=elide(2, r"^\[timing\]"),
    ),
    Step(
        "bench",
        "edgebench bench tests/data/tiny_mlp.tflite converter/models/digits_cnn.onnx --quick",
        masks=(VERDICT, INTEGERS),
        select=first_table,
    ),
    Step(
        "bench-sweep",
        "edgebench bench pt/fp32.onnx pt/fp16.onnx pt/int8_static.onnx --quick --threads 1,2 \\\n"
        "    --out bench.json",
        masks=(INTEGERS,),
        select=elide(0, r"^comparison"),
    ),
    Step(
        "bench-json",
        "edgebench bench tests/data/tiny_mlp.tflite --quick --json 2>/dev/null "
        '| python3 -c "import json,sys; \\\n'
        "    r=json.load(sys.stdin)[0]; print(r['status'], r['config']['runtime'], r['latency']['p50_ms'], "
        "r['latency']['n'])\"",
        masks=(INTEGERS,),
    ),
    Step(
        "collector",
        "edgebench collector serve --db fleet.db --broker 127.0.0.1:{port} &",
        background=True,
        after=collector_ready,
        select=lambda lines: [line for line in lines if line.startswith("collector:")],  # not its log
    ),
    Step(
        "push",
        "edgebench agent run --device-id pi4-lab-1 --tags pi4,lab --data-dir a1 --broker-host 127.0.0.1 \\\n"
        "    --broker-port {port} --trusted-key keys/collector.pub --max-threads 1 &",
        background=True,
        show_output=False,
    ),
    Step(
        "push",
        "edgebench agent run --device-id pi5-lab-2 --tags pi5,lab --data-dir a2 --broker-host 127.0.0.1 \\\n"
        "    --broker-port {port} --trusted-key keys/collector.pub --max-threads 2 &",
        background=True,
        show_output=False,
        after=devices_online,
    ),
    Step("push", "edgebench fleet devices --db fleet.db", unordered=True),
    Step(
        "push",
        PUSH.replace("{to}", "tag:lab"),
        select=PUSH_LINES,
        unordered=True,
    ),
    Step(
        "jobs",
        PUSH.replace("{to}", "all") + " --profile-ops",
        select=PUSH_LINES,
        unordered=True,
        after=all_stored,
    ),
    Step("jobs", "edgebench fleet jobs --db fleet.db"),
    Step(
        "jobs",
        "edgebench agent status --data-dir a1 --device-id pi4-lab-1",
        before=outbox_empty,
        masks=((r"\d+ confirmed", "<i> confirmed"),),
    ),
    Step(
        "collector",
        "edgebench collector status --db fleet.db          # after the two pushes of step 5",
        masks=((r"^(ingest rate|received|lag) .*", r"\1 <masked>"),),
    ),
    Step(
        "report",
        "edgebench report latency --db fleet.db --max-accuracy-drop 1.0",
        masks=((r"<- ship", ""), (r"ship \S+ \(p50 .*\)", "ship <variant> (<masked>)")),
        unordered=True,
    ),
    Step(
        "report-html",
        "edgebench report latency --db fleet.db --max-accuracy-drop 1.0 --format html --out report.html",
    ),
    Step(
        "compare",
        "edgebench report compare --db fleet.db job:{job1} job:{job2}",
        masks=(INTEGERS,),
        unordered=True,
    ),
    Step(
        "ops",
        "edgebench report ops --db fleet.db --device pi5-lab-2 --top 3",
        masks=((r"\b\w+ \d+%", "<op>"), (r"(<op>, )+<op>", "<ops>")),
        unordered=True,
    ),
)
