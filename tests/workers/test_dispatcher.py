"""The outbox dispatcher against real brokers: Redis on loopback and the embedded SQLite broker."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Job, JobState, OutboxMessage, Study, StudyState, utcnow
from listener.completion import ANALYSE_TOPIC
from ops.config import load_settings
from tests.services import ensure_redis, free_port
from workers.celery_app import ANALYSE_TASK, QUEUE, make_celery
from workers.dispatcher import BrokerUnavailable, publish_pending


@pytest.fixture(params=["redis", "sqlite"])
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqla+sqlite:///{tmp_path / 'broker.db'}"
        return
    import redis

    base = ensure_redis().rsplit("/", 1)[0]
    db = random.randint(5, 15)
    client = redis.Redis.from_url(f"{base}/{db}")
    client.flushdb()
    yield f"{base}/{db}"
    client.flushdb()


def _queue_jobs(sessions: sessionmaker[Session], count: int) -> list[int]:
    ids = []
    with sessions() as session, session.begin():
        for i in range(count):
            study = Study(study_uid=f"1.2.3.{i}", state=StudyState.complete, opened_at=utcnow(),
                          last_instance_at=utcnow(), completions=1, instance_count=1)
            session.add(study)
            session.flush()
            job = Job(study_id=study.id)
            session.add(job)
            session.flush()
            session.add(OutboxMessage(topic=ANALYSE_TOPIC, job_id=job.id, payload={"study_uid": study.study_uid,
                                                                                   "job_id": job.id}))
            ids.append(job.id)
    return ids


def _received(app, count: int) -> list[tuple[str, list[int]]]:  # type: ignore[no-untyped-def]
    messages = []
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(QUEUE)
        for _ in range(count):
            message = queue.get(timeout=10)
            messages.append((message.headers["task"], message.payload[0]))
            message.ack()
        queue.close()
    return messages


def test_outbox_rows_reach_the_broker_once(broker_url: str, sessions: sessionmaker[Session]) -> None:
    app = make_celery(load_settings(broker_url=broker_url))
    job_ids = _queue_jobs(sessions, 3)
    assert publish_pending(app, sessions) == 3
    assert publish_pending(app, sessions) == 0  # published rows are not sent again
    assert sorted(_received(app, 3)) == sorted((ANALYSE_TASK, [job_id]) for job_id in job_ids)
    with sessions() as session:
        assert all(r.published_at is not None for r in session.scalars(select(OutboxMessage)))
        assert {j.state for j in session.scalars(select(Job))} == {JobState.queued}


def test_broker_down_keeps_rows_until_it_is_back(sessions: sessionmaker[Session]) -> None:
    down = make_celery(load_settings(broker_url=f"redis://127.0.0.1:{free_port()}/0"))
    _queue_jobs(sessions, 2)
    with pytest.raises(BrokerUnavailable):
        publish_pending(down, sessions)
    with sessions() as session:
        rows = session.scalars(select(OutboxMessage).order_by(OutboxMessage.id)).all()
        assert [r.published_at for r in rows] == [None, None]
        assert rows[0].attempts == 1 and "Error" in (rows[0].last_error or "")
        assert {j.state for j in session.scalars(select(Job))} == {JobState.pending}
    base = ensure_redis().rsplit("/", 1)[0]
    up = make_celery(load_settings(broker_url=f"{base}/4"))
    import redis

    redis.Redis.from_url(f"{base}/4").flushdb()
    assert publish_pending(up, sessions) == 2
    assert len(_received(up, 2)) == 2
