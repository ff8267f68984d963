"""Our metric definitions agree with scikit-learn; CIs and threshold choice behave."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from engine.metrics import (
    binary_metrics,
    bootstrap_ci,
    choose_threshold,
    roc_auc,
    threshold_table,
)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 200)
    p = np.clip(rng.normal(0.35 + 0.3 * y, 0.2), 0, 1).round(2)  # rounded: ties exercise the AUC
    for thr in (0.3, 0.5, 0.7):
        m = binary_metrics(y, p, thr)
        pred = (p >= thr).astype(int)
        tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
        assert (m["tn"], m["fp"], m["fn"], m["tp"]) == (tn, fp, fn, tp)
        assert m["sensitivity"] == pytest.approx(recall_score(y, pred))
        assert m["specificity"] == pytest.approx(tn / (tn + fp))
        assert m["precision"] == pytest.approx(precision_score(y, pred, zero_division=0))
        assert m["f1"] == pytest.approx(f1_score(y, pred, zero_division=0))
        assert m["auc"] == pytest.approx(roc_auc_score(y, p))
    assert roc_auc(y, p) == pytest.approx(roc_auc_score(y, p))


def test_undefined_ratios_are_zero_and_single_class_auc_is_nan() -> None:
    m = binary_metrics([0, 0, 0], [0.1, 0.2, 0.3], 0.5)
    assert m["precision"] == 0 and m["sensitivity"] == 0 and m["specificity"] == 1
    assert np.isnan(m["auc"])


def test_bootstrap_interval_brackets_the_estimate() -> None:
    rng = np.random.default_rng(5)
    y = rng.integers(0, 2, 150)
    p = np.clip(rng.normal(0.4 + 0.2 * y, 0.2), 0, 1)
    ci = bootstrap_ci(y, p, 0.5, n_boot=300, seed=1)
    m = binary_metrics(y, p, 0.5)
    for k, (lo, hi) in ci.items():
        assert lo <= m[k] <= hi, k
        assert hi - lo < 0.4
    assert ci == bootstrap_ci(y, p, 0.5, n_boot=300, seed=1), "fixed seed must reproduce the interval"


def test_threshold_table_covers_point_one_to_point_nine() -> None:
    table = threshold_table([0, 1, 1, 0], [0.2, 0.8, 0.6, 0.4])
    assert [r["threshold"] for r in table] == pytest.approx([0.1 * i for i in range(1, 10)])
    assert table[4]["f1"] == 1.0


def test_chosen_threshold_maximises_f1() -> None:
    y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
    p = np.array([0.1, 0.2, 0.35, 0.3, 0.6, 0.7, 0.65, 0.9])
    t = choose_threshold(y, p)
    best = max(binary_metrics(y, p, float(c))["f1"] for c in p)
    assert binary_metrics(y, p, t)["f1"] == pytest.approx(best)
