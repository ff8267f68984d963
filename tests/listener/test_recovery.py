"""The start takes back the rows of the last instances whose files never got their names."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Instance, Series, Study, utcnow
from db.session import make_engine, make_sessionmaker
from listener.records import PLACEMENT_WINDOW, InstanceMeta, InstanceRecorder
from listener.recovery import take_back_unplaced
from listener.storage import InstanceStore
from ops.bench.series import new_uid


def _record(recorder: InstanceRecorder, store: InstanceStore, study: str, series: str, *, placed: bool,
            age: timedelta = timedelta()) -> str:
    sop = new_uid()
    meta = InstanceMeta(study_uid=study, series_uid=series, sop_instance_uid=sop,
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.2", transfer_syntax_uid="1.2.840.10008.1.2.1",
                        modality="CT", series_number=1, instance_number=1)
    rel = store.relative_path(study, series, sop)
    with recorder.transaction() as transaction:
        transaction.record(meta, path=rel.as_posix(), size_bytes=4, calling_ae="SCU", now=utcnow() - age)
        transaction.commit()
    if placed:
        store.write(b"DICM", rel)
    return sop


def test_rows_without_files_among_the_newest_are_taken_back(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    store = InstanceStore(tmp_path / "storage")
    with sessions() as session:
        recorder = InstanceRecorder(cast(Engine, session.get_bind()))
    study, series, lone_study, lone_series = new_uid(), new_uid(), new_uid(), new_uid()
    older_unplaced = _record(recorder, store, study, series, placed=False, age=PLACEMENT_WINDOW * 2)
    kept = _record(recorder, store, study, series, placed=True)
    _record(recorder, store, study, series, placed=False)  # in flight at the stop: its file never placed
    _record(recorder, store, lone_study, lone_series, placed=False)  # the only instance of its study

    assert take_back_unplaced(sessions, store, limit=1) == 1  # the newest row alone: the lone study's
    assert take_back_unplaced(sessions, store) == 1
    with sessions() as session:
        # older than the window before the newest row: not in flight at the stop, left for a re-send to heal
        assert set(session.scalars(select(Instance.sop_instance_uid))) == {older_unplaced, kept}
        assert session.execute(select(Study.study_uid, Study.instance_count)).all() == [(study, 2)]
        assert session.execute(select(Series.series_uid, Series.instance_count)).all() == [(series, 2)]
    assert take_back_unplaced(sessions, store) == 0


def test_an_empty_database_has_nothing_to_take_back(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    assert take_back_unplaced(sessions, InstanceStore(tmp_path / "storage")) == 0


def test_a_database_that_cannot_be_reached_is_passed_over(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'missing' / 'triage.db'}")  # its folder does not exist
    with caplog.at_level("WARNING", logger="triage.listener"):
        assert take_back_unplaced(make_sessionmaker(engine), InstanceStore(tmp_path / "storage")) == 0
    assert sum("listener.recovery.skipped" in r.getMessage() for r in caplog.records) == 1
