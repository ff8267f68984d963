"""Fixtures of the engine tests: the shared data folder (skip with a reason where it is absent),
small real images, and a folder of tiny trained-shape weights with cards for the CLI and predictor
tests (tiny widths and 64 px inputs keep every test fast on a CPU)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from engine.data import shared_data_dir

TINY_CONFIGS: dict[str, dict] = {
    "ct-net": {"width": 4, "image_size": 64},
    "deep-ct-net": {"growth_rate": 4, "num_init_features": 8, "fpa_channels": 8, "fpa_mid": 4, "image_size": 64},
    "deep-cxr-net": {"growth_rate": 4, "num_init_features": 8, "fpa_channels": 4, "fpa_mid": 4, "image_size": 64,
                     "hidden": 8},
}


@pytest.fixture(autouse=True, scope="session")
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if not (root / "covid-ct").is_dir() or not (root / "cxr").is_dir():
        pytest.skip(f"shared data not found at {root} (set TRIAGE_SHARED_DATA to the folder of covid-ct/ and cxr/)")
    return root


@pytest.fixture(scope="session")
def dicom_dir(shared_data: Path) -> Path:
    d = shared_data / "dicom"
    if not d.is_dir():
        pytest.skip(f"no DICOM test files at {d}")
    return d


@pytest.fixture(scope="session")
def ct_dicom(dicom_dir: Path) -> Path:
    files = sorted((dicom_dir / "ct-covid19-ny-sbu").glob("*/axial/*.dcm"))
    if not files:
        pytest.skip("no axial CT DICOM under dicom/ct-covid19-ny-sbu")
    return files[0]


@pytest.fixture(scope="session")
def cr_dicom(dicom_dir: Path) -> Path:
    p = dicom_dir / "cr-chest" / "RG1_UNCR.dcm"
    if not p.is_file():
        pytest.skip(f"{p} missing")
    return p


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights folder with all three models at tiny width (random init, fixed seed) and cards."""
    from engine.models import build_model
    from engine.weights import save_weights, write_card

    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    for name, cfg in TINY_CONFIGS.items():
        model = build_model(name, cfg).eval()
        save_weights(model, name, {**_full(name), **cfg}, d)
        write_card(name, {"model": name, "threshold": {"value": 0.5, "how_chosen": "fixed for tests"},
                          "metrics": {"val": {"auc": 0.5}}}, d)
    return d


def _full(name: str) -> dict:
    from engine.models import DEFAULT_CONFIGS

    return dict(DEFAULT_CONFIGS[name])


@pytest.fixture(scope="session")
def ct_images(shared_data: Path) -> list[Path]:
    """Eight real covid-ct training images, four per class."""
    from engine.data import covid_ct_samples

    samples = covid_ct_samples("train")
    pos = [s.path for s in samples if s.label == 1][:4]
    neg = [s.path for s in samples if s.label == 0][:4]
    return pos + neg


@pytest.fixture()
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)
