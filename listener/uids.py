"""UID checks that keep sender-chosen UIDs from ever shaping a path outside the storage root."""

from __future__ import annotations

import re

MAX_UID_LENGTH = 64
# Digits and single dots only. Leading zeros in a component break PS3.5 9.1 but real devices send
# them, and they are harmless for paths, so they are accepted; "..", "/" and anything else are not.
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class InvalidUID(ValueError):
    """A UID that is empty, too long or holds characters other than digits and dots."""


def check_uid(value: object, name: str) -> str:
    """Return ``value`` as a clean UID string or raise :class:`InvalidUID` naming the attribute."""
    text = str(value or "").strip().rstrip("\x00").strip()
    if not text:
        raise InvalidUID(f"{name} is empty")
    if len(text) > MAX_UID_LENGTH:
        raise InvalidUID(f"{name} is {len(text)} characters long (at most {MAX_UID_LENGTH})")
    if not _UID.match(text):
        raise InvalidUID(f"{name} holds characters other than digits and single dots")
    return text
