"""The Celery application: settings that keep work when processes die.

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a job is acknowledged only when it finished,
  so a worker killed mid-job leaves it on the queue to be redelivered.
- ``worker_prefetch_multiplier=1``: a worker holds one job at a time; a slow study does not keep
  others waiting behind it in one worker's buffer.
- ``visibility_timeout``: how long Redis waits before redelivering an unacknowledged job whose
  worker vanished; it must exceed the longest job (``TRIAGE_JOB_VISIBILITY_TIMEOUT``).

Without ``TRIAGE_BROKER_URL`` the broker is kombu's SQLAlchemy transport on a SQLite file under the
data folder: durable, and no server to run (the README's one-command start); workers poll it every
``TRIAGE_BROKER_POLL_SECONDS`` (:mod:`workers.embedded_broker`).
"""

from __future__ import annotations

from celery import Celery

from ops.config import EMBEDDED_BROKER_SCHEME, Settings

EXPORT_TOPIC = "export_result"  # outbox topic written with each result (ANALYSE_TOPIC: listener.completion)
ANALYSE_TASK = "triage.analyse_study"
EXPORT_TASK = "triage.export_result"
QUEUE = "triage"


def make_celery(settings: Settings) -> Celery:
    url = settings.resolved_broker_url
    if url.startswith(f"{EMBEDDED_BROKER_SCHEME}+"):
        from workers import embedded_broker

        embedded_broker.register(settings.broker_poll_seconds)
    app = Celery("triage", broker=url, include=["workers.tasks"])
    transport_options: dict[str, object] = {"visibility_timeout": settings.job_visibility_timeout}
    if url.startswith(("sqla+", f"{EMBEDDED_BROKER_SCHEME}+")):
        # kombu's SQLAlchemy transport hands every transport option to create_engine(); it holds
        # unacknowledged messages in its own table, so none are needed.
        transport_options = {}
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=QUEUE,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options=transport_options,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        worker_send_task_events=False,
        worker_concurrency=settings.worker_concurrency,
        enable_utc=True,
    )
    return app
