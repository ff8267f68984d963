"""The Celery tasks: thin wrappers that run a job against the worker's context and record the end.

Both are idempotent: analysis of a finished job is skipped, an export that is done is not sent
again, and the result objects carry deterministic UIDs, so redelivery after a crash is harmless.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from celery import Task, shared_task
from sqlalchemy import update

from db.models import Export, ExportAttempt, ExportState, utcnow
from ops.logs import event
from workers.analysis import mark_failed
from workers.celery_app import ANALYSE_TASK, EXPORT_TASK
from workers.context import get_context

log = logging.getLogger("triage.workers.tasks")


@shared_task(name=ANALYSE_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def analyse_study(self: Task, job_id: int) -> str:
    from workers.analysis import analyse_job

    ctx = get_context()
    try:
        outcome = analyse_job(ctx, job_id)
    except Exception as exc:
        # A bug or a bad model file: record why, do not loop on it; the operator re-queues (triage jobs retry).
        log.exception("analysis.failed", extra={"event": "analysis.failed", "job_id": job_id,
                                                "hint": "fix the cause, then 'triage jobs retry JOB_ID' (or --failed)"})
        mark_failed(ctx, job_id, f"{type(exc).__name__}: {exc}")
        return "failed"
    return outcome.state.value


@shared_task(name=EXPORT_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def export_result(self: Task, export_id: int) -> str:
    from workers.export import ExportFailed, client_tls_context, send_files

    ctx = get_context()
    settings = ctx.settings
    with ctx.sessions() as session, session.begin():
        export = session.get(Export, export_id)
        if export is None or export.state in (ExportState.done, ExportState.failed):
            return "skipped"
        attempt_no = export.attempts + 1
        destination = export.destination
        files: list[Any] = list(export.objects.get("files", []))
        attempt = ExportAttempt(export_id=export_id, attempt=attempt_no, started_at=utcnow())
        session.add(attempt)
        session.flush()
        attempt_id = attempt.id
    from pathlib import Path

    error = None
    try:
        tls = (client_tls_context(settings.export_tls_ca, settings.export_tls_cert, settings.export_tls_key)
               if settings.export_tls_ca is not None else None)
        send_files(destination, [Path(f) for f in files], calling_ae=settings.ae_title, tls=tls)
    except (ExportFailed, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"[:1000]
    now = utcnow()
    delay = min(settings.export_retry_max_seconds, settings.export_retry_base_seconds * 2 ** (attempt_no - 1))
    final = error is not None and attempt_no >= settings.export_max_attempts
    with ctx.sessions() as session, session.begin():
        session.execute(update(ExportAttempt).where(ExportAttempt.id == attempt_id)
                        .values(finished_at=now, ok=error is None, error=error))
        state = ExportState.done if error is None else (ExportState.failed if final else ExportState.retrying)
        session.execute(update(Export).where(Export.id == export_id).values(
            attempts=attempt_no, state=state, last_error=error, updated_at=now,
            next_attempt_at=None if error is None or final else now + timedelta(seconds=delay)))
    if error is None:
        event(log, "export.done", export_id=export_id, destination=destination, objects=len(files),
              attempt=attempt_no)
        return "done"
    if final:
        event(log, "export.failed", logging.ERROR, export_id=export_id, destination=destination,
              attempts=attempt_no, error=error,
              hint="fix the destination, then 'triage export retry EXPORT_ID' (or --failed)")
        return "failed"
    event(log, "export.retry", logging.WARNING, export_id=export_id, destination=destination, attempt=attempt_no,
          retry_in_s=delay, error=error)
    raise self.retry(countdown=delay, max_retries=None)
