"""The weights shipped in engine/weights/: under the size budget, loadable, with complete cards."""

from __future__ import annotations

import pytest

from engine.predictor import DEFAULT_MODELS
from engine.weights import load_weights, weights_dir, weights_path

BUDGET = 25 * 1024 * 1024


@pytest.mark.parametrize("name", ["deep-ct-net", "ct-net", "deep-cxr-net"])
def test_shipped_weights_fit_the_budget_and_carry_a_complete_card(name: str) -> None:
    path = weights_path(name, weights_dir())
    if not path.is_file():
        pytest.skip(f"{path} not trained yet (triage train {name})")
    assert path.stat().st_size < BUDGET
    loaded = load_weights(name)
    card = loaded.card
    assert card["model"] == name and card["version"] == loaded.version
    assert 0.0 < card["threshold"]["value"] < 1.0 and "val" in card["threshold"]["how_chosen"]
    assert {"sensitivity", "specificity", "precision", "f1", "auc"} <= set(card["metrics"]["val"])
    assert card["input"]["image_size"] == loaded.config["image_size"]
    assert card["training"]["hardware"] and card["code_version"]


def test_default_models_are_shipped() -> None:
    missing = [n for n in DEFAULT_MODELS.values() if not weights_path(n, weights_dir()).is_file()]
    if missing:
        pytest.skip(f"not trained yet: {missing}")
    for name in DEFAULT_MODELS.values():
        assert load_weights(name).card["threshold"]["value"] > 0
