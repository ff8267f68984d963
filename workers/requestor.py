"""pynetdicom's requestor association, without the race that hands a response to the wrong thread.

An association's ``send_c_store`` (and every other ``send_*``) pauses the association's reactor
thread, sends the request, and waits for the response on the DIMSE message queue. pynetdicom 3.0
pauses the reactor by clearing an event and waiting until the reactor says it is paused. The reactor
says so before it waits on that event and takes the word back only after its wait returns. So between
its wake-up from the previous pause and that line, the word is stale: the next ``send_*`` goes ahead,
and the reactor then takes the message queue's next item. A peer that answers before the sending
thread is scheduled again loses its response to the reactor. The reactor logs "Received unexpected
C-STORE service message" and drops it. The sender waits out the DIMSE timeout and aborts the
association (pynetdicom issue 875 reports the same symptom for C-FIND).

The project's CI met this with its own listener as the peer, which answers a C-STORE in well under a
millisecond; any fast PACS can do the same to an export. :class:`PausedReactorDIMSEProvider` closes it
where the reactor takes messages: the reactor's non-blocking look at the queue (only the reactor looks
without blocking) finds nothing while a ``send_*`` has the reactor paused. The reactor clears its
stale word before it looks, and the sender clears the event before it reads the word, so either the
reactor sees the cleared event or the sender sees the reactor running and waits for it to pause again.

It reads pynetdicom's private ``Association._reactor_checkpoint``, as ``listener/reactor.py`` copies its
reactor: pynetdicom is pinned in pyproject.toml, and ``tests/workers/test_requestor.py`` fails once a
new version no longer loses the response, when this module can go.
"""

from __future__ import annotations

from typing import Any

from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse import DIMSEServiceProvider

__all__ = ["PausedReactorDIMSEProvider", "associate"]


class PausedReactorDIMSEProvider(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, keeping queued messages from a reactor that a ``send_*`` paused."""

    def get_msg(self, block: bool = False) -> Any:
        if not block and not self.assoc._reactor_checkpoint.is_set():
            return None, None  # the message is the response a send_* method waits for
        return super().get_msg(block)


def associate(ae: AE, host: str, port: int, **options: Any) -> Association:
    """``ae.associate(host, port, **options)``, its responses kept for the thread that waits for them.

    The provider is swapped before the association is handed back, so before any ``send_*``.
    """
    assoc = ae.associate(host, port, **options)
    assoc.dimse.__class__ = PausedReactorDIMSEProvider
    return assoc
