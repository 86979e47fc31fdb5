"""README.md's generated example outputs match what the commands print today (tools/readme_outputs.py).

The check runs every walk-through command on tiny inputs (a real mosquitto on a free loopback port, real
SQLite files, two local agents) and compares after masking what changes between runs; a failure prints
the masked unified diff. Fix it by running `python3 tools/readme_outputs.py` and reviewing the diff.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "readme_outputs.py"


@pytest.mark.slow
def test_readme_outputs_match_the_commands() -> None:
    done = subprocess.run(
        [sys.executable, str(TOOL), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, f"README.md is stale:\n{done.stdout}\n{done.stderr[-3000:]}"


def _tool():
    sys.path[:0] = [str(ROOT / "tools")]
    try:
        import readme_outputs
    finally:
        sys.path.remove(str(ROOT / "tools"))
    return readme_outputs


def test_every_edgebench_block_is_marked() -> None:
    """A pasted `$ edgebench` block needs <!-- output: NAME --> (generated) or <!-- not generated: why -->."""
    tool = _tool()
    readme = (ROOT / "README.md").read_text().splitlines()
    assert set(tool.find_blocks(readme)) == {step.block for step in tool.STEPS}


def test_masks_hide_run_to_run_figures_but_not_drift() -> None:
    """README's own blocks, as if printed again with other times, ports and latencies: no diff; the
    collector's worker count changed by hand: a diff."""
    tool = _tool()
    readme = (ROOT / "README.md").read_text().splitlines()
    printed = {}
    for name, (first, last) in tool.find_blocks(readme).items():
        commands = []
        for part in tool.split_commands(readme[first:last]):
            n = next(i for i, line in enumerate(part) if not line.endswith("\\")) + 1
            shown = "\n".join(part[:n])[2:].replace("127.0.0.1:", "127.0.0.1:1")
            commands.append(
                (shown, [re.sub(r"(?<![\d.:])\d+\.\d+(?![\d.])", "9.99", line) for line in part[n:]])
            )
        printed[name] = commands
    assert tool.compare(readme, printed) == []
    collector = printed["collector"][0][1]
    collector[0] = collector[0].replace("2 workers", "1 worker")
    diff = tool.compare(readme, printed)
    assert any("1 worker" in line for line in diff), diff
