"""A real, small file system that tests can fill: a tmpfs mounted on a tmp directory (needs root).

``SmallDisk.fill()`` writes a filler file until the kernel answers ENOSPC, so whatever lives on the
disk (an outbox, a collector DB, job files) then meets the same "No space left on device" that a full
SD card gives; ``free()`` deletes the filler. Tests skip where mounting is not permitted.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest


class SmallDisk:
    def __init__(self, root: Path, size_kb: int):
        self.root, self.size_kb = root, size_kb
        self._filler = root / ".filler"

    def mount(self) -> SmallDisk:
        self.root.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={self.size_kb}k,mode=0755", "tmpfs", str(self.root)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode})")
        return self

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.root)], capture_output=True)

    def fill(self, leave_bytes: int = 0) -> int:
        """Write until ENOSPC, then give back ``leave_bytes``; returns the filler's size."""
        written = 0
        block = b"\0" * 4096
        with open(self._filler, "ab", buffering=0) as f:
            while True:
                try:
                    written += f.write(block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
            # A partial block may still fit: fill byte by byte-ish so nothing is left.
            for size in (2048, 1024, 512, 256, 64, 1):
                while True:
                    try:
                        written += f.write(b"\0" * size)
                    except OSError:
                        break
            if leave_bytes:
                written = max(0, written - leave_bytes)
                f.truncate(written)
        return written

    def free(self) -> None:
        self._filler.unlink(missing_ok=True)

    def free_bytes(self) -> int:
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs at tmp_path/disk, unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = SmallDisk(tmp_path / "disk", 4096).mount()
    try:
        yield disk
    finally:
        disk.unmount()
