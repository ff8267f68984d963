"""Real inputs for the output builders: NY-SBU CT slices as one series of one study, and the CR."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom
import pytest

from ops.bench.series import build_ct_series


@pytest.fixture(scope="session")
def require_dciodvfy() -> None:
    if shutil.which("dciodvfy") is None:
        pytest.skip("dciodvfy (dicom3tools) is not installed: apt-get install dicom3tools")


@pytest.fixture(scope="session")
def ct_series(tmp_path_factory: pytest.TempPathFactory, axial_ct_files: list[Path]) -> list[pydicom.Dataset]:
    """Six real NY-SBU axial ORIGINAL slices re-identified as one series of one study.

    The shared data holds one or two slices per patient, each its own study; a result is about one
    study, so the slices are given one study and series (pixels and acquisition attributes stay real).
    """
    originals = [p for p in axial_ct_files if "ORIGINAL" in pydicom.dcmread(p, stop_before_pixels=True).ImageType]
    if len(originals) < 3:
        pytest.skip("fewer than 3 axial ORIGINAL slices in the shared NY-SBU data")
    paths = build_ct_series(originals[:3], tmp_path_factory.mktemp("ct"), 6)
    return [pydicom.dcmread(path) for path in paths]


@pytest.fixture(scope="session")
def cr(cr_file: Path) -> pydicom.Dataset:
    if not cr_file.is_file():
        pytest.skip(f"CR test image not found at {cr_file}")
    return pydicom.dcmread(cr_file)
