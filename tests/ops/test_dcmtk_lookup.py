"""The benchmarks and tests find dcmtk's peers even where pynetdicom's apps of the same name come first."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ops.dcmtk import dcmtk, find_dcmtk
from tests.conftest import require_tools


def test_skips_pynetdicom_console_scripts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_tools("storescu")
    real = find_dcmtk("storescu")
    assert real is not None
    shadow = tmp_path / "storescu"  # what pip writes for pynetdicom's app in an activated venv
    shadow.write_text("#!/usr/bin/env python3\nfrom pynetdicom.apps.storescu.storescu import main\nmain()\n")
    shadow.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{Path(real).parent}")

    found = dcmtk("storescu")

    assert found == real
    version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30)
    assert "dcmtk" in (version.stdout + version.stderr).lower()


def test_missing_tool_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_dcmtk("storescu") is None
    with pytest.raises(FileNotFoundError, match="apt-get install dcmtk"):
        dcmtk("storescu")
