"""The worker's use of the engine: decode, preprocess, infer in batches, explain.

The engine knows nothing of studies or databases; this module is the seam. Preprocessing is the
engine's own function (the one training used); batches are sized for the runtime the engine chose.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray


class _Timer(Protocol):
    def stage(self, name: str) -> Any: ...


def load_model(kind: str) -> Any:
    """The engine's predictor for ``kind`` behind a batching front shared by this process's jobs.

    ``TRIAGE_RUNTIME`` picks the runtime (auto by default). With the threads pool and concurrency
    above one (the GPU worker), studies analysed at the same time share batches.
    """
    from engine.batching import BatchingPredictor
    from engine.predictor import load_predictor

    return BatchingPredictor(load_predictor(kind, os.environ.get("TRIAGE_RUNTIME", "auto")))  # type: ignore[arg-type]


def decode(ds: Any, kind: str) -> NDArray[np.uint8]:
    """Greyscale uint8 the way training saw it: HU -> lung window for CT; VOI LUT and MONOCHROME1
    inversion for radiographs (the engine decides by modality)."""
    from engine.imageio import dataset_to_gray

    return dataset_to_gray(ds)


def score(model: Any, images: list[NDArray[np.uint8]], timer: _Timer) -> list[float]:
    """COVID probability of every image, timed as "preprocess" and "infer" (which overlap: see
    :meth:`engine.batching.BatchingPredictor.predict_images`)."""
    return [float(s) for s in model.predict_images(images, stage=timer.stage)]


def overlay(model: Any, gray: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Grad-CAM of the last attention block blended over the displayed (windowed) image."""
    from engine.explain import explain_image
    from engine.explain import overlay as blend

    heatmap = explain_image(model, gray, "gradcam")
    return blend(gray, heatmap, alpha=0.4, min_level=0.2)
