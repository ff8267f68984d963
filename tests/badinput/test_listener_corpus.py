"""Every case of the hostile corpus gets a clear answer from the listener, which stays up."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Instance
from listener import statuses
from ops.bench.series import copy_with_new_identity
from tests.badinput.corpus import build_corpus
from tests.conftest import tmp_folder_empties
from tests.dcmtk import echoscu
from tests.pynetdicom_scu import send_files, write_raw_instance


def test_hostile_corpus_is_refused_or_stored_and_valid_instances_still_pass(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any], tmp_path: Path, axial_ct_files: list[Path],
    scenario_report: Callable[..., None],
) -> None:
    listener = listener_factory(sessions)
    corpus = build_corpus(axial_ct_files[0])
    outcomes = {}
    for i, case in enumerate(corpus):
        path = write_raw_instance(tmp_path / f"case{i}.dcm", case.sop_instance_uid, case.body,
                                  sop_class_uid=case.sop_class_uid, transfer_syntax=case.transfer_syntax)
        good = copy_with_new_identity(axial_ct_files[1], tmp_path / f"good{i}.dcm")
        status, good_status = send_files(listener.port, [path, good])
        outcomes[case.name] = status
        assert good_status == statuses.SUCCESS, f"a valid instance after {case.name!r} was not stored"
        if case.verdict == "refuse":
            assert status is not None and status >= 0xA000, f"{case.name}: 0x{status or 0:04X}"
        else:
            assert status == statuses.SUCCESS, f"{case.name}: 0x{status or 0:04X}"
    assert echoscu(listener.port).returncode == 0
    with sessions() as session:
        stored = set(session.scalars(select(Instance.sop_instance_uid)))
    for case in corpus:
        assert (case.sop_instance_uid in stored) == (case.verdict == "store"), case.name
    # nothing outside the storage root, nothing left in its tmp folder
    assert tmp_folder_empties(listener.store), list(listener.store.tmp_dir.iterdir())
    assert not Path("/tmp/evil").exists()
    refused = sum(1 for case in corpus if case.verdict == "refuse")
    backend = sessions.kw["bind"].dialect.name
    scenario_report(f"hostile DICOM corpus + valid instances ({backend})", sent=2 * len(corpus),
                    acknowledged=2 * len(corpus) - refused, stored=len(stored), lost=0, duplicated=0,
                    note=f"{len(corpus)} hostile cases: {refused} refused with a status, {len(corpus) - refused} stored")
