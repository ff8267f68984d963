"""End to end against a real PACS: Orthanc sends studies to the node, the node sends SR and SC back.

Orthanc (Debian) holds a CT study built from the real NY-SBU slices (an axial series plus the real
coronal and sagittal reformats) and the real CR; it C-STOREs each study to the node through its REST
API; the node (``triage serve``) completes, analyses and exports them; the test then finds the new SR
and SC series in the same studies through Orthanc's REST API.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select

from db.models import Export, ExportState, Job, JobState, Result
from ops.bench.orthanc import Orthanc
from ops.bench.series import build_ct_series, copy_with_new_identity, new_uid
from tests.conftest import require_tools
from tests.e2e.node import NodeProcess, node_env, node_sessions, wait_for
from tests.services import ensure_redis, free_port
from workers.outputs.sr import read_sr_result

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture
def orthanc(tmp_path: Path) -> Iterator[Orthanc]:
    require_tools("Orthanc", "storescu")
    pacs = Orthanc(tmp_path / "orthanc")
    yield pacs
    pacs.stop()


def _redis_url() -> str:
    base = ensure_redis().rsplit("/", 1)[0]
    import redis

    db = random.randint(5, 15)
    redis.Redis.from_url(f"{base}/{db}").flushdb()
    return f"{base}/{db}"


def _upload_study(orthanc: Orthanc, files: list[Path]) -> str:
    study_ids = {orthanc.upload(path)["ParentStudy"] for path in files}
    assert len(study_ids) == 1
    return study_ids.pop()


def _ct_study(tmp_path: Path, ct_files: list[Path], axial_ct_files: list[Path], slices: int) -> tuple[list[Path], str]:
    study_uid = new_uid()
    originals = [p for p in axial_ct_files if "ORIGINAL" in pydicom.dcmread(p, stop_before_pixels=True).ImageType]
    patient = {"patient_name": "Triage^Test", "patient_id": "TRIAGE-E2E-1"}
    axial = build_ct_series(originals, tmp_path / "ct" / "axial", slices, study_uid=study_uid, series_number=2,
                            **patient)
    reformats = []
    for number, plane in ((3, "coronal"), (4, "sagittal")):
        series_uid = new_uid()
        sources = [p for p in ct_files if p.parent.name == plane][:4]
        reformats += [copy_with_new_identity(p, tmp_path / "ct" / plane / f"{i}.dcm", study_uid=study_uid,
                                             series_uid=series_uid, series_number=number, **patient)
                      for i, p in enumerate(sources)]
    return [*axial, *reformats], pydicom.dcmread(axial[0], stop_before_pixels=True).SeriesInstanceUID


def _result_series(orthanc: Orthanc, study_id: str) -> dict[str, list[dict[str, Any]]]:
    by_modality: dict[str, list[dict[str, Any]]] = {}
    for series in orthanc.series_of(study_id):
        by_modality.setdefault(series["MainDicomTags"].get("Modality", ""), []).append(series)
    return by_modality


def _read_sr(orthanc: Orthanc, series: dict[str, Any]) -> pydicom.Dataset:
    instance_id = series["Instances"][0]
    from io import BytesIO

    return pydicom.dcmread(BytesIO(orthanc.get(f"/instances/{instance_id}/file")))


@pytest.mark.parametrize("broker", ["embedded", "redis"])
def test_orthanc_studies_come_back_with_sr_and_sc(
    broker: str, orthanc: Orthanc, tmp_path: Path, ct_files: list[Path], axial_ct_files: list[Path], cr_file: Path,
) -> None:
    port = free_port()
    env = node_env(tmp_path, port=port, broker_url=_redis_url() if broker == "redis" else None,
                   destinations=f"PACS@127.0.0.1:{orthanc.dicom_port}")
    if broker == "redis":  # the GPU worker's layout: one process, jobs on threads sharing the models
        env.update(TRIAGE_WORKER_POOL="threads", TRIAGE_WORKER_CONCURRENCY="2")
    node = NodeProcess("serve", tmp_path, env)
    try:
        node.wait_port(port)
        orthanc.add_modality("triage", "TRIAGE", port)
        ct_files_built, axial_series_uid = _ct_study(tmp_path, ct_files, axial_ct_files, slices=12)
        ct_study = _upload_study(orthanc, ct_files_built)
        cr_study = _upload_study(orthanc, [copy_with_new_identity(cr_file, tmp_path / "cr" / "cr.dcm")])
        originals = {series["ID"] for study in (ct_study, cr_study) for series in orthanc.series_of(study)}
        before = {study: len(orthanc.series_of(study)) for study in (ct_study, cr_study)}
        orthanc.send_study("triage", ct_study)
        orthanc.send_study("triage", cr_study)

        def results_back() -> bool:
            return all(len(orthanc.series_of(study)) - before[study] >= 2 for study in (ct_study, cr_study))

        wait_for(results_back, 300, "SR and SC series in Orthanc", node.log)
    finally:
        assert node.stop() == 0, node.log()[-3000:]

    sessions = node_sessions(env)
    with sessions() as session:
        results = {r.series_uid: r for r in session.scalars(select(Result))}
        assert {j.state for j in session.scalars(select(Job))} == {JobState.done}
        assert {e.state for e in session.scalars(select(Export))} == {ExportState.done}
    assert axial_series_uid in results

    for study_id in (ct_study, cr_study):
        new_series = [s for s in orthanc.series_of(study_id) if s["ID"] not in originals]
        modalities = sorted(s["MainDicomTags"].get("Modality", "") for s in new_series)
        assert modalities.count("SR") == 1, modalities
        assert len(new_series) == 2, modalities  # one SR series, one SC series
        sr_series = next(s for s in new_series if s["MainDicomTags"]["Modality"] == "SR")
        sr = _read_sr(orthanc, sr_series)
        back = read_sr_result(sr)  # through highdicom.sr.srread
        result = next(r for r in results.values()
                      if any(o["sop_instance_uid"] == sr.SOPInstanceUID for o in r.outputs))
        assert back["score"] == pytest.approx(result.score, abs=1e-6)
        assert back["decision"] == result.decision
        assert back["algorithm"] == (result.model_name, result.model_version)
        assert result.runtime and result.precision  # the arithmetic behind the score, in the record
        assert f"{result.runtime} {result.precision} on cpu" in back["algorithm_parameters"]  # and in the SR
        assert sr.StudyInstanceUID == _study_uid(orthanc, study_id)
        referenced = _referenced_series(sr)
        if study_id == ct_study:
            assert referenced == {axial_series_uid}, "the SR must reference the analysed axial series only"


def _study_uid(orthanc: Orthanc, study_id: str) -> str:
    return str(orthanc.get(f"/studies/{study_id}")["MainDicomTags"]["StudyInstanceUID"])


def _referenced_series(sr: pydicom.Dataset) -> set[str]:
    series = set()
    for study in sr.get("CurrentRequestedProcedureEvidenceSequence", []):
        for item in study.get("ReferencedSeriesSequence", []):
            series.add(str(item.SeriesInstanceUID))
    return series
