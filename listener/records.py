"""What the listener writes to the database for each stored instance, in one transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import case, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from db.models import Instance, Series, Study, StudyState


@dataclass(frozen=True)
class InstanceMeta:
    """The identifying attributes of a received instance (no patient data)."""

    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str | None
    series_number: int | None
    instance_number: int | None


@dataclass(frozen=True)
class Recorded:
    instance_id: int
    reopened: bool  # the study had been completed and is receiving again


def find_instance(session: Session, sop_instance_uid: str) -> Instance | None:
    return session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_instance_uid))


def _insert_ignore(session: Session, table: object, values: dict[str, object], key: str) -> None:
    """INSERT ... ON CONFLICT DO NOTHING on either back end (concurrent associations, one study)."""
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(insert(table).values(**values).on_conflict_do_nothing(index_elements=[key]))  # type: ignore[arg-type]


def record_instance(
    session: Session,
    meta: InstanceMeta,
    *,
    path: str,
    size_bytes: int,
    calling_ae: str,
    now: datetime,
) -> Recorded:
    """Add the instance and restart its study's quiet period; the caller commits.

    A study that was already complete goes back to ``receiving`` (with a new ``opened_at``) so it
    is completed, and analysed, again after the next quiet period.
    """
    _insert_ignore(
        session,
        Study,
        {"study_uid": meta.study_uid, "state": StudyState.receiving, "opened_at": now,
         "last_instance_at": now, "completions": 0, "instance_count": 0, "created_at": now},
        "study_uid",
    )
    study_id, state = session.execute(
        select(Study.id, Study.state).where(Study.study_uid == meta.study_uid)
    ).one()
    session.execute(
        update(Study)
        .where(Study.id == study_id)
        .values(
            last_instance_at=now,
            instance_count=Study.instance_count + 1,
            opened_at=case((Study.state == StudyState.complete, now), else_=Study.opened_at),
            state=StudyState.receiving,
        )
    )
    _insert_ignore(
        session,
        Series,
        {"study_id": study_id, "series_uid": meta.series_uid, "modality": meta.modality,
         "series_number": meta.series_number, "instance_count": 0, "created_at": now},
        "series_uid",
    )
    series_id = session.scalar(select(Series.id).where(Series.series_uid == meta.series_uid))
    session.execute(
        update(Series).where(Series.id == series_id).values(instance_count=Series.instance_count + 1)
    )
    instance = Instance(
        series_id=series_id,
        sop_instance_uid=meta.sop_instance_uid,
        sop_class_uid=meta.sop_class_uid,
        transfer_syntax_uid=meta.transfer_syntax_uid,
        instance_number=meta.instance_number,
        path=path,
        size_bytes=size_bytes,
        calling_ae=calling_ae,
        received_at=now,
    )
    session.add(instance)
    session.flush()
    return Recorded(instance_id=instance.id, reopened=state == StudyState.complete)
