"""C-STORE responses packed directly, instead of through pydicom data sets.

pynetdicom answers each C-STORE by building a pydicom ``Dataset`` for the command set, encoding it
once to learn its group length and again to send it: 0.24 ms of CPU per response on the development
VM, on the path between the handler's return and the sender's next instance. The response of a
store SCP is seven fixed elements in Implicit VR Little Endian (PS3.7 9.3.1.2), so the common case
(a status, no error comment, no offending element) is packed here with ``struct``, in the element
order and padding pynetdicom uses; ``tests/listener/test_store_response.py`` checks the bytes
against pynetdicom's own encoding. Every other message, and every response while someone listens
to ``EVT_DIMSE_SENT`` (which hands out pynetdicom's message object), goes through pynetdicom. The
packed response is sent as an encoded P-DATA-TF from the handler's thread where the association's
DUL allows it (``listener.reactor.WakingDUL.send_now``), and otherwise queued for the DUL as before.
"""

from __future__ import annotations

import struct
from typing import Any

from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

__all__ = ["PackingDIMSEProvider", "is_plain_store_response", "p_data_tf", "store_response_command_set"]

_C_STORE_RSP = 0x8001
_NO_DATA_SET = 0x0101
_LAST_COMMAND_FRAGMENT = b"\x03"  # message control header: command, last fragment (PS3.8 E.2)


def _element(element: int, value: bytes) -> bytes:
    """An element of group 0000 in Implicit VR Little Endian: tag, 4-byte length, value."""
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _uid(value: object) -> bytes:
    raw = str(value).encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def store_response_command_set(sop_class_uid: object, message_id: int, status: int,
                               sop_instance_uid: object) -> bytes:
    """The encoded command set of a C-STORE-RSP with a status and no error details."""
    body = b"".join((
        _element(0x0002, _uid(sop_class_uid)),
        _element(0x0100, struct.pack("<H", _C_STORE_RSP)),
        _element(0x0120, struct.pack("<H", message_id)),
        _element(0x0800, struct.pack("<H", _NO_DATA_SET)),
        _element(0x0900, struct.pack("<H", status)),
        _element(0x1000, _uid(sop_instance_uid)),
    ))
    return _element(0x0000, struct.pack("<I", len(body))) + body


def p_data_tf(context_id: int, fragment: bytes) -> bytes:
    """An encoded P-DATA-TF PDU of one presentation data value item (PS3.8 9.3.5): ``fragment`` is its
    message control header and the bytes after it."""
    item = struct.pack(">LB", len(fragment) + 1, context_id) + fragment
    return struct.pack(">BBL", 0x04, 0x00, len(item)) + item


def is_plain_store_response(primitive: Any) -> bool:
    """A C-STORE response carrying a status only: what the listener answers to every C-STORE."""
    return (
        isinstance(primitive, C_STORE)
        and primitive.MessageIDBeingRespondedTo is not None
        and isinstance(primitive.Status, int)
        and primitive.AffectedSOPClassUID is not None
        and primitive.AffectedSOPInstanceUID is not None
        and primitive.OffendingElement is None
        and primitive.ErrorComment is None
    )


class PackingDIMSEProvider(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, sending plain C-STORE responses from packed bytes."""

    def send_msg(self, primitive: Any, context_id: int) -> None:
        if not is_plain_store_response(primitive) or self.assoc.get_handlers(evt.EVT_DIMSE_SENT):
            super().send_msg(primitive, context_id)
            return
        fragment = self._packed_response(primitive.AffectedSOPClassUID, primitive.MessageIDBeingRespondedTo,
                                         primitive.Status, primitive.AffectedSOPInstanceUID)
        if fragment is None:  # a peer with a tiny PDU: pynetdicom fragments it
            super().send_msg(primitive, context_id)
            return
        if self._send_now(context_id, fragment):
            return
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, fragment))
        self.dul.send_pdu(pdata)

    def _packed_response(self, sop_class_uid: object, message_id: int, status: int,
                         sop_instance_uid: object) -> bytes | None:
        """The response's one fragment (message control header and command set); None when it does not
        fit the peer's maximum PDU."""
        command_set = store_response_command_set(sop_class_uid, message_id, status, sop_instance_uid)
        max_pdu = self.maximum_pdu_size
        if max_pdu and len(command_set) + 6 > max_pdu:
            return None
        return _LAST_COMMAND_FRAGMENT + command_set

    def _send_now(self, context_id: int, fragment: bytes) -> bool:
        """Send the fragment from this thread where the DUL allows it (``listener.reactor.WakingDUL``)."""
        send_now = getattr(self.dul, "send_now", None)
        return send_now is not None and bool(send_now(p_data_tf(context_id, fragment)))
