"""The requestor association (workers/requestor.py): every response reaches the thread that waits for it.

The race needs the association's reactor thread to wake from its pause late, and the sending thread
to be scheduled late after its response has arrived: on a 2-core CI machine the GIL and the scheduler
did that once in a run of the whole suite. Here both delays are made certain. The reactor wakes
10 ms late, and the sender takes the response 50 ms after it starts waiting. The peer is the node's
own listener, which answers in about a millisecond.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import CTImageStorage, Verification  # type: ignore[attr-defined]
from sqlalchemy.orm import Session, sessionmaker

from workers.requestor import PausedReactorDIMSEProvider, associate

# the database behind the peer plays no part
pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


class _LateWakingCheckpoint(threading.Event):
    """The reactor's pause: its thread runs again 10 ms after the pause ends."""

    def wait(self, timeout: float | None = None) -> bool:
        woke = super().wait(timeout)
        time.sleep(0.010)
        return woke


class _LateTakingQueue(queue.Queue):  # type: ignore[type-arg]
    """The DIMSE message queue: a sender waiting on it takes its item 50 ms late."""

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if block:
            time.sleep(0.050)
        return super().get(block, timeout)


def _scu() -> AE:
    ae = AE(ae_title="EXPORTER")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    ae.dimse_timeout = 2
    return ae


def _with_late_threads(assoc: Association) -> Association:
    assert assoc.is_established
    assoc._reactor_checkpoint.__class__ = _LateWakingCheckpoint
    assoc.dimse.msg_queue.__class__ = _LateTakingQueue
    return assoc


def test_responses_reach_their_sender_when_its_threads_run_late(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any], ct_files: list[Path],
) -> None:
    listener = listener_factory(sessions)
    assoc = _with_late_threads(associate(_scu(), "127.0.0.1", listener.port, ae_title="TRIAGE"))
    assert isinstance(assoc.dimse, PausedReactorDIMSEProvider)
    answers = []
    for path in ct_files[:3]:
        answers.append(("echo", assoc.send_c_echo().get("Status")))
        answers.append(("store", assoc.send_c_store(pydicom.dcmread(path)).get("Status")))
    answers += [("echo", assoc.send_c_echo().get("Status")) for _ in range(6)]
    assoc.release()
    assert assoc.is_released
    assert answers == [("echo", 0), ("store", 0)] * 3 + [("echo", 0)] * 6


def test_pynetdicoms_own_association_loses_a_response_under_the_same_delays(
    sessions: sessionmaker[Session], listener_factory: Callable[..., Any],
) -> None:
    # Shows the delays above reproduce the race. If this fails, a new pynetdicom has fixed the
    # race: workers/requestor.py can then go.
    listener = listener_factory(sessions)
    assoc = _with_late_threads(_scu().associate("127.0.0.1", listener.port, ae_title="TRIAGE"))
    statuses = []
    for _ in range(12):
        statuses.append(assoc.send_c_echo().get("Status"))
        if not assoc.is_established:  # a lost response: pynetdicom aborts after the DIMSE timeout
            break
    if assoc.is_established:
        assoc.release()
    assert statuses[-1] is None, f"every echo was answered: {statuses}"
