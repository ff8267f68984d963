"""A full storage disk answers 0xA700, leaves no partial file, and recovers when space returns."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Instance
from listener import statuses
from ops.bench.series import build_ct_series
from tests.conftest import tmp_folder_empties
from tests.mounts import mounted
from tests.pynetdicom_scu import send_files


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB tmpfs as the storage root (root only; skipped elsewhere)."""
    with mounted("tmpfs", tmp_path / "storage", "size=3m") as mount_point:
        yield mount_point


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_disk_full_answers_out_of_resources_and_recovers(
    small_disk: Path, sessions: sessionmaker[Session], listener_factory: Callable[..., Any], tmp_path: Path,
    axial_ct_files: list[Path], scenario_report: Callable[..., None],
) -> None:
    files = build_ct_series(axial_ct_files, tmp_path / "study", 10)  # ~5.3 MB in all
    listener = listener_factory(sessions)
    assert listener.store.root == small_disk.resolve()
    results = send_files(listener.port, files)
    accepted = [f for f, s in zip(files, results, strict=True) if s == statuses.SUCCESS]
    refused = [s for s in results if s != statuses.SUCCESS]
    assert accepted and refused, results
    assert set(refused) == {statuses.OUT_OF_RESOURCES}
    # no partial file: every file under the root is a recorded, complete instance
    stored = [p for p in small_disk.rglob("*.dcm")]
    assert tmp_folder_empties(listener.store), list(listener.store.tmp_dir.iterdir())
    with sessions() as session:
        assert session.scalar(select(func.count(Instance.id))) == len(accepted) == len(stored)
        sizes = dict(session.execute(select(Instance.path, Instance.size_bytes)).all())
    assert all(p.stat().st_size == sizes[str(p.relative_to(small_disk))] for p in stored)

    # space returns: the sender's retry completes the study
    subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)], check=True)
    assert set(send_files(listener.port, files)) == {statuses.SUCCESS}
    with sessions() as session:
        assert session.scalar(select(func.count(Instance.id))) == 10
        uids = session.scalars(select(Instance.sop_instance_uid)).all()
    scenario_report("disk full (3 MB tmpfs), then space returns", sent=20, acknowledged=len(accepted) + 10,
                    stored=len(set(uids)), lost=10 - len(set(uids)), duplicated=len(uids) - len(set(uids)),
                    note=f"{len(refused)} answered 0xA700, no partial file")
