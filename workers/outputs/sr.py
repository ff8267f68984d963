"""The result as a Comprehensive 3D SR holding a TID 1500 Measurement Report (highdicom).

TID 1500 is what viewers such as OHIF render and what the IHE AI Results profile expects. The
report's observer is the device (the node, the model name and manufacturer), so a reader sees it is
an AI result. One measurement group (TID 1501, "Measurements and Qualitative Evaluations") with a
tracking identifier carries:

========================  ===============================  =======================================
row                       concept name                     value
========================  ===============================  =======================================
finding type              \\                               COVID-19 (SCT 840539006)
study score (NUM)         Probability (DCM 122157)         score in [0, 1], unit "no units"
                                                           (UCUM ``1``), with the algorithm and the
                                                           key source images (SELECTED FROM)
decision threshold (NUM)  Threshold Value (DCM 122411)     threshold in [0, 1], UCUM ``1``
finding (CODE)            COVID-19 (SCT 840539006)         Suspected (SCT 415684004) or
                                                           Not suspected (99COVTRIAGE NOTSUSP)
========================  ===============================  =======================================

Why these codes
---------------
- SCT 840539006 is SNOMED CT's "Disease caused by SARS-CoV-2 (disorder)", preferred term COVID-19.
- DCM 122157 "Probability" is the DICOM concept for a probability value; the score is a model
  output in [0, 1], a dimensionless number, hence UCUM ``1`` (DICOM CID 7181 "no units").
- DCM 122411 "Threshold Value" is DICOM's concept for a threshold; writing it beside the score lets
  a reader see why the decision went the way it did.
- SCT 415684004 "Suspected" (DICOM CID 3770) is exactly what a triage flag asserts. Neither SNOMED
  CT nor DICOM has "not suspected": "Known absent" (SCT 410516002) and "Absent" (SCT 272519000)
  claim more than a triage model can. The negative value is therefore a local code in the private
  coding scheme ``99COVTRIAGE`` (PS3.16 reserves "99" prefixes for local schemes), declared in the
  SR's Coding Scheme Identification Sequence.
- Procedure reported: LOINC 24627-2 "CT Chest" for CT, LOINC 36554-4 "XR Chest Single view" for
  radiographs (CID 100 is extensible; its generic "unspecified body region" codes say less).

"Not for diagnostic use" is in the Series Description, which every PACS shows in its series list.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import TypedDict

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.sr.codedict import codes

from workers.outputs.uids import (
    device_uid,
    sr_instance_uid,
    sr_series_uid,
    tracking_uid,
)

LOCAL_SCHEME = "99COVTRIAGE"
"""Private coding scheme of this node (declared in CodingSchemeIdentificationSequence)."""

COVID_19 = hd.sr.CodedConcept("840539006", "SCT", "COVID-19")
PROBABILITY = hd.sr.CodedConcept("122157", "DCM", "Probability")
THRESHOLD = hd.sr.CodedConcept("122411", "DCM", "Threshold Value")
SUSPECTED = hd.sr.CodedConcept("415684004", "SCT", "Suspected")
NOT_SUSPECTED = hd.sr.CodedConcept("NOTSUSP", LOCAL_SCHEME, "Not suspected")
NO_UNITS = hd.sr.CodedConcept("1", "UCUM", "no units")
CT_CHEST = hd.sr.CodedConcept("24627-2", "LN", "CT Chest")
XR_CHEST = hd.sr.CodedConcept("36554-4", "LN", "XR Chest Single view")

DECISIONS: dict[str, hd.sr.CodedConcept] = {
    "covid-suspected": SUSPECTED,
    "covid-not-suspected": NOT_SUSPECTED,
}
"""Decision strings of the database and the coded value each becomes in the SR."""

SR_SERIES_NUMBER = 9901
SR_SERIES_DESCRIPTION = "AI COVID-19 triage SR - not for diagnostic use"
DEVICE_NAME = "COVID triage node"
TRACKING_IDENTIFIER = "COVID-19 triage"


class SRResult(TypedDict):
    """What :func:`read_sr_result` reads back from an SR."""

    score: float
    threshold: float | None
    decision: str
    algorithm: tuple[str, str] | None
    algorithm_parameters: list[str]  # aggregation rule, inference (runtime, precision, device)
    key_images: list[str]


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
    institution_name: str | None = None,
    institutional_department_name: str | None = None,
    aggregation: str | None = None,
    inference: str | None = None,
) -> hd.sr.Comprehensive3DSR:
    """Build the Comprehensive 3D SR (TID 1500) of one analysed study.

    Parameters
    ----------
    source_datasets
        Every analysed image (one study): they become the SR's evidence
        (CurrentRequestedProcedureEvidenceSequence), and the SR joins their study (patient and
        study attributes are copied from them by highdicom).
    key_datasets
        The key images (highest slice scores), a non-empty subset of ``source_datasets``: the score
        measurement references them, so a viewer can jump from the number to the images behind it.
    score
        Study-level COVID-19 probability in [0, 1], exactly as the database records it.
    decision
        ``"covid-suspected"`` or ``"covid-not-suspected"``: becomes the coded qualitative evaluation.
    threshold
        The operating threshold in [0, 1] that produced ``decision``.
    model_name, model_version
        The algorithm identification; with the study they also fix the SR's UIDs, so a re-run of the
        same model version replaces the earlier SR in the PACS instead of adding a second one.
    manufacturer
        Manufacturer of the SR (and of the observing device).
    institution_name, institutional_department_name
        Optional site identification written into the SR's equipment module.
    aggregation
        How slice scores became the study score, in words; written as an Algorithm Parameter
        (DCM 111002) of the algorithm identification so a reader of the SR can see the rule.
    inference
        The arithmetic that produced the score (runtime, precision, device, e.g. "onnxruntime int8
        on cpu"), a second Algorithm Parameter: one model version scores slightly differently in
        fp32, int8 and fp16, and an auditor of the SR should be able to tell which ran.

    Returns
    -------
    highdicom.sr.Comprehensive3DSR
        The SR, series number :data:`SR_SERIES_NUMBER`, instance number 1, complete, unverified.

    Raises
    ------
    ValueError
        On an empty input, an unknown decision, a score or threshold outside [0, 1], source images of
        more than one study, or a key image that is not among the sources.
    """
    if not source_datasets:
        raise ValueError("an SR needs the analysed images (source_datasets is empty)")
    if not key_datasets:
        raise ValueError("an SR needs at least one key image (key_datasets is empty)")
    if decision not in DECISIONS:
        raise ValueError(f"unknown decision {decision!r}; expected one of {sorted(DECISIONS)}")
    score = _unit_interval("score", score)
    threshold = _unit_interval("threshold", threshold)
    studies = {str(ds.StudyInstanceUID) for ds in source_datasets}
    if len(studies) != 1:
        raise ValueError(f"source images belong to {len(studies)} studies; an SR reports on one")
    study_uid = studies.pop()
    sources = {str(ds.SOPInstanceUID) for ds in source_datasets}
    strays = [str(ds.SOPInstanceUID) for ds in key_datasets if str(ds.SOPInstanceUID) not in sources]
    if strays:
        raise ValueError(f"key images not among the source images: {strays}")

    parameters = [text for text in (aggregation, inference) if text]
    algorithm = hd.sr.AlgorithmIdentification(name=model_name, version=model_version,
                                              parameters=parameters or None,
                                              family=codes.DCM.ArtificialIntelligence)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(model_name, model_version, manufacturer),
            name=DEVICE_NAME,
            manufacturer_name=manufacturer,
            model_name=model_name,
        ),
    )
    measurements = [
        hd.sr.Measurement(
            name=PROBABILITY,
            value=score,
            unit=NO_UNITS,
            algorithm_id=algorithm,
            referenced_images=[hd.sr.SourceImageForMeasurement.from_source_image(ds) for ds in key_datasets],
        ),
        hd.sr.Measurement(name=THRESHOLD, value=threshold, unit=NO_UNITS, algorithm_id=algorithm),
    ]
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking_uid(study_uid, model_name, model_version),
                                                     identifier=TRACKING_IDENTIFIER),
        finding_type=COVID_19,
        algorithm_id=algorithm,
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(name=COVID_19, value=DECISIONS[decision])],
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_procedure(source_datasets[0]),
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
        institution_name=institution_name,
        institutional_department_name=institutional_department_name,
        series_description=SR_SERIES_DESCRIPTION,
    )
    sr.CodingSchemeIdentificationSequence = DicomSequence([_local_scheme()])
    return sr


def read_sr_result(source: str | Path | Dataset) -> SRResult:
    """Score, threshold, decision, algorithm and key images, read through highdicom's SR API.

    This is how a consumer (and the tests) check that what reached the PACS says what the database
    holds: through the coded content tree (``srread``, measurement groups, measurements, qualitative
    evaluations), never by searching text.

    Parameters
    ----------
    source
        A path to an SR file written by :func:`build_sr`, or the dataset itself (it is serialised and
        parsed again, so the result reflects what a file would hold).

    Raises
    ------
    ValueError
        If the SR does not hold exactly one COVID-19 group with one probability and one evaluation.
    """
    if isinstance(source, Dataset):
        buffer = BytesIO()
        source.save_as(buffer, enforce_file_format=True)
        buffer.seek(0)
        sr = hd.sr.srread(buffer)
    else:
        sr = hd.sr.srread(source)
    groups = sr.content.get_image_measurement_groups(finding_type=COVID_19)
    if len(groups) != 1:
        raise ValueError(f"expected one COVID-19 measurement group, found {len(groups)}")
    group = groups[0]
    scores = group.get_measurements(name=PROBABILITY)
    thresholds = group.get_measurements(name=THRESHOLD)
    evaluations = group.get_qualitative_evaluations(name=COVID_19)
    if len(scores) != 1 or len(evaluations) != 1:
        raise ValueError("the COVID-19 group lacks its probability or its evaluation")
    value = evaluations[0].value
    decisions = [decision for decision, code in DECISIONS.items() if value == code]
    if len(decisions) != 1:
        raise ValueError(f"unknown COVID-19 evaluation {value!r}")
    return {
        "score": float(scores[0].value),
        "threshold": float(thresholds[0].value) if thresholds else None,
        "decision": decisions[0],
        "algorithm": _algorithm(scores[0]),
        "algorithm_parameters": _algorithm_parameters(scores[0]),
        "key_images": [str(ref.referenced_sop_instance_uid) for ref in scores[0].referenced_images],
    }


def read_sr_score(source: str | Path | Dataset) -> float:
    """The study score of an SR written by :func:`build_sr` (see :func:`read_sr_result`)."""
    return read_sr_result(source)["score"]


def _unit_interval(label: str, value: float) -> float:
    number = float(value)
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise ValueError(f"{label} must be a probability in [0, 1], got {value!r}")
    return number


def _procedure(source: Dataset) -> hd.sr.CodedConcept:
    """The procedure reported: CT chest for CT images, a chest radiograph otherwise."""
    return CT_CHEST if str(source.get("Modality", "")) == "CT" else XR_CHEST


def _local_scheme() -> Dataset:
    item = Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = "COVID triage node local codes"
    item.CodingSchemeResponsibleOrganization = DEVICE_NAME
    return item


def _algorithm_rows(measurement: hd.sr.Measurement) -> hd.sr.ContentSequence | None:
    item = measurement[0]  # the NUM content item; its children hold the TID 4019 rows
    children = item.ContentSequence if "ContentSequence" in item else None
    return children if isinstance(children, hd.sr.ContentSequence) else None


def _algorithm_parameters(measurement: hd.sr.Measurement) -> list[str]:
    """The Algorithm Parameters (DCM 111002) of the TID 4019 rows, in order."""
    children = _algorithm_rows(measurement)
    return [] if children is None else [str(row.value) for row in children.find(codes.DCM.AlgorithmParameters)]


def _algorithm(measurement: hd.sr.Measurement) -> tuple[str, str] | None:
    """(name, version) of the TID 4019 algorithm identification attached to a measurement."""
    children = _algorithm_rows(measurement)
    if children is None:
        return None
    names = children.find(codes.DCM.AlgorithmName)
    versions = children.find(codes.DCM.AlgorithmVersion)
    if len(names) != 1 or len(versions) != 1:
        return None
    return str(names[0].value), str(versions[0].value)
