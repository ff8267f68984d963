"""The record: studies, series, instances, jobs, the outbox, results and exports.

The listener writes studies, series and instances, and on study completion a job and an outbox row in
the same transaction. Workers read instances and write results and exports. Nothing here knows about
models or networking. Times are stored as timezone-aware UTC.
"""

from __future__ import annotations

import enum
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

UID = String(64)
AE = String(16)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on both back ends (SQLite would otherwise hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the database: use db.models.utcnow()")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(column_0_label)s",
            "uq": "uq_%(table_name)s_%(column_0_name)s",
            "ck": "ck_%(table_name)s_%(constraint_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[dict[str, Any]]: JSON}


class StudyState(str, enum.Enum):
    """``receiving`` until the quiet period passes, then ``complete`` (a job is queued).

    A late instance puts a complete study back to ``receiving``: it is completed, and analysed, again.
    """

    receiving = "receiving"
    complete = "complete"


class JobState(str, enum.Enum):
    pending = "pending"  # written with the outbox row, not yet on the queue
    queued = "queued"  # the broker took it
    running = "running"
    done = "done"
    failed = "failed"
    not_applicable = "not_applicable"  # nothing analysable in the study; reason in ``error``


class ExportState(str, enum.Enum):
    pending = "pending"
    retrying = "retrying"
    done = "done"
    failed = "failed"


def _enum(cls: type[enum.Enum]) -> Enum:
    return Enum(cls, name=cls.__name__.lower(), native_enum=False, length=20, validate_strings=True)


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    state: Mapped[StudyState] = mapped_column(_enum(StudyState), default=StudyState.receiving)
    opened_at: Mapped[datetime] = mapped_column(default=utcnow)  # start of the current receiving period
    last_instance_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None]
    completions: Mapped[int] = mapped_column(Integer, default=0)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    series: Mapped[list[Series]] = relationship(back_populates="study")
    jobs: Mapped[list[Job]] = relationship(back_populates="study")

    __table_args__ = (Index("ix_studies_state_last", "state", "last_instance_at"),)


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_uid: Mapped[str] = mapped_column(UID, unique=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(String(512))  # relative to the storage root
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    calling_ae: Mapped[str] = mapped_column(AE)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)

    series: Mapped[Series] = relationship(back_populates="instances")


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(32), default="analyse_study")
    state: Mapped[JobState] = mapped_column(_enum(JobState), default=JobState.pending, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    study: Mapped[Study] = relationship(back_populates="jobs")
    results: Mapped[list[Result]] = relationship(back_populates="job")


class OutboxMessage(Base):
    """A queue message written in the same transaction as the state change that causes it.

    The dispatcher publishes unpublished rows to the broker and retries until it takes them, so a
    broker that is down delays work but never loses it.
    """

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(primary_key=True)
    topic: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="SET NULL"), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_at: Mapped[datetime | None] = mapped_column(index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)


class Result(Base):
    __tablename__ = "results"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_uid: Mapped[str | None] = mapped_column(UID)  # the analysed series
    model_name: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    # the arithmetic behind the score (one model version gives slightly different scores in fp32, int8
    # and fp16): "onnxruntime" / "int8", "tensorrt" / "fp16", ...; NULL before revision 0003
    runtime: Mapped[str | None] = mapped_column(String(32))
    precision: Mapped[str | None] = mapped_column(String(16))
    score: Mapped[float | None] = mapped_column(Float)
    decision: Mapped[str] = mapped_column(String(32))
    slice_scores: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # the DICOM objects written for this result: [{"kind", "sop_instance_uid", "path"}]
    outputs: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    job: Mapped[Job] = relationship(back_populates="results")

    __table_args__ = (UniqueConstraint("study_id", "model_name", "model_version", name="uq_results_study_model"),)


class Export(Base):
    __tablename__ = "exports"

    id: Mapped[int] = mapped_column(primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id", ondelete="CASCADE"), index=True)
    destination: Mapped[str] = mapped_column(String(128))  # AE@host:port
    objects: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # SOP instance UIDs and paths
    state: Mapped[ExportState] = mapped_column(_enum(ExportState), default=ExportState.pending)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ExportAttempt(Base):
    """One C-STORE attempt of an export: when, how long, and why it failed."""

    __tablename__ = "export_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    export_id: Mapped[int] = mapped_column(ForeignKey("exports.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None]
    ok: Mapped[bool] = mapped_column(default=False)
    error: Mapped[str | None] = mapped_column(Text)
