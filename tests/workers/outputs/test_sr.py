"""The TID 1500 SR: valid for dciodvfy, read back through highdicom, referencing the right images."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import pydicom
import pytest
from pydicom.sr.codedict import codes
from pydicom.uid import Comprehensive3DSRStorage

from tests.workers.outputs.helpers import CT_MODEL, CXR_MODEL, dciodvfy
from workers.outputs.sr import (
    COVID_19,
    CT_CHEST,
    NOT_SUSPECTED,
    PROBABILITY,
    SR_SERIES_NUMBER,
    SUSPECTED,
    THRESHOLD,
    XR_CHEST,
    build_sr,
    read_sr_result,
    read_sr_score,
)

SCORE = 0.8123457
THRESHOLD_VALUE = 0.42


def _ct_sr(series: list[pydicom.Dataset], keys: list[pydicom.Dataset], version: str = CT_MODEL[1],
           score: float = SCORE) -> hd.sr.Comprehensive3DSR:
    return build_sr(series, keys, score=score, decision="covid-suspected", threshold=THRESHOLD_VALUE,
                    model_name=CT_MODEL[0], model_version=version, institution_name="Test Hospital",
                    aggregation="mean of the top slices", inference="onnxruntime int8 on cpu")


def _evidence_instances(sr: pydicom.Dataset) -> set[str]:
    return {str(instance.ReferencedSOPInstanceUID)
            for study in sr.CurrentRequestedProcedureEvidenceSequence
            for series in study.ReferencedSeriesSequence
            for instance in series.ReferencedSOPSequence}


def test_ct_sr_passes_dciodvfy_and_reads_back(tmp_path: Path, require_dciodvfy: None,
                                              ct_series: list[pydicom.Dataset]) -> None:
    keys = [ct_series[4], ct_series[1]]  # ranked by slice score, not by position
    sr = _ct_sr(ct_series, keys)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy(path).errors == []

    back = read_sr_result(path)
    assert back["score"] == pytest.approx(SCORE, abs=1e-6)
    assert read_sr_score(path) == back["score"]
    assert back["threshold"] == pytest.approx(THRESHOLD_VALUE)
    assert back["decision"] == "covid-suspected"
    assert back["algorithm"] == CT_MODEL
    assert back["algorithm_parameters"] == ["mean of the top slices", "onnxruntime int8 on cpu"]
    assert back["key_images"] == [str(ds.SOPInstanceUID) for ds in keys]

    stored = pydicom.dcmread(path)
    assert stored.SOPClassUID == Comprehensive3DSRStorage
    assert stored.StudyInstanceUID == ct_series[0].StudyInstanceUID
    assert stored.PatientID == ct_series[0].PatientID
    assert stored.SeriesInstanceUID != ct_series[0].SeriesInstanceUID
    assert stored.SeriesNumber == SR_SERIES_NUMBER
    assert "not for diagnostic use" in stored.SeriesDescription.lower()
    assert stored.InstitutionName == "Test Hospital"
    # the evidence is exactly the analysed instances
    assert _evidence_instances(stored) == {str(ds.SOPInstanceUID) for ds in ct_series}


def test_ct_sr_content_tree_says_what_it_should(tmp_path: Path, ct_series: list[pydicom.Dataset]) -> None:
    path = tmp_path / "sr.dcm"
    _ct_sr(ct_series, ct_series[:2]).save_as(path, enforce_file_format=True)
    sr = hd.sr.srread(path)
    report = sr.content
    assert report[0].ContentTemplateSequence[0].TemplateIdentifier == "1500"
    procedures = [item for item in report[0].ContentSequence
                  if item.ConceptNameCodeSequence[0].CodeValue == codes.DCM.ProcedureReported.value]
    assert [hd.sr.CodedConcept.from_dataset(p.ConceptCodeSequence[0]) for p in procedures] == [CT_CHEST]
    observers = report.get_observer_contexts(observer_type=codes.DCM.Device)
    assert len(observers) == 1
    device = observers[0].observer_identifying_attributes
    assert device.model_name == CT_MODEL[0]
    groups = report.get_image_measurement_groups(finding_type=COVID_19)
    assert len(groups) == 1
    group = groups[0]
    assert group.tracking_identifier == "COVID-19 triage"
    assert group.tracking_uid
    [probability] = group.get_measurements(name=PROBABILITY)
    assert probability.unit == hd.sr.CodedConcept("1", "UCUM", "no units")
    assert [m.value for m in group.get_measurements(name=THRESHOLD)] == [pytest.approx(THRESHOLD_VALUE)]
    [evaluation] = group.get_qualitative_evaluations(name=COVID_19)
    assert evaluation.value == SUSPECTED


def test_cxr_sr_not_suspected_passes_dciodvfy(tmp_path: Path, require_dciodvfy: None, cr: pydicom.Dataset) -> None:
    sr = build_sr([cr], [cr], score=0.1, decision="covid-not-suspected", threshold=0.5,
                  model_name=CXR_MODEL[0], model_version=CXR_MODEL[1])
    path = tmp_path / "sr-cxr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy(path).errors == []
    back = read_sr_result(sr)  # from the dataset: serialised and parsed again
    assert back == {"score": pytest.approx(0.1), "threshold": pytest.approx(0.5), "decision": "covid-not-suspected",
                    "algorithm": CXR_MODEL, "algorithm_parameters": [], "key_images": [str(cr.SOPInstanceUID)]}
    group = hd.sr.srread(path).content.get_image_measurement_groups()[0]
    assert group.get_qualitative_evaluations(name=COVID_19)[0].value == NOT_SUSPECTED
    procedure = next(item for item in sr.ContentSequence
                 if item.ConceptNameCodeSequence[0].CodeValue == codes.DCM.ProcedureReported.value)
    assert hd.sr.CodedConcept.from_dataset(procedure.ConceptCodeSequence[0]) == XR_CHEST
    # the local coding scheme of "not suspected" is declared
    assert [s.CodingSchemeDesignator for s in sr.CodingSchemeIdentificationSequence] == [NOT_SUSPECTED.scheme_designator]
    assert sr.StudyInstanceUID == cr.StudyInstanceUID and sr.SeriesInstanceUID != cr.SeriesInstanceUID


def test_sr_uids_are_deterministic_per_model_version(ct_series: list[pydicom.Dataset]) -> None:
    first, again = _ct_sr(ct_series, ct_series[:1]), _ct_sr(ct_series, ct_series[:1], score=0.2)
    other = _ct_sr(ct_series, ct_series[:1], version="deep-ct-net@fffffffffff0")
    assert (first.SeriesInstanceUID, first.SOPInstanceUID) == (again.SeriesInstanceUID, again.SOPInstanceUID)
    assert first.SeriesInstanceUID != other.SeriesInstanceUID
    assert first.SOPInstanceUID != other.SOPInstanceUID


@pytest.mark.parametrize(("change", "message"), [
    ({"decision": "maybe"}, "decision"),
    ({"score": 1.5}, "score"),
    ({"score": float("nan")}, "score"),
    ({"threshold": -0.1}, "threshold"),
])
def test_bad_values_are_refused(ct_series: list[pydicom.Dataset], change: dict[str, object], message: str) -> None:
    kwargs: dict[str, object] = {"score": 0.5, "decision": "covid-suspected", "threshold": 0.5,
                                 "model_name": "m", "model_version": "v", **change}
    with pytest.raises(ValueError, match=message):
        build_sr(ct_series, ct_series[:1], **kwargs)  # type: ignore[arg-type]


def test_inconsistent_images_are_refused(ct_series: list[pydicom.Dataset], cr: pydicom.Dataset) -> None:
    kwargs = {"score": 0.5, "decision": "covid-suspected", "threshold": 0.5, "model_name": "m", "model_version": "v"}
    with pytest.raises(ValueError, match="key images not among"):
        build_sr(ct_series[:3], [ct_series[4]], **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="studies"):
        build_sr([*ct_series, cr], [cr], **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key image"):
        build_sr(ct_series, [], **kwargs)  # type: ignore[arg-type]
