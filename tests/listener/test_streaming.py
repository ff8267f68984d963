"""Data sets written to their temporary file while they arrive (listener.streaming, listener.reactor)."""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import CTImageStorage  # type: ignore[attr-defined]
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Instance
from listener import statuses
from listener.reactor import presentation_data_values
from listener.storage import InstanceStore
from listener.streaming import InstanceStream
from ops.bench.series import build_ct_series
from tests.conftest import require_tools, tmp_folder_empties, wait_until
from tests.dcmtk import storescu
from workers.requestor import associate

EXPLICIT_LE = "1.2.840.10008.1.2.1"


def _fragments(assoc: Any, path: Path, max_pdu: int) -> tuple[str, list[P_DATA]]:
    """The P-DATA primitives of a C-STORE-RQ of ``path``, as pynetdicom would send them."""
    ds = pydicom.dcmread(path)
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = ds.SOPClassUID
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 2
    request.DataSet = BytesIO(encode(ds, False, True))
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    context = assoc._get_valid_context(CTImageStorage, EXPLICIT_LE, "scu")
    return str(ds.SOPInstanceUID), list(message.encode_msg(context.context_id, max_pdu))


def _associate(port: int) -> Any:
    ae = AE(ae_title="STREAMSCU")
    ae.add_requested_context(CTImageStorage, [EXPLICIT_LE])
    assoc = associate(ae, "127.0.0.1", port, ae_title="TRIAGE")
    assert assoc.is_established
    return assoc


def test_data_sets_from_dcmtk_are_written_while_they_arrive(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any], tmp_path: Path,
    axial_ct_files: list[Path], monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_tools("storescu")
    files = build_ct_series(axial_ct_files, tmp_path / "study", 12)

    def written_from_memory(self: InstanceStore, data: bytes) -> Path:
        raise AssertionError("a data set sent by storescu was not written while it arrived")

    monkeypatch.setattr(InstanceStore, "write_temp", written_from_memory)
    listener = listener_factory(sessions)
    result = storescu(listener.port, files)
    assert result.returncode == 0, result.stderr
    with sessions() as session:
        rows = dict(session.execute(select(Instance.sop_instance_uid, Instance.path)).all())
    assert len(rows) == len(files)
    for path in files:
        sent = pydicom.dcmread(path)
        stored = pydicom.dcmread(listener.store.absolute(rows[sent.SOPInstanceUID]))
        assert stored == sent  # every element, pixel data included
    assert tmp_folder_empties(listener.store), list(listener.store.tmp_dir.iterdir())


def test_an_association_aborted_mid_data_set_leaves_no_temporary_file(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any], axial_ct_files: list[Path],
) -> None:
    listener = listener_factory(sessions)
    assoc = _associate(listener.port)
    _, fragments = _fragments(assoc, axial_ct_files[0], 16_384)
    for primitive in fragments[:len(fragments) // 2]:  # the command set and half of the data set
        assoc.dul.send_pdu(primitive)
    assert wait_until(lambda: any(listener.store.tmp_dir.iterdir())), "the data set was not being written"
    assoc.abort()
    assert wait_until(lambda: not listener.ae.active_associations)
    assert wait_until(lambda: not any(listener.store.tmp_dir.iterdir())), list(listener.store.tmp_dir.iterdir())
    with sessions() as session:
        assert session.scalar(select(func.count(Instance.id))) == 0


def test_a_data_set_starting_in_the_command_pdu_is_written_from_memory(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any], axial_ct_files: list[Path],
) -> None:
    listener = listener_factory(sessions)
    assoc = _associate(listener.port)
    try:
        sop_uid, fragments = _fragments(assoc, axial_ct_files[0], 16_384)
        merged = P_DATA()  # the last command fragment and the first data set fragment in one PDU
        for primitive in fragments[:2]:
            merged.presentation_data_value_list.extend(primitive.presentation_data_value_list)
        assoc._reactor_checkpoint.clear()  # as pynetdicom's own send_c_store: the answer is this thread's
        assert wait_until(lambda: assoc._is_paused)
        for primitive in [merged, *fragments[2:]]:
            assoc.dul.send_pdu(primitive)
        _, response = assoc.dimse.get_msg(block=True)
        assoc._reactor_checkpoint.set()
        assert response.Status == statuses.SUCCESS
    finally:
        assoc.release()
    with sessions() as session:
        path = session.scalar(select(Instance.path).where(Instance.sop_instance_uid == sop_uid))
    assert path is not None
    assert pydicom.dcmread(listener.store.absolute(path)) == pydicom.dcmread(axial_ct_files[0])
    assert tmp_folder_empties(listener.store), list(listener.store.tmp_dir.iterdir())


def _pdu(*items: bytes) -> bytearray:
    body = b"".join(items)
    return bytearray(struct.pack(">BBL", 0x04, 0, len(body)) + body)


def _item(context_id: int, data: bytes) -> bytes:
    return struct.pack(">LB", len(data) + 1, context_id) + data


def test_p_data_items_are_read_in_place_only_when_they_fill_the_pdu_exactly() -> None:
    pdu = _pdu(_item(1, b"\x03command"), _item(3, b"\x00data"))
    items = presentation_data_values(pdu)
    assert items is not None
    assert [(cid, bytes(view)) for cid, view in items] == [(1, b"\x03command"), (3, b"\x00data")]
    # anything else is left to pynetdicom's own decoder
    assert presentation_data_values(_pdu()) is None  # no item
    assert presentation_data_values(_pdu(_item(1, b""))) is None  # no message control header
    assert presentation_data_values(_pdu(_item(1, b"\x00data"))[:-1]) is None  # item longer than the PDU
    assert presentation_data_values(_pdu(_item(1, b"\x00data"), b"\x00\x00")) is None  # trailing bytes


def test_fragments_staged_while_the_disk_is_busy_are_written_in_one_call(
    tmp_path: Path, pwritev_calls: list[int],
) -> None:
    store = InstanceStore(tmp_path / "store")
    io = ThreadPoolExecutor(max_workers=1)
    busy = threading.Event()
    io.submit(busy.wait)  # the association's I/O thread still writing the previous data set
    stream = InstanceStream(store, io)
    prefix, fragments = b"\x00" * 128 + b"DICM", [os.urandom(130_000) for _ in range(8)]
    stream.begin(prefix)
    for fragment in fragments:
        stream.feed(fragment)
    finishing = stream.finish()
    busy.set()
    written = finishing.result(timeout=30)
    assert written.read_bytes() == prefix + b"".join(fragments)
    assert len(pwritev_calls) == 1  # whatever was staged, in one call with the last block
    store.discard(written)
    io.shutdown()


def test_the_next_data_set_file_is_created_while_the_association_waits_for_it(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any], tmp_path: Path,
    axial_ct_files: list[Path],
) -> None:
    listener = listener_factory(sessions)
    first, second = build_ct_series(axial_ct_files, tmp_path / "study", 2)
    assoc = _associate(listener.port)
    try:
        assert assoc.send_c_store(pydicom.dcmread(first)).Status == statuses.SUCCESS
        assert wait_until(lambda: len(list(listener.store.tmp_dir.iterdir())) == 1)
        (spare,) = listener.store.tmp_dir.iterdir()
        inode = spare.stat().st_ino
        assert assoc.send_c_store(pydicom.dcmread(second)).Status == statuses.SUCCESS
    finally:
        assoc.release()
    second_uid = pydicom.dcmread(second).SOPInstanceUID
    with sessions() as session:
        path = session.scalar(select(Instance.path).where(Instance.sop_instance_uid == second_uid))
    assert path is not None
    stored = listener.store.absolute(path)
    assert stored.stat().st_ino == inode  # the file made ahead became the second instance
    assert pydicom.dcmread(stored) == pydicom.dcmread(second)
    assert tmp_folder_empties(listener.store), list(listener.store.tmp_dir.iterdir())
