"""An export of a result to one destination, written with the outbox row that gets it sent.

The analysis writes one per configured destination with its result; ``triage export send`` writes
more for a study sent again. Both go through here, so an export row never exists without the
message that sends it, and its objects are always the result's own files and UIDs.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from db.models import Export, ExportState, OutboxMessage, Result
from workers.celery_app import EXPORT_TOPIC

__all__ = ["export_message", "queue_export"]


def export_message(export_id: int, job_id: int | None) -> OutboxMessage:
    """The outbox row that has an export sent (a new one, or one an operator re-queues)."""
    return OutboxMessage(topic=EXPORT_TOPIC, job_id=job_id, payload={"export_id": export_id})


def queue_export(session: Session, result: Result, destination: str) -> int:
    """Add a pending export of ``result``'s objects to ``destination`` and its outbox row; return its id.

    Runs inside the caller's transaction (flushed, not committed).
    """
    export = Export(result_id=result.id, destination=destination, state=ExportState.pending,
                    objects={"files": [str(o["path"]) for o in result.outputs],
                             "sop_instance_uids": [str(o["sop_instance_uid"]) for o in result.outputs]})
    session.add(export)
    session.flush()
    session.add(export_message(export.id, result.job_id))
    return export.id
