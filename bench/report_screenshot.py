"""Render an HTML report in Debian's headless chromium and save a screenshot (to look at).

    python bench/report_screenshot.py REPORT.html SHOT.png [--height 2000]

Also used by tests/test_report_html.py (skipped when chromium is absent). Exits non-zero when
chromium is missing or produced no image.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(
    html_file: Path, png: Path, *, width: int = 1400, height: int = 2000, timeout_s: float = 90
) -> Path:
    exe = chromium_path()
    if exe is None:
        raise RuntimeError("chromium is not installed (apt-get install chromium)")
    with tempfile.TemporaryDirectory(prefix="edgebench-chromium-") as profile:
        cmd = [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            f"--window-size={width},{height}",
            "--hide-scrollbars",
            Path(html_file).resolve().as_uri(),
        ]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            _, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise RuntimeError(f"chromium did not finish within {timeout_s} s") from None
    if not png.exists() or png.stat().st_size == 0:
        raise RuntimeError(f"chromium wrote no screenshot (exit {proc.returncode}): {err.decode()[-500:]}")
    return png


if __name__ == "__main__":
    args = sys.argv[1:]
    height = 2000
    if "--height" in args:
        i = args.index("--height")
        height = int(args[i + 1])
        del args[i : i + 2]
    if len(args) != 2:
        sys.exit(__doc__)
    try:
        out = screenshot(Path(args[0]), Path(args[1]), height=height)
    except RuntimeError as exc:
        sys.exit(f"error: {exc}")
    print(f"wrote {out} ({out.stat().st_size:,} bytes)")
