"""dcmtk's storescp with the listener's durability, for the ingest benchmark's reference row.

The issue's yardstick, storescp writing to disk, never fsyncs: its files may still be in the page
cache when it answers Success. Whether a ratio against it is reachable with the durability rule kept
depends on the disk, so the benchmark also runs the same storescp with every received file and its
folder fsynced before it answers (``fsync_on_close.c``, preloaded). That row is what dcmtk's own C
code reaches on this machine under the listener's rule, less the database commit.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SOURCE = Path(__file__).with_name("fsync_on_close.c")


def c_compiler() -> str | None:
    """The machine's C compiler, or None."""
    return shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def build_fsync_shim(folder: Path) -> tuple[Path | None, str]:
    """Compile the shim into ``folder``; its path, or None and why not (no C compiler, a failed build).

    Built where it runs rather than shipped: a shared object must match the machine's C library.
    """
    compiler = c_compiler()
    if compiler is None:
        return None, "no C compiler (apt-get install gcc) to build ops/bench/fsync_on_close.c"
    target = folder / "fsync_on_close.so"
    result = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-o", str(target), str(SOURCE), "-ldl"],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return None, f"{Path(compiler).name} could not build {SOURCE.name}: {result.stderr.strip()[-300:]}"
    return target, ""
