"""Small real file systems mounted for a test (root only; the test is skipped elsewhere)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def mounted(fstype: str, mount_point: Path, options: str | None = None) -> Iterator[Path]:
    """Mount a fresh ``fstype`` at ``mount_point`` for the duration of the block."""
    mount_point.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip(f"mounting a {fstype} needs root")
    result = subprocess.run(["mount", "-t", fstype, *(["-o", options] if options else []), fstype,
                             str(mount_point)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a {fstype} here: {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)
