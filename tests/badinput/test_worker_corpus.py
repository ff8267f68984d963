"""The hostile corpus through the workers: every stored case ends as "not applicable" or "failed" with
a reason, and valid studies analysed in between get their result."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Job, JobState, Result, Study, utcnow
from listener import statuses
from listener.completion import complete_quiet_studies
from ops.bench.series import build_ct_series
from tests.badinput.corpus import build_corpus
from tests.pynetdicom_scu import send_files, write_raw_instance
from workers.context import reset_context


@pytest.mark.timeout(900)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_corpus_studies_end_with_a_reason_and_valid_ones_are_analysed(
    database_url: str, sessions: sessionmaker[Session], listener_factory: Callable[..., Any], tmp_path: Path,
    axial_ct_files: list[Path], monkeypatch: pytest.MonkeyPatch, scenario_report: Callable[..., None],
) -> None:
    monkeypatch.setenv("TRIAGE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TRIAGE_DATABASE_URL", database_url)
    monkeypatch.setenv("TRIAGE_KEY_SLICES", "1")
    monkeypatch.setenv("TRIAGE_DESTINATIONS", "")
    reset_context()
    listener = listener_factory(sessions)  # stores under tmp_path/storage, the worker's storage dir
    valid_studies = []
    for i, case in enumerate(build_corpus(axial_ct_files[0])):
        if case.verdict != "store":
            continue
        path = write_raw_instance(tmp_path / f"case{i}.dcm", case.sop_instance_uid, case.body,
                                  sop_class_uid=case.sop_class_uid, transfer_syntax=case.transfer_syntax)
        valid = build_ct_series(axial_ct_files, tmp_path / f"valid{i}", 2)
        assert send_files(listener.port, [path, *valid]) == [statuses.SUCCESS] * 3
        valid_studies.append(str(pydicom.dcmread(valid[0], stop_before_pixels=True).StudyInstanceUID))
    complete_quiet_studies(sessions, quiet_seconds=1, ceiling_seconds=10, now=utcnow() + timedelta(seconds=5))

    from workers.tasks import analyse_study

    with sessions() as session:
        jobs = session.execute(select(Job.id, Study.study_uid).join(Study, Study.id == Job.study_id)).all()
    assert len(jobs) == 2 * len(valid_studies)
    for job_id, _ in jobs:
        analyse_study(job_id)  # what the worker runs; it must return, whatever the study holds
    with sessions() as session:
        outcome = {uid: (state, error) for uid, state, error in session.execute(
            select(Study.study_uid, Job.state, Job.error).join(Job, Job.study_id == Study.id))}
        analysed = set(session.scalars(select(Study.study_uid).join(Result, Result.study_id == Study.id)))
    for uid, (state, error) in outcome.items():
        if uid in valid_studies:
            assert state == JobState.done, (uid, state, error)
        else:
            assert state in (JobState.not_applicable, JobState.failed), (uid, state)
            assert error, f"study {uid} ended {state.value} without a reason"
    assert analysed == set(valid_studies)
    reset_context()
    hostile = len(outcome) - len(valid_studies)
    instances = hostile + 2 * len(valid_studies)
    scenario_report("stored hostile cases through the workers", sent=instances, acknowledged=instances,
                    stored=instances, analysed=len(analysed), lost=0, duplicated=0,
                    note=f"{hostile} hostile studies ended not-applicable/failed with a reason; "
                         f"{len(valid_studies)} valid studies analysed")
