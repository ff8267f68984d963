"""The SR and SC objects: valid for dciodvfy, readable back, referencing the right images, stable UIDs."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

from ops.bench.series import build_ct_series
from tests.conftest import require_tools
from workers.outputs.sc import build_sc
from workers.outputs.sr import build_sr, read_sr_result


def _dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


@pytest.fixture
def ct_series(tmp_path: Path, axial_ct_files: list[Path]) -> list[pydicom.Dataset]:
    originals = [p for p in axial_ct_files if "ORIGINAL" in pydicom.dcmread(p, stop_before_pixels=True).ImageType]
    return [pydicom.dcmread(p) for p in build_ct_series(originals, tmp_path / "ct", 6)]


def _overlay(source: pydicom.Dataset) -> np.ndarray:
    from engine.explain import overlay
    from engine.imageio import dataset_to_gray

    gray = dataset_to_gray(source)
    h, w = gray.shape
    yy, xx = np.mgrid[0:h, 0:w]
    heat = np.exp(-(((yy - h / 3) ** 2) + ((xx - w / 3) ** 2)) / (2 * (h / 8) ** 2))
    return overlay(gray, heat)


def test_ct_sr_and_sc_pass_dciodvfy_and_read_back(tmp_path: Path, ct_series: list[pydicom.Dataset]) -> None:
    require_tools("dciodvfy")
    keys = [ct_series[1], ct_series[4]]
    sr = build_sr(ct_series, keys, score=0.8123, decision="covid-suspected", threshold=0.42,
                  model_name="deep-ct-net", model_version="deep-ct-net@0123456789ab")
    sr_path = tmp_path / "sr.dcm"
    sr.save_as(sr_path, enforce_file_format=True)
    assert _dciodvfy_errors(sr_path) == []
    back = read_sr_result(sr_path)
    assert back["score"] == pytest.approx(0.8123)
    assert back["threshold"] == pytest.approx(0.42)
    assert back["decision"] == "covid-suspected"
    assert back["algorithm"] == ("deep-ct-net", "deep-ct-net@0123456789ab")
    assert back["key_images"] == [str(ds.SOPInstanceUID) for ds in keys]
    assert sr.StudyInstanceUID == ct_series[0].StudyInstanceUID
    assert sr.SeriesInstanceUID != ct_series[0].SeriesInstanceUID
    evidence = {str(s.SeriesInstanceUID) for study in sr.CurrentRequestedProcedureEvidenceSequence
                for s in study.ReferencedSeriesSequence}
    assert evidence == {str(ct_series[0].SeriesInstanceUID)}

    for index, key in enumerate(keys):
        plain = _overlay(key)
        sc = build_sc(key, plain, index=index, score=0.8123, model_name="deep-ct-net",
                      model_version="deep-ct-net@0123456789ab")
        path = tmp_path / f"sc{index}.dcm"
        sc.save_as(path, enforce_file_format=True)
        assert _dciodvfy_errors(path) == []
        stored = pydicom.dcmread(path)
        assert stored.StudyInstanceUID == key.StudyInstanceUID
        assert stored.SeriesInstanceUID not in (key.SeriesInstanceUID, sr.SeriesInstanceUID)
        assert stored.BurnedInAnnotation == "YES" and stored.BodyPartExamined == "CHEST"
        assert stored.SourceImageSequence[0].ReferencedSOPInstanceUID == key.SOPInstanceUID
        pixels = stored.pixel_array
        assert pixels.shape == plain.shape
        band = slice(int(pixels.shape[0] * 0.85), None)
        assert not np.array_equal(pixels[band], plain[band]), "the caption is not burned in"
        assert np.array_equal(pixels[: pixels.shape[0] // 2], plain[: pixels.shape[0] // 2])


def test_cxr_objects_pass_dciodvfy(tmp_path: Path, cr_file: Path) -> None:
    require_tools("dciodvfy")
    cr = pydicom.dcmread(cr_file)
    sr = build_sr([cr], [cr], score=0.1, decision="covid-not-suspected", threshold=0.5,
                  model_name="deep-cxr-net", model_version="deep-cxr-net@ab")
    sc = build_sc(cr, _overlay(cr), index=0, score=0.1, model_name="deep-cxr-net", model_version="deep-cxr-net@ab")
    for name, obj in (("sr", sr), ("sc", sc)):
        path = tmp_path / f"{name}.dcm"
        obj.save_as(path, enforce_file_format=True)
        assert _dciodvfy_errors(path) == [], name
    assert read_sr_result(tmp_path / "sr.dcm")["decision"] == "covid-not-suspected"


def test_uids_are_stable_per_study_and_model_version(ct_series: list[pydicom.Dataset]) -> None:
    def build(version: str) -> tuple[str, str, str]:
        sr = build_sr(ct_series, ct_series[:1], score=0.5, decision="covid-suspected", threshold=0.5,
                      model_name="deep-ct-net", model_version=version)
        sc = build_sc(ct_series[0], np.zeros((512, 512, 3), np.uint8), index=0, score=0.5, model_name="deep-ct-net",
                      model_version=version)
        return str(sr.SOPInstanceUID), str(sr.SeriesInstanceUID), str(sc.SOPInstanceUID)

    first, again, other = build("v@1"), build("v@1"), build("v@2")
    assert first == again
    assert not set(first) & set(other)


def test_bad_inputs_are_refused_early(ct_series: list[pydicom.Dataset]) -> None:
    with pytest.raises(ValueError, match="decision"):
        build_sr(ct_series, ct_series[:1], score=0.5, decision="maybe", threshold=0.5, model_name="m",
                 model_version="v")
    with pytest.raises(ValueError, match="RGB"):
        build_sc(ct_series[0], np.zeros((8, 8), np.uint8), index=0, score=0.5, model_name="m", model_version="v")
