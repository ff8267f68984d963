"""A few optimiser steps on real images lower the loss; fit() keeps the best val checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine.data import Sample, preprocess_samples
from engine.models import build_model
from engine.train import fit, predict_scores, set_seed

from .conftest import TINY_CONFIGS


def _real_batch(paths: list[Path], size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    samples = [Sample(p, int("CT_COVID" in str(p)), "covid-ct") for p in paths]
    return preprocess_samples(samples, size), np.array([s.label for s in samples])


def test_optimiser_steps_on_real_images_lower_the_loss(ct_images: list[Path]) -> None:
    x_np, y_np = _real_batch(ct_images)
    x = torch.from_numpy(x_np)[:, None].expand(-1, 3, -1, -1)
    y = torch.from_numpy(y_np).float()
    for name in ("ct-net", "deep-ct-net"):
        set_seed(0)
        model = build_model(name, {**TINY_CONFIGS[name], "dropout": 0.0}).train()
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        losses = []
        for _ in range(8):
            loss = F.binary_cross_entropy_with_logits(model(x)[:, 0], y)
            opt.zero_grad(); loss.backward(); opt.step()
            losses.append(loss.item())
        assert losses[-1] < losses[0] * 0.8, f"{name}: {losses}"


def test_fit_keeps_the_best_checkpoint_and_reports_history(ct_images: list[Path], tmp_path: Path) -> None:
    x, y = _real_batch(ct_images)
    set_seed(0)
    model = build_model("ct-net", TINY_CONFIGS["ct-net"])
    res = fit(model, model.parameters(), x, y, x, y, epochs=3, max_minutes=5, batch_size=4,
              make_optimizer=lambda ps: torch.optim.Adam(ps, lr=1e-3), augment=None,
              checkpoint=tmp_path / "best.pt", patience=5, progress=False, log=lambda _s: None)
    assert (tmp_path / "best.pt").is_file()
    assert res.epochs_run == 3 and len(res.history) == 3
    assert res.best_val_metric == max(h["val_auc"] for h in res.history)
    # the model holds the best epoch's weights on return
    p = predict_scores(model, x)
    from engine.metrics import roc_auc

    assert roc_auc(y, p) == res.best_val_metric
