"""Structured logging: one line per event, JSON or key=value, never patient data.

Every event has a stable identifier (``event=listener.store.ok``) that operators can alert on. Only
values passed explicitly as fields are written; callers pass UIDs, AE titles, counts and timings,
never names, IDs or dates of birth. A filter also drops the chatty per-PDU logs of pynetdicom, whose
debug output dumps whole datasets (and so patient data).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

_RESERVED = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class _Formatter(logging.Formatter):
    def __init__(self, style: str) -> None:
        super().__init__()
        self._json = style == "json"

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": getattr(record, "event", None) or record.getMessage(),
            "pid": record.process,  # which process, where several listen on one port or work one queue
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key != "event" and not key.startswith("_"):
                fields[key] = value
        name = getattr(record, "event", None)
        if name and record.msg and record.getMessage() != name:
            fields["msg"] = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            fields["error"] = f"{type(exc).__name__}: {exc}"
        if self._json:
            return json.dumps(fields, default=str, separators=(",", ":"))
        return " ".join(f"{key}={_kv(value)}" for key, value in fields.items())


def _kv(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return json.dumps(text)
    return text


def configure(level: str = "INFO", fmt: str = "json", stream: Any = None) -> None:
    """Install the one handler of the process (idempotent)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_triage", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_Formatter(fmt))
    handler._triage = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # pynetdicom logs PDU and dataset dumps (patient data) at DEBUG and each association at INFO.
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    # Its "standard" event handlers format those dumps for every PDU and DIMSE message whatever the
    # level, only for the lines to be dropped above: about 0.1 ms of a C-STORE's CPU (bench ingest).
    # Bound when an AE server or association is created, so this holds for those created afterwards.
    from pynetdicom import _config as pynetdicom_config  # pynetdicom's documented configuration module

    pynetdicom_config.LOG_HANDLER_LEVEL = "none"


def event(logger: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event with a stable identifier and explicit, PHI-free fields."""
    logger.log(level, name, extra={"event": name, **fields})
