"""``triage calibrate MODEL``: int8 activation ranges from the train split, checked on the val split.

The ranges are computed by ONNX Runtime's calibrator on the fp32 grey export over THE preprocessing
(:func:`engine.preprocess.preprocess` with one channel, what the export takes) of every train image.
The int8 model is then built from those ranges exactly as the node builds it
(:func:`engine.runtimes.int8.build_int8`), and both models score the val split (never test):
AUC of each, max and mean |prob_int8 - prob_fp32|, and the decisions at the model card's threshold
that change. ``NAME.int8.json`` is written beside the weights only if every bound below holds; the
figures are printed either way.

The bounds (:data:`BOUNDS`) are looser than a first guess (max |Δprob| 0.05, 2 % flips), set from
what int8 does to these networks before the final runs: their logits are large (deep-ct-net:
standard deviation 4.3 on val), int8 moves a logit by ~0.15-0.3 on average whatever the
calibration, and 10 of the 118 val images lie within 0.3 of the threshold's logit, so a few
borderline decisions change. The AUC bound says whether int8 ranks cases as fp32 does; the max
|Δprob| bound catches an image type int8 gets badly wrong.

Results (onnxruntime 1.32, all train images). With the whole backbone quantised none was within the
bounds (deep-ct-net: max |Δprob| 0.1006). The recipe of :mod:`engine.runtimes.int8` then kept the
backbone's own 8x8 stage (last dense block, final norm) in fp32 as its heads already were, decided
before the run by the rule "what runs at 8x8 costs nothing, so it stays fp32", not tuned on val:

| model | recipe | AUC fp32 | AUC int8 | max abs. Δprob | mean abs. Δprob | decisions changed | ranges |
|---|---|---|---|---|---|---|---|
| deep-ct-net | 8x8 stage fp32 | 0.7489 | 0.7489 | 0.0877 | 0.0114 | 4 / 118 | committed |
| deep-ct-net | whole backbone | 0.7489 | 0.7483 | 0.1006 | 0.0137 | 3 / 118 | - |
| ct-net (no backbone: all quantised) | - | 0.7494 | 0.7560 | 0.2716 | 0.0408 | 6 / 118 | - |
| deep-cxr-net | 8x8 stage fp32 | 0.9353 | 0.9289 | 0.2893 | 0.0128 | 1 / 134 | - |
| deep-cxr-net | whole backbone | 0.9353 | 0.9296 | 0.2907 | 0.0143 | 1 / 134 | - |

So deep-ct-net runs int8 on VNNI CPUs (``TRIAGE_CPU_PRECISION=auto``) and the other two fp32. The
agreement was checked on val only; the test split was not used for it. Reported once afterwards
(``triage evaluate deep-ct-net --split test --precision int8``, 203 images, threshold 0.246): AUC
0.767 (95 % CI 0.695-0.828) against fp32's 0.769 (0.697-0.831); sensitivity 0.724 for both,
specificity 0.724 against 0.743 (two more false positives).

The ranges were computed on an Intel Xeon. An AMD EPYC exports the same weights to a file with
other bytes (so the ranges are tied to the export's graph, not its bytes, see
:func:`engine.runtimes.onnx_export.graph_digest`); there ``triage calibrate deep-ct-net --recheck``
gave AUC int8 0.7506, max |Δprob| 0.0858, mean 0.0117, 4 decisions changed: within the bounds.
Two more recipes for deep-cxr-net, tried on val on that EPYC, failed too: the 99.9999th percentile
(max |Δprob| 0.4819) and the 16x16 stage (dense block 3, transition 3) in fp32 as well (0.2842, the
same radiographs as before: confident COVID cases scored lower); min-max ranges broke it (AUC 0.50).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engine import data as D
from engine.imageio import read_image
from engine.metrics import roc_auc
from engine.preprocess import preprocess
from engine.runtimes.int8 import (CALIBRATION, build_int8, compute_ranges, cpu_has_vnni, ranges_document, ranges_path,
                                  write_ranges)
from engine.runtimes.onnx_export import cached_onnx
from engine.weights import load_weights
from engine.weights import weights_dir as default_weights_dir

__all__ = ["BOUNDS", "accuracy_check", "calibrate_model", "recheck_model"]

#: int8 against fp32 on the val split: |ΔAUC|, max and mean |Δprob|, and changed decisions at the
#: card's threshold as a fraction of the split.
BOUNDS: dict[str, float] = {"auc_change": 0.01, "max_prob_change": 0.10, "mean_prob_change": 0.02,
                            "flip_fraction": 0.05}


def accuracy_check(y: NDArray[np.integer], p_fp32: NDArray[np.floating], p_int8: NDArray[np.floating],
                   threshold: float) -> dict[str, Any]:
    """The figures int8 is judged by, and whether each of :data:`BOUNDS` holds (``passed``)."""
    diff = np.abs(np.asarray(p_int8, np.float64) - np.asarray(p_fp32, np.float64))
    flips = int(np.sum((np.asarray(p_int8) >= threshold) != (np.asarray(p_fp32) >= threshold)))
    auc32, auc8 = roc_auc(y, p_fp32), roc_auc(y, p_int8)
    figures = {"auc_change": abs(auc8 - auc32), "max_prob_change": float(diff.max()),
               "mean_prob_change": float(diff.mean()), "flip_fraction": flips / len(diff)}
    return {"split": "val", "images": len(diff), "threshold": threshold, "auc_fp32": round(auc32, 4),
            "auc_int8": round(auc8, 4), "max_prob_change": round(figures["max_prob_change"], 4),
            "mean_prob_change": round(figures["mean_prob_change"], 4), "flips": flips,
            "bounds": dict(BOUNDS), "passed": all(figures[k] <= bound for k, bound in BOUNDS.items())}


def calibrate_model(name: str, weights_directory: Path | None = None, *, max_images: int | None = None,
                    log: Callable[[str], None] = print) -> bool:
    """Compute ``name``'s ranges on train, check int8 on val, write ``NAME.int8.json`` if the check passes.

    Parameters
    ----------
    max_images
        Use only this many train images, spread evenly over the split (a quick run); default all.

    Returns
    -------
    bool
        Whether the check passed and the file was written.
    """
    if not cpu_has_vnni():  # the check must run on the arithmetic int8 will run on (see cpu_has_vnni)
        log(f"{name}: this CPU has no VNNI, where int8 runs nowhere: calibrate on a CPU with avx512_vnni or avx_vnni")
        return False
    wdir = weights_directory or default_weights_dir()
    loaded = load_weights(name, wdir)
    size = int(loaded.config.get("image_size", 256))
    dataset = D.dataset_of(name)
    fp32 = cached_onnx(loaded, wdir)
    train = D.load_split(dataset, "train", "covid")  # type: ignore[arg-type]
    if max_images is not None and max_images < len(train):  # spread over the split (it is sorted by class)
        train = [train[int(i)] for i in np.linspace(0, len(train) - 1, max_images)]
    log(f"{name}: {CALIBRATION['method']} ranges of {fp32.name} over {len(train)} train images at {size}px")
    ranges = compute_ranges(fp32, _grey(train, size))
    int8 = fp32.with_name(f".{name}-calibrating.{os.getpid()}.onnx")
    try:
        check = _val_check(loaded, dataset, size, fp32, build_int8(fp32, ranges, int8), log)
    finally:
        int8.unlink(missing_ok=True)
    if not check["passed"]:
        log(f"{ranges_path(name, wdir)} not written: int8 stays off for {name}")
        return False
    path = write_ranges(ranges_document(loaded, fp32, ranges, len(train), check), wdir)
    log(f"wrote {path}")
    return True


def recheck_model(name: str, weights_directory: Path | None = None, *, log: Callable[[str], None] = print) -> bool:
    """Check the committed ranges again on val, with this machine's export and CPU; writes nothing.

    For a node on another CPU than the one ``triage calibrate`` ran on: the int8 model the node
    builds there from the committed ranges is held to the same :data:`BOUNDS` against fp32, and the
    figures are printed beside the recorded ones.

    Returns
    -------
    bool
        Whether the int8 model the node would run here passes; False too where it would not run
        (no ranges, other weights or graph, no VNNI), with the reason.
    """
    from engine.runtimes.base import RuntimeUnavailable
    from engine.runtimes.int8 import cached_int8, read_ranges

    wdir = weights_directory or default_weights_dir()
    loaded = load_weights(name, wdir)
    try:
        recorded = read_ranges(name, wdir)["accuracy"]
        int8 = cached_int8(loaded, wdir)  # refuses what the node would refuse, says why
    except RuntimeUnavailable as exc:
        log(f"{name}: int8 does not run here: {exc}")
        return False
    log(f"{name}: recorded on val: AUC fp32 {recorded['auc_fp32']:.4f}, int8 {recorded['auc_int8']:.4f}; "
        f"|prob int8 - fp32| max {recorded['max_prob_change']:.4f}, mean {recorded['mean_prob_change']:.4f}; "
        f"{recorded['flips']} decisions change")
    dataset = D.dataset_of(name)
    check = _val_check(loaded, dataset, int(loaded.config.get("image_size", 256)), cached_onnx(loaded, wdir), int8,
                       log)
    return bool(check["passed"])


def _val_check(loaded: Any, dataset: str, size: int, fp32: Path, int8: Path,
               log: Callable[[str], None]) -> dict[str, Any]:
    """Score val with the fp32 and the int8 model and judge them against :data:`BOUNDS`."""
    from engine.predictor import Predictor
    from engine.runtimes.ort_cpu import OrtBackend

    threshold = float(loaded.card.get("threshold", {}).get("value", 0.5))
    val = D.load_split(dataset, "val", "covid")  # type: ignore[arg-type]
    x = np.stack(list(_grey(val, size)))
    y = np.array([s.label for s in val], dtype=np.int64)
    p32, p8 = (Predictor(dataset, loaded, OrtBackend(path)).predict(x) for path in (fp32, int8))
    check = accuracy_check(y, p32, p8, threshold)
    log(f"{loaded.name} on val ({check['images']} images): AUC fp32 {check['auc_fp32']:.4f}, int8 "
        f"{check['auc_int8']:.4f}; |prob int8 - fp32| max {check['max_prob_change']:.4f}, mean "
        f"{check['mean_prob_change']:.4f}; {check['flips']} decisions at threshold {threshold:.4f} change")
    log("bounds: " + ", ".join(f"{k} <= {v}" for k, v in BOUNDS.items()) + f": {'pass' if check['passed'] else 'FAIL'}")
    return check


def _grey(samples: list[D.Sample], size: int) -> Iterator[NDArray[np.float32]]:
    for s in samples:
        yield preprocess(read_image(s.path), size, 1)


