"""The result as a Comprehensive 3D SR holding a TID 1500 Measurement Report (highdicom).

TID 1500 is what viewers such as OHIF render and what the IHE AI Results profile expects. One
measurement group (TID 1501) carries:

- finding type: COVID-19 (SCT 840539006);
- the study score as a numeric measurement: Probability (DCM 122157), unit "no units" (UCUM 1),
  with the algorithm (name, version) that produced it and references to the key source images;
- the finding as a qualitative evaluation: COVID-19 (SCT 840539006) = Suspected (SCT 415684004) or
  Not suspected (99TRIAGE NOTSUSP, a local code: SNOMED has no "not suspected");
- the decision rule as a qualitative evaluation of the threshold is not coded; the threshold is
  written as a second measurement, "Decision threshold" (99TRIAGE THRESH).

The observer is the device (the node) so a reader sees it is an AI result; the series description
says "not for diagnostic use".
"""

from __future__ import annotations

from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

import highdicom as hd
import pydicom
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from workers.outputs.uids import result_uid, sr_instance_uid, sr_series_uid

COVID_19 = hd.sr.CodedConcept("840539006", "SCT", "COVID-19")
PROBABILITY = hd.sr.CodedConcept("122157", "DCM", "Probability")
SUSPECTED = hd.sr.CodedConcept("415684004", "SCT", "Suspected")
NOT_SUSPECTED = hd.sr.CodedConcept("NOTSUSP", "99TRIAGE", "Not suspected")
THRESHOLD = hd.sr.CodedConcept("THRESH", "99TRIAGE", "Decision threshold")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
CT_CHEST = hd.sr.CodedConcept("24627-2", "LN", "CT Chest")
XR_CHEST = hd.sr.CodedConcept("36554-4", "LN", "XR Chest Single view")

SR_SERIES_NUMBER = 9901
SR_SERIES_DESCRIPTION = "AI COVID-19 triage SR - not for diagnostic use"
DEVICE_NAME = "COVID triage node"


def build_sr(
    source_datasets: Sequence[Dataset],
    key_datasets: Sequence[Dataset],
    *,
    score: float,
    decision: str,
    threshold: float,
    model_name: str,
    model_version: str,
    manufacturer: str = DEVICE_NAME,
) -> hd.sr.Comprehensive3DSR:
    """Build the SR of one analysed series.

    Parameters
    ----------
    source_datasets
        Every analysed image (one series): they become the SR's evidence.
    key_datasets
        The key images (highest slice scores): referenced by the score measurement.
    score, decision, threshold
        Study-level COVID-19 probability, "covid-suspected" or "covid-not-suspected", and the
        threshold that decided.
    model_name, model_version
        The algorithm identification; with the study they also fix the SR's UIDs.
    """
    if not source_datasets or not key_datasets:
        raise ValueError("an SR needs the analysed images and at least one key image")
    if decision not in ("covid-suspected", "covid-not-suspected"):
        raise ValueError(f"unknown decision {decision!r}")
    study_uid = str(source_datasets[0].StudyInstanceUID)
    algorithm = hd.sr.AlgorithmIdentification(name=model_name, version=model_version)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=result_uid(study_uid, model_name, model_version, "device"),
            name=DEVICE_NAME,
            manufacturer_name=manufacturer,
            model_name=model_name,
        ),
    )
    measurements = [
        hd.sr.Measurement(
            name=PROBABILITY,
            value=round(float(score), 6),
            unit=NO_UNITS,
            algorithm_id=algorithm,
            referenced_images=[hd.sr.SourceImageForMeasurement.from_source_image(ds) for ds in key_datasets],
        ),
        hd.sr.Measurement(name=THRESHOLD, value=round(float(threshold), 6), unit=NO_UNITS, algorithm_id=algorithm),
    ]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=result_uid(study_uid, model_name, model_version, "tracking"), identifier="COVID-19 triage"),
        finding_type=COVID_19,
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=[
            hd.sr.QualitativeEvaluation(name=COVID_19,
                                        value=SUSPECTED if decision == "covid-suspected" else NOT_SUSPECTED),
        ],
    )
    is_ct = str(source_datasets[0].get("Modality", "")) == "CT"
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=CT_CHEST if is_ct else XR_CHEST,
        imaging_measurements=[group],
    )
    sr = hd.sr.Comprehensive3DSR(
        evidence=list(source_datasets),
        content=report,
        series_instance_uid=sr_series_uid(study_uid, model_name, model_version),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sr_instance_uid(study_uid, model_name, model_version),
        instance_number=1,
        manufacturer=manufacturer,
        is_complete=True,
        series_description=SR_SERIES_DESCRIPTION,
    )
    return sr


def read_sr_result(source: str | Path | Dataset) -> dict[str, object]:
    """Score, threshold, decision and algorithm, read back through highdicom's SR API.

    This is how a consumer (and the tests) check that what reached the PACS says what the database
    holds: through the coded content, never by searching text.
    """
    if isinstance(source, Dataset):
        buffer = BytesIO()
        source.save_as(buffer, enforce_file_format=True)
        buffer.seek(0)
        source = pydicom.dcmread(buffer)
    sr = hd.sr.srread(source)
    groups = sr.content.get_image_measurement_groups(finding_type=COVID_19)
    if len(groups) != 1:
        raise ValueError(f"expected one COVID-19 measurement group, found {len(groups)}")
    group = groups[0]
    score = group.get_measurements(name=PROBABILITY)
    threshold = group.get_measurements(name=THRESHOLD)
    evaluation = group.get_qualitative_evaluations(name=COVID_19)
    if len(score) != 1 or len(evaluation) != 1:
        raise ValueError("the COVID-19 group lacks its probability or its evaluation")
    value = evaluation[0].value
    texts = {(item.ConceptNameCodeSequence[0].CodeValue, item.ConceptNameCodeSequence[0].CodingSchemeDesignator):
             str(item.TextValue) for item in score[0][0].get("ContentSequence", []) if item.ValueType == "TEXT"}
    name, version = texts.get(("111001", "DCM")), texts.get(("111003", "DCM"))  # Algorithm Name, Version
    algorithm = (name, version) if name and version else None
    return {
        "score": float(score[0].value),
        "threshold": float(threshold[0].value) if threshold else None,
        "decision": "covid-suspected" if value == SUSPECTED else "covid-not-suspected",
        "algorithm": algorithm,
        "key_images": [str(ref.referenced_sop_instance_uid) for ref in score[0].referenced_images],
    }


def read_sr_score(source: str | Path | Dataset) -> float:
    """The study score of an SR written by :func:`build_sr`."""
    return float(read_sr_result(source)["score"])  # type: ignore[arg-type]
