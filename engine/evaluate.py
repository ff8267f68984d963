"""Evaluation report of a trained model on the val or test split.

Writes to the report folder: ``metrics.json``, ``scores.csv`` (one row per image), ``report.md``
(metrics with bootstrap 95 % CIs beside the paper's numbers, the 0.1..0.9 threshold table,
per-source results for CXR) and PNGs (ROC, precision-recall, confusion matrix, score histograms
per class) drawn with matplotlib's Agg backend. The threshold is the one in the model card (chosen
on val); evaluating ``test`` also records the test metrics in the card. Run the test split once per
final model.
"""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from engine import data as D
from engine.metrics import binary_metrics, bootstrap_ci, roc_auc, threshold_table
from engine.weights import load_weights, write_card
from engine.weights import weights_dir as default_weights_dir

__all__ = ["PAPER_RESULTS", "evaluate_model", "evaluate_scores", "write_plots", "write_summary"]

#: Numbers reported by the source papers (test split), for side-by-side comparison.
PAPER_RESULTS: dict[str, dict[str, Any]] = {
    "deep-ct-net": {"source": "Dialameh et al. 2020, Table V (COVID-CT, official split, test)",
                    "precision": 0.884, "sensitivity": 0.905, "f1": 0.894, "auc": 0.899,
                    "baseline": {"name": "COVID-CT baseline in Table V", "f1": 0.853, "auc": 0.824}},
    "deep-cxr-net": {"source": "Dialameh et al. 2020, Table VI (their CXR collection, not ours)", "auc": 0.983},
    "ct-net": {"source": "Yazdani et al. 2020 (COVID CT-Net): no reference numbers on the COVID-CT "
                         "official split; not compared"},
}
_CLASS_NAMES = {0: "non-COVID", 1: "COVID"}


def evaluate_scores(y: np.ndarray, p: np.ndarray, threshold: float, n_boot: int = 1000,
                    seed: int = 0) -> dict[str, Any]:
    """Metrics at ``threshold`` and at 0.5, 95 % bootstrap CIs, and the threshold table."""
    return {"at_threshold": binary_metrics(y, p, threshold),
            "ci95": {k: list(v) for k, v in bootstrap_ci(y, p, threshold, n_boot=n_boot, seed=seed).items()},
            "at_0.5": binary_metrics(y, p, 0.5),
            "threshold_table": threshold_table(y, p)}


def write_plots(y: np.ndarray, p: np.ndarray, threshold: float, out: Path, title: str,
                groups: dict[str, np.ndarray] | None = None) -> list[Path]:
    """ROC, PR, confusion matrix and per-class histograms as small PNGs; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    out.mkdir(parents=True, exist_ok=True)
    paths = []
    fpr, tpr, _ = roc_curve(y, p)
    fig, ax = plt.subplots(figsize=(4, 4), dpi=80)
    ax.plot(fpr, tpr, label=f"AUC {roc_auc(y, p):.3f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8)
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC: {title}")
    ax.legend(loc="lower right")
    fig.tight_layout(); fig.savefig(out / "roc.png"); plt.close(fig); paths.append(out / "roc.png")

    prec, rec, _ = precision_recall_curve(y, p)
    fig, ax = plt.subplots(figsize=(4, 4), dpi=80)
    ax.plot(rec, prec)
    ax.axhline(float(np.mean(y)), ls="--", color="grey", lw=0.8)
    ax.set(xlabel="recall (sensitivity)", ylabel="precision", title=f"PR: {title}", ylim=(0, 1.02))
    fig.tight_layout(); fig.savefig(out / "pr.png"); plt.close(fig); paths.append(out / "pr.png")

    m = binary_metrics(y, p, threshold)
    cm = np.array([[m["tn"], m["fp"]], [m["fn"], m["tp"]]])
    fig, ax = plt.subplots(figsize=(3.6, 3.2), dpi=80)
    ax.imshow(cm, cmap="Blues")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="black", fontsize=12)
    ax.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["non-COVID", "COVID"], yticklabels=["non-COVID", "COVID"],
           xlabel="predicted", ylabel="true", title=f"threshold {threshold:.3f}")
    fig.tight_layout(); fig.savefig(out / "confusion.png"); plt.close(fig); paths.append(out / "confusion.png")

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=80)
    bins = np.linspace(0, 1, 21)
    for name, mask in (groups or {_CLASS_NAMES[c]: y == c for c in (0, 1)}).items():
        if mask.any():
            ax.hist(p[mask], bins=bins, alpha=0.5, label=f"{name} (n={int(mask.sum())})")
    ax.axvline(threshold, color="k", ls="--", lw=0.8)
    ax.set(xlabel="COVID probability", ylabel="images", title=f"scores per class: {title}")
    ax.legend(fontsize=8)
    fig.tight_layout(); fig.savefig(out / "histogram.png"); plt.close(fig); paths.append(out / "histogram.png")
    return paths


def _per_source(samples: list[D.Sample], y: np.ndarray, p: np.ndarray, thr: float) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    keys = sorted({(s.source, s.finding) for s in samples})
    for source in sorted({s.source for s in samples}):
        idx = np.array([s.source == source for s in samples])
        m = binary_metrics(y[idx], p[idx], thr)
        out[source] = {"n": int(idx.sum()), "covid": int(y[idx].sum()), "auc": m["auc"],
                       "sensitivity": m["sensitivity"] if y[idx].sum() else float("nan"),
                       "specificity": m["specificity"] if (1 - y[idx]).sum() else float("nan")}
    for source, finding in keys:
        idx = np.array([(s.source, s.finding) == (source, finding) for s in samples])
        out[f"{source}/{finding}"] = {"n": int(idx.sum()), "mean_score": float(p[idx].mean()),
                                      "flagged_covid": float((p[idx] >= thr).mean())}
    return out


def _f(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if np.isnan(v) else f"{v:.3f}"
    return str(v)


def _markdown(name: str, split: str, version: str, thr: float, res: dict[str, Any], per_source: dict[str, Any] | None,
              card: dict[str, Any]) -> str:
    m, ci = res["at_threshold"], res["ci95"]
    paper = PAPER_RESULTS.get(name, {})
    lines = [f"# {name} on the {split} split", "",
             (f"Weights `{version}`; threshold {thr:.4f} ({card.get('threshold', {}).get('how_chosen', 'from card')}); "
             f"n = {m['n']} ({m['tp'] + m['fn']} COVID). Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by "
             f"`triage evaluate {name} --split {split}`."), "",
             "| metric | ours | 95 % CI (bootstrap) | at 0.5 | paper |", "|---|---|---|---|---|"]
    for k in ("sensitivity", "specificity", "precision", "f1", "accuracy", "auc"):
        lo, hi = ci[k]
        lines.append(f"| {k} | {_f(m[k])} | {_f(lo)}-{_f(hi)} | {_f(res['at_0.5'][k])} | {_f(paper.get(k, ''))} |")
    lines.append("")
    if paper:
        lines.append(f"Paper: {paper.get('source')}." + (
            f" Baseline in the same table: F1 {paper['baseline']['f1']}, AUC {paper['baseline']['auc']}."
            if "baseline" in paper else "") + " Paper sensitivity = its recall.")
        lines.append("")
    lines += [f"Confusion at {thr:.4f}: TN {m['tn']}, FP {m['fp']}, FN {m['fn']}, TP {m['tp']}.", "",
              "## Threshold table", "", "| threshold | sensitivity | specificity | precision | F1 | accuracy |",
              "|---|---|---|---|---|---|"]
    for r in res["threshold_table"]:
        lines.append(f"| {r['threshold']:.1f} | {_f(r['sensitivity'])} | {_f(r['specificity'])} | "
                     f"{_f(r['precision'])} | {_f(r['f1'])} | {_f(r['accuracy'])} |")
    if per_source:
        lines += ["", "## Per source", "", "| source | n | COVID | AUC | sensitivity | specificity |",
                  "|---|---|---|---|---|---|"]
        for k, v in per_source.items():
            if "auc" in v:
                lines.append(f"| {k} | {v['n']} | {v['covid']} | {_f(v['auc'])} | {_f(v['sensitivity'])} | "
                             f"{_f(v['specificity'])} |")
        lines += ["", "| source/finding | n | mean score | flagged COVID |", "|---|---|---|---|"]
        for k, v in per_source.items():
            if "mean_score" in v:
                lines.append(f"| {k} | {v['n']} | {_f(v['mean_score'])} | {_f(v['flagged_covid'])} |")
    lines += ["", "![ROC](roc.png) ![PR](pr.png) ![confusion](confusion.png) ![histogram](histogram.png)", ""]
    return "\n".join(lines)


def evaluate_model(name: str, split: str = "val", out: Path | None = None, device: str = "cpu",
                   weights_dir: Path | None = None, n_boot: int = 1000, update_card: bool | None = None,
                   precision: str = "fp32") -> str:
    """Score ``split`` with the saved weights of ``name`` and write the report; returns the Markdown.

    With ``split == "test"`` (and ``update_card`` not False) the test metrics are written into the
    model card too. ``precision="int8"`` scores with the int8 model the node runs on the CPU (ONNX
    Runtime, from the committed calibration ranges) instead of the fp32 network: its report goes to
    ``SPLIT-int8`` and the card, which describes the fp32 model, is left as it is.

    Raises
    ------
    RuntimeUnavailable
        With ``precision="int8"``, if the model has no valid calibration ranges or onnxruntime is missing.
    """
    from engine.train import predict_scores

    if precision not in ("fp32", "int8"):
        raise ValueError(f"precision must be fp32 or int8, got {precision!r}")
    wdir = weights_dir or default_weights_dir()
    loaded = load_weights(name, wdir)
    size = int(loaded.config.get("image_size", 256))
    dataset = D.dataset_of(name)
    samples = D.load_split(dataset, split, "covid")  # type: ignore[arg-type]
    x = D.preprocess_samples(samples, size, progress=True)
    y = np.array([s.label for s in samples], dtype=np.int64)
    p = predict_scores(loaded.model, x, device=device) if precision == "fp32" else _int8_scores(loaded, wdir, x)
    thr = float(loaded.card.get("threshold", {}).get("value", 0.5))
    res = evaluate_scores(y, p, thr, n_boot=n_boot)
    per_source = _per_source(samples, y, p, thr) if dataset == "cxr" else None
    out = out or (wdir / "reports" / name / (split if precision == "fp32" else f"{split}-{precision}"))
    out.mkdir(parents=True, exist_ok=True)
    groups = None
    if dataset == "cxr":
        groups = {f: np.array([s.finding == f for s in samples]) for f in ("covid", "pneumonia", "normal")}
    write_plots(y, p, thr, out, f"{name} {split}", groups)
    with (out / "scores.csv").open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "label", "source", "finding", "score"])
        for s, sc in zip(samples, p, strict=True):
            w.writerow([s.path.name, s.label, s.source, s.finding, f"{sc:.6f}"])
    payload = {"model": name, "version": loaded.version, "split": split, "precision": precision, "threshold": thr, **res,
               "per_source": per_source, "paper": PAPER_RESULTS.get(name)}
    (out / "metrics.json").write_text(json.dumps(payload, indent=1, default=float) + "\n", encoding="utf-8")
    md = _markdown(name, split, loaded.version, thr, res, per_source, loaded.card)
    (out / "report.md").write_text(md, encoding="utf-8")
    if split == "test" and precision == "fp32" and update_card is not False and loaded.card:
        card = dict(loaded.card)
        metrics = dict(card.get("metrics", {}))
        metrics["test"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res["at_threshold"].items()}
        metrics["test_ci95"] = {k: [round(a, 4), round(b, 4)] for k, (a, b) in res["ci95"].items()}
        card["metrics"] = metrics
        card["paper"] = PAPER_RESULTS.get(name)
        card["test_evaluated_utc"] = datetime.now(UTC).isoformat(timespec="seconds")
        if per_source:
            card["per_source_test"] = {k: v for k, v in per_source.items() if "auc" in v}
        write_card(name, card, wdir)
    write_summary(wdir)
    return md


def _int8_scores(loaded: Any, wdir: Path, x: np.ndarray) -> np.ndarray:
    """Probabilities from the int8 model as the node builds it (no fallback to fp32: that would
    report fp32 figures under the int8 label)."""
    from engine.predictor import Predictor
    from engine.runtimes.int8 import cached_int8
    from engine.runtimes.ort_cpu import OrtBackend

    kind = D.dataset_of(loaded.name)
    backend = OrtBackend(cached_int8(loaded, wdir), precision="int8")
    return Predictor(kind, loaded, backend).predict(np.asarray(x, np.float32)[:, None])


def write_summary(wdir: Path) -> Path:
    """``reports/README.md``: every model's val and test metrics beside the papers', from the cards."""
    from engine.models import MODEL_NAMES
    from engine.weights import load_card

    intro = ("Generated from the model cards by `triage evaluate`. Thresholds chosen on val (max F1); test "
             "evaluated once per final model. Paper numbers are test results with ImageNet/CheXpert "
             "pre-training on GPU; ours are from scratch on a CPU with a cut schedule (see each card).")
    rows = ["# Engine results", "", intro, "",
            "| model | split | n | AUC (95 % CI) | sensitivity | specificity | precision | F1 | threshold |",
            "|---|---|---|---|---|---|---|---|---|"]
    for name in MODEL_NAMES:
        card = load_card(name, wdir)
        if not card:
            continue
        metrics = card.get("metrics", {})
        for split in ("val", "test"):
            m = metrics.get(split)
            if not m:
                continue
            ci = metrics.get(f"{split}_ci95", {}).get("auc")
            v = {k: _f(m.get(k, "")) for k in ("n", "auc", "sensitivity", "specificity", "precision", "f1",
                                                "threshold")}
            auc = v["auc"] + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
            rows.append(f"| {name} | {split} | {v['n']} | {auc} | {v['sensitivity']} | {v['specificity']} | "
                        f"{v['precision']} | {v['f1']} | {v['threshold']} |")
        paper = PAPER_RESULTS.get(name, {})
        if any(k in paper for k in ("auc", "f1")):
            rows.append(f"| {name} (paper) | test | | {_f(paper.get('auc', ''))} | {_f(paper.get('sensitivity', ''))} | "
                        f"| {_f(paper.get('precision', ''))} | {_f(paper.get('f1', ''))} | |")
        if "baseline" in paper:
            b = paper["baseline"]
            rows.append(f"| {b['name']} | test | | {_f(b['auc'])} | | | | {_f(b['f1'])} | |")
    rows += ["", "Per-model reports: `<model>/<split>/report.md` (plots beside them).", "", "## Limitations", ""]
    for name in MODEL_NAMES:
        text = load_card(name, wdir).get("limitations")
        if text:
            rows += [f"- **{name}**: {text}"]
    rows.append("")
    path = wdir / "reports" / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(rows), encoding="utf-8")
    return path
