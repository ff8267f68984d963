"""analyse_study: from a completed study to a recorded result and queued exports.

Stages, each timed into the result row: select (which series), decode (pixels to greyscale the way
training saw them), preprocess + infer (the engine, in batches), explain (heatmaps of the key slices),
build (SR and SC objects). Re-running a job for the same study and model version produces the same
result UIDs and replaces the earlier result and files: the PACS receives the same objects again,
never a second copy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import delete, select, update

from db.models import (
    Instance,
    Job,
    JobState,
    Result,
    Series,
    Study,
    utcnow,
)
from listener.storage import InstanceStore
from ops.logs import event
from workers.aggregate import RULES, decide, key_indices, study_score
from workers.context import WorkerContext
from workers.outbox import queue_export
from workers.selection import NothingToAnalyse, read_candidates, select_series

log = logging.getLogger("triage.workers.analysis")

@dataclass(frozen=True)
class Outcome:
    state: JobState
    detail: str
    result_id: int | None = None


class _Timer:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - started, 4)


def analyse_job(ctx: WorkerContext, job_id: int) -> Outcome:
    """Run one analysis job; safe to run again for the same job (redelivery)."""
    sessions = ctx.sessions
    with sessions() as session, session.begin():
        job = session.get(Job, job_id)
        if job is None:
            return Outcome(JobState.failed, f"job {job_id} does not exist")
        if job.state in (JobState.done, JobState.not_applicable):
            return Outcome(job.state, "already finished")
        job.state = JobState.running
        job.attempts += 1
        job.updated_at = utcnow()
        study_id = job.study_id
        study_uid = session.get(Study, study_id).study_uid  # type: ignore[union-attr]
        rows = session.execute(
            select(Instance.path, Instance.sop_instance_uid, Instance.sop_class_uid, Series.series_uid)
            .join(Series, Series.id == Instance.series_id)
            .where(Series.study_id == study_id)
        ).all()
    event(log, "analysis.started", job_id=job_id, study_uid=study_uid, instances=len(rows))
    timer = _Timer()
    store = InstanceStore(ctx.settings.storage_dir)
    try:
        with timer.stage("select"):
            candidates = read_candidates((store.absolute(path), sop, cls, series) for path, sop, cls, series in rows)
            selection = select_series(candidates)
    except NothingToAnalyse as exc:
        _finish(ctx, job_id, JobState.not_applicable, str(exc))
        event(log, "analysis.not_applicable", job_id=job_id, study_uid=study_uid, reason=str(exc))
        return Outcome(JobState.not_applicable, str(exc))

    from workers import inference

    model = ctx.model(selection.kind)
    with timer.stage("decode"):
        store.prefetch(candidate.path for candidate in selection.instances)
        datasets: list[pydicom.Dataset] = []
        images = []
        skipped_slices: dict[str, str] = {}
        for candidate in selection.instances:
            try:
                ds = pydicom.dcmread(candidate.path)
                images.append(inference.decode(ds, selection.kind))
                datasets.append(ds)
            except Exception as exc:  # one broken slice must not sink the study
                skipped_slices[candidate.sop_instance_uid] = f"{type(exc).__name__}: {exc}"[:200]
    if not images:
        reason = f"no decodable image in the selected series ({len(skipped_slices)} failed to decode)"
        _finish(ctx, job_id, JobState.not_applicable, reason)
        return Outcome(JobState.not_applicable, reason)
    scores = inference.score(model, images, timer)
    score = study_score(scores, selection.kind)
    decision = decide(score, model.threshold)
    keys = key_indices(scores, ctx.settings.key_slices if selection.kind == "ct" else 1)
    with timer.stage("explain"):
        overlays = [inference.overlay(model, images[i]) for i in keys]
    with timer.stage("build"):
        outputs = _write_outputs(ctx, study_uid, model, selection.kind, datasets, keys, overlays, score, decision)

    result_id = _record(ctx, job_id, study_id, selection.series_uid, model, score, decision, scores,
                        [datasets[i].SOPInstanceUID for i in range(len(datasets))], timer.seconds, outputs,
                        skipped_slices)
    event(log, "analysis.done", job_id=job_id, study_uid=study_uid, kind=selection.kind, slices=len(images),
          score=round(score, 4), decision=decision, model=model.model_name, model_version=model.model_version,
          runtime=model.runtime, precision=model.precision,
          **{f"s_{k}": v for k, v in timer.seconds.items()})
    return Outcome(JobState.done, decision, result_id)


def _write_outputs(ctx: WorkerContext, study_uid: str, model: Any, kind: str, datasets: list[pydicom.Dataset],
                   keys: list[int], overlays: list[Any], score: float, decision: str) -> list[dict[str, str]]:
    from workers.outputs.sc import build_sc
    from workers.outputs.sr import build_sr

    folder = ctx.settings.results_dir / study_uid / f"{model.model_name}-{model.model_version}"
    folder.mkdir(parents=True, exist_ok=True)
    key_datasets = [datasets[i] for i in keys]
    objects: list[tuple[str, pydicom.Dataset]] = [
        ("sr", build_sr(datasets, key_datasets, score=score, decision=decision, threshold=model.threshold,
                        model_name=model.model_name, model_version=model.model_version,
                        aggregation=RULES[kind], inference=f"{model.runtime} {model.precision} on {model.device}"))
    ]
    for index, (source, rgb) in enumerate(zip(key_datasets, overlays, strict=True)):
        objects.append(("sc", build_sc(source, rgb, index=index, score=score, model_name=model.model_name,
                                       model_version=model.model_version)))
    written = []
    for kind, ds in objects:
        path = folder / f"{kind}-{ds.SOPInstanceUID}.dcm"
        tmp = path.with_suffix(".part")
        ds.save_as(tmp, enforce_file_format=True)
        tmp.replace(path)
        written.append({"kind": kind, "sop_instance_uid": str(ds.SOPInstanceUID), "path": str(path)})
    return written


def _record(ctx: WorkerContext, job_id: int, study_id: int, series_uid: str, model: Any, score: float,
            decision: str, scores: list[float], sop_uids: list[str], timings: dict[str, float],
            outputs: list[dict[str, str]], skipped_slices: dict[str, str]) -> int:
    """Result, exports and their outbox rows, and the job's end, in one transaction."""
    with ctx.sessions() as session, session.begin():
        # a re-run for the same model version replaces the earlier result (and its exports)
        session.execute(delete(Result).where(Result.study_id == study_id, Result.model_name == model.model_name,
                                             Result.model_version == model.model_version))
        result = Result(job_id=job_id, study_id=study_id, series_uid=series_uid, model_name=model.model_name,
                        model_version=model.model_version, runtime=model.runtime, precision=model.precision,
                        score=score, decision=decision,
                        slice_scores={"sop_instance_uids": sop_uids, "scores": [round(s, 6) for s in scores],
                                      "skipped": skipped_slices, "threshold": model.threshold},
                        timings=timings, outputs=outputs)
        session.add(result)
        session.flush()
        for destination in ctx.settings.destinations:
            queue_export(session, result, destination)
        session.execute(update(Job).where(Job.id == job_id).values(state=JobState.done, error=None,
                                                                  updated_at=utcnow()))
        return result.id


def _finish(ctx: WorkerContext, job_id: int, state: JobState, reason: str) -> None:
    with ctx.sessions() as session, session.begin():
        session.execute(update(Job).where(Job.id == job_id).values(state=state, error=reason[:2000],
                                                                  updated_at=utcnow()))


def mark_failed(ctx: WorkerContext, job_id: int, error: str) -> None:
    _finish(ctx, job_id, JobState.failed, error)


def output_files(result_outputs: list[dict[str, str]]) -> list[Path]:
    return [Path(o["path"]) for o in result_outputs]
