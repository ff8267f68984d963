"""The embedded broker: kombu's SQLAlchemy transport on a SQLite file, polled every
``TRIAGE_BROKER_POLL_SECONDS`` instead of once a second.

Redis pushes a task to a waiting worker; kombu's SQLAlchemy transport looks for one once a second,
and a study waits for that look twice (its analysis, then its export). kombu takes the interval
from the transport options, but this transport hands every option to ``create_engine()``, which
refuses it; so the node's own subclass carries it, under its own URL scheme
(:data:`ops.config.EMBEDDED_BROKER_SCHEME`), registered with kombu when the Celery app is made. A
``sqla+`` URL set by hand keeps kombu's transport as it is.

Measured with ``triage bench pipeline --slices 50`` (2 cores, two runs each, same session): from
the last C-STORE response to the SR stored in Orthanc, minus the quiet period, 2.61 and 3.59 s for
the CT (1.05 and 2.29 s of it waiting: "other") with 1 s polling and a 0.5 s dispatcher; 1.48 and
1.41 s (0.14 and 0.12 s) with both at 0.1 s. The CR: 2.71 and 2.52 s, against 1.29 and 1.50 s. A poll
is one indexed SELECT on a local file.
"""

from __future__ import annotations

from kombu.transport import TRANSPORT_ALIASES
from kombu.transport.sqlalchemy import Transport as SQLAlchemyTransport

from ops.config import EMBEDDED_BROKER_SCHEME

__all__ = ["Transport", "register"]


class Transport(SQLAlchemyTransport):
    """kombu's SQLAlchemy transport, polling at the interval :func:`register` set."""

    polling_interval = 0.1


def register(poll_seconds: float) -> None:
    """Make ``EMBEDDED_BROKER_SCHEME+sqlite:///...`` URLs use :class:`Transport`, polling every ``poll_seconds``."""
    Transport.polling_interval = poll_seconds
    TRANSPORT_ALIASES[EMBEDDED_BROKER_SCHEME] = f"{__name__}:Transport"
