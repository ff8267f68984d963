"""From slice scores to one study score, and which slices to show.

CT rule (documented in the SR and the model card): the study score is the mean of the top 10 % of
slice scores (at least one slice). COVID-19 pneumonia is often focal early on, so a plain mean over
a 300-slice volume would dilute a few clearly abnormal slices; the maximum alone would let one noisy
slice decide. Radiographs: the highest score among the frontal views.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

TOP_FRACTION = 0.10
RULES = {
    "ct": "study score = mean of the top 10% of slice scores (at least one slice)",
    "cxr": "study score = highest score among the frontal views",
}


def study_score(slice_scores: Sequence[float], kind: str) -> float:
    """Aggregate per-image COVID probabilities to the study's probability."""
    scores = np.asarray(slice_scores, dtype=np.float64)
    if scores.size == 0:
        raise ValueError("no slice scores to aggregate")
    if kind == "cxr":
        return float(scores.max())
    k = max(1, math.ceil(TOP_FRACTION * scores.size))
    return float(np.sort(scores)[-k:].mean())


def key_indices(slice_scores: Sequence[float], count: int) -> list[int]:
    """Indices of the highest-scoring slices, in slice order, for the heatmaps and SR references."""
    scores = np.asarray(slice_scores, dtype=np.float64)
    top = np.argsort(-scores, kind="stable")[: max(1, min(count, scores.size))]
    return sorted(int(i) for i in top)


def decide(score: float, threshold: float) -> str:
    return "covid-suspected" if score >= threshold else "covid-not-suspected"
