"""Loading the models when a worker process starts, not when its first study arrives.

Loaded lazily, the first study of each kind after a (re)start waited for the model: the weights,
the ONNX export on a fresh install (seconds), the TensorRT engine build on a GPU (minutes). That
study is the one the radiologist is waiting for. So each worker process loads both models in a
background thread as soon as it starts, runs one image and one full batch through each so that
the runtime's first-call allocations for both shapes are paid then too, imports the job's modules
(half a second of imports: pydicom's decoders, highdicom, the output builders), builds one SR and
one SC from a made-up image (highdicom parses the standard's module tables (JSON) at its first
object, 0.2-0.9 s of CPU that was the first study's), and last explains one blank image of each
kind's usual size (the first Grad-CAM overlay of a 1955x1841 radiograph took 1.0 s against 0.29 s
for the next: eager autograd's first backward, the colour map, the first large arrays). A job that
arrives meanwhile waits on the context's lock for that model (no double load). A failure is logged
with a hint and leaves the process serving: the first study of that kind then fails with the
engine's explanation, as before.

Prefork children each hold their own models, so they load in ``worker_process_init`` (in the
child, after the fork: nothing heavy is loaded in the parent). The threads and solo pools share
the main process's context, which loads at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from ops.logs import event

log = logging.getLogger("triage.workers.preload")

KINDS: tuple[str, ...] = ("ct", "cxr")
#: Side of the blank image explained at warm-up: a CT slice, and about the largest radiograph
#: (warmed at 2048, the first real 1955x1841 overlay took 0.26 s, as later ones do; at 64, 0.44 s).
_WARM_SIDE = {"ct": 512, "cxr": 2048}


def load_models(kinds: Sequence[str] = KINDS) -> dict[str, float]:
    """Load (and warm) the model of every kind in this process's context; seconds per kind loaded.

    In the order a first study needs them: the models and one inference each, then the SR and SC
    builders, then the explanations (the slowest warm-up, and the last stage of a job).
    """
    import workers.analysis  # noqa: F401 - imported now, not by the first job
    import workers.outputs.sc  # noqa: F401
    import workers.outputs.sr  # noqa: F401
    from workers.context import get_context

    loaded: dict[str, float] = {}
    models: dict[str, Any] = {}
    for kind in kinds:
        started = time.perf_counter()
        try:
            models[kind] = get_context().model(kind)
            _warm(models[kind])
        except Exception as exc:  # a bad weights file must not stop the worker from serving the other kind
            event(log, "worker.model.preload_failed", logging.ERROR, kind=kind, error=f"{type(exc).__name__}: {exc}",
                  hint="studies of this kind will fail until its weights load: check the files under "
                       "TRIAGE_WEIGHTS_DIR (default engine/weights/) and TRIAGE_RUNTIME")
            models.pop(kind, None)
            continue
        loaded[kind] = time.perf_counter() - started
        event(log, "worker.model.loaded", kind=kind, seconds=round(loaded[kind], 2))
    started = time.perf_counter()
    try:
        _warm_outputs()
        for kind, model in models.items():
            _warm_explanation(model, _WARM_SIDE.get(kind, model.input_size))
    except Exception as exc:  # the first study builds them again and reports its own error
        event(log, "worker.outputs.warm_failed", logging.WARNING, error=f"{type(exc).__name__}: {exc}")
    else:
        event(log, "worker.outputs.warmed", seconds=round(time.perf_counter() - started, 2))
    return loaded


def _warm(model: Any) -> None:
    """Blank images through the predictor, the runtime's first call of each shape allocating and planning:
    one image (a radiograph; on the CPU, a batch smaller than the cores has a session of its own) and a
    full batch (a CT series)."""
    blank = np.zeros((model.input_size, model.input_size), np.uint8)
    for count in sorted({1, model.batch_size}):
        model.predict_images([blank] * count)


def _warm_explanation(model: Any, side: int) -> None:
    """One blank image through the explanation the job draws on its key images."""
    from workers.inference import overlay

    overlay(model, np.zeros((side, side), np.uint8))


def _warm_outputs() -> None:
    """Build (not send) an SR and an SC of a made-up 256x256 CT image with fresh UIDs and no patient data."""
    from pydicom.dataset import Dataset
    from pydicom.uid import CTImageStorage, generate_uid

    from workers.outputs.sc import build_sc
    from workers.outputs.sr import build_sr

    source = Dataset()
    source.SOPClassUID, source.SOPInstanceUID = CTImageStorage, generate_uid()
    source.StudyInstanceUID, source.SeriesInstanceUID = generate_uid(), generate_uid()
    source.Modality, source.PatientName, source.PatientID = "CT", "WARM^UP", "WARMUP"
    for keyword in ("PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
                    "ReferringPhysicianName"):
        setattr(source, keyword, "")
    source.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    source.Rows = source.Columns = 256
    model = ("warm-up", "warm-up@0")
    build_sr([source], [source], score=0.5, decision="covid-not-suspected", threshold=0.5, model_name=model[0],
             model_version=model[1])
    build_sc(source, np.zeros((256, 256, 3), np.uint8), index=0, score=0.5, model_name=model[0], model_version=model[1])


def start_loading(kinds: Sequence[str] = KINDS) -> threading.Thread:
    """:func:`load_models` in a daemon thread (a prefork child must signal Celery within 4 s)."""
    thread = threading.Thread(target=load_models, args=(tuple(kinds),), name="model-preload", daemon=True)
    thread.start()
    return thread


def install(pool: str, kinds: Sequence[str] = KINDS) -> None:
    """Arrange for the models to load when the worker's job processes start (call before worker_main)."""
    if pool == "prefork":
        from celery.signals import worker_process_init

        def _on_child_start(**_: Any) -> None:
            start_loading(kinds)

        worker_process_init.connect(_on_child_start, weak=False)
    else:
        start_loading(kinds)
