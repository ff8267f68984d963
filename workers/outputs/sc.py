"""Key slices as Secondary Capture images: heatmap over the windowed slice, caption burned in.

Same study as the source, a new series (deterministic UIDs per study and model version), DERIVED,
with the source image referenced so viewers can jump between the heatmap and the original. The
caption carries the score, the model and "NOT FOR DIAGNOSTIC USE"; BurnedInAnnotation says so.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from workers.outputs.caption import burn_caption
from workers.outputs.sr import DEVICE_NAME
from workers.outputs.uids import sc_instance_uid, sc_series_uid

SC_SERIES_NUMBER = 9902
SC_SERIES_DESCRIPTION = "AI COVID-19 heatmaps - not for diagnostic use"


def build_sc(
    source: Dataset,
    overlay_rgb: NDArray[np.uint8],
    *,
    index: int,
    score: float,
    model_name: str,
    model_version: str,
    manufacturer: str = DEVICE_NAME,
) -> hd.sc.SCImage:
    """Secondary Capture of key image ``index`` with ``overlay_rgb`` (H, W, 3) and a caption."""
    if overlay_rgb.ndim != 3 or overlay_rgb.shape[2] != 3:
        raise ValueError(f"overlay must be (H, W, 3) RGB, got {overlay_rgb.shape}")
    study_uid = str(source.StudyInstanceUID)
    slice_note = f"slice {source.get('InstanceNumber', '?')}" if source.get("Modality") == "CT" else "image"
    pixels = burn_caption(overlay_rgb, [
        f"COVID-19 probability {score:.2f} ({slice_note})",
        f"{model_name} {model_version.split('@')[-1]}",
        "NOT FOR DIAGNOSTIC USE",
    ])
    laterality = str(source.get("Laterality", "") or source.get("ImageLaterality", "") or "").strip()
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=sc_series_uid(study_uid, model_name, model_version),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=sc_instance_uid(study_uid, model_name, model_version, index),
        instance_number=index + 1,
        manufacturer=manufacturer,
        patient_orientation=_orientation(source),
        laterality=laterality if laterality in ("L", "R") else None,
        series_description=SC_SERIES_DESCRIPTION,
    )
    sc.ImageType = ["DERIVED", "SECONDARY", "HEATMAP"]
    sc.BurnedInAnnotation = "YES"
    sc.BodyPartExamined = "CHEST"
    sc.DerivationDescription = f"Grad-CAM heatmap of {model_name} blended over the displayed image"
    sc.ConversionType = "WSD"
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    sc.SourceImageSequence = DicomSequence([reference])
    return sc


def _orientation(source: Dataset) -> tuple[str, str]:
    """Patient orientation of rows and columns, from the source's (or the axial default)."""
    value = source.get("PatientOrientation")
    if value is not None and len(value) == 2 and all(str(v) for v in value):
        return (str(value[0]), str(value[1]))
    return ("L", "P")  # axial slice in the usual display: rows go to the patient's left, columns back
