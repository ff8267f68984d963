"""The listener against dcmtk as the real peer: echo, store in every encoding, access and safety."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Instance, Series, Study
from ops.bench.series import build_ct_series, copy_with_new_identity, new_uid
from tests.conftest import require_tools, tmp_folder_empties
from tests.dcmtk import ENCODERS, PROPOSE, echoscu, reencode, storescu

pytestmark = pytest.mark.dcmtk


@pytest.fixture(autouse=True)
def _dcmtk() -> None:
    require_tools("echoscu", "storescu", "dcmcjpeg", "dcmcjpls", "dcmcrle", "dcmconv")


def _stored_dataset(listener: Any, session: Session, sop_uid: str) -> pydicom.Dataset:
    row = session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_uid))
    assert row is not None, f"no row for {sop_uid}"
    path = listener.store.absolute(row.path)
    assert path.is_file()
    assert row.size_bytes == path.stat().st_size
    return pydicom.dcmread(path)


def test_echo(sessions: sessionmaker[Session], listener_factory: Callable[..., Any]) -> None:
    listener = listener_factory(sessions)
    result = echoscu(listener.port)
    assert result.returncode == 0, result.stderr


def test_real_ct_cr_and_every_encoding_are_stored_as_sent(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any], tmp_path: Path,
    ct_files: list[Path], cr_file: Path,
) -> None:
    listener = listener_factory(sessions)
    # the real files as they are: all NY-SBU slices (axial and reformats) and the real CR
    result = storescu(listener.port, [*ct_files, cr_file])
    assert result.returncode == 0, result.stderr
    sent: dict[str, tuple[Path, str | None]] = {}
    for path in [*ct_files, cr_file]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        sent[ds.SOPInstanceUID] = (path, None)

    # copies re-encoded by dcmtk, each in a series of its own in one new study
    study_uid = new_uid()
    for number, encoding in enumerate(ENCODERS, start=10):
        plain = copy_with_new_identity(ct_files[number % len(ct_files)], tmp_path / f"{encoding}-plain.dcm",
                                       study_uid=study_uid, series_number=number)
        encoded = reencode(plain, encoding, tmp_path / f"{encoding}.dcm")
        result = storescu(listener.port, [encoded], PROPOSE[encoding], "-R")
        assert result.returncode == 0, f"{encoding}: {result.stderr}"
        assert "Store Failed" not in result.stderr
        sent[pydicom.dcmread(encoded, stop_before_pixels=True).SOPInstanceUID] = (encoded, encoding)

    with sessions() as session:
        assert session.scalar(select(func.count(Instance.id))) == len(sent)
        for sop_uid, (path, encoding) in sent.items():
            original = pydicom.dcmread(path)
            if 0xFFFCFFFC in original:  # dcmtk drops Data Set Trailing Padding when it sends
                del original[0xFFFCFFFC]
            stored = _stored_dataset(listener, session, sop_uid)
            assert stored.file_meta.TransferSyntaxUID == original.file_meta.TransferSyntaxUID, encoding
            assert stored == original, f"dataset of {path.name} changed in storage"
            row = session.scalar(select(Instance).where(Instance.sop_instance_uid == sop_uid))
            assert row is not None
            series = session.get(Series, row.series_id)
            assert series is not None and series.series_uid == original.SeriesInstanceUID
            assert session.get(Study, series.study_id).study_uid == original.StudyInstanceUID  # type: ignore[union-attr]
            assert row.transfer_syntax_uid == original.file_meta.TransferSyntaxUID
            assert row.sop_class_uid == original.SOPClassUID
            if encoding is not None:  # compressed pixels decode to the original values
                assert (stored.pixel_array == original.pixel_array).all()


def test_unknown_calling_ae_and_wrong_called_ae_are_rejected(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any], ct_files: list[Path],
) -> None:
    listener = listener_factory(sessions, allowed_aes=["CT_SCANNER"])
    assert echoscu(listener.port, calling="CT_SCANNER").returncode == 0
    refused = echoscu(listener.port, calling="INTRUDER")
    assert refused.returncode != 0 and "Association Rejected" in refused.stderr
    wrong_called = echoscu(listener.port, calling="CT_SCANNER", called="SOMEONE_ELSE")
    assert wrong_called.returncode != 0 and "Association Rejected" in wrong_called.stderr
    stored = storescu(listener.port, ct_files[:1], calling="INTRUDER")
    assert stored.returncode != 0
    with sessions() as session:
        assert session.scalar(select(func.count(Instance.id))) == 0


def test_same_instance_twice_is_stored_once(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any], ct_files: list[Path],
) -> None:
    listener = listener_factory(sessions)
    for _ in range(2):
        result = storescu(listener.port, ct_files[:3])
        assert result.returncode == 0, result.stderr
    with sessions() as session:
        assert session.scalar(select(func.count(Instance.id))) == 3
        assert session.scalar(select(Study.instance_count).limit(1)) in (1, 2)
    files = [p for p in listener.store.root.rglob("*.dcm")]
    assert len(files) == 3
    assert tmp_folder_empties(listener.store), list(listener.store.tmp_dir.iterdir())


def test_a_built_series_keeps_its_hierarchy(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any], axial_ct_files: list[Path],
    tmp_path: Path,
) -> None:
    listener = listener_factory(sessions)
    study_uid = new_uid()
    axial = build_ct_series(axial_ct_files, tmp_path / "axial", 30, study_uid=study_uid, series_number=2)
    thin = build_ct_series(axial_ct_files, tmp_path / "thin", 10, study_uid=study_uid, series_number=3)
    result = storescu(listener.port, [*axial, *thin])
    assert result.returncode == 0, result.stderr
    with sessions() as session:
        study = session.scalar(select(Study).where(Study.study_uid == study_uid))
        assert study is not None and study.instance_count == 40
        counts = sorted(session.scalars(select(Series.instance_count).where(Series.study_id == study.id)))
        assert counts == [10, 30]
