"""Publishes outbox rows to the broker, retrying until it takes them.

The listener writes a study's completion, its job and its outbox row in one transaction; this loop
is the only place that talks to the broker about them. A broker that is down delays analysis, never
loses it: the row stays unpublished and is tried again on the next pass, with backoff.
"""

from __future__ import annotations

import logging

from celery import Celery
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db.models import Job, JobState, OutboxMessage, utcnow
from listener.completion import ANALYSE_TOPIC
from ops.logs import event
from ops.periodic import Periodic
from workers.celery_app import ANALYSE_TASK, EXPORT_TASK, EXPORT_TOPIC

log = logging.getLogger("triage.workers.dispatcher")

# outbox topic -> (task name, the payload key passed as its argument)
_TASKS = {ANALYSE_TOPIC: (ANALYSE_TASK, "job_id"), EXPORT_TOPIC: (EXPORT_TASK, "export_id")}
_MAX_BACKOFF_S = 15.0


class BrokerUnavailable(RuntimeError):
    """The broker refused or could not be reached; the pass stops and is retried with backoff."""


def publish_pending(app: Celery, sessions: sessionmaker[Session], limit: int = 100) -> int:
    """Publish unpublished outbox rows in order; return how many the broker took.

    Raises :class:`BrokerUnavailable` at the first failure (the rest would fail alike), after
    recording the attempt on the row.
    """
    with sessions() as session:
        rows = session.execute(
            select(OutboxMessage.id, OutboxMessage.topic, OutboxMessage.job_id, OutboxMessage.payload)
            .where(OutboxMessage.published_at.is_(None))
            .order_by(OutboxMessage.id)
            .limit(limit)
        ).all()
    published = 0
    for row_id, topic, job_id, payload in rows:
        if topic not in _TASKS:
            continue
        task, key = _TASKS[topic]
        try:
            # a stable task id: a re-publish after a crash between send and commit is recognisable
            app.send_task(task, args=[payload[key]], task_id=f"outbox-{row_id}", retry=False)
        except Exception as exc:
            with sessions() as session, session.begin():
                session.execute(
                    update(OutboxMessage)
                    .where(OutboxMessage.id == row_id)
                    .values(attempts=OutboxMessage.attempts + 1, last_error=f"{type(exc).__name__}: {exc}"[:500])
                )
            event(log, "dispatcher.publish.failed", logging.WARNING, outbox_id=row_id, error=type(exc).__name__,
                  hint="check TRIAGE_BROKER_URL and the broker; the study stays queued in the database")
            raise BrokerUnavailable(str(exc)) from exc
        with sessions() as session, session.begin():
            session.execute(update(OutboxMessage).where(OutboxMessage.id == row_id).values(
                published_at=utcnow(), attempts=OutboxMessage.attempts + 1, last_error=None))
            if job_id is not None:
                session.execute(update(Job).where(Job.id == job_id, Job.state == JobState.pending)
                                .values(state=JobState.queued, updated_at=utcnow()))
        event(log, "dispatcher.published", outbox_id=row_id, job_id=job_id, task=task)
        published += 1
    return published


class Dispatcher(Periodic):
    """Background thread running :func:`publish_pending` every ``interval`` seconds, backing off
    (to at most 15 s) while the broker is unavailable."""

    def __init__(self, app: Celery, sessions: sessionmaker[Session], interval: float = 0.5) -> None:
        super().__init__("dispatcher", lambda: publish_pending(app, sessions), interval,
                         max_backoff=_MAX_BACKOFF_S, logger=log, quiet_errors=(BrokerUnavailable,))
