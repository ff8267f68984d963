"""Recording instances and completing studies, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import (
    Instance,
    Job,
    JobState,
    OutboxMessage,
    Series,
    Study,
    StudyState,
    utcnow,
)
from listener.completion import ANALYSE_TOPIC, complete_quiet_studies
from listener.records import InstanceMeta, InstanceRecorder

STUDY = "1.2.826.0.1.3680043.8.498.1"


def _meta(series: str, sop: str) -> InstanceMeta:
    return InstanceMeta(study_uid=STUDY, series_uid=series, sop_instance_uid=sop,
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax_uid="1.2.840.10008.1.2.1",
                        modality="CT", series_number=2, instance_number=int(sop.rsplit(".", 1)[1]))


def _store(sessions: sessionmaker[Session], series: str, sop: str, at) -> bool:  # type: ignore[no-untyped-def]
    with sessions() as session:
        recorder = InstanceRecorder(session.get_bind())
    with recorder.transaction() as transaction:
        recorded = transaction.record(_meta(series, sop), path=f"{STUDY}/{series}/{sop}.dcm", size_bytes=100,
                                      calling_ae="SCU", now=at)
        transaction.commit()
        return recorded.reopened


def test_hierarchy_is_recorded(sessions: sessionmaker[Session]) -> None:
    t0 = utcnow()
    for i in range(3):
        _store(sessions, "1.2.3.1", f"1.2.3.1.{i}", t0)
    _store(sessions, "1.2.3.2", "1.2.3.2.0", t0)
    with sessions() as session:
        study = session.scalar(select(Study))
        assert study is not None and study.instance_count == 4 and study.state == StudyState.receiving
        counts = dict(session.execute(select(Series.series_uid, Series.instance_count)).all())
        assert counts == {"1.2.3.1": 3, "1.2.3.2": 1}
        assert session.scalar(select(func.count(Instance.id))) == 4
        assert study.last_instance_at.tzinfo is not None
        assert abs(study.last_instance_at - t0).total_seconds() < 1e-5  # written in UTC, read back in UTC


def test_quiet_study_completes_exactly_once_and_reopens(sessions: sessionmaker[Session]) -> None:
    t0 = utcnow()
    _store(sessions, "1.2.3.1", "1.2.3.1.1", t0)
    # not yet quiet
    assert complete_quiet_studies(sessions, quiet_seconds=10, ceiling_seconds=100, now=t0 + timedelta(seconds=5)) == []
    # quiet: completed once, however often the sweeper runs
    later = t0 + timedelta(seconds=11)
    assert complete_quiet_studies(sessions, quiet_seconds=10, ceiling_seconds=100, now=later) == [STUDY]
    assert complete_quiet_studies(sessions, quiet_seconds=10, ceiling_seconds=100, now=later) == []
    with sessions() as session:
        outbox = session.scalars(select(OutboxMessage)).all()
        assert len(outbox) == 1 and outbox[0].topic == ANALYSE_TOPIC
        assert outbox[0].payload["study_uid"] == STUDY and outbox[0].published_at is None
        job = session.get(Job, outbox[0].job_id)
        assert job is not None and job.state == JobState.pending
    # a late instance re-opens the study; a second outbox row after the next quiet period
    late = t0 + timedelta(seconds=20)
    assert _store(sessions, "1.2.3.1", "1.2.3.1.2", late) is True
    with sessions() as session:
        assert session.scalar(select(Study.state)) == StudyState.receiving
    assert complete_quiet_studies(sessions, quiet_seconds=10, ceiling_seconds=100, now=late + timedelta(seconds=5)) == []
    assert complete_quiet_studies(sessions, quiet_seconds=10, ceiling_seconds=100,
                                  now=late + timedelta(seconds=10)) == [STUDY]
    with sessions() as session:
        assert session.scalar(select(func.count(OutboxMessage.id))) == 2
        assert session.scalar(select(Study.completions)) == 2


def test_ceiling_completes_a_study_that_never_goes_quiet(sessions: sessionmaker[Session]) -> None:
    t0 = utcnow()
    for i in range(12):
        _store(sessions, "1.2.3.1", f"1.2.3.1.{i}", t0 + timedelta(seconds=i * 5))
    now = t0 + timedelta(seconds=61)  # last instance 6 s ago: not quiet (10 s), but open for 61 s
    assert complete_quiet_studies(sessions, quiet_seconds=10, ceiling_seconds=60, now=now) == [STUDY]
    with sessions() as session:
        assert session.scalar(select(func.count(OutboxMessage.id))) == 1
