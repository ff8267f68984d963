"""The embedded broker (no TRIAGE_BROKER_URL): kombu's SQLite transport under the node's own scheme,
polled at TRIAGE_BROKER_POLL_SECONDS, carrying a dispatched job like any broker; a ``sqla+`` URL set
by hand keeps kombu's own transport."""

from __future__ import annotations

from pathlib import Path

from kombu.transport.sqlalchemy import Transport as KombuSQLAlchemyTransport

from ops.config import EMBEDDED_BROKER_SCHEME, load_settings
from workers.celery_app import QUEUE, make_celery
from workers.embedded_broker import Transport


def test_the_default_broker_polls_at_the_setting_and_carries_messages(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, broker_poll_seconds=0.05)
    assert settings.resolved_broker_url.startswith(f"{EMBEDDED_BROKER_SCHEME}+sqlite:///")
    app = make_celery(settings)
    with app.connection_for_write() as conn:
        assert type(conn.transport) is Transport and conn.transport.polling_interval == 0.05
        queue = conn.SimpleQueue(QUEUE)
        queue.put({"job_id": 7})
        message = queue.get(timeout=5)
        assert message.payload == {"job_id": 7}
        message.ack()
        queue.close()
    assert (tmp_path / "broker.db").is_file(), "the messages live in a file under the data folder"


def test_a_sqla_url_set_by_hand_keeps_kombus_transport(tmp_path: Path) -> None:
    app = make_celery(load_settings(broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}"))
    with app.connection_for_write() as conn:
        assert type(conn.transport) is KombuSQLAlchemyTransport and conn.transport.polling_interval == 1.0
