"""The event-driven acceptor (listener/reactor.py): the timers and ends pynetdicom's polling loops handled.

Throughput is the ingest benchmark's business; these tests check that waiting for events instead of
polling lost none of the association's exits: a peer that connects and leaves, a peer that goes
silent past the network timeout, a peer that aborts, many C-STOREs on one association.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Instance
from listener.reactor import WakingAssociation
from tests.conftest import require_tools, wait_until
from tests.dcmtk import echoscu


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
    for _ in range(4):  # more probes than the association limit
        with socket.create_connection(("127.0.0.1", listener.port)):
            pass
    assert wait_until(lambda: not listener.ae.active_associations, 3), \
        "a probe still holds an association thread: it would wait acse_timeout (30 s)"
    require_tools("echoscu")
    assert echoscu(listener.port).returncode == 0


def test_an_idle_association_is_aborted_after_the_network_timeout(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any],
) -> None:
    listener = listener_factory(sessions, network_timeout=0.5)
    assoc = _scu().associate("127.0.0.1", listener.port, ae_title="TRIAGE")
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
    assoc = _scu().associate("127.0.0.1", listener.port, ae_title="TRIAGE")
    assert assoc.is_established
    assert assoc.send_c_echo().Status == 0x0000
    assoc.abort()
    assert wait_until(lambda: not listener.ae.active_associations, 3)
    again = _scu().associate("127.0.0.1", listener.port, ae_title="TRIAGE")
    assert again.send_c_echo().Status == 0x0000
    again.release()
    assert again.is_released


def test_many_stores_and_echoes_on_one_association_are_each_answered(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any], ct_files: list[Path],
) -> None:
    listener = listener_factory(sessions)
    datasets = [pydicom.dcmread(path) for path in ct_files]
    assoc = _scu().associate("127.0.0.1", listener.port, ae_title="TRIAGE")
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

