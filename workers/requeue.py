"""What an operator does about work that stopped: look at it, re-queue it, send results again.

An export gives up after ``TRIAGE_EXPORT_MAX_ATTEMPTS`` (about a day) and an analysis that raised is
marked failed rather than looping; both then wait for someone to fix the cause (the PACS, a
weights file) and re-queue them. Each change here is written with its outbox row in one
transaction, as the listener writes a completed study's: the node's dispatcher (``triage serve``,
or the first ``triage listen`` process) publishes it. So these functions need no broker, work
while it is down, and a re-queue is never half done.

Only finished work is re-queued: a failed export or job. An export still ``retrying`` has its next
attempt waiting in the broker, and a second chain of attempts would run beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db.models import Export, ExportState, Job, JobState, Result, Study, utcnow

__all__ = ["ExportRow", "JobRow", "RequeueRefused", "list_exports", "list_jobs", "resend_study", "retry_exports",
           "retry_jobs"]


class RequeueRefused(ValueError):
    """Nothing was changed: the message says which id or study, and why."""


@dataclass(frozen=True)
class ExportRow:
    """One export as the operator sees it (no patient data: the study by its UID)."""

    id: int
    state: str
    attempts: int
    destination: str
    study_uid: str
    model: str
    updated_at: datetime
    next_attempt_at: datetime | None
    last_error: str | None


@dataclass(frozen=True)
class JobRow:
    """One analysis job as the operator sees it."""

    id: int
    state: str
    attempts: int
    study_uid: str
    updated_at: datetime
    error: str | None


def list_exports(sessions: sessionmaker[Session], state: ExportState | None = None, limit: int = 50) -> list[ExportRow]:
    """The most recently changed exports first, optionally in one state."""
    query = (select(Export, Result.model_name, Result.model_version, Study.study_uid)
             .join(Result, Result.id == Export.result_id).join(Study, Study.id == Result.study_id)
             .order_by(Export.updated_at.desc(), Export.id.desc()).limit(limit))
    if state is not None:
        query = query.where(Export.state == state)
    with sessions() as session:
        return [ExportRow(e.id, e.state.value, e.attempts, e.destination, study_uid, f"{name} {version}",
                          e.updated_at, e.next_attempt_at, e.last_error)
                for e, name, version, study_uid in session.execute(query).all()]


def list_jobs(sessions: sessionmaker[Session], state: JobState | None = None, limit: int = 50) -> list[JobRow]:
    """The most recently changed analysis jobs first, optionally in one state."""
    query = (select(Job, Study.study_uid).join(Study, Study.id == Job.study_id)
             .order_by(Job.updated_at.desc(), Job.id.desc()).limit(limit))
    if state is not None:
        query = query.where(Job.state == state)
    with sessions() as session:
        return [JobRow(j.id, j.state.value, j.attempts, study_uid, j.updated_at, j.error)
                for j, study_uid in session.execute(query).all()]


def retry_exports(sessions: sessionmaker[Session], ids: Sequence[int] | None = None) -> list[int]:
    """Re-queue failed exports (``ids``, or every failed one when None); return the ids re-queued.

    Each gets the full retry policy again: its attempt count restarts at 0 (the earlier attempts stay
    in ``export_attempts`` with their times).

    Raises
    ------
    RequeueRefused
        If an id does not exist or its export is not failed; nothing is changed then.
    """
    from workers.outbox import export_message

    with sessions() as session, session.begin():
        rows = _failed_rows(session, select(Export, Result.job_id).join(Result, Result.id == Export.result_id),
                            Export, ExportState.failed, ids, "an export still retrying has its next attempt queued "
                                                             "already")
        requeued = []
        for export, job_id in rows:
            if _claim(session, Export, export.id, ExportState.failed,
                      {"state": ExportState.pending, "attempts": 0, "next_attempt_at": None}):
                session.add(export_message(export.id, job_id))
                requeued.append(export.id)
        return requeued


def retry_jobs(sessions: sessionmaker[Session], ids: Sequence[int] | None = None) -> list[int]:
    """Re-queue failed analysis jobs (``ids``, or every failed one when None); return the ids re-queued.

    The job is analysed again from the stored instances; its result replaces any earlier one of the
    same model version (same SR and SC UIDs), so a re-queue never duplicates results in the PACS.

    Raises
    ------
    RequeueRefused
        If an id does not exist or its job is not failed; nothing is changed then.
    """
    from listener.completion import analyse_message

    with sessions() as session, session.begin():
        rows = _failed_rows(session, select(Job, Study.study_uid).join(Study, Study.id == Job.study_id), Job,
                            JobState.failed, ids, "only a failed analysis waits for an operator")
        requeued = []
        for job, study_uid in rows:
            if _claim(session, Job, job.id, JobState.failed, {"state": JobState.pending}):
                session.add(analyse_message(job.id, study_uid))
                requeued.append(job.id)
        return requeued


def resend_study(sessions: sessionmaker[Session], study_uid: str, destinations: Sequence[str]) -> list[int]:
    """Send the study's latest result objects (SR, SC) again to each destination; return the new export ids.

    For a PACS that lost them or a destination added since. The objects are the files the worker
    wrote, with the same UIDs, so a PACS that still holds them keeps one copy.

    Raises
    ------
    RequeueRefused
        If there is no such study, it has no result with objects yet, a file is gone, no destination
        is given, or an export of that result to a destination is still under way.
    """
    from pathlib import Path

    from workers.outbox import queue_export

    if not destinations:
        raise RequeueRefused("no destination: pass --to AE@host:port or set TRIAGE_DESTINATIONS")
    with sessions() as session, session.begin():
        study = session.scalars(select(Study).where(Study.study_uid == study_uid)).one_or_none()
        if study is None:
            raise RequeueRefused(f"no study {study_uid} in this node's database")
        result = session.scalars(select(Result).where(Result.study_id == study.id)
                                 .order_by(Result.created_at.desc(), Result.id.desc()).limit(1)).one_or_none()
        if result is None or not result.outputs:
            raise RequeueRefused(f"study {study_uid} has no result objects yet (see 'triage jobs list')")
        files = [str(o["path"]) for o in result.outputs]
        missing = [f for f in files if not Path(f).is_file()]
        if missing:
            raise RequeueRefused(f"{len(missing)} result file(s) of study {study_uid} are gone (e.g. {missing[0]}): "
                                 f"re-queue its analysis instead ('triage jobs retry {result.job_id}' once failed)")
        busy = session.scalars(select(Export.destination).where(
            Export.result_id == result.id, Export.destination.in_(destinations),
            Export.state.in_([ExportState.pending, ExportState.retrying]))).all()
        if busy:
            raise RequeueRefused(f"an export of this result to {busy[0]} is still under way ('triage export list')")
        created = [queue_export(session, result, destination) for destination in dict.fromkeys(destinations)]
        return created


def _claim(session: Session, table: Any, row_id: int, failed: Any, values: dict[str, Any]) -> bool:
    """Move one row out of ``failed``, guarded by its state: of two operators re-queuing it at once,
    one gets it (the other's UPDATE waits for the first commit, then matches nothing)."""
    changed = session.execute(update(table).where(table.id == row_id, table.state == failed)
                              .values(**values, updated_at=utcnow()).execution_options(synchronize_session=False))
    return changed.rowcount == 1  # type: ignore[attr-defined]


def _failed_rows(session: Session, query: Any, table: Any, failed: Any, ids: Sequence[int] | None,
                 why: str) -> list[Any]:
    """Rows of ``query`` (first column: a ``table`` object with ``id`` and ``state``) to re-queue: every
    failed one when ``ids`` is None, else those ids, all of which must exist and be failed."""
    if ids is None:
        return list(session.execute(query.where(table.state == failed).order_by(table.id)).all())
    found = {row[0].id: row for row in session.execute(query.where(table.id.in_(ids))).all()}
    wrong = {i: "does not exist" if i not in found else f"is {found[i][0].state.value}, not {failed.value}"
             for i in dict.fromkeys(ids) if i not in found or found[i][0].state != failed}
    if wrong:
        kind = table.__tablename__.rstrip("s")
        reason = f" ({why})" if any(i in found for i in wrong) else ""
        raise RequeueRefused("; ".join(f"{kind} {i} {what}" for i, what in wrong.items()) + reason
                             + "; nothing was re-queued")
    return [found[i] for i in dict.fromkeys(ids)]
