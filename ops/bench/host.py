"""One line naming the machine a benchmark ran on: its CPU, cores, kernel and the file system it wrote to.

The ingest ratios depend on the host more than on the code: the same listener code measured 0.41-0.72x
storescp on one 2-core VM (Intel) and 0.91-1.26x on another (AMD), because storescp's cost per instance and
the disk's flush latency differ between them. A figure without its host cannot be compared with another, so
the benchmark prints this line beside its table.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, or what ``platform`` knows where that cannot be read."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def file_system_of(folder: Path) -> str:
    """``<type> (<device> at <mount point>, <options>)`` of the file system holding ``folder``, as util-linux's
    ``findmnt`` reports it; ``unknown file system`` where findmnt is absent or says nothing."""
    findmnt = shutil.which("findmnt")
    if findmnt is None:
        return "unknown file system (findmnt not found: apt-get install util-linux)"
    result = subprocess.run([findmnt, "--json", "-o", "FSTYPE,SOURCE,TARGET,OPTIONS", "-T", str(folder)],
                            capture_output=True, text=True, check=False)
    try:
        mount = json.loads(result.stdout)["filesystems"][0]
        return f"{mount['fstype']} ({mount['source']} at {mount['target']}, {mount['options']})"
    except (ValueError, KeyError, IndexError):
        return "unknown file system"


def describe_host(folder: Path) -> str:
    """``host: <CPU>, <n> cores, <kernel>; <folder> on <file system>``."""
    return (f"host: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
            f"{folder} on {file_system_of(folder)}")
