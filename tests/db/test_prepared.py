"""The listener's statements, run on the DB-API cursor, send exactly what SQLAlchemy would send."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Enum, Integer, event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db.models import StudyState, UTCDateTime, utcnow
from db.prepared import PreparedStatement
from listener.records import InstanceRecorder


def _sample(type_: Any) -> Any:
    if isinstance(type_, UTCDateTime):
        return utcnow()
    if isinstance(type_, Enum):
        return StudyState.complete
    return 7 if isinstance(type_, Integer) else "1.2.826.0.1.3680043.8.498.7"


def _sent_by_sqlalchemy(session: Session, prepared: PreparedStatement, values: dict[str, Any]) -> tuple[str, Any]:
    sent: list[tuple[str, Any]] = []
    engine = session.get_bind()

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", capture)
    try:
        with engine.connect() as connection, connection.begin() as transaction:
            try:
                connection.execute(prepared.statement, values)
            except SQLAlchemyError:
                pass  # a foreign key the sample values do not meet: what was sent is captured already
            transaction.rollback()
    finally:
        event.remove(engine, "before_cursor_execute", capture)
    return sent[-1]


def test_each_statement_sends_the_sql_and_parameters_sqlalchemy_sends(sessions: sessionmaker[Session]) -> None:
    with sessions() as session:
        recorder = InstanceRecorder(session.get_bind())
        for prepared in recorder.statements:
            compiled = prepared.statement.compile(dialect=session.get_bind().dialect)
            values = {name: _sample(bind.type) for name, bind in compiled.binds.items()
                      if bind.value is None and not name.startswith("%")}
            sql, parameters = _sent_by_sqlalchemy(session, prepared, values)
            assert prepared.sql == sql
            assert prepared.parameters(values) == parameters, prepared.sql
