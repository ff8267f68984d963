"""What the listener refuses, and that refusing never stores, crashes or escapes the storage root."""

from __future__ import annotations

import errno
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from db.models import Instance, Series, Study, utcnow
from db.session import make_engine, make_sessionmaker
from listener import statuses
from listener.records import PLACEMENT_WINDOW, RecordingTransaction
from listener.storage import InstanceStore
from ops.bench.series import copy_with_new_identity, new_uid
from tests.badinput.corpus import encode_data_set
from tests.conftest import require_tools, tmp_folder_empties
from tests.dcmtk import echoscu
from tests.pynetdicom_scu import send_files, write_raw_instance
from tests.services import free_port


def _files_under(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def _files_left(store: InstanceStore) -> list[Path]:
    """The files under the storage root once the associations closed (each keeps the empty file of
    its next C-STORE under tmp/ until then)."""
    tmp_folder_empties(store)
    return _files_under(store.root)


def test_malformed_data_set_gets_a_failure_and_the_next_association_works(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any], tmp_path: Path, ct_files: list[Path],
) -> None:
    require_tools("echoscu")
    listener = listener_factory(sessions)
    garbage = write_raw_instance(tmp_path / "garbage.dcm", new_uid(), b"\x08\x00\x16\x00UI\xff\xff" + b"\x17" * 300)
    truncated_ds = pydicom.dcmread(copy_with_new_identity(ct_files[0], tmp_path / "ok.dcm"))
    body = encode_data_set(truncated_ds)
    truncated = write_raw_instance(tmp_path / "truncated.dcm", truncated_ds.SOPInstanceUID, body[: len(body) // 3])
    results = send_files(listener.port, [garbage, truncated])
    assert all(s is not None and s >= 0xA000 for s in results), [hex(s or 0) for s in results]
    assert results[0] in (statuses.CANNOT_UNDERSTAND, statuses.MISSING_ATTRIBUTE)
    assert echoscu(listener.port).returncode == 0
    good = copy_with_new_identity(ct_files[1], tmp_path / "good.dcm")
    assert send_files(listener.port, [good]) == [statuses.SUCCESS]
    with sessions() as session:
        assert session.scalar(select(func.count(Instance.id))) == 1
    assert len(_files_left(listener.store)) == 1


@pytest.mark.parametrize("crafted", ["../../../escaped", "1.2.3/../../../escaped", "/tmp/escaped", "1.2..3"])
def test_uid_with_path_characters_cannot_write_outside_the_root(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any], tmp_path: Path, ct_files: list[Path],
    crafted: str,
) -> None:
    listener = listener_factory(sessions)
    ds = pydicom.dcmread(ct_files[0])
    ds.SOPInstanceUID = crafted
    ds.StudyInstanceUID = crafted
    ds.SeriesInstanceUID = crafted
    hostile = write_raw_instance(tmp_path / "hostile.dcm", crafted, encode_data_set(ds))
    assert send_files(listener.port, [hostile]) == [statuses.INVALID_UID]
    assert _files_left(listener.store) == []
    assert not list(tmp_path.parent.rglob("escaped*"))
    assert not Path("/tmp/escaped").exists()
    with sessions() as session:
        assert session.scalar(select(func.count(Instance.id))) == 0


def test_request_and_data_set_disagreeing_is_refused(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any], tmp_path: Path, ct_files: list[Path],
) -> None:
    listener = listener_factory(sessions)
    ds = pydicom.dcmread(copy_with_new_identity(ct_files[0], tmp_path / "a.dcm"))
    lying = write_raw_instance(tmp_path / "lying.dcm", new_uid(), encode_data_set(ds))
    assert send_files(listener.port, [lying]) == [statuses.DATASET_MISMATCH]
    assert _files_left(listener.store) == []


def test_database_unavailable_answers_out_of_resources_and_leaves_no_file(
    listener_factory: Callable[..., Any], tmp_path: Path, ct_files: list[Path], scenario_report: Callable[..., None],
) -> None:
    # a PostgreSQL URL on a loopback port where nothing listens: every connection fails
    dead = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none",
                       connect_args={"connect_timeout": 2})
    listener = listener_factory(make_sessionmaker(dead))
    instance = copy_with_new_identity(ct_files[0], tmp_path / "one.dcm")
    assert send_files(listener.port, [instance]) == [statuses.OUT_OF_RESOURCES]
    assert _files_left(listener.store) == []
    scenario_report("database unavailable", sent=1, acknowledged=0, stored=0, lost=0, duplicated=0,
                    note="answered 0xA700, no orphan file")


def test_a_row_left_without_its_file_is_healed_by_a_resend_once_it_is_not_in_flight(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any], tmp_path: Path, ct_files: list[Path],
) -> None:
    listener = listener_factory(sessions)
    instance = copy_with_new_identity(ct_files[0], tmp_path / "one.dcm")
    assert send_files(listener.port, [instance]) == [statuses.SUCCESS]
    with sessions() as session:
        stored = listener.store.root / session.scalars(select(Instance.path)).one()
    stored.unlink()  # its row left without its file, as a crash between the commit and the rename leaves it
    # young: another association's file could still be on its way to that name, so the sender is asked to retry
    assert send_files(listener.port, [instance]) == [statuses.OUT_OF_RESOURCES]
    assert not stored.exists() and _files_left(listener.store) == []
    # older than that: the re-send heals it
    with sessions() as session, session.begin():
        session.execute(update(Instance).values(received_at=utcnow() - 2 * PLACEMENT_WINDOW))
    assert send_files(listener.port, [instance]) == [statuses.SUCCESS]
    assert pydicom.dcmread(stored) == pydicom.dcmread(instance)
    with sessions() as session:
        assert session.scalar(select(func.count(Instance.id))) == 1


def test_a_failed_commit_removes_the_placed_file(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any], tmp_path: Path, ct_files: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    listener = listener_factory(sessions)
    driver_errors = listener._recorder.driver_errors  # what the database driver raises (PEP 249)
    failed = threading.Event()

    def failing_commit(self: RecordingTransaction) -> None:
        failed.set()
        raise driver_errors.OperationalError("disk I/O error")

    placed: list[Path] = []
    place = InstanceStore.place

    def place_after_the_failure(self: InstanceStore, tmp: Path, rel: Path) -> None:
        assert failed.wait(10)  # the file reaches its name after the commit failed: the worst order
        place(self, tmp, rel)
        placed.append(self.root / rel)

    monkeypatch.setattr(RecordingTransaction, "commit", failing_commit)
    monkeypatch.setattr(InstanceStore, "place", place_after_the_failure)
    instance = copy_with_new_identity(ct_files[0], tmp_path / "one.dcm")
    assert send_files(listener.port, [instance]) == [statuses.OUT_OF_RESOURCES]
    monkeypatch.undo()
    # the file had its final name (written, fsynced, renamed) ...
    assert [p.name for p in placed] == [pydicom.dcmread(instance, stop_before_pixels=True).SOPInstanceUID + ".dcm"]
    # ... and nothing is left once the commit failed: no file, no temporary file, no row
    assert _files_left(listener.store) == []
    with sessions() as session:
        assert session.scalar(select(func.count(Instance.id))) == 0
    # the sender's retry stores it
    assert send_files(listener.port, [instance]) == [statuses.SUCCESS]


def test_a_file_that_cannot_be_placed_takes_its_committed_row_back(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any], tmp_path: Path, ct_files: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    listener = listener_factory(sessions)
    first = copy_with_new_identity(ct_files[0], tmp_path / "first.dcm")
    assert send_files(listener.port, [first]) == [statuses.SUCCESS]
    committed = threading.Event()
    commit = RecordingTransaction.commit

    def noted_commit(self: RecordingTransaction) -> None:
        commit(self)
        committed.set()

    def failing_place(self: InstanceStore, tmp: Path, rel: Path) -> None:
        assert committed.wait(10)  # the row is committed before the file fails: the worst order
        raise OSError(errno.EIO, "Input/output error")

    # one instance of a new study, one of the first one's series (and study)
    new_study = copy_with_new_identity(ct_files[1], tmp_path / "new-study.dcm")
    same_series = tmp_path / "same-series.dcm"
    ds = pydicom.dcmread(copy_with_new_identity(ct_files[1], tmp_path / "tmp.dcm"))
    kept = pydicom.dcmread(first, stop_before_pixels=True)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = kept.StudyInstanceUID, kept.SeriesInstanceUID
    ds.save_as(same_series)
    monkeypatch.setattr(RecordingTransaction, "commit", noted_commit)
    monkeypatch.setattr(InstanceStore, "place", failing_place)
    for failing in (new_study, same_series):
        committed.clear()
        assert send_files(listener.port, [failing]) == [statuses.OUT_OF_RESOURCES]
    monkeypatch.undo()
    # the rows are taken back: the first instance alone, its counts as they were, no empty study or series
    with sessions() as session:
        assert session.scalars(select(Instance.sop_instance_uid)).all() == [kept.SOPInstanceUID]
        assert session.execute(select(Study.study_uid, Study.instance_count)).all() == [(kept.StudyInstanceUID, 1)]
        assert session.execute(select(Series.series_uid, Series.instance_count)).all() == [
            (kept.SeriesInstanceUID, 1)]
    assert [p.name for p in _files_left(listener.store)] == [kept.SOPInstanceUID + ".dcm"]
    # the sender's retries store them
    assert send_files(listener.port, [new_study, same_series]) == [statuses.SUCCESS, statuses.SUCCESS]
    with sessions() as session:
        assert session.scalar(select(func.count(Instance.id))) == 3
        assert session.scalar(select(Study.instance_count).where(Study.study_uid == kept.StudyInstanceUID)) == 2
