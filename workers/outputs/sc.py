"""Key images as Secondary Capture: heatmap over the windowed image, caption burned in.

Same study as the source (highdicom's ``SCImage.from_ref_dataset`` copies patient and study), a new
series with deterministic UIDs per study and model version, ImageType DERIVED\\SECONDARY, and the
source image referenced in the Source Image Sequence so viewers can jump between the heatmap and
the original. The caption carries the score, the model and "NOT FOR DIAGNOSTIC USE"; Burned In
Annotation says so, because the pixels hold text (and a PACS anonymiser must know that).

``dciodvfy`` fails a Secondary Capture that says neither a laterality nor an unpaired body part:
Body Part Examined is CHEST (unpaired, so no laterality is needed); a source's own laterality
(L or R) is carried over where it has one.
"""

from __future__ import annotations

import math

import highdicom as hd
import numpy as np
from numpy.typing import NDArray
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes

from workers.outputs.caption import burn_caption
from workers.outputs.sr import DEVICE_NAME
from workers.outputs.uids import sc_instance_uid, sc_series_uid

SC_SERIES_NUMBER = 9902
SC_SERIES_DESCRIPTION = "AI COVID-19 heatmaps - not for diagnostic use"
BODY_PART = "CHEST"
NOT_FOR_DIAGNOSTIC_USE = "NOT FOR DIAGNOSTIC USE"

# Patient direction letters of the +x, +y, +z axes of the patient coordinate system (LPS).
_AXES = (("R", "L"), ("A", "P"), ("F", "H"))


def caption_lines(source: Dataset, *, score: float, model_name: str, model_version: str) -> list[str]:
    """The caption of a key image: score (and slice), model and version, and the disclaimer."""
    where = f"slice {source.get('InstanceNumber', '?')}" if source.get("Modality") == "CT" else "image"
    return [
        f"COVID-19 probability {score:.2f} ({where})",
        f"{model_name} {model_version.split('@')[-1]}",
        NOT_FOR_DIAGNOSTIC_USE,
    ]


def build_sc(
    source: Dataset,
    overlay_rgb: NDArray[np.uint8],
    *,
    index: int,
    score: float,
    model_name: str,
    model_version: str,
    manufacturer: str = DEVICE_NAME,
    institution_name: str | None = None,
    heatmap_method: str = "Grad-CAM",
) -> hd.sc.SCImage:
    """Secondary Capture of key image ``index``: ``overlay_rgb`` with the caption burned in.

    Parameters
    ----------
    source
        The key source image (CT slice or radiograph); the SC joins its study and references it.
    overlay_rgb
        (H, W, 3) uint8: the heatmap already blended over the displayed (lung-windowed, or
        MONOCHROME1-inverted) image. Usually the source's size, but not required to be.
    index
        0-based rank of this key image; with the study and model it fixes the SOP Instance UID
        (and Instance Number ``index + 1``), so a re-run replaces rather than duplicates.
    score
        The study score printed in the caption (the same number as in the SR).
    model_name, model_version
        Printed in the caption; with the study they fix the series and instance UIDs.
    manufacturer, institution_name
        Equipment identification of the SC.
    heatmap_method
        How the heatmap was made, for Derivation Description.

    Returns
    -------
    highdicom.sc.SCImage
        RGB Secondary Capture, series number :data:`SC_SERIES_NUMBER`, BurnedInAnnotation YES,
        BodyPartExamined CHEST.

    Raises
    ------
    ValueError
        If the overlay is not (H, W, 3) uint8, the score is not a finite number, or index is negative.
    """
    overlay = np.asarray(overlay_rgb)
    if overlay.ndim != 3 or overlay.shape[2] != 3:
        raise ValueError(f"overlay must be (H, W, 3) RGB, got shape {overlay.shape}")
    if overlay.dtype != np.uint8:
        raise ValueError(f"overlay must be uint8 RGB, got dtype {overlay.dtype}")
    if not math.isfinite(float(score)):
        raise ValueError(f"score must be a finite number, got {score!r}")
    study_uid = str(source.StudyInstanceUID)
    # before any pixel work: refuses a bad index with the UID helpers' precise message
    sop_instance_uid = sc_instance_uid(study_uid, model_name, model_version, index)
    pixels = burn_caption(overlay, caption_lines(source, score=float(score), model_name=model_name,
                                                 model_version=model_version))
    laterality = str(source.get("Laterality", "") or source.get("ImageLaterality", "") or "").strip()
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=sc_series_uid(study_uid, model_name, model_version),
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid,
        instance_number=index + 1,
        manufacturer=manufacturer,
        patient_orientation=patient_orientation(source),
        laterality=laterality if laterality in ("L", "R") else None,
        series_description=SC_SERIES_DESCRIPTION,
        institution_name=institution_name,
    )
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.BurnedInAnnotation = "YES"
    sc.BodyPartExamined = BODY_PART
    sc.ConversionType = "WSD"  # workstation: rendered by software, not digitised from film or video
    sc.DerivationDescription = (f"{heatmap_method} heatmap of {model_name} {model_version} blended over the "
                                f"displayed source image; caption burned in")[:1024]
    sc.SourceImageSequence = DicomSequence([_source_reference(source)])
    return sc


def patient_orientation(source: Dataset) -> tuple[str, str]:
    """Patient Orientation (row direction, column direction) of an image made from ``source``.

    Taken from the source's Patient Orientation where it has both values, else derived from Image
    Orientation (Patient) (the dominant axis of each direction cosine), else the usual axial display
    (rows towards the patient's left, columns towards the back).
    """
    value = source.get("PatientOrientation")
    if value is not None and not isinstance(value, str) and len(value) == 2:
        letters = (str(value[0]).strip()[:1], str(value[1]).strip()[:1])
        if all(letter and letter in "LRAPHF" for letter in letters):
            return letters
    iop = source.get("ImageOrientationPatient")
    if iop is not None and len(iop) == 6:
        try:
            cosines = [float(v) for v in iop]
        except (TypeError, ValueError):
            cosines = []
        if cosines and all(math.isfinite(v) for v in cosines):
            return _direction(cosines[:3]), _direction(cosines[3:])
    return ("L", "P")


def _direction(cosine: list[float]) -> str:
    axis = max(range(3), key=lambda i: abs(cosine[i]))
    return _AXES[axis][1 if cosine[axis] >= 0 else 0]


def _source_reference(source: Dataset) -> Dataset:
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    purpose = Dataset()
    code = codes.DCM.SourceImageForImageProcessingOperation
    purpose.CodeValue = code.value
    purpose.CodingSchemeDesignator = code.scheme_designator
    purpose.CodeMeaning = code.meaning
    reference.PurposeOfReferenceCodeSequence = DicomSequence([purpose])
    return reference
