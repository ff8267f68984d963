"""pynetdicom's acceptor, woken by events instead of polling: the C-STORE path's latency, not its CPU.

pynetdicom 3.0 runs two polling loops per association. Its DUL thread sleeps 1 ms whenever it finds
nothing to do (its own TODO: "try and make this event based"), and the association thread sleeps
1 ms before every look at its message queue. A C-STORE waits on those sleeps three times: the DUL
noticing the request's first PDU, the association thread noticing the assembled message, the DUL
noticing the response to send. Measured with dcmtk's storescu sending 300 512x512 CT slices over
loopback (this 2-core machine, /proc CPU time): pynetdicom storing nothing reached 300-310
instances/s while using 40 % of one core, i.e. waiting, not computing; with the waits below,
415-495; with the reads below as well, 590-690 (storescp writing to disk: 625-765 in the same runs).
The whole listener, durable writes included, went from 148-158 to 173-195 instances/s (A/B, same
runs); the rest of its time is the disk (``triage bench ingest`` prints what durability costs).

This module changes only how the two threads wait; what they do when woken is pynetdicom's code:

* :class:`IntoBufferSocket` reads each PDU into one buffer (pynetdicom reads 4 KiB at a time).
* :class:`WakingDUL` blocks in ``select()`` on the peer's socket and a wake-up socket pair when its
  event queue is empty; ``send_pdu``, ``kill_dul`` and ``stop_dul`` write to the wake-up socket.
* :class:`WakingAssociation` waits on a :class:`threading.Event` that is set whenever the DIMSE
  provider queues a message or the DUL queues a primitive for the user (release, abort); after the
  wait its loop is pynetdicom 3.0's ``Association._run_reactor`` unchanged (pinned in pyproject.toml:
  a new pynetdicom minor version must be re-checked against this copy).

One hand-off is skipped: a plain C-STORE response (``listener.store_response``) is written to the
socket by the association's thread itself (:meth:`WakingDUL.send_now`) instead of being queued for
the DUL thread to wake, win the GIL and send; pynetdicom's state machine actions and those sends
share a lock, so nothing queued before a response can follow it.

Both waits have a ceiling (:data:`IDLE_WAKE_SECONDS`) so the timers pynetdicom checks in its loops
(ARTIM, network idle timeout, a killed thread) still fire, at that resolution instead of 1 ms; an
idle association's threads wake 50 times a second instead of a thousand.

One behaviour is added: a connection closed before it asked for an association (a port probe, a
load balancer's health check) releases its thread at once instead of after ``acse_timeout``, during
which it counted against the association limit.

The request handler also gives each association :class:`listener.store_response.PackingDIMSEProvider`,
which sends plain C-STORE responses from packed bytes instead of pydicom data sets, and spares it
pynetdicom's deep copy of the server's presentation contexts (:class:`SharedContexts`).
"""

from __future__ import annotations

import queue
import select
import socket
import ssl
import struct
import threading
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.association import Association
from pynetdicom.dul import LOGGER, DULServiceProvider
from pynetdicom.fsm import StateMachine
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AssociationSocket, RequestHandler

from listener.store_response import PackingDIMSEProvider
from listener.streaming import StreamingDIMSEProvider

__all__ = ["IDLE_WAKE_SECONDS", "EventDrivenRequestHandler", "IntoBufferSocket", "WakingAssociation", "WakingDUL"]

#: Longest a thread waits without an event before re-checking its timers and kill flags.
IDLE_WAKE_SECONDS = 0.02


class _SignallingQueue(queue.Queue):  # type: ignore[type-arg]
    """A queue that sets an event on every put, so the consumer can wait for it instead of polling."""

    def __init__(self, wake: threading.Event) -> None:
        super().__init__()
        self._wake = wake

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        super().put(item, block, timeout)
        self._wake.set()


class IntoBufferSocket(AssociationSocket):
    """pynetdicom's socket, reading a PDU straight into one buffer instead of 4 KiB ``recv`` calls.

    pynetdicom reads ``nr_bytes`` 4096 bytes at a time and appends each piece to a bytearray: 130
    calls and copies, each taking the GIL, per 512 KiB slice. Same contract: returns what was read,
    shorter only when the peer closed the connection; socket errors and timeouts propagate.
    """

    def recv(self, nr_bytes: int) -> bytearray:
        buffer = bytearray(nr_bytes)
        read = self.recv_into(memoryview(buffer))
        return buffer if read == nr_bytes else buffer[:read]

    def recv_into(self, view: memoryview) -> int:
        """Fill ``view`` from the socket; the bytes read, fewer only when the peer closed the connection."""
        sock = cast(socket.socket, self.socket)
        read, wanted = 0, len(view)
        while read < wanted:
            count = sock.recv_into(view[read:], wanted - read)
            if not count:
                break
            read += count
        return read


_PDU_LENGTH = struct.Struct(">L")
_PDU_HEADER = struct.Struct(">BBL")


def presentation_data_values(pdu: bytearray) -> list[tuple[int, memoryview]] | None:
    """The (context ID, fragment) items of an encoded P-DATA-TF PDU, as views of it; None unless its
    items exactly fill it, each with at least a context ID and a message control header."""
    view = memoryview(pdu)
    items: list[tuple[int, memoryview]] = []
    offset, end = 6, len(pdu)
    while offset < end:
        if offset + 6 > end:
            return None
        (length,) = _PDU_LENGTH.unpack_from(pdu, offset)
        if length < 2 or offset + 4 + length > end:
            return None
        items.append((pdu[offset + 4], view[offset + 5:offset + 4 + length]))
        offset += 4 + length
    return items or None


class _ReceivedPData(P_DATA_TF):
    """A P-DATA-TF PDU decoded in place: its fragments are views of the received bytes, not copies."""

    def __init__(self, items: list[tuple[int, memoryview]]) -> None:
        super().__init__()
        self._items = items

    def to_primitive(self) -> P_DATA:
        primitive = P_DATA()
        primitive.presentation_data_value_list.extend(self._items)  # type: ignore[arg-type]
        return primitive


class _SerialisedStateMachine(StateMachine):
    """pynetdicom's state machine, each action under its DUL's lock (:meth:`WakingDUL.send_now`)."""

    def do_action(self, event: str) -> None:
        with cast(WakingDUL, self.dul).fsm_lock:
            super().do_action(event)


class WakingDUL(DULServiceProvider):
    """The DUL reactor, blocking on its socket and a wake-up socket instead of sleeping 1 ms."""

    def _adopt(self) -> None:
        self._run_loop_delay = 0  # the wait happens in select(), below
        #: held by each state machine action, and by a PDU sent past the queue (send_now)
        self.fsm_lock = threading.RLock()
        self.state_machine.__class__ = _SerialisedStateMachine
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)

    def run(self) -> None:
        try:
            super().run()
        finally:
            self._wake_r.close()
            self._wake_w.close()
            if self.assoc.is_acceptor and self.assoc.requestor.primitive is None:
                # The peer left before asking for an association (a port probe, a health check):
                # pynetdicom's acceptor would hold its thread, and a place under the association
                # limit, until acse_timeout. None is what its wait returns on that timeout.
                self.to_user_queue.put(cast(Any, None))

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full (already woken) or closed (thread over): nothing to wake
            pass

    def _drain(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except OSError:
            pass

    def _wait_for_input(self) -> None:
        if not self.event_queue.empty() or not self.to_provider_queue.empty() or self._kill_thread:
            return
        peer = self.socket.socket if self.socket is not None else None
        if isinstance(peer, ssl.SSLSocket) and peer.pending():
            return  # decrypted bytes already buffered: select() would not see them
        try:
            ready, _, _ = select.select([self._wake_r] if peer is None else [peer, self._wake_r], [], [],
                                        IDLE_WAKE_SECONDS)
        except (OSError, ValueError):  # the socket closed under us: pynetdicom's check reports it
            return
        if self._wake_r in ready:  # drain only when woken: no extra syscall per received PDU
            self._drain()

    def _read_pdu_data(self) -> None:
        """pynetdicom 3.0.4's ``DULServiceProvider._read_pdu_data``, reading each PDU into one buffer.

        pynetdicom reads the 6-byte header, then the body into a second buffer that it appends to the
        first: one more allocation and copy of every 128 KiB PDU of a data set. The events and log lines
        on a short or unknown PDU are pynetdicom's.
        """
        sock = cast(IntoBufferSocket, self.socket)
        header = bytearray(6)
        try:
            got = sock.recv_into(memoryview(header))
        except (OSError, TimeoutError) as exc:
            LOGGER.error("Connection closed before the entire PDU was received")
            LOGGER.exception(exc)
            self.event_queue.put("Evt17")  # transport connection closed
            return
        if got != 6:
            self.event_queue.put("Evt17")
            return
        pdu_type, _, pdu_length = _PDU_HEADER.unpack(header)
        if pdu_type not in (0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07):
            LOGGER.error(f"Unknown PDU type received '0x{pdu_type:02X}'")
            self.event_queue.put("Evt19")  # unrecognised or invalid PDU
            return
        bytestream = bytearray(6 + pdu_length)
        bytestream[:6] = header
        try:
            got = sock.recv_into(memoryview(bytestream)[6:])
        except (OSError, TimeoutError) as exc:
            LOGGER.error("Connection closed before the entire PDU was received")
            LOGGER.exception(exc)
            self.event_queue.put("Evt17")
            return
        if got != pdu_length:
            LOGGER.error(f"The received PDU is shorter than expected ({6 + got} of {6 + pdu_length} bytes "
                         "received)")
            self.event_queue.put("Evt17")
            return
        try:
            pdu, event_name = self._decode_pdu(bytestream)
            self.event_queue.put(event_name)
        except Exception as exc:
            LOGGER.error("Unable to decode the received PDU data")
            LOGGER.exception(exc)
            self.event_queue.put("Evt19")
            return
        self._recv_pdu.put(pdu)

    def _decode_pdu(self, bytestream: bytearray) -> tuple[Any, str]:
        """P-DATA-TF, the PDU of every fragment of every data set, decoded without copying it twice.

        pynetdicom copies each PDU to ``bytes`` and each fragment out of it, then the DIMSE layer
        copies each fragment once more to drop its header byte: 0.4 MB of copies per 128 KiB PDU.
        Here the fragments are views; the DIMSE layer's own copy into its message is the only one.
        Everything else, and every PDU while someone listens to the raw PDU events, is pynetdicom's.
        """
        if bytestream[0] == 0x04 and not (self.assoc.get_handlers(evt.EVT_DATA_RECV)
                                           or self.assoc.get_handlers(evt.EVT_PDU_RECV)):
            items = presentation_data_values(bytestream)
            if items is not None:
                return _ReceivedPData(items), "Evt10"
        return super()._decode_pdu(bytestream)  # type: ignore[no-any-return]

    def _is_transport_event(self) -> bool:
        self._wait_for_input()
        return bool(super()._is_transport_event())

    def send_pdu(self, primitive: Any) -> None:
        super().send_pdu(primitive)
        self._wake()

    def send_now(self, encoded: bytes) -> bool:
        """Send an encoded P-DATA-TF PDU from the calling thread; False (nothing sent) when it must go
        through the queue instead: the association is not in data transfer (Sta6), something queued
        before it is not sent yet, TLS, or someone listens to the sent-PDU events.

        Queued, a C-STORE response waited for this thread to wake, win the GIL and run the state
        machine: 0.3 ms between the handler's answer and its bytes on the socket in an in-process
        trace (dcmtk storescu, 300 CT slices), on a path the sender waits on. The DUL's own sends all
        come from state machine actions, which hold :attr:`fsm_lock` as this does (all but the
        A-ABORT pynetdicom sends when its own loop fails, the association's last PDU), and a queued
        primitive stays in the queue until its action sends it: under the lock, an empty queue means
        that every PDU handed over before this one is on the socket, so the order is kept.
        """
        sock = self.socket
        if sock is None or isinstance(sock.socket, ssl.SSLSocket):  # one thread per TLS connection
            return False
        if self.assoc.get_handlers(evt.EVT_PDU_SENT) or self.assoc.get_handlers(evt.EVT_DATA_SENT):
            return False
        with self.fsm_lock:
            if self.state_machine.current_state != "Sta6" or not self.to_provider_queue.empty():
                return False
            sock.send(encoded)  # a failure queues Evt17 for the DUL, as when the DUL sends
        return True

    def kill_dul(self) -> None:
        super().kill_dul()
        self._wake()

    def stop_dul(self) -> bool:
        if self.state_machine.current_state != "Sta1":
            return False
        self._kill_thread = True
        self._wake()
        if threading.current_thread() is not self and self.is_alive():
            self.join()
        return True


class WakingAssociation(Association):
    """An acceptor association whose reactor waits for a DIMSE message instead of sleeping 1 ms."""

    def _adopt(self) -> None:
        self._activity = threading.Event()
        self.dimse.msg_queue = _SignallingQueue(self._activity)
        self.dul.to_user_queue = _SignallingQueue(self._activity)
        self.dul.__class__ = WakingDUL
        cast(WakingDUL, self.dul)._adopt()

    def kill(self) -> None:
        super().kill()
        if isinstance(self.dimse, StreamingDIMSEProvider):
            self.dimse.close_streams()
        self._activity.set()

    def _run_reactor(self) -> None:
        # pynetdicom 3.0.4 Association._run_reactor, with its time.sleep(0.001) replaced by the wait.
        from pynetdicom.association import LOGGER, evt

        self._is_paused = False
        while not self._kill:
            self._activity.wait(IDLE_WAKE_SECONDS)
            self._activity.clear()

            self._is_paused = True
            self._reactor_checkpoint.wait()
            self._is_paused = False

            context_id, msg = self.dimse.get_msg(block=False)
            if msg:
                self._serve_request(msg, cast(int, context_id))
                if not self.dimse.msg_queue.empty():  # one wake-up may stand for several messages
                    self._activity.set()

            if self.is_established and self.acse.is_release_requested():
                self.acse.send_release(is_response=True)
                LOGGER.info("Association Released")
                self.is_released = True
                self.is_established = False
                evt.trigger(self, evt.EVT_RELEASED, {})
                self.kill()
                return

            if self.acse.is_aborted():
                log_msg = "Association Aborted"
                if self.acse.is_aborted("a-p-abort"):
                    log_msg += " (A-P-ABORT)"
                LOGGER.info(log_msg)
                self.dul.receive_pdu(wait=False)
                self.is_aborted = True
                self.is_established = False
                evt.trigger(self, evt.EVT_ABORTED, {})
                self.kill()
                return

            if not self.dul.is_alive():
                self.kill()
                return

            if self.dul.idle_timer_expired():
                LOGGER.error("Network timeout reached")
                if self.network_timeout_response == "A-RELEASE":
                    self._is_paused = True
                    self._reactor_checkpoint.wait()
                    self.release()
                    self._is_paused = False
                else:
                    self.abort()
                self.kill()
                return


class SharedContexts(list[PresentationContext]):
    """A server's supported presentation contexts, read by all of its associations.

    pynetdicom 3.0 deep-copies the server's contexts into each association it accepts
    (``RequestHandler._create_association``). The listener supports every storage SOP class with every
    transfer syntax it can decode, and each UID of the copy is validated again by pydicom: 13.6 ms of
    CPU per association (py-spy, 40 one-instance associations from storescu), when the whole C-STORE
    of a CT slice takes 3 ms, for sites whose modalities send one image per association. Negotiation
    only reads the contexts (``presentation.negotiate_as_acceptor`` builds its results anew), so each
    association gets a list of its own holding the same context objects.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> list[PresentationContext]:
        return list(self)


class EventDrivenRequestHandler(RequestHandler):
    """pynetdicom's request handler, making each accepted association a :class:`WakingAssociation`.

    The association is built by pynetdicom (contexts, AE titles, handlers bound, socket set) and only
    then given the waking behaviour, the one-buffer reads and the packed C-STORE responses, before any
    of its threads start. Where the server has an ``instance_store`` (the listener), its data sets are
    also written while they arrive (``listener.streaming``).
    """

    def _create_association(self) -> Association:
        if not isinstance(self.server.contexts, SharedContexts):  # once per server, at its first association
            self.server.contexts = SharedContexts(self.server.contexts)
        assoc = super()._create_association()
        assoc.dul.socket.__class__ = IntoBufferSocket
        store = getattr(self.server, "instance_store", None)
        if store is None:
            assoc.dimse.__class__ = PackingDIMSEProvider
        else:
            assoc.dimse.__class__ = StreamingDIMSEProvider
            cast(StreamingDIMSEProvider, assoc.dimse).adopt_store(store)
        assoc.__class__ = WakingAssociation
        cast(WakingAssociation, assoc)._adopt()
        return assoc
