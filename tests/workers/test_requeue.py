"""The operator's re-queue of failed exports and analyses, and sending a study's results again, on
SQLite and PostgreSQL: state change and outbox row together, refusals that change nothing, and the
dispatcher publishing what was re-queued to a real broker (the embedded SQLite one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from db.models import Export, ExportState, Job, JobState, OutboxMessage, Result, Study, StudyState, utcnow
from listener.completion import ANALYSE_TOPIC
from ops.config import load_settings
from workers.celery_app import ANALYSE_TASK, EXPORT_TASK, EXPORT_TOPIC, QUEUE, make_celery
from workers.dispatcher import publish_pending
from workers.requeue import RequeueRefused, list_exports, list_jobs, resend_study, retry_exports, retry_jobs

REPO = Path(__file__).resolve().parents[2]
STUDY_UID = "1.2.826.0.1.3680043.10.543.7"


def _study(sessions: sessionmaker[Session], tmp_path: Path, job_state: JobState = JobState.done,
           exports: tuple[ExportState, ...] = ()) -> dict[str, object]:
    """A study with one job, a result whose SR file exists, and exports in the given states."""
    sr = tmp_path / "sr.dcm"
    sr.write_bytes(b"not read here")
    with sessions() as session, session.begin():
        study = Study(study_uid=STUDY_UID, state=StudyState.complete, opened_at=utcnow(), last_instance_at=utcnow(),
                      completions=1, instance_count=4)
        session.add(study)
        session.flush()
        job = Job(study_id=study.id, state=job_state, attempts=1, error="RuntimeError: weights" if
                  job_state == JobState.failed else None)
        session.add(job)
        session.flush()
        result = Result(job_id=job.id, study_id=study.id, model_name="deep-ct-net", model_version="deep-ct-net@1",
                        score=0.9, decision="covid-suspected",
                        outputs=[{"kind": "sr", "sop_instance_uid": "1.2.3.4", "path": str(sr)}])
        session.add(result)
        session.flush()
        ids = []
        for n, state in enumerate(exports):
            export = Export(result_id=result.id, destination=f"PACS@127.0.0.1:{11112 + n}", state=state,
                            attempts=200 if state == ExportState.failed else 3, last_error="association refused",
                            objects={"files": [str(sr)], "sop_instance_uids": ["1.2.3.4"]})
            session.add(export)
            session.flush()
            ids.append(export.id)
        return {"job": job.id, "result": result.id, "exports": ids, "sr": sr}


def _outbox(sessions: sessionmaker[Session]) -> list[tuple[str, dict]]:
    with sessions() as session:
        return [(m.topic, m.payload) for m in session.scalars(select(OutboxMessage).order_by(OutboxMessage.id))]


def test_failed_exports_are_requeued_with_a_fresh_budget_and_published(sessions: sessionmaker[Session],
                                                                      tmp_path: Path) -> None:
    made = _study(sessions, tmp_path, exports=(ExportState.failed, ExportState.retrying, ExportState.done,
                                               ExportState.failed))
    failed, retrying, done, failed2 = made["exports"]  # type: ignore[misc]
    assert [r.state for r in list_exports(sessions, ExportState.failed)] == ["failed", "failed"]
    with pytest.raises(RequeueRefused, match=rf"export {retrying} is retrying, not failed.*queued already"):
        retry_exports(sessions, [failed, retrying])
    with pytest.raises(RequeueRefused, match=r"export 999 does not exist; nothing"):
        retry_exports(sessions, [999])
    assert _outbox(sessions) == [], "a refusal changes nothing"
    assert retry_exports(sessions, [failed]) == [failed]
    assert retry_exports(sessions, None) == [failed2]
    with sessions() as session:
        states = {e.id: (e.state, e.attempts) for e in session.scalars(select(Export))}
    assert states[failed] == states[failed2] == (ExportState.pending, 0)
    assert states[retrying][0] == ExportState.retrying and states[done][0] == ExportState.done
    assert _outbox(sessions) == [(EXPORT_TOPIC, {"export_id": failed}), (EXPORT_TOPIC, {"export_id": failed2})]

    app = make_celery(load_settings(broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}"))
    assert publish_pending(app, sessions) == 2
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(QUEUE)
        received = []
        for _ in range(2):
            message = queue.get(timeout=10)
            received.append((message.headers["task"], message.payload[0]))
            message.ack()
        queue.close()
    assert received == [(EXPORT_TASK, [failed]), (EXPORT_TASK, [failed2])]


def test_failed_jobs_are_requeued_and_the_dispatcher_marks_them_queued(sessions: sessionmaker[Session],
                                                                     tmp_path: Path) -> None:
    made = _study(sessions, tmp_path, job_state=JobState.failed)
    job = made["job"]
    assert [(r.id, r.state, r.error) for r in list_jobs(sessions)] == [(job, "failed", "RuntimeError: weights")]
    assert retry_jobs(sessions, None) == [job]
    with pytest.raises(RequeueRefused, match=rf"job {job} is pending, not failed"):
        retry_jobs(sessions, [job])
    assert _outbox(sessions) == [(ANALYSE_TOPIC, {"study_uid": STUDY_UID, "job_id": job})]
    app = make_celery(load_settings(broker_url=f"sqla+sqlite:///{tmp_path / 'broker.db'}"))
    assert publish_pending(app, sessions) == 1
    with sessions() as session:
        assert session.get(Job, job).state == JobState.queued  # type: ignore[union-attr]
    with app.connection_for_read() as conn:
        queue = conn.SimpleQueue(QUEUE)
        message = queue.get(timeout=10)
        assert (message.headers["task"], message.payload[0]) == (ANALYSE_TASK, [job])
        message.ack()
        queue.close()


def test_a_study_is_sent_again_to_a_new_destination_once(sessions: sessionmaker[Session], tmp_path: Path) -> None:
    made = _study(sessions, tmp_path, exports=(ExportState.done,))
    with pytest.raises(RequeueRefused, match="no study 9.9.9"):
        resend_study(sessions, "9.9.9", ["NEW@127.0.0.1:104"])
    with pytest.raises(RequeueRefused, match="no destination"):
        resend_study(sessions, STUDY_UID, [])
    created = resend_study(sessions, STUDY_UID, ["NEW@127.0.0.1:104", "NEW@127.0.0.1:104"])
    assert len(created) == 1
    with pytest.raises(RequeueRefused, match="still under way"):
        resend_study(sessions, STUDY_UID, ["NEW@127.0.0.1:104"])
    with sessions() as session:
        export = session.get(Export, created[0])
        assert export is not None and export.result_id == made["result"] and export.state == ExportState.pending
        assert export.objects["files"] == [str(made["sr"])]
        assert session.scalar(select(func.count()).select_from(Export)) == 2
    assert _outbox(sessions)[-1] == (EXPORT_TOPIC, {"export_id": created[0]})
    Path(made["sr"]).unlink()  # type: ignore[arg-type]
    with pytest.raises(RequeueRefused, match="are gone"):
        resend_study(sessions, STUDY_UID, ["OTHER@127.0.0.1:104"])


def _triage(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRIAGE_")}
    env["TRIAGE_DATA_DIR"] = str(data_dir)
    return subprocess.run([sys.executable, "-m", "ops.cli", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_the_commands_list_and_requeue_and_say_what_is_wrong(tmp_path: Path) -> None:
    from db.migrate import upgrade
    from db.session import make_engine, make_sessionmaker

    data = tmp_path / "node"
    res = _triage("export", "list", data_dir=data)
    assert res.returncode == 2 and "TRIAGE_DATABASE_URL" in res.stderr and "triage db upgrade" in res.stderr
    data.mkdir(exist_ok=True)
    engine = make_engine(f"sqlite:///{data / 'triage.db'}")
    upgrade(engine)
    made = _study(make_sessionmaker(engine), tmp_path, job_state=JobState.failed, exports=(ExportState.failed,))
    engine.dispose()
    (export_id,) = made["exports"]  # type: ignore[misc]

    res = _triage("export", "list", "--state", "failed", "--json", data_dir=data)
    assert res.returncode == 0, res.stderr
    (row,) = [json.loads(line) for line in res.stdout.splitlines()]
    assert row["id"] == export_id and row["state"] == "failed" and row["study_uid"] == STUDY_UID
    assert row["last_error"] == "association refused"
    table = _triage("jobs", "list", data_dir=data).stdout.splitlines()
    assert table[0].split()[:3] == ["id", "state", "attempts"] and "RuntimeError: weights" in table[1]

    res = _triage("export", "retry", str(export_id + 1), data_dir=data)
    assert res.returncode == 1 and "does not exist" in res.stderr and "nothing was re-queued" in res.stderr
    res = _triage("export", "retry", "--failed", data_dir=data)
    assert res.returncode == 0 and f"re-queued 1 export(s): {export_id}" in res.stdout and "dispatcher" in res.stdout
    res = _triage("jobs", "retry", str(made["job"]), data_dir=data)
    assert res.returncode == 0 and f"re-queued 1 job(s): {made['job']}" in res.stdout
    res = _triage("export", "send", STUDY_UID, "--to", "not-a-destination", data_dir=data)
    assert res.returncode == 2 and "AE@host:port" in res.stderr
    res = _triage("export", "send", STUDY_UID, "--to", "NEW@127.0.0.1:104", data_dir=data)
    assert res.returncode == 0 and "NEW@127.0.0.1:104" in res.stdout


def test_two_operators_retrying_at_once_requeue_an_export_once(postgres_url: str, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL: both read the export as failed before either writes (SQLite's BEGIN IMMEDIATE
    serialises them before the read); the guarded UPDATE lets one of them have it."""
    import threading

    import workers.requeue as requeue
    from db.migrate import upgrade
    from db.session import make_engine, make_sessionmaker

    engine = make_engine(postgres_url)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    (export_id,) = _study(sessions, tmp_path, exports=(ExportState.failed,))["exports"]  # type: ignore[misc]
    both_read = threading.Barrier(2, timeout=20)
    original = requeue._failed_rows

    def read_then_wait(*args: object, **kwargs: object) -> list:
        rows = original(*args, **kwargs)  # type: ignore[arg-type]
        both_read.wait()
        return rows

    monkeypatch.setattr(requeue, "_failed_rows", read_then_wait)
    results: list[list[int]] = []
    threads = [threading.Thread(target=lambda: results.append(retry_exports(sessions, None))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    engine.dispose()
    assert sorted(results) == [[], [export_id]]
    assert _outbox(make_sessionmaker(make_engine(postgres_url))) == [(EXPORT_TOPIC, {"export_id": export_id})]
