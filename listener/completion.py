"""Study completion: a study with no new instance for the quiet period is complete.

Completion, its job and its outbox message are written in one transaction, guarded by the instance
count read just before: if an instance arrived in between, the update matches nothing and the study
stays open. So a study is completed exactly once per receiving period, even with several listeners.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from db.models import Job, JobState, OutboxMessage, Study, StudyState, utcnow
from ops.logs import event
from ops.periodic import Periodic

log = logging.getLogger("triage.listener.completion")

ANALYSE_TOPIC = "analyse_study"


def analyse_message(job_id: int, study_uid: str, now: datetime | None = None) -> OutboxMessage:
    """The outbox row that has a job analysed: written with the job by the completion, and again by
    an operator's re-queue (``triage jobs retry``)."""
    return OutboxMessage(topic=ANALYSE_TOPIC, job_id=job_id, payload={"study_uid": study_uid, "job_id": job_id},
                         created_at=now or utcnow())


def complete_quiet_studies(
    sessions: sessionmaker[Session],
    *,
    quiet_seconds: float,
    ceiling_seconds: float,
    now: datetime | None = None,
) -> list[str]:
    """Complete every study that went quiet (or passed the ceiling); return their Study UIDs."""
    now = now or utcnow()
    quiet_before = now - timedelta(seconds=quiet_seconds)
    opened_before = now - timedelta(seconds=ceiling_seconds)
    with sessions() as session:
        candidates = session.execute(
            select(Study.id, Study.study_uid, Study.instance_count, Study.last_instance_at).where(
                Study.state == StudyState.receiving,
                or_(Study.last_instance_at <= quiet_before, Study.opened_at <= opened_before),
            )
        ).all()
        session.rollback()
    completed: list[str] = []
    for study_id, study_uid, count, last_at in candidates:
        with sessions() as session, session.begin():
            changed = cast(CursorResult[Any], session.execute(
                update(Study)
                .where(Study.id == study_id, Study.state == StudyState.receiving, Study.instance_count == count)
                .values(state=StudyState.complete, completed_at=now, completions=Study.completions + 1)
                .execution_options(synchronize_session=False)
            )).rowcount
            if changed != 1:
                continue  # an instance arrived meanwhile: the quiet period starts again
            job = Job(study_id=study_id, state=JobState.pending, created_at=now, updated_at=now)
            session.add(job)
            session.flush()
            session.add(analyse_message(job.id, study_uid, now))
        forced = last_at > quiet_before
        event(log, "listener.study.complete", study_uid=study_uid, instances=count, job_id=job.id,
              forced_by_ceiling=forced)
        completed.append(study_uid)
    return completed


class CompletionSweeper(Periodic):
    """Background thread running :func:`complete_quiet_studies` every ``interval`` seconds.

    A database that is down is retried (with backoff): instances cannot be stored meanwhile either.
    """

    def __init__(self, sessions: sessionmaker[Session], *, quiet_seconds: float, ceiling_seconds: float,
                 interval: float) -> None:
        super().__init__(
            "listener.completion",
            lambda: complete_quiet_studies(sessions, quiet_seconds=quiet_seconds, ceiling_seconds=ceiling_seconds),
            interval,
            logger=log,
        )
