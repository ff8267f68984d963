"""At start, before serving: take back the rows of the last instances whose files never got their names.

The listener commits an instance's row while the instance's file is fsynced, renamed and its folder
fsynced (``listener.server``), and answers Success only once both are done. A crash between the two
(SIGKILL, a power cut) can leave a committed row whose file is still under its temporary name, which
the start removes, or whose rename never reached the disk. The sender had no answer for it and sends
it again, and a re-send heals such a row; but until then the database would count an instance the
node does not hold. So each start looks at the newest rows, those received in the minute before the
newest one (the only ones that can be in that state after the whole listener stopped), and takes back
those without a file, as the listener does when a file fails while its row commits.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import cast

from sqlalchemy import Engine, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from db.models import Instance, Series
from listener.records import PLACEMENT_WINDOW, InstanceRecorder
from listener.storage import InstanceStore
from ops.logs import event

log = logging.getLogger("triage.listener")

#: At most this many of the newest rows (by id) are looked at, a stat each before the listener serves:
#: those in flight at a stop are at most one per association (TRIAGE_MAX_ASSOCIATIONS per process).
RECENT_LIMIT = 2_000


def take_back_unplaced(sessions: sessionmaker[Session], store: InstanceStore,
                       window: timedelta = PLACEMENT_WINDOW, limit: int = RECENT_LIMIT) -> int:
    """Remove the rows, among the newest, whose instance file is missing; how many were removed.

    ``window``: how far back from the newest row to look. The rows in flight when the listener stopped
    were all committed within a C-STORE's time of it (milliseconds; seconds when the disk stalls).

    A database that cannot be reached is logged and passed over: the listener cannot store either until
    it is back, and a re-send heals what is left.
    """
    engine = cast(Engine, sessions.kw["bind"])
    try:
        return _take_back_unplaced(sessions, engine, store, window, limit)
    except (SQLAlchemyError, engine.dialect.loaded_dbapi.Error) as exc:  # the latter from raw connections
        event(log, "listener.recovery.skipped", logging.WARNING, error=type(exc).__name__,
              hint="check the database; rows of instances in flight at the last stop are healed when re-sent")
        return 0


def _take_back_unplaced(sessions: sessionmaker[Session], engine: Engine, store: InstanceStore, window: timedelta,
                        limit: int) -> int:
    with sessions() as session:
        newest_rows = session.execute(  # by the primary key's index: received_at has none, on purpose
            select(Instance.id, Instance.series_id, Series.study_id, Instance.path, Instance.received_at)
            .join(Series, Series.id == Instance.series_id)
            .order_by(Instance.id.desc())
            .limit(limit)
        ).all()
        session.rollback()
    if not newest_rows:
        return 0
    since = max(row.received_at for row in newest_rows) - window
    rows = [row for row in newest_rows if row.received_at >= since]
    missing = [row for row in rows if not store.exists(row.path)]
    if not missing:
        return 0
    recorder = InstanceRecorder(engine)
    for row in missing:
        with recorder.transaction() as transaction:
            transaction.take_back(row.id, row.series_id, row.study_id)
            transaction.commit()
    event(log, "listener.recovery.rows_taken_back", logging.WARNING, rows=len(missing), checked=len(rows),
          hint="instances in flight when the listener stopped; their senders were not answered and send "
               "them again")
    return len(missing)
