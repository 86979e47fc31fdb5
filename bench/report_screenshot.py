"""Render an HTML report in Debian's headless chromium and save a screenshot (to look at).

    python bench/report_screenshot.py REPORT.html SHOT.png [--height 2000]

The rendering lives in testkit/screenshot.py (tests/test_report_html.py uses it too, skipped when
chromium is absent). Exits non-zero when chromium is missing or produced no image.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from testkit.screenshot import screenshot

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
