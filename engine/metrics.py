"""Binary classification metrics with bootstrap confidence intervals, and threshold selection.

Written in NumPy (checked against scikit-learn in the tests) so that the definitions used in the
reports are visible in one place: sensitivity = recall = TP/(TP+FN), specificity = TN/(TN+FP),
precision = TP/(TP+FP), F1 = harmonic mean of precision and recall; an undefined ratio is 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "METRIC_NAMES",
    "binary_metrics",
    "bootstrap_ci",
    "choose_threshold",
    "confusion",
    "roc_auc",
    "threshold_table",
]

METRIC_NAMES: tuple[str, ...] = ("sensitivity", "specificity", "precision", "f1", "accuracy", "auc")


def _arrays(y_true: ArrayLike, scores: ArrayLike) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    y = np.asarray(y_true).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length ({y.size} vs {s.size})")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return y, s


def confusion(y_true: ArrayLike, scores: ArrayLike, threshold: float) -> tuple[int, int, int, int]:
    """(TN, FP, FN, TP) with positive prediction ``score >= threshold``."""
    y, s = _arrays(y_true, scores)
    pred = s >= threshold
    tp = int(np.sum(pred & (y == 1)))
    fp = int(np.sum(pred & (y == 0)))
    fn = int(np.sum(~pred & (y == 1)))
    tn = int(np.sum(~pred & (y == 0)))
    return tn, fp, fn, tp


def roc_auc(y_true: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve by the rank statistic (ties count one half); NaN for one class."""
    y, s = _arrays(y_true, scores)
    n_pos, n_neg = int(y.sum()), int((1 - y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(s)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else 0.0


def binary_metrics(y_true: ArrayLike, scores: ArrayLike, threshold: float = 0.5) -> dict[str, float]:
    """Sensitivity, specificity, precision, F1, accuracy at ``threshold`` and ROC AUC, plus counts."""
    y, s = _arrays(y_true, scores)
    tn, fp, fn, tp = confusion(y, s, threshold)
    sens, prec = _ratio(tp, tp + fn), _ratio(tp, tp + fp)
    return {
        "sensitivity": sens,
        "specificity": _ratio(tn, tn + fp),
        "precision": prec,
        "f1": _ratio(2 * prec * sens, prec + sens),
        "accuracy": _ratio(tp + tn, y.size),
        "auc": roc_auc(y, s),
        "tn": tn, "fp": fp, "fn": fn, "tp": tp, "n": int(y.size), "threshold": float(threshold),
    }


def bootstrap_ci(y_true: ArrayLike, scores: ArrayLike, threshold: float = 0.5, n_boot: int = 1000,
                 alpha: float = 0.05, seed: int = 0) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap (1 - alpha) intervals of each metric in :data:`METRIC_NAMES`.

    Resamples images with replacement; resamples with a single class are skipped for AUC.
    """
    y, s = _arrays(y_true, scores)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {k: [] for k in METRIC_NAMES}
    for _ in range(n_boot):
        idx = rng.integers(0, y.size, y.size)
        m = binary_metrics(y[idx], s[idx], threshold)
        for k in METRIC_NAMES:
            if not np.isnan(m[k]):
                draws[k].append(m[k])
    out = {}
    for k, v in draws.items():
        if v:
            lo, hi = np.percentile(v, [100 * alpha / 2, 100 * (1 - alpha / 2)])
            out[k] = (float(lo), float(hi))
        else:
            out[k] = (float("nan"), float("nan"))
    return out


def threshold_table(y_true: ArrayLike, scores: ArrayLike,
                    thresholds: Sequence[float] = tuple(round(0.1 * i, 1) for i in range(1, 10))) -> list[dict[str, float]]:
    """:func:`binary_metrics` at each threshold (default 0.1, 0.2, ..., 0.9)."""
    return [binary_metrics(y_true, scores, t) for t in thresholds]


def choose_threshold(y_true: ArrayLike, scores: ArrayLike) -> float:
    """The threshold maximising F1 (ties: the one closest to 0.5), searched over the observed scores.

    Called on the validation split only; F1 because it is the papers' headline operating metric.
    """
    y, s = _arrays(y_true, scores)
    candidates = np.unique(np.concatenate([s, [0.5]]))
    best_t, best_key = 0.5, (-1.0, 0.0)
    for t in candidates:
        f1 = binary_metrics(y, s, float(t))["f1"]
        key = (round(f1, 12), -abs(float(t) - 0.5))
        if key > best_key:
            best_key, best_t = key, float(t)
    return best_t
