"""Deterministic result UIDs: the same study and model version reproduce them, anything else does not."""

from __future__ import annotations

import pytest
from pydicom.uid import UID

from workers.outputs.uids import (
    UID_PREFIX,
    device_uid,
    result_uid,
    sc_instance_uid,
    sc_series_uid,
    sr_instance_uid,
    sr_series_uid,
    tracking_uid,
)

STUDY = "1.2.826.0.1.3680043.8.498.12345"
OTHER_STUDY = "1.2.826.0.1.3680043.8.498.12346"


def _all(study: str, name: str, version: str) -> list[str]:
    return [sr_series_uid(study, name, version), sr_instance_uid(study, name, version),
            sc_series_uid(study, name, version), tracking_uid(study, name, version),
            *(sc_instance_uid(study, name, version, i) for i in range(4))]


def test_uids_are_valid_and_under_the_prefix() -> None:
    for uid in _all(STUDY, "deep-ct-net", "deep-ct-net@abc"):
        assert UID(uid).is_valid, uid
        assert uid.startswith(UID_PREFIX) and len(uid) <= 64


def test_same_inputs_same_uids_and_every_uid_distinct() -> None:
    first = _all(STUDY, "deep-ct-net", "deep-ct-net@abc")
    assert first == _all(STUDY, "deep-ct-net", "deep-ct-net@abc")
    assert len(set(first)) == len(first), "two objects of one result share a UID"


@pytest.mark.parametrize("other", [(OTHER_STUDY, "deep-ct-net", "deep-ct-net@abc"),
                                   (STUDY, "deep-ct-net", "deep-ct-net@abd"),
                                   (STUDY, "ct-net", "deep-ct-net@abc")])
def test_another_study_model_or_version_gives_new_uids(other: tuple[str, str, str]) -> None:
    assert not set(_all(STUDY, "deep-ct-net", "deep-ct-net@abc")) & set(_all(*other))


def test_parts_are_not_merely_concatenated() -> None:
    # pydicom hashes "".join(entropy_srcs): these would collide without the length-prefixed encoding
    assert result_uid(STUDY, "ab", "c") != result_uid(STUDY, "a", "bc")
    assert result_uid(STUDY, "m", "v", "sc", "instance", "11") != result_uid(STUDY, "m", "v", "sc", "instance1", "1")


def test_device_uid_is_the_same_for_every_study() -> None:
    uid = device_uid("deep-ct-net", "v1", "COVID triage node")
    assert uid == device_uid("deep-ct-net", "v1", "COVID triage node")
    assert uid != device_uid("deep-ct-net", "v2", "COVID triage node")
    assert UID(uid).is_valid


@pytest.mark.parametrize("args", [("", "m", "v"), (STUDY, "", "v"), (STUDY, "m", " ")])
def test_empty_inputs_are_refused(args: tuple[str, str, str]) -> None:
    with pytest.raises(ValueError, match="non-empty"):
        result_uid(*args)


def test_negative_index_is_refused() -> None:
    with pytest.raises(ValueError, match="index"):
        sc_instance_uid(STUDY, "m", "v", -1)
