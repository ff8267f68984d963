"""Choosing what to analyse in a study: the axial CT series, or the frontal chest radiographs.

A PACS sends whole studies: localizers, thin and thick axial series, coronal and sagittal reformats,
dose reports, key images, earlier AI results. Only original axial slices (CT) and frontal PA/AP views
(CR/DX) are what the models were trained on; everything else is skipped with a reason, so that a
study with nothing analysable ends as "not applicable" rather than as an error or a wrong score.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
CT_CLASSES = {CT_IMAGE}
CXR_CLASSES = {CR_IMAGE, DX_PRESENTATION, DX_PROCESSING}
FRONTAL_VIEWS = {"PA", "AP"}
LATERAL_VIEWS = {"LL", "RL", "LATERAL", "LAT", "LLO", "RLO"}
_AXIAL_TOLERANCE = 0.9  # |cos| of the slice normal with the patient z axis


@dataclass(frozen=True)
class Candidate:
    """One stored instance with the header attributes that decide selection."""

    path: Path
    sop_instance_uid: str
    sop_class_uid: str
    series_uid: str
    dataset: Dataset  # header only (no pixel data)


@dataclass
class Selection:
    kind: str  # "ct" or "cxr"
    series_uid: str
    instances: list[Candidate]
    skipped: dict[str, str] = field(default_factory=dict)  # series UID -> reason


class NothingToAnalyse(Exception):
    """No series of the study fits a model; ``reasons`` says why each was skipped."""

    def __init__(self, reasons: dict[str, str]) -> None:
        self.reasons = reasons
        detail = "; ".join(f"series {uid[-12:]}: {why}" for uid, why in sorted(reasons.items())) or "no images"
        super().__init__(f"nothing analysable: {detail}")


def read_candidates(rows: Iterable[tuple[Path, str, str, str]]) -> list[Candidate]:
    """Read headers of stored instances given as (path, SOP instance, SOP class, series UID)."""
    candidates = []
    for path, sop_uid, sop_class, series_uid in rows:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # unreadable files are the decoder's concern; they are simply not selected
            continue
        candidates.append(Candidate(path, sop_uid, sop_class, series_uid, header))
    return candidates


def select_series(candidates: list[Candidate]) -> Selection:
    """The CT series to analyse (most original axial slices), else the frontal chest radiographs."""
    by_series: dict[str, list[Candidate]] = defaultdict(list)
    for candidate in candidates:
        by_series[candidate.series_uid].append(candidate)
    skipped: dict[str, str] = {}
    ct_series: list[tuple[int, str, list[Candidate]]] = []
    cxr: list[Candidate] = []
    for series_uid, members in by_series.items():
        kept, reason = _ct_slices(members)
        if kept:
            ct_series.append((len(kept), series_uid, kept))
            continue
        frontal, cxr_reason = _frontal_radiographs(members)
        if frontal:
            cxr.extend(frontal)
            continue
        skipped[series_uid] = reason or cxr_reason or "not an image series"
    if ct_series:
        ct_series.sort(key=lambda item: (-item[0], item[1]))
        _, series_uid, slices = ct_series[0]
        for _, other_uid, _ in ct_series[1:]:
            skipped[other_uid] = "another axial series has more slices"
        return Selection("ct", series_uid, _by_position(slices), skipped)
    if cxr:
        cxr.sort(key=lambda c: (_view(c.dataset) != "PA", c.series_uid, _number(c.dataset)))
        return Selection("cxr", cxr[0].series_uid, cxr, skipped)
    raise NothingToAnalyse(skipped)


def _ct_slices(members: list[Candidate]) -> tuple[list[Candidate], str | None]:
    kept: list[Candidate] = []
    reason = None
    for c in members:
        ds = c.dataset
        if c.sop_class_uid not in CT_CLASSES and str(ds.get("Modality", "")) != "CT":
            return [], None  # not CT at all: let the radiograph check decide
        if c.sop_class_uid not in CT_CLASSES:
            reason = "not a single-frame CT image (e.g. Enhanced CT or a non-image object)"
            continue
        image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
        if "LOCALIZER" in image_type:
            reason = "localizer (scout)"
            continue
        if len(image_type) >= 2 and (image_type[0] != "ORIGINAL" or image_type[1] != "PRIMARY"):
            reason = f"ImageType {'/'.join(image_type[:3])}: derived or secondary (reformat)"
            continue
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            reason = "multi-frame"
            continue
        if not _is_axial(ds):
            reason = "not axial (coronal, sagittal or oblique)"
            continue
        kept.append(c)
    return kept, reason


def _is_axial(ds: Dataset) -> bool:
    orientation = ds.get("ImageOrientationPatient")
    if orientation is not None and len(orientation) == 6:
        row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
        normal = np.cross(row, col)
        norm = float(np.linalg.norm(normal))
        return norm > 0 and abs(normal[2]) / norm >= _AXIAL_TOLERANCE
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    return len(image_type) < 3 or image_type[2] == "AXIAL"


def _frontal_radiographs(members: list[Candidate]) -> tuple[list[Candidate], str | None]:
    kept, reason = [], None
    for c in members:
        if c.sop_class_uid not in CXR_CLASSES:
            return [], None
        view = _view(c.dataset)
        if view in LATERAL_VIEWS:
            reason = f"lateral view ({view})"
            continue
        if view not in FRONTAL_VIEWS and view:
            reason = f"view {view} is not PA or AP"
            continue
        kept.append(c)  # PA, AP, or unknown (many CR devices leave ViewPosition empty)
    return kept, reason


def _view(ds: Dataset) -> str:
    return str(ds.get("ViewPosition", "") or "").strip().upper()


def _number(ds: Dataset) -> int:
    try:
        return int(ds.get("InstanceNumber", 0) or 0)
    except (TypeError, ValueError):
        return 0


def _by_position(slices: list[Candidate]) -> list[Candidate]:
    """Head to feet by position along the slice normal; instance number where positions lack."""

    def key(c: Candidate) -> tuple[float, int]:
        position = c.dataset.get("ImagePositionPatient")
        z = float(position[2]) if position is not None and len(position) == 3 else 0.0
        return (-z, _number(c.dataset))

    return sorted(slices, key=key)
