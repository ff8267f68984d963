"""Secondary Capture heatmaps: dciodvfy-clean, caption burned in, same study, linked to the source."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import SecondaryCaptureImageStorage

from tests.workers.outputs.helpers import CT_MODEL, CXR_MODEL, dciodvfy, heatmap_overlay
from workers.outputs.caption import burn_caption, caption_band_height
from workers.outputs.sc import (
    SC_SERIES_NUMBER,
    build_sc,
    caption_lines,
    patient_orientation,
)
from workers.outputs.sr import build_sr

SCORE = 0.8123


def _sc(source: pydicom.Dataset, overlay: np.ndarray, index: int, model: tuple[str, str] = CT_MODEL,
        score: float = SCORE) -> pydicom.Dataset:
    return build_sc(source, overlay, index=index, score=score, model_name=model[0], model_version=model[1])


def _check_caption(stored: np.ndarray, plain: np.ndarray, lines: int) -> None:
    band = caption_band_height(plain.shape[0], lines)
    assert stored.shape == plain.shape
    bottom = slice(plain.shape[0] - band, None)
    assert not np.array_equal(stored[bottom], plain[bottom]), "the caption is not burned in"
    caption = stored[bottom]
    assert (caption == 255).all(axis=-1).sum() > 50, "no white caption text in the band"
    assert (caption == 0).all(axis=-1).mean() > 0.5, "the band behind the caption is not dark"
    assert np.array_equal(stored[: plain.shape[0] - band], plain[: plain.shape[0] - band]), "image above the band changed"


def test_ct_key_slices_pass_dciodvfy_with_caption_and_references(
        tmp_path: Path, require_dciodvfy: None, ct_series: list[pydicom.Dataset]) -> None:
    keys = [ct_series[4], ct_series[1]]
    sr = build_sr(ct_series, keys, score=SCORE, decision="covid-suspected", threshold=0.5,
                  model_name=CT_MODEL[0], model_version=CT_MODEL[1])
    series_uids = set()
    for index, key in enumerate(keys):
        plain = heatmap_overlay(key)
        path = tmp_path / f"sc{index}.dcm"
        _sc(key, plain, index).save_as(path, enforce_file_format=True)
        assert dciodvfy(path).errors == []

        stored = pydicom.dcmread(path)
        assert stored.SOPClassUID == SecondaryCaptureImageStorage
        assert stored.StudyInstanceUID == key.StudyInstanceUID
        assert stored.PatientID == key.PatientID
        assert stored.SeriesInstanceUID not in (key.SeriesInstanceUID, sr.SeriesInstanceUID)
        series_uids.add(stored.SeriesInstanceUID)
        assert stored.SeriesNumber == SC_SERIES_NUMBER and stored.InstanceNumber == index + 1
        assert "not for diagnostic use" in stored.SeriesDescription.lower()
        assert list(stored.ImageType)[:2] == ["DERIVED", "SECONDARY"]
        assert stored.BurnedInAnnotation == "YES" and stored.BodyPartExamined == "CHEST"
        assert stored.PhotometricInterpretation == "RGB" and stored.SamplesPerPixel == 3
        assert list(stored.PatientOrientation) == ["L", "P"]
        [reference] = stored.SourceImageSequence
        assert reference.ReferencedSOPInstanceUID == key.SOPInstanceUID
        assert reference.ReferencedSOPClassUID == key.SOPClassUID
        _check_caption(stored.pixel_array, plain, len(caption_lines(key, score=SCORE, model_name=CT_MODEL[0],
                                                                    model_version=CT_MODEL[1])))
    assert len(series_uids) == 1, "the key slices of one result belong to one SC series"


def test_cxr_sc_passes_dciodvfy(tmp_path: Path, require_dciodvfy: None, cr: pydicom.Dataset) -> None:
    plain = heatmap_overlay(cr)  # MONOCHROME1 inverted before blending: lungs dark, as displayed
    path = tmp_path / "sc-cxr.dcm"
    _sc(cr, plain, 0, model=CXR_MODEL, score=0.1).save_as(path, enforce_file_format=True)
    assert dciodvfy(path).errors == []
    stored = pydicom.dcmread(path)
    assert stored.StudyInstanceUID == cr.StudyInstanceUID and stored.SeriesInstanceUID != cr.SeriesInstanceUID
    assert list(stored.PatientOrientation) == [str(v) for v in cr.PatientOrientation]
    assert stored.SourceImageSequence[0].ReferencedSOPInstanceUID == cr.SOPInstanceUID
    _check_caption(stored.pixel_array, plain, 3)


def test_sc_uids_are_deterministic_per_index_and_model_version(ct_series: list[pydicom.Dataset]) -> None:
    blank = np.zeros((256, 256, 3), np.uint8)
    first = _sc(ct_series[0], blank, 0)
    again = _sc(ct_series[0], blank, 0, score=0.3)
    second = _sc(ct_series[1], blank, 1)
    other = _sc(ct_series[0], blank, 0, model=(CT_MODEL[0], "deep-ct-net@fffffffffff0"))
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (again.SeriesInstanceUID, again.SOPInstanceUID)
    assert first.SeriesInstanceUID == second.SeriesInstanceUID and first.SOPInstanceUID != second.SOPInstanceUID
    assert first.SeriesInstanceUID != other.SeriesInstanceUID and first.SOPInstanceUID != other.SOPInstanceUID


@pytest.mark.parametrize(("folder", "expected"), [("axial", ("L", "P")), ("coronal", ("L", "F")),
                                                  ("sagittal", ("P", "F"))])
def test_orientation_follows_the_real_slice(shared_data: Path, folder: str, expected: tuple[str, str]) -> None:
    paths = sorted((shared_data / "dicom" / "ct-covid19-ny-sbu").glob(f"*/{folder}/*.dcm"))
    if not paths:
        pytest.skip(f"no {folder} slices in the shared data")
    for path in paths[:4]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert patient_orientation(ds) == expected, path


def test_bad_overlays_are_refused(ct_series: list[pydicom.Dataset]) -> None:
    with pytest.raises(ValueError, match="RGB"):
        _sc(ct_series[0], np.zeros((8, 8), np.uint8), 0)
    with pytest.raises(ValueError, match="uint8"):
        _sc(ct_series[0], np.zeros((8, 8, 3), np.float32), 0)
    with pytest.raises(ValueError, match="index"):
        _sc(ct_series[0], np.zeros((256, 256, 3), np.uint8), -1)


def test_caption_fits_a_narrow_image_and_refuses_a_tiny_one() -> None:
    narrow = np.full((400, 120, 3), 128, np.uint8)
    out = burn_caption(narrow, ["COVID-19 probability 0.81 (slice 12)", "deep-ct-net 0123456789ab",
                                "NOT FOR DIAGNOSTIC USE"])
    assert out.shape == narrow.shape and not np.array_equal(out, narrow)
    assert np.array_equal(out[:200], narrow[:200])
    with pytest.raises(ValueError, match="does not fit"):
        burn_caption(np.zeros((40, 40, 3), np.uint8), ["a", "b", "c"])


def test_untouched_real_slices_give_valid_objects(tmp_path: Path, require_dciodvfy: None,
                                                  axial_ct_files: list[Path]) -> None:
    """Each real slice as it came from the archive (its own study), not re-identified."""
    for n, source_path in enumerate(axial_ct_files[:3]):
        source = pydicom.dcmread(source_path)
        sr = build_sr([source], [source], score=0.3, decision="covid-not-suspected", threshold=0.5,
                      model_name=CT_MODEL[0], model_version=CT_MODEL[1])
        sc = _sc(source, heatmap_overlay(source), 0, score=0.3)
        for name, obj in (("sr", sr), ("sc", sc)):
            path = tmp_path / f"{name}{n}.dcm"
            obj.save_as(path, enforce_file_format=True)
            assert dciodvfy(path).errors == [], (source_path, name)
        assert sr.StudyInstanceUID == sc.StudyInstanceUID == source.StudyInstanceUID
