"""Training of the three networks on CPU or CUDA, with fixed seeds, checkpoints on val AUC,
early stopping, a wall-clock limit and an fp16 weights file + model card at the end.

Images are preprocessed once with THE preprocessing (:func:`engine.preprocess.preprocess`) and
kept in memory; random geometric augmentation (:mod:`engine.augment`) is applied per batch.
The decision threshold is chosen on the validation split (maximum F1) and stored in the card;
the test split is never touched here (see :mod:`engine.evaluate`).
"""

from __future__ import annotations

import json
import math
import platform
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from engine import data as D
from engine.augment import (
    CT_NET_AUGMENT,
    DEEP_CT_NET_AUGMENT,
    AugmentConfig,
    augment_batch,
)
from engine.metrics import binary_metrics, choose_threshold, roc_auc
from engine.models import DEFAULT_CONFIGS, build_model
from engine.models.deep_ct_net import DenseFPAConfig
from engine.models.deep_cxr_net import DeepCXRNet, PartClassifier
from engine.weights import git_commit, load_weights, save_weights, write_card

__all__ = ["FitResult", "TrainOptions", "fit", "predict_scores", "set_seed", "train"]

REPO = Path(__file__).resolve().parents[1]


@dataclass
class TrainOptions:
    """Settings of one training run (the CLI's flags)."""

    model: str
    epochs: int = 30
    max_minutes: float = 25.0
    batch_size: int = 16
    lr: float | None = None
    weight_decay: float = 1e-4
    image_size: int | None = None
    seed: int = 20201
    device: str = "cpu"
    patience: int = 10
    threads: int = 1
    checkpoint_dir: Path = field(default_factory=lambda: REPO / "checkpoints")
    weights_dir: Path | None = None
    progress: bool = True


@dataclass
class FitResult:
    best_epoch: int
    best_val_metric: float
    epochs_run: int
    minutes: float
    stopped_because: str
    history: list[dict[str, float]]


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def _batch(x: np.ndarray, idx: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(x[idx]).to(device)[:, None].expand(-1, 3, -1, -1)


def predict_scores(model: nn.Module, x: np.ndarray, batch_size: int = 32, device: str | torch.device = "cpu",
                   multiclass: bool = False) -> np.ndarray:
    """Probabilities for preprocessed single-channel images (N, S, S): sigmoid, or softmax if multiclass."""
    dev = torch.device(device)
    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(x), batch_size):
            logits = model(_batch(x, np.arange(start, min(start + batch_size, len(x))), dev)).float()
            out.append((torch.softmax(logits, 1) if multiclass else torch.sigmoid(logits[:, 0])).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,), np.float32)


def _val_metric(y: np.ndarray, p: np.ndarray, multiclass: bool) -> float:
    if not multiclass:
        return roc_auc(y, p)
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, p, multi_class="ovr", average="macro"))


def fit(model: nn.Module, params: Iterable[nn.Parameter], xtr: np.ndarray, ytr: np.ndarray, xva: np.ndarray,
        yva: np.ndarray, *, epochs: int, max_minutes: float, batch_size: int,
        make_optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer], augment: AugmentConfig | None,
        checkpoint: Path, device: str = "cpu", patience: int = 10, seed: int = 0, multiclass: bool = False,
        desc: str = "train", progress: bool = True, log: Callable[[str], None] = print) -> FitResult:
    """Train with cosine-decayed LR, keep the state of best validation AUC (saved to ``checkpoint``).

    Stops at ``epochs``, after ``patience`` epochs without improvement, or when the next epoch
    would not finish within ``max_minutes`` (estimated from the epochs so far). Loads the best
    state into ``model`` before returning.
    """
    from tqdm import tqdm

    dev = torch.device(device)
    model.to(dev)
    params = [p for p in params if p.requires_grad]
    opt = make_optimizer(params)
    steps_per_epoch = math.ceil(len(xtr) / batch_size)
    total = max(1, epochs * steps_per_epoch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    if multiclass:
        loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = \
            lambda logits, y: F.cross_entropy(logits, y.long())
    else:
        pos = float(ytr.mean())
        pw = torch.tensor((1 - pos) / max(pos, 1e-6), device=dev)
        loss_fn = lambda logits, y: F.binary_cross_entropy_with_logits(logits[:, 0], y.float(), pos_weight=pw)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    history: list[dict[str, float]] = []
    best, best_epoch, since_best = -1.0, 0, 0
    t0 = time.monotonic()
    reason = "epochs"
    for epoch in range(1, epochs + 1):
        te = time.monotonic()
        model.train()
        order = rng.permutation(len(xtr))
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"{desc} {epoch}/{epochs}", unit="batch", leave=False,
                   disable=not progress)
        for b in bar:
            idx = order[b * batch_size:(b + 1) * batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            xb = torch.from_numpy(xtr[idx])[:, None]
            if augment is not None:
                xb = augment_batch(xb, augment, gen)
            xb = xb.to(dev).expand(-1, 3, -1, -1)
            yb = torch.from_numpy(ytr[idx]).to(dev)
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses):.4f}")
        pva = predict_scores(model, xva, device=dev, multiclass=multiclass)
        metric = _val_metric(yva, pva, multiclass)
        row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_auc": metric,
               "lr": float(sched.get_last_lr()[0]), "seconds": time.monotonic() - te}
        history.append(row)
        improved = metric > best
        if improved:
            best, best_epoch, since_best = metric, epoch, 0
            torch.save(model.state_dict(), checkpoint)
        else:
            since_best += 1
        log(f"{desc} epoch {epoch}: loss {row['train_loss']:.4f} val AUC {metric:.4f}"
            f"{' (best)' if improved else ''} {row['seconds']:.0f}s")
        elapsed = time.monotonic() - t0
        if since_best >= patience:
            reason = f"early stop: no val improvement for {patience} epochs"
            break
        if elapsed + elapsed / epoch > max_minutes * 60:
            reason = f"time limit {max_minutes} min"
            break
    model.load_state_dict(torch.load(checkpoint, map_location=dev))
    return FitResult(best_epoch, best, len(history), (time.monotonic() - t0) / 60, reason, history)


def _hardware(device: str, threads: int) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA), torch {torch.__version__}"
    return f"CPU {platform.processor() or platform.machine()}, {threads} thread(s), torch {torch.__version__}"


def _load_arrays(dataset: str, split: str, task: str, size: int, progress: bool) -> tuple[np.ndarray, np.ndarray,
                                                                                          list[D.Sample]]:
    samples = D.load_split(dataset, split, task)  # type: ignore[arg-type]
    x = D.preprocess_samples(samples, size, progress)
    y = np.array([s.label for s in samples], dtype=np.int64)
    return x, y, samples


def _adamw(lr: float, wd: float) -> Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]:
    return lambda ps: torch.optim.AdamW(ps, lr=lr, weight_decay=wd)


def _rmsprop(lr: float, wd: float) -> Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]:
    return lambda ps: torch.optim.RMSprop(ps, lr=lr, alpha=0.9, eps=1e-3, weight_decay=wd)


def train(opts: TrainOptions, log: Callable[[str], None] = print) -> Path:
    """Train ``opts.model`` and write its fp16 weights and card (val metrics only). Returns the weights path."""
    torch.set_num_threads(opts.threads)
    set_seed(opts.seed)
    name = opts.model
    config = dict(DEFAULT_CONFIGS[name])
    if opts.image_size:
        config["image_size"] = opts.image_size
    size = int(config["image_size"])
    dataset = D.dataset_of(name)
    ckdir = opts.checkpoint_dir / name
    started = datetime.now(UTC)
    t0 = time.monotonic()
    log(f"{name}: preprocessing {dataset} images at {size}px")
    xtr, ytr, _ = _load_arrays(dataset, "train", "covid", size, opts.progress)
    xva, yva, _ = _load_arrays(dataset, "val", "covid", size, opts.progress)
    common: dict[str, Any] = {"batch_size": opts.batch_size, "device": opts.device, "patience": opts.patience,
                              "seed": opts.seed, "progress": opts.progress, "log": log}
    stages: dict[str, Any] = {}
    if name == "deep-ct-net":
        lr = opts.lr or 1e-3
        model = build_model(name, config)
        res = fit(model, model.parameters(), xtr, ytr, xva, yva, epochs=opts.epochs, max_minutes=opts.max_minutes,
                  make_optimizer=_adamw(lr, opts.weight_decay), augment=DEEP_CT_NET_AUGMENT,
                  checkpoint=ckdir / "best.pt", desc=name, **common)
        stages["covid-vs-noncovid"] = {"optimizer": f"AdamW lr {lr} wd {opts.weight_decay}, cosine decay",
                                       "augmentation": asdict(DEEP_CT_NET_AUGMENT), **_summary(res)}
    elif name == "ct-net":
        lr = opts.lr or 1e-3
        model = build_model(name, config)
        res = fit(model, model.parameters(), xtr, ytr, xva, yva, epochs=opts.epochs, max_minutes=opts.max_minutes,
                  make_optimizer=_rmsprop(lr, opts.weight_decay), augment=CT_NET_AUGMENT,
                  checkpoint=ckdir / "best.pt", desc=name, **common)
        stages["covid-vs-noncovid"] = {"optimizer": f"RMSprop lr {lr} (alpha 0.9, eps 1e-3) wd {opts.weight_decay},"
                                                    " cosine decay", "augmentation": asdict(CT_NET_AUGMENT),
                                       **_summary(res)}
    else:
        model, stages = _train_deep_cxr_net(opts, config, xtr, ytr, xva, yva, ckdir, common, log)
    minutes = (time.monotonic() - t0) / 60
    wpath = save_weights(model, name, config, opts.weights_dir)
    loaded = load_weights(name, opts.weights_dir)  # metrics of the shipped fp16 weights, not the fp32 ones
    pva = predict_scores(loaded.model, xva, device="cpu")
    thr = choose_threshold(yva, pva)
    val = binary_metrics(yva, pva, thr)
    card = {
        "model": name,
        "version": loaded.version,
        "architecture": _architecture(name, config, model),
        "config": config,
        "input": {"image_size": size, "channels": 3,
                  "preprocessing": "engine.preprocess.preprocess: histogram equalisation, bilinear resize to "
                                   f"{size}x{size}, 3x3 Gaussian blur, per-image standardisation, grey replicated to 3 "
                                   "channels" + ("; CT DICOM first windowed from HU (lung window -600/1500)"
                                                 if dataset == "ct" else "")},
        "data": _data_text(dataset),
        "training": {"stages": stages, "total_minutes": round(minutes, 1), "seed": opts.seed,
                     "batch_size": opts.batch_size, "max_epochs": opts.epochs, "max_minutes": opts.max_minutes,
                     "hardware": _hardware(opts.device, opts.threads), "started_utc": started.isoformat(),
                     "command": f"triage train {name} --epochs {opts.epochs} --max-minutes {opts.max_minutes} "
                                f"--image-size {size} --batch-size {opts.batch_size} --device {opts.device}",
                     "note": "From scratch (no ImageNet/CheXpert weights exist here) with a schedule cut to fit "
                             "a shared 2-core CPU (1 thread) in minutes instead of the papers' 100 epochs on GPU; "
                             "widths narrowed for the same reason and for the 25 MB fp16 budget."},
        "threshold": {"value": thr, "how_chosen": "maximum F1 on the validation split (ties: closest to 0.5)"},
        "metrics": {"val": _round(val)},
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "code_version": git_commit(),
        "intended_use": "Research triage aid; not for diagnostic use.",
    }
    write_card(name, card, opts.weights_dir)
    (ckdir / "history.json").write_text(json.dumps(stages, indent=1, default=str))
    log(f"{name}: wrote {wpath} ({wpath.stat().st_size / 1e6:.1f} MB), val {_round(val)}")
    return wpath


def _round(m: dict[str, float]) -> dict[str, float]:
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in m.items()}


def _summary(res: FitResult) -> dict[str, Any]:
    return {"best_epoch": res.best_epoch, "best_val_auc": round(res.best_val_metric, 4),
            "epochs_run": res.epochs_run, "minutes": round(res.minutes, 1), "stopped": res.stopped_because,
            "history": [{k: round(v, 4) for k, v in h.items()} for h in res.history]}


def _architecture(name: str, config: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    n = sum(p.numel() for p in model.parameters())
    if name == "ct-net":
        text = ("Residual attention network (Attention-56 layout, p=1 t=2 r=1, three attention stages with "
                f"(1+M)*T), stem width {config['width']} (Attention-56: 64)")
    elif name == "deep-ct-net":
        text = (f"DenseNet-121 (growth rate {config['growth_rate']}, stem {config['num_init_features']}; "
                f"paper: 32/64) -> FPA ({config['fpa_channels']} out, {config['fpa_mid']} pyramid channels) -> BN "
                "-> flatten -> dropout -> FC(1)")
    else:
        text = (f"3 x [DenseNet-121 (growth {config['growth_rate']}, stem {config['num_init_features']}) -> "
                f"FPA ({config['fpa_channels']}) -> BN -> flatten], concatenated -> FC({config.get('hidden')}) "
                "-> ReLU -> FC(1)")
    return {"description": text, "parameters": n, "fp16_megabytes": round(n * 2 / 1e6, 2)}


def _data_text(dataset: str) -> dict[str, str]:
    if dataset == "ct":
        return {"dataset": "COVID-CT (UCSD-AI4H): 349 COVID / 397 non-COVID CT slices",
                "split": "official Data-split: train 191+234, val 60+58, test 98+105 (COVID+non-COVID)",
                "labels": "COVID = 1, non-COVID = 0"}
    return {"dataset": "cxr/labels.csv: ieee8023 covid-chestxray, Figure1, Actualmed, Kermany (300 normal + "
                       "300 viral pneumonia, paediatric)",
            "split": "labels.csv split column (patient-grouped): train 329/285/238, val 55/46/33, test 101/76/64 "
                     "(covid/pneumonia/normal)",
            "labels": "covid = 1; pneumonia and normal = 0",
            "caution": "Kermany images are paediatric and pre-equalised: see per-source results in the report."}


def _train_deep_cxr_net(opts: TrainOptions, config: dict[str, Any], xtr: np.ndarray, ytr: np.ndarray,
                        xva: np.ndarray, yva: np.ndarray, ckdir: Path, common: dict[str, Any],
                        log: Callable[[str], None]) -> tuple[nn.Module, dict[str, Any]]:
    """Three stages: part 1 on 3-class (CheXpert substitute), part 2 on Kermany normal vs pneumonia,
    then parts 1-2 frozen and part 3 + head on COVID vs non-COVID. Time is split 30/20/50 %."""
    lr = opts.lr or 1e-3
    size = int(config["image_size"])
    cfg = DenseFPAConfig(**{k: v for k, v in config.items() if k != "hidden"})
    model = build_model("deep-cxr-net", config)
    assert isinstance(model, DeepCXRNet)
    stages: dict[str, Any] = {}
    budget = opts.max_minutes
    epochs = opts.epochs

    # Part 1: 3-class normal / pneumonia / covid on every source (substitute for CheXpert).
    s_tr, s_va = D.cxr_samples("train", "3class"), D.cxr_samples("val", "3class")
    y1tr = np.array([s.label for s in s_tr]); y1va = np.array([s.label for s in s_va])
    clf1 = PartClassifier(model.part1, 3, cfg.dropout)
    res = fit(clf1, clf1.parameters(), xtr, y1tr, xva, y1va, epochs=max(1, epochs // 2), max_minutes=0.3 * budget,
              make_optimizer=_adamw(lr, opts.weight_decay), augment=DEEP_CT_NET_AUGMENT,
              checkpoint=ckdir / "part1.pt", multiclass=True, desc="part1 3-class", **common)
    stages["part1: normal/pneumonia/covid (CheXpert substitute), all sources"] = {
        "optimizer": f"AdamW lr {lr}", **_summary(res), "val_metric": "macro one-vs-rest AUC"}

    # Part 2: Kermany normal vs pneumonia.
    k_tr = [i for i, s in enumerate(s_tr) if s.source == "kermany"]
    k_va = [i for i, s in enumerate(s_va) if s.source == "kermany"]
    y2tr = (y1tr[k_tr] == 1).astype(np.int64); y2va = (y1va[k_va] == 1).astype(np.int64)
    clf2 = PartClassifier(model.part2, 1, cfg.dropout)
    res = fit(clf2, clf2.parameters(), xtr[k_tr], y2tr, xva[k_va], y2va, epochs=max(1, epochs // 2),
              max_minutes=0.2 * budget, make_optimizer=_adamw(lr, opts.weight_decay), augment=DEEP_CT_NET_AUGMENT,
              checkpoint=ckdir / "part2.pt", desc="part2 kermany", **common)
    stages["part2: Kermany normal vs pneumonia"] = {"optimizer": f"AdamW lr {lr}", **_summary(res)}

    # Part 3 + head: COVID vs non-COVID with parts 1 and 2 frozen.
    model.freeze_pretrained_parts()
    res = fit(model, model.parameters(), xtr, ytr, xva, yva, epochs=epochs, max_minutes=0.5 * budget,
              make_optimizer=_adamw(lr, opts.weight_decay), augment=DEEP_CT_NET_AUGMENT,
              checkpoint=ckdir / "best.pt", desc="part3+head covid", **common)
    stages["part3 + head: COVID vs non-COVID (parts 1-2 frozen)"] = {"optimizer": f"AdamW lr {lr}", **_summary(res)}
    del size
    return model, stages
