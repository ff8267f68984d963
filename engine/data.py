"""Data sets read from the shared data folder (never copied into the repository).

* covid-ct: the official UCSD-AI4H split from ``Data-split/*.txt`` (COVID = 1, non-COVID = 0).
* cxr: the split column of ``labels.csv``. Tasks: ``covid`` (covid = 1; pneumonia and normal = 0),
  ``kermany-pneumonia`` (Kermany rows only, pneumonia = 1, normal = 0; Deep-CXR-Net part 2) and
  ``3class`` (normal 0 / pneumonia 1 / covid 2 on all sources; our substitute for CheXpert in
  Deep-CXR-Net part 1).

The folder is ``$TRIAGE_SHARED_DATA`` or ``<repo>/../shared/data``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from engine.imageio import read_image
from engine.preprocess import preprocess

__all__ = [
    "CXR_TASKS",
    "SPLITS",
    "DataUnavailable",
    "Sample",
    "covid_ct_samples",
    "cxr_samples",
    "dataset_of",
    "load_split",
    "preprocess_samples",
    "shared_data_dir",
]

Split = Literal["train", "val", "test"]
SPLITS: tuple[str, ...] = ("train", "val", "test")
CXR_TASKS: tuple[str, ...] = ("covid", "kermany-pneumonia", "3class")
_REPO = Path(__file__).resolve().parents[1]


class DataUnavailable(FileNotFoundError):
    """The shared data folder (or a file it should hold) is missing."""


@dataclass(frozen=True)
class Sample:
    """One image: its path, integer label, and source (for per-source reporting)."""

    path: Path
    label: int
    source: str
    finding: str = ""


def shared_data_dir() -> Path:
    """``$TRIAGE_SHARED_DATA`` if set, else ``<repo>/../shared/data``."""
    env = os.environ.get("TRIAGE_SHARED_DATA")
    return Path(env) if env else (_REPO.parent / "shared" / "data")


def _require(path: Path) -> Path:
    if not path.exists():
        raise DataUnavailable(f"{path} not found: set TRIAGE_SHARED_DATA to the shared data folder "
                              f"(currently {shared_data_dir()})")
    return path


def covid_ct_samples(split: Split, root: Path | None = None) -> list[Sample]:
    """The official covid-ct split (``train``: 191 + 234, ``val``: 60 + 58, ``test``: 98 + 105)."""
    base = _require((root or shared_data_dir()) / "covid-ct")
    out: list[Sample] = []
    for cls, label in (("COVID", 1), ("NonCOVID", 0)):
        listing = _require(base / "Data-split" / cls / f"{split}CT_{cls}.txt")
        for line in listing.read_text(encoding="utf-8").splitlines():
            name = line.strip()
            if not name:
                continue
            out.append(Sample(_require(base / "Images" / f"CT_{cls}" / name), label, "covid-ct", cls))
    return out


def cxr_samples(split: Split, task: str = "covid", root: Path | None = None) -> list[Sample]:
    """Rows of ``cxr/labels.csv`` for ``split``, labelled for ``task`` (see module docstring)."""
    if task not in CXR_TASKS:
        raise ValueError(f"unknown cxr task {task!r}; choose from {CXR_TASKS}")
    base = _require((root or shared_data_dir()) / "cxr")
    out: list[Sample] = []
    with _require(base / "labels.csv").open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["split"] != split:
                continue
            label_name, source = row["label"], row["source"]
            if task == "covid":
                label = int(label_name == "covid")
            elif task == "kermany-pneumonia":
                if source != "kermany":
                    continue
                label = int(label_name == "pneumonia")
            else:
                label = {"normal": 0, "pneumonia": 1, "covid": 2}[label_name]
            out.append(Sample(base / "images" / row["file"], label, source, label_name))
    return out


def dataset_of(model_name: str) -> Literal["ct", "cxr"]:
    """The data set a model is trained, calibrated and evaluated on: radiographs for Deep-CXR-Net,
    CT slices for the two CT networks."""
    return "cxr" if model_name == "deep-cxr-net" else "ct"


def load_split(dataset: Literal["ct", "cxr"], split: Split, task: str = "covid") -> list[Sample]:
    """Samples of one split of ``ct`` (covid-ct) or ``cxr`` (with ``task``)."""
    return covid_ct_samples(split) if dataset == "ct" else cxr_samples(split, task)


def preprocess_samples(samples: Sequence[Sample], size: int, progress: bool = False) -> NDArray[np.float32]:
    """Read and preprocess every sample with THE preprocessing; returns (N, size, size) float32.

    Only the first of the three identical channels is kept (the models get it replicated by
    :func:`expand_channels`), which keeps a whole split in memory on a small machine.
    """
    it = samples
    if progress:
        from tqdm import tqdm

        it = tqdm(samples, desc=f"preprocess {size}px", unit="img", leave=False)
    out = np.empty((len(samples), size, size), dtype=np.float32)
    for i, s in enumerate(it):
        out[i] = preprocess(read_image(s.path), size)[0]
    return out


def expand_channels(x: NDArray[np.float32]) -> NDArray[np.float32]:
    """(N, H, W) -> (N, 3, H, W), the exact output layout of :func:`engine.preprocess.preprocess`."""
    return np.repeat(x[:, None], 3, axis=1)
