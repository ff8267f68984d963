"""What the listener writes to the database for each stored instance, in one transaction."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, bindparam, delete, exists, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect

from db.models import Instance, Series, Study, StudyState
from db.prepared import PreparedStatement
from db.session import SQLITE_BEGIN


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
    study_id: int
    series_id: int


# The statements are built once from the models, compiled once per dialect (db.prepared) and run on
# a pooled DB-API connection: through a Session they cost 1.2-1.5 ms of CPU per instance, half of the
# C-STORE handler (py-spy, ops/bench/ingest.py), for tens of microseconds of database work.
#: How long after its row is committed an instance's file may still be on its way to its name: the listener
#: commits the row while the file is fsynced and renamed (``listener.server``), a millisecond apart as a
#: rule, seconds when the disk stalls. A row younger than this without its file is not another sender's
#: to heal (:meth:`RecordingTransaction.find_instance`), and the start looks this far back for rows in
#: flight at the stop (``listener.recovery``).
PLACEMENT_WINDOW = timedelta(seconds=60)

_FIND_PATH = select(Instance.path, (Instance.received_at >= bindparam("p_since")).label("recent")).where(
    Instance.sop_instance_uid == bindparam("p_sop"))
_STUDY_ID = select(Study.id).where(Study.study_uid == bindparam("study_uid"))
_SERIES_ID = select(Series.id).where(Series.series_uid == bindparam("series_uid"))
_REOPEN = (
    update(Study)
    .where(Study.id == bindparam("p_study"), Study.state == StudyState.complete)
    .values(state=StudyState.receiving, opened_at=bindparam("p_now"))
)
_TOUCH_STUDY = (
    update(Study)
    .where(Study.id == bindparam("p_study"))
    .values(last_instance_at=bindparam("p_now"), instance_count=Study.instance_count + 1)
)
_COUNT_SERIES = (
    update(Series).where(Series.id == bindparam("p_series")).values(instance_count=Series.instance_count + 1)
)
# Taking back the row of an instance whose file could not be placed after the row was committed: the
# instance goes, the counts go down again, and the series and study rows go too when this instance was
# what made them (nothing else in them, the study never completed: no job or outbox row refers to it).
_DROP_INSTANCE = delete(Instance).where(Instance.id == bindparam("p_instance"))
_UNCOUNT_STUDY = (
    update(Study).where(Study.id == bindparam("p_study")).values(instance_count=Study.instance_count - 1)
)
_UNCOUNT_SERIES = (
    update(Series).where(Series.id == bindparam("p_series")).values(instance_count=Series.instance_count - 1)
)
_DROP_EMPTY_SERIES = delete(Series).where(Series.id == bindparam("p_series"), Series.instance_count == 0)
_DROP_EMPTY_STUDY = delete(Study).where(
    Study.id == bindparam("p_study"), Study.instance_count == 0, Study.completions == 0,
    ~exists().where(Series.study_id == Study.id))
_STUDY_COLUMNS = ("study_uid", "state", "opened_at", "last_instance_at", "completions", "instance_count",
                  "created_at")
_SERIES_COLUMNS = ("study_id", "series_uid", "modality", "series_number", "instance_count", "created_at")
_INSTANCE_COLUMNS = ("series_id", "sop_instance_uid", "sop_class_uid", "transfer_syntax_uid", "instance_number",
                     "path", "size_bytes", "calling_ae", "received_at")


def _insert_ignore(dialect: Dialect, table: Any, columns: tuple[str, ...], key: str) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING on either back end (concurrent associations, one study)."""
    insert_ = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
    return insert_(table).values({c: bindparam(c) for c in columns}).on_conflict_do_nothing(index_elements=[key])


class InstanceRecorder:
    """Writes what the listener records per instance, on connections from ``engine``'s pool."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        dialect = engine.dialect
        self.sqlite = dialect.name == "sqlite"
        #: the driver's exceptions (PEP 249): IntegrityError is a re-send, Error anything else
        self.driver_errors: Any = dialect.loaded_dbapi
        self.find_path = PreparedStatement(_FIND_PATH, dialect)
        self.study_id = PreparedStatement(_STUDY_ID, dialect)
        self.series_id = PreparedStatement(_SERIES_ID, dialect)
        self.add_study = PreparedStatement(_insert_ignore(dialect, Study, _STUDY_COLUMNS, "study_uid"), dialect)
        self.add_series = PreparedStatement(_insert_ignore(dialect, Series, _SERIES_COLUMNS, "series_uid"), dialect)
        self.reopen = PreparedStatement(_REOPEN, dialect)
        self.touch_study = PreparedStatement(_TOUCH_STUDY, dialect)
        self.count_series = PreparedStatement(_COUNT_SERIES, dialect)
        self.add_instance = PreparedStatement(
            insert(Instance).values({c: bindparam(c) for c in _INSTANCE_COLUMNS}).returning(Instance.id), dialect)
        self.take_back = tuple(PreparedStatement(statement, dialect) for statement in (
            _DROP_INSTANCE, _UNCOUNT_STUDY, _UNCOUNT_SERIES, _DROP_EMPTY_SERIES, _DROP_EMPTY_STUDY))
        #: all of them, for the test that holds each to what SQLAlchemy itself would send
        self.statements = (self.find_path, self.study_id, self.series_id, self.add_study, self.add_series,
                           self.reopen, self.touch_study, self.count_series, self.add_instance, *self.take_back)

    @contextmanager
    def transaction(self) -> Iterator[RecordingTransaction]:
        """A transaction on a pooled connection: commit it, or it is rolled back when the block ends."""
        connection = self.engine.raw_connection()
        try:
            cursor = connection.cursor()
            if self.sqlite:  # as every transaction of the node's SQLite engine (db.session)
                cursor.execute(SQLITE_BEGIN)
            yield RecordingTransaction(self, connection, cursor)
        finally:
            connection.close()  # back to the pool, which rolls back whatever was not committed


class RecordingTransaction:
    """The statements of one C-STORE, uncommitted until :meth:`commit`."""

    def __init__(self, recorder: InstanceRecorder, connection: Any, cursor: Any) -> None:
        self._recorder = recorder
        self._connection = connection
        self._cursor = cursor

    def record(self, meta: InstanceMeta, *, path: str, size_bytes: int, calling_ae: str, now: datetime,
               ids: tuple[int, int] | None = None) -> Recorded:
        """Add the instance and restart its study's quiet period; the caller commits.

        ``ids`` are the (study, series) row ids when the caller already knows them (the listener keeps
        them for series it has seen), which saves four statements per instance on the hot path. A study
        that was already complete goes back to ``receiving`` with a new ``opened_at``, so it is completed,
        and analysed, again after the next quiet period.
        """
        r, cursor = self._recorder, self._cursor
        study_id, series_id = ids if ids is not None else self._hierarchy_ids(meta, now)
        reopened = r.reopen.execute(cursor, {"p_study": study_id, "p_now": now}).rowcount == 1
        r.touch_study.execute(cursor, {"p_study": study_id, "p_now": now})
        r.count_series.execute(cursor, {"p_series": series_id})
        instance_id = r.add_instance.execute(cursor, {
            "series_id": series_id,
            "sop_instance_uid": meta.sop_instance_uid,
            "sop_class_uid": meta.sop_class_uid,
            "transfer_syntax_uid": meta.transfer_syntax_uid,
            "instance_number": meta.instance_number,
            "path": path,
            "size_bytes": size_bytes,
            "calling_ae": calling_ae,
            "received_at": now,
        }).fetchone()[0]
        return Recorded(instance_id=instance_id, reopened=reopened, study_id=study_id, series_id=series_id)

    def find_instance(self, sop_instance_uid: str, now: datetime) -> tuple[str, bool] | None:
        """Storage path of an already recorded instance, and whether its row is younger than
        :data:`PLACEMENT_WINDOW` (its file may still be on its way); None if it is not recorded."""
        row = self._recorder.find_path.execute(
            self._cursor, {"p_sop": sop_instance_uid, "p_since": now - PLACEMENT_WINDOW}).fetchone()
        return None if row is None else (str(row[0]), bool(row[1]))

    def commit(self) -> None:
        self._connection.commit()

    def begin(self) -> None:
        """Begin the next transaction on this connection after :meth:`commit`."""
        if self._recorder.sqlite:  # the driver's own transaction handling is off (db.session)
            self._cursor.execute(SQLITE_BEGIN)

    def take_back(self, instance_id: int, series_id: int, study_id: int) -> None:
        """Remove a committed instance row whose file never reached its place; the caller commits.

        The counts go down again, and the instance's series and study rows go too where it was their only
        instance and the study never completed. A study this instance re-opened stays re-opened: it
        completes, and is analysed, once more.
        """
        ids = {"p_instance": instance_id, "p_series": series_id, "p_study": study_id}
        for statement in self._recorder.take_back:
            statement.execute(self._cursor, ids)

    def rollback(self) -> None:
        """Undo this transaction's statements and begin a new one (for the look-up after a refusal)."""
        self._connection.rollback()
        if self._recorder.sqlite:
            self._cursor.execute(SQLITE_BEGIN)

    def _hierarchy_ids(self, meta: InstanceMeta, now: datetime) -> tuple[int, int]:
        """(study id, series id) of the instance, creating the rows on first sight."""
        r, cursor = self._recorder, self._cursor
        r.add_study.execute(cursor, {
            "study_uid": meta.study_uid, "state": StudyState.receiving, "opened_at": now, "last_instance_at": now,
            "completions": 0, "instance_count": 0, "created_at": now})
        study_id = int(r.study_id.execute(cursor, {"study_uid": meta.study_uid}).fetchone()[0])
        r.add_series.execute(cursor, {
            "study_id": study_id, "series_uid": meta.series_uid, "modality": meta.modality,
            "series_number": meta.series_number, "instance_count": 0, "created_at": now})
        series_id = int(r.series_id.execute(cursor, {"series_uid": meta.series_uid}).fetchone()[0])
        return study_id, series_id
