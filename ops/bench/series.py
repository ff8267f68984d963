"""Realistic test and benchmark studies built from real slices, with fresh UIDs.

The shared NY-SBU data holds one or two real slices per folder, never a whole volume; a PACS sends
whole series. These helpers turn real slices into multi-slice series (new study, series and instance
UIDs, consistent positions and numbers) so tests and benchmarks exercise real pixel data at real
sizes without copying the data set into the repository.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

UID_ROOT = "1.2.826.0.1.3680043.8.498."  # pydicom's root, for UIDs this project generates in tests


def new_uid() -> str:
    return generate_uid(prefix=UID_ROOT)


def build_ct_series(
    sources: Sequence[Path],
    out_dir: Path,
    count: int,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 2,
    spacing_mm: float = 1.25,
    patient_name: str | None = None,
    patient_id: str | None = None,
) -> list[Path]:
    """Write ``count`` slices cycling through ``sources`` as one axial series; return their paths.

    Each slice keeps its real pixel data and acquisition attributes; identity and geometry are new.
    """
    if not sources:
        raise ValueError("no source slices given")
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or new_uid()
    series_uid = series_uid or new_uid()
    templates = [pydicom.dcmread(path) for path in sources]
    # one patient per study, even when the real slices come from several (as a PACS would require)
    patient_name = patient_name if patient_name is not None else str(templates[0].get("PatientName", ""))
    patient_id = patient_id if patient_id is not None else str(templates[0].get("PatientID", ""))
    paths: list[Path] = []
    for index in range(count):
        ds = templates[index % len(templates)].copy()
        _reidentify(ds, study_uid, series_uid, series_number, patient_name, patient_id)
        ds.InstanceNumber = index + 1
        position = list(getattr(ds, "ImagePositionPatient", [0.0, 0.0, 0.0]))
        ds.ImagePositionPatient = [position[0], position[1], -index * spacing_mm]
        ds.SliceLocation = -index * spacing_mm
        path = out_dir / f"slice{index + 1:05d}.dcm"
        _write(ds, path)
        paths.append(path)
    return paths


def copy_with_new_identity(
    source: Path,
    out_path: Path,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    series_number: int = 1,
    patient_name: str | None = None,
    patient_id: str | None = None,
) -> Path:
    """Copy one instance with new UIDs (for the CR, reformats and re-encoded copies)."""
    ds = pydicom.dcmread(source)
    _reidentify(ds, study_uid or new_uid(), series_uid or new_uid(), series_number, patient_name, patient_id)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    _write(ds, out_path, keep_syntax=True)
    return out_path


def _reidentify(ds: Dataset, study_uid: str, series_uid: str, series_number: int, patient_name: str | None,
                patient_id: str | None) -> None:
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = new_uid()
    ds.SeriesNumber = series_number
    if "FrameOfReferenceUID" in ds:
        # one frame of reference per study, the same for every series built into it
        ds.FrameOfReferenceUID = generate_uid(prefix=UID_ROOT, entropy_srcs=[study_uid, "frame"])
    if patient_name is not None:
        ds.PatientName = patient_name
    if patient_id is not None:
        ds.PatientID = patient_id


def _write(ds: Dataset, path: Path, keep_syntax: bool = False) -> None:
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if not keep_syntax:
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
