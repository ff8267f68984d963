"""``triage`` subcommands of the engine: train, evaluate, calibrate, predict, explain.

torch and the models are imported inside the handlers, so ``triage --help`` stays fast.

``predict`` prints one JSON line per input, in input order: ``{"path", "score", "label"}`` for a
scored image, ``{"path", "error"}`` for one that could not be read. Exit status: 0 if at least
one input was scored, 1 if none was, 2 for a usage or weights error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from engine.runtimes import RUNTIMES

__all__ = ["register"]

_MODELS = ("ct-net", "deep-ct-net", "deep-cxr-net")


def register(subparsers: Any) -> None:
    """Add ``train``, ``evaluate``, ``calibrate``, ``predict`` and ``explain`` to the ``triage`` CLI."""
    p = subparsers.add_parser("train", help="train a model and write its fp16 weights and model card",
                              description="Train MODEL on the shared data (TRIAGE_SHARED_DATA), keep the best "
                                          "epoch on val AUC, choose the threshold on val and write "
                                          "MODEL.safetensors + card to the weights folder.")
    p.add_argument("model", choices=_MODELS)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--max-minutes", type=float, default=25.0, help="wall-clock budget (default 25)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: 1e-3)")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--image-size", type=int, default=None, help="input side (default: the model's, 256)")
    p.add_argument("--seed", type=int, default=20201)
    p.add_argument("--patience", type=int, default=10, help="early stopping patience in epochs")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--weights-dir", type=Path, default=None, help="default: TRIAGE_WEIGHTS_DIR or engine/weights")
    p.add_argument("--checkpoint-dir", type=Path, default=None, help="fp32 checkpoints (default ./checkpoints)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    p.set_defaults(func=_train)

    p = subparsers.add_parser("evaluate", help="evaluate a trained model and write a report",
                              description="Score a split, write metrics with bootstrap CIs, threshold table, "
                                          "ROC/PR curves, confusion matrix, score histograms and a Markdown "
                                          "summary beside the paper's numbers; with --split test also record "
                                          "the test metrics in the model card.")
    p.add_argument("model", choices=_MODELS)
    p.add_argument("--split", choices=("val", "test"), default="val")
    p.add_argument("--out", type=Path, default=None, help="report folder (default engine/weights/reports/MODEL/SPLIT)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--weights-dir", type=Path, default=None)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--precision", choices=("fp32", "int8"), default="fp32",
                   help="int8: score with the int8 model the node runs on the CPU (report in SPLIT-int8; the card "
                        "keeps the fp32 figures)")
    p.set_defaults(func=_evaluate)

    p = subparsers.add_parser("calibrate", help="int8 activation ranges for ONNX Runtime, checked against fp32 on val",
                              description="Compute the int8 activation ranges of MODEL's fp32 ONNX export on the "
                                          "train split, build the int8 model from them and compare it with fp32 on "
                                          "the val split (AUC, max and mean |prob change|, decisions that change at "
                                          "the card's threshold). Writes MODEL.int8.json beside the weights only if "
                                          "the bounds hold; exit 0 if written, 1 if not, 2 on a weights or data error. "
                                          "--recheck instead holds the committed ranges to the same bounds with this "
                                          "machine's export and CPU (writes nothing; exit 0 if they pass).")
    p.add_argument("model", choices=_MODELS)
    p.add_argument("--weights-dir", type=Path, default=None, help="default: TRIAGE_WEIGHTS_DIR or engine/weights")
    p.add_argument("--max-images", type=int, default=None,
                   help="calibrate on N train images spread over the split (default all)")
    p.add_argument("--recheck", action="store_true",
                   help="check the committed MODEL.int8.json on val here (for a node on another CPU); writes nothing")
    p.set_defaults(func=_calibrate)

    p = subparsers.add_parser("predict", help="COVID probability of image files (PNG/JPEG/DICOM), JSON lines",
                              description="One JSON line per input: {path, score, label} or {path, error}. "
                                          "Exit 0 if at least one input was scored, 1 if none, 2 on a weights "
                                          "error.")
    p.add_argument("--model", choices=("ct", "cxr"), required=True)
    p.add_argument("--runtime", choices=RUNTIMES, default="auto")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.set_defaults(func=_predict)

    p = subparsers.add_parser("explain", help="heatmap of an image as a PNG overlay",
                              description="Grad-CAM / Grad-CAM++ on the last attention block, CT-Net soft-mask "
                                          "attention, or occlusion sensitivity, blended over the image.")
    p.add_argument("--model", choices=("ct", "cxr"), required=True)
    p.add_argument("--method", choices=("gradcam", "gradcam++", "attention", "occlusion"), default="gradcam")
    p.add_argument("--network", choices=_MODELS, default=None,
                   help="network to explain (default: the predictor's; 'attention' needs ct-net)")
    p.add_argument("image", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(func=_explain)


def _train(args: argparse.Namespace) -> int:
    from engine.train import TrainOptions, train
    from engine.weights import WeightsError

    kw: dict[str, Any] = {}
    if args.checkpoint_dir:
        kw["checkpoint_dir"] = args.checkpoint_dir
    opts = TrainOptions(model=args.model, epochs=args.epochs, max_minutes=args.max_minutes,
                        batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                        image_size=args.image_size, seed=args.seed, device=args.device, patience=args.patience,
                        threads=args.threads, weights_dir=args.weights_dir, progress=not args.no_progress, **kw)
    try:
        train(opts, log=lambda s: print(s, flush=True))
    except WeightsError as exc:
        print(f"triage train: {exc}", file=sys.stderr)
        return 2
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from engine.evaluate import evaluate_model
    from engine.runtimes.base import RuntimeUnavailable
    from engine.weights import WeightsError

    torch.set_num_threads(args.threads)
    try:
        summary = evaluate_model(args.model, args.split, args.out, device=args.device, weights_dir=args.weights_dir,
                                 n_boot=args.bootstrap, precision=args.precision)
    except (WeightsError, RuntimeUnavailable) as exc:
        print(f"triage evaluate: {exc}", file=sys.stderr)
        return 2
    print(summary)
    return 0


def _calibrate(args: argparse.Namespace) -> int:
    from engine.calibrate import calibrate_model, recheck_model
    from engine.data import DataUnavailable
    from engine.weights import WeightsError

    try:
        if args.recheck:
            return 0 if recheck_model(args.model, args.weights_dir, log=lambda s: print(s, flush=True)) else 1
        written = calibrate_model(args.model, args.weights_dir, max_images=args.max_images,
                                  log=lambda s: print(s, flush=True))
    except (WeightsError, DataUnavailable) as exc:
        print(f"triage calibrate: {exc}", file=sys.stderr)
        return 2
    return 0 if written else 1


def _predict(args: argparse.Namespace) -> int:
    from engine.imageio import ImageReadError, read_image
    from engine.predictor import load_predictor
    from engine.weights import WeightsError

    try:
        predictor = load_predictor(args.model, runtime=args.runtime)
    except WeightsError as exc:
        print(f"triage predict: {exc}", file=sys.stderr)
        return 2
    results: list[dict[str, Any]] = []
    images, slots = [], []
    for path in args.paths:
        try:
            images.append(read_image(path))
            slots.append(len(results))
            results.append({"path": str(path)})
        except ImageReadError as exc:
            results.append({"path": str(path), "error": str(exc)})
    if images:
        scores = predictor.predict_images(images, batch_size=args.batch_size)
        for slot, score in zip(slots, scores, strict=True):
            results[slot]["score"] = round(float(score), 6)
            results[slot]["label"] = "covid" if score >= predictor.threshold else "non-covid"
    for r in results:
        print(json.dumps(r), flush=True)
    return 0 if images else 1


def _explain(args: argparse.Namespace) -> int:
    from PIL import Image

    from engine.explain import explain_image, overlay
    from engine.imageio import ImageReadError, read_image
    from engine.predictor import load_predictor
    from engine.weights import WeightsError

    try:
        gray = read_image(args.image)
    except ImageReadError as exc:
        print(f"triage explain: {exc}", file=sys.stderr)
        return 1
    try:
        predictor = load_predictor(args.model, runtime="torch", model_name=args.network)
    except WeightsError as exc:
        print(f"triage explain: {exc}", file=sys.stderr)
        return 2
    try:
        heat = explain_image(predictor, gray, args.method)
    except ValueError as exc:
        print(f"triage explain: {exc}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(gray, heat)).save(args.out)
    score = float(predictor.predict_images([gray])[0])
    print(json.dumps({"path": str(args.image), "out": str(args.out), "method": args.method, "score": round(score, 6),
                      "model": predictor.model_version}))
    return 0
