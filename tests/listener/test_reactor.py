"""The event-driven acceptor (listener/reactor.py): the timers and ends pynetdicom's polling loops handled.

Throughput is the ingest benchmark's business; these tests check that waiting for events instead of
polling lost none of the association's exits: a peer that connects and leaves, a peer that goes
silent past the network timeout, a peer that aborts, many C-STOREs on one association; and that
C-STORE responses sent past the DUL's queue keep their order and give way to anyone listening.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE, evt
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Instance
from listener.reactor import SharedContexts, WakingAssociation, WakingDUL
from tests.conftest import require_tools, wait_until
from tests.dcmtk import echoscu
from workers.requestor import associate


def _scu() -> AE:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    return ae


def test_a_connection_that_never_asks_for_an_association_is_let_go_at_once(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any],
) -> None:
    # a load balancer's health check or a port scan: connect, then close without a word of DICOM
    listener = listener_factory(sessions, acse_timeout=30, max_associations=2)
    closed: list[object] = []
    listener._server.bind(evt.EVT_CONN_CLOSE, closed.append)
    for _ in range(4):  # more probes than the association limit
        with socket.create_connection(("127.0.0.1", listener.port)):
            pass
    # until each probe has had its association thread, "none active" may be true before they start
    assert wait_until(lambda: len(closed) == 4 and not listener.ae.active_associations, 3), \
        f"{4 - len(closed)} probe(s) still hold an association thread: it would wait acse_timeout (30 s)"
    require_tools("echoscu")
    assert echoscu(listener.port).returncode == 0


def test_an_idle_association_is_aborted_after_the_network_timeout(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any],
) -> None:
    listener = listener_factory(sessions, network_timeout=0.5)
    assoc = associate(_scu(), "127.0.0.1", listener.port, ae_title="TRIAGE")
    assert assoc.is_established
    (accepted,) = listener.ae.active_associations
    assert isinstance(accepted, WakingAssociation)
    assert wait_until(lambda: not assoc.is_established, 10), "the silent association was never ended"
    assert assoc.is_aborted
    assert wait_until(lambda: not listener.ae.active_associations, 3)


def test_a_peer_abort_ends_the_association_and_the_next_one_is_served(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any],
) -> None:
    listener = listener_factory(sessions)
    assoc = associate(_scu(), "127.0.0.1", listener.port, ae_title="TRIAGE")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.abort()
    assert wait_until(lambda: not listener.ae.active_associations, 3)
    again = associate(_scu(), "127.0.0.1", listener.port, ae_title="TRIAGE")
    assert again.send_c_echo().Status == 0x0000
    again.release()
    assert again.is_released


def test_associations_share_the_servers_contexts_instead_of_deep_copies_of_them(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any],
) -> None:
    # pynetdicom deep-copies them into each association it accepts: 13.6 ms of CPU each for the listener's
    listener = listener_factory(sessions)
    peers = [associate(_scu(), "127.0.0.1", listener.port, ae_title="TRIAGE") for _ in range(2)]
    assert all(peer.is_established for peer in peers)
    served = listener._server.contexts
    assert isinstance(served, SharedContexts)
    assert {str(cx.abstract_syntax) for cx in served} >= {Verification, CTImageStorage}
    accepted = [assoc.acceptor.supported_contexts for assoc in listener.ae.active_associations]
    assert len(accepted) == 2
    for contexts in accepted:  # a list of its own, of the server's context objects
        assert contexts is not served and not isinstance(contexts, SharedContexts)
        assert len(contexts) == len(served) and all(mine is theirs for mine, theirs in zip(contexts, served))
    for peer in peers:  # negotiated as before: both contexts accepted, with a transfer syntax the peer offered
        assert {str(cx.abstract_syntax) for cx in peer.accepted_contexts} == {Verification, CTImageStorage}
        assert peer.send_c_echo().Status == 0x0000
        peer.release()
        assert peer.is_released


def test_many_stores_and_echoes_on_one_association_are_each_answered(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any], ct_files: list[Path],
) -> None:
    listener = listener_factory(sessions)
    datasets = [pydicom.dcmread(path) for path in ct_files]
    assoc = associate(_scu(), "127.0.0.1", listener.port, ae_title="TRIAGE")
    assert assoc.is_established
    statuses = []
    for dataset in datasets:
        statuses.append(assoc.send_c_store(dataset).Status)
        statuses.append(assoc.send_c_echo().Status)
    assoc.release()
    assert assoc.is_released
    assert statuses == [0x0000] * (2 * len(datasets))
    with sessions() as session:
        assert session.scalar(select(func.count(Instance.id))) == len({d.SOPInstanceUID for d in datasets})



@pytest.fixture
def sent_pdus(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many P-DATA PDUs the listener's DULs sent from the handler's thread, and how many they queued."""
    counts = {"now": 0, "queued": 0}
    send_now, send_pdu = WakingDUL.send_now, WakingDUL.send_pdu

    def counting_send_now(self: WakingDUL, encoded: bytes) -> bool:
        sent = send_now(self, encoded)
        counts["now"] += sent
        return sent

    def counting_send_pdu(self: WakingDUL, primitive: Any) -> None:
        counts["queued"] += isinstance(primitive, P_DATA)
        send_pdu(self, primitive)

    monkeypatch.setattr(WakingDUL, "send_now", counting_send_now)
    monkeypatch.setattr(WakingDUL, "send_pdu", counting_send_pdu)
    return counts


def test_store_responses_leave_from_the_handler_thread_and_echo_responses_through_the_queue(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any], ct_files: list[Path],
    sent_pdus: dict[str, int],
) -> None:
    listener = listener_factory(sessions)
    datasets = [pydicom.dcmread(path) for path in ct_files[:4]]
    assoc = associate(_scu(), "127.0.0.1", listener.port, ae_title="TRIAGE")
    answers = []
    for dataset in datasets:  # each answer must be the one to its own request, in turn
        answers.append(("echo", assoc.send_c_echo().Status))
        answers.append(("store", assoc.send_c_store(dataset).Status))
    assoc.release()
    assert answers == [("echo", 0), ("store", 0)] * len(datasets)
    assert sent_pdus == {"now": len(datasets), "queued": len(datasets)}


def test_with_someone_listening_to_sent_pdus_store_responses_go_through_the_dul(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any], ct_files: list[Path],
    sent_pdus: dict[str, int],
) -> None:
    listener = listener_factory(sessions)
    assoc = associate(_scu(), "127.0.0.1", listener.port, ae_title="TRIAGE")
    (accepted,) = listener.ae.active_associations
    seen: list[Any] = []
    accepted.bind(evt.EVT_PDU_SENT, lambda event: seen.append(event.pdu))
    assert assoc.send_c_store(pydicom.dcmread(ct_files[0])).Status == 0x0000
    assoc.release()
    assert sent_pdus == {"now": 0, "queued": 1}
    assert [type(pdu) for pdu in seen if isinstance(pdu, P_DATA_TF)] == [P_DATA_TF]


def test_a_handler_failing_after_its_answer_sends_no_second_response(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any], ct_files: list[Path],
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    # the row is committed and Success sent from the handler (answer_now); an error after that makes
    # pynetdicom hand over a failure status for the same request, which must not reach the sender
    from listener.server import Listener

    def failing(self: Listener, series_uid: str, ids: tuple[int, int]) -> None:
        raise RuntimeError("after the answer")

    monkeypatch.setattr(Listener, "_remember_series", failing)
    listener = listener_factory(sessions)
    datasets = [pydicom.dcmread(path) for path in ct_files[:2]]
    assoc = associate(_scu(), "127.0.0.1", listener.port, ae_title="TRIAGE")
    with caplog.at_level("ERROR", logger="triage.listener"):
        answers = [(assoc.send_c_store(dataset).Status, assoc.send_c_echo().Status) for dataset in datasets]
    assoc.release()
    assert answers == [(0x0000, 0x0000)] * len(datasets)
    assert sum("listener.answer.differs" in r.getMessage() for r in caplog.records) == len(datasets)
    with sessions() as session:
        assert session.scalar(select(func.count(Instance.id))) == len(datasets)


def test_an_answer_that_cannot_be_sent_early_leaves_the_stored_instance_and_goes_the_usual_way(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any], ct_files: list[Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from listener.streaming import StreamingDIMSEProvider

    packed_response = StreamingDIMSEProvider._packed_response
    calls: list[int] = []

    def broken_once(self: StreamingDIMSEProvider, *args: Any) -> bytes | None:
        calls.append(1)
        if len(calls) == 1:  # the early answer; pynetdicom's own send afterwards works
            raise UnicodeEncodeError("ascii", "", 0, 1, "a UID the packer cannot encode")
        return packed_response(self, *args)

    monkeypatch.setattr(StreamingDIMSEProvider, "_packed_response", broken_once)
    listener = listener_factory(sessions)
    dataset = pydicom.dcmread(ct_files[0])
    assoc = associate(_scu(), "127.0.0.1", listener.port, ae_title="TRIAGE")
    assert assoc.send_c_store(dataset).Status == 0x0000
    assoc.release()
    with sessions() as session:
        (row,) = session.scalars(select(Instance)).all()
    assert pydicom.dcmread(listener.store.root / row.path).SOPInstanceUID == dataset.SOPInstanceUID
