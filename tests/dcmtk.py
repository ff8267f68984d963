"""Running dcmtk's command-line peers against the node (loopback only, bounded in time)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

from ops.bench.net import DCMTK_ENV  # noqa: F401 - re-exported for the tests
from ops.dcmtk import dcmtk

# storescu option that proposes each encoding (it proposes uncompressed syntaxes only by default)
PROPOSE = {
    "jpeg-lossless": "-xs",
    "jpeg-ls": "-xt",
    "rle": "-xr",
    "deflate": "-xd",
}

# dcmtk re-encoders, as a PACS or modality would produce such files
ENCODERS: dict[str, list[str]] = {
    "jpeg-lossless": ["dcmcjpeg"],
    "jpeg-ls": ["dcmcjpls"],
    "rle": ["dcmcrle"],
    "deflate": ["dcmconv", "+td"],
}


def echoscu(port: int, *args: str, called: str = "TRIAGE", calling: str = "ECHOSCU",
            timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([dcmtk("echoscu"), "-to", "10", "-aet", calling, "-aec", called, *args, "127.0.0.1", str(port)],
                          capture_output=True, text=True, timeout=timeout, env=DCMTK_ENV)


def storescu(port: int, files: Sequence[Path], *args: str, called: str = "TRIAGE", calling: str = "STORESCU",
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([dcmtk("storescu"), "-to", "20", "-aet", calling, "-aec", called, *args, "127.0.0.1", str(port),
                           *map(str, files)], capture_output=True, text=True, timeout=timeout, env=DCMTK_ENV)


def reencode(source: Path, encoding: str, out: Path) -> Path:
    subprocess.run([*ENCODERS[encoding], str(source), str(out)], check=True, capture_output=True, timeout=60)
    return out
