"""Finding dcmtk's command-line peers, not the Python apps that share their names.

pynetdicom 3 installs console scripts named ``storescu``, ``storescp``, ``echoscu``, ``findscu``, ...
into the environment's ``bin`` folder. With that folder first on PATH (an activated venv, a
container whose PATH starts with the venv), a bare ``storescu`` runs pynetdicom's app, whose options
are not dcmtk's: the benchmarks and the tests then fail with a usage error that names neither tool.
The benchmarks and tests drive dcmtk deliberately (it is the independent peer), so they look it up
here: the first executable of that name on PATH that is not a Python console script.
"""

from __future__ import annotations

import os
from pathlib import Path

INSTALL_HINT = "apt-get install dcmtk"


def _is_python_script(path: Path) -> bool:
    """True for a console script (``#!...python``), the form pip gives pynetdicom's apps."""
    try:
        with open(path, "rb") as fh:
            first_line = fh.readline(256)
    except OSError:
        return False
    return first_line.startswith(b"#!") and b"python" in first_line


def find_dcmtk(name: str) -> str | None:
    """Absolute path of dcmtk's ``name`` on PATH, skipping Python scripts of the same name; or None."""
    for folder in os.environ.get("PATH", os.defpath).split(os.pathsep):
        candidate = Path(folder or ".") / name
        if candidate.is_file() and os.access(candidate, os.X_OK) and not _is_python_script(candidate):
            return str(candidate.resolve())
    return None


def dcmtk(name: str) -> str:
    """Like :func:`find_dcmtk`, but a missing tool is an error that says how to install it."""
    found = find_dcmtk(name)
    if found is None:
        raise FileNotFoundError(f"dcmtk's {name} not found on PATH ({INSTALL_HINT})")
    return found
