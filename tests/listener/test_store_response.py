"""The packed C-STORE response is byte for byte what pynetdicom would have sent."""

from __future__ import annotations

import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from listener import statuses
from listener.store_response import (
    is_plain_store_response,
    p_data_tf,
    store_response_command_set,
)

CT = "1.2.840.10008.5.1.4.1.1.2"


def _pynetdicom_command_set(primitive: C_STORE) -> bytes:
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    (pdata,) = message.encode_msg(1, 16382)
    (context_id, pdv), = pdata.presentation_data_value_list
    assert context_id == 1 and pdv[:1] == b"\x03"
    return bytes(pdv[1:])


def _response(sop_instance_uid: str, message_id: int, status: int, sop_class_uid: str = CT) -> C_STORE:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = message_id
    primitive.AffectedSOPClassUID = sop_class_uid
    primitive.AffectedSOPInstanceUID = sop_instance_uid
    primitive.Status = status
    return primitive


@pytest.mark.parametrize("sop_instance_uid", ["1.2.3.4", "1.2.3.45", "1.2.826.0.1.3680043.8.498." + "1" * 37])
@pytest.mark.parametrize("message_id", [1, 257, 65535])
@pytest.mark.parametrize("status", sorted(statuses.DESCRIPTIONS))
def test_packed_response_equals_pynetdicoms_encoding(sop_instance_uid: str, message_id: int, status: int) -> None:
    primitive = _response(sop_instance_uid, message_id, status)
    assert is_plain_store_response(primitive)
    assert store_response_command_set(CT, message_id, status, sop_instance_uid) == _pynetdicom_command_set(primitive)


@pytest.mark.parametrize("sop_class_uid", ["1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1"])
def test_odd_and_even_class_uids_are_padded_like_pynetdicom(sop_class_uid: str) -> None:
    primitive = _response("1.2.3", 7, 0, sop_class_uid)
    assert store_response_command_set(sop_class_uid, 7, 0, "1.2.3") == _pynetdicom_command_set(primitive)


def test_a_response_with_error_details_is_left_to_pynetdicom() -> None:
    primitive = _response("1.2.3", 7, 0xA700)
    primitive.ErrorComment = "disk full"
    assert not is_plain_store_response(primitive)
    primitive = _response("1.2.3", 7, 0xA900)
    primitive.OffendingElement = [0x00080018]
    assert not is_plain_store_response(primitive)


@pytest.mark.parametrize("context_id", [1, 127, 255])
def test_the_pdu_sent_from_the_handler_thread_is_pynetdicoms_p_data_tf(context_id: int) -> None:
    fragment = b"\x03" + store_response_command_set(CT, 9, 0, "1.2.3.4")
    primitive = P_DATA()
    primitive.presentation_data_value_list.append((context_id, fragment))
    assert p_data_tf(context_id, fragment) == P_DATA_TF(primitive).encode()
