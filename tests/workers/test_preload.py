"""A worker loads its models when it starts, so the first study after a start is not the slow one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.node import NodeProcess, node_env, wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.mark.parametrize("pool", ["prefork", "threads"])
def test_worker_loads_both_models_before_any_study(tmp_path: Path, pool: str) -> None:
    worker = NodeProcess("worker", tmp_path, node_env(tmp_path, TRIAGE_WORKER_POOL=pool))
    try:
        loaded = wait_for(lambda: {str(e["kind"]) for e in worker.events("worker.model.loaded")} >= {"ct", "cxr"}
                          and worker.events("worker.model.loaded"), 240, "both models to load", worker.log)
        assert worker.process.poll() is None
        assert all(float(str(e["seconds"])) > 0 for e in loaded)  # type: ignore[union-attr]
        assert not worker.events("worker.model.preload_failed")
        wait_for(lambda: worker.events("worker.outputs.warmed"), 60, "the SR and SC builders to warm up", worker.log)
        assert not worker.events("worker.outputs.warm_failed")
    finally:
        worker.stop()


def test_unloadable_weights_are_reported_at_start_and_the_worker_keeps_serving(tmp_path: Path) -> None:
    empty = tmp_path / "no-weights"
    empty.mkdir()
    worker = NodeProcess("worker", tmp_path, node_env(tmp_path, TRIAGE_WEIGHTS_DIR=str(empty)))
    try:
        failed = wait_for(lambda: len(worker.events("worker.model.preload_failed")) == 2
                          and worker.events("worker.model.preload_failed"), 240,
                          "both preload failures to be logged", worker.log)
        assert {e["kind"] for e in failed} == {"ct", "cxr"}  # type: ignore[union-attr]
        assert all("TRIAGE_WEIGHTS_DIR" in str(e["hint"]) for e in failed)  # type: ignore[union-attr]
        assert worker.process.poll() is None  # still consuming: the jobs fail with the engine's explanation
    finally:
        worker.stop()
