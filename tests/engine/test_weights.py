"""fp16 safetensors round trip and clear errors on missing or corrupt weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.models import build_model
from engine.weights import (
    WeightsError,
    load_card,
    load_weights,
    save_weights,
    write_card,
)

from .conftest import TINY_CONFIGS


@pytest.mark.parametrize("name", ["ct-net", "deep-ct-net", "deep-cxr-net"])
def test_round_trip_gives_the_same_network_in_fp16_precision(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model(name, TINY_CONFIGS[name]).eval()
    path = save_weights(model, name, TINY_CONFIGS[name], tmp_path)
    state = model.state_dict()
    fp16_bytes = sum(v.numel() * (2 if v.is_floating_point() else v.element_size()) for v in state.values())
    assert path.stat().st_size < fp16_bytes + 200 * len(state) + 10_000, "floating tensors must be stored in fp16"
    loaded = load_weights(name, tmp_path)
    for k, v in model.state_dict().items():
        w = loaded.model.state_dict()[k]
        if v.is_floating_point():
            torch.testing.assert_close(w, v.half().float())
        else:
            assert torch.equal(w, v)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), model.half().float()(x), atol=1e-4, rtol=1e-4)
    assert loaded.version.startswith(f"{name}@") and len(loaded.version) == len(name) + 13


def test_card_is_written_as_json_and_markdown(tmp_path: Path) -> None:
    card = {"model": "ct-net", "threshold": {"value": 0.42, "how_chosen": "max F1 on val"},
            "metrics": {"val": {"auc": 0.9, "f1": 0.8}}}
    _json_path, mp = write_card("ct-net", card, tmp_path)
    assert load_card("ct-net", tmp_path) == card
    text = mp.read_text()
    assert "# Model card: ct-net" in text and "0.420" in text and "| val |" in text


def test_missing_weights_name_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(WeightsError) as err:
        load_weights("deep-ct-net", tmp_path)
    assert str(tmp_path / "deep-ct-net.safetensors") in str(err.value)
    assert "triage train deep-ct-net" in str(err.value)


def test_corrupt_weights_are_reported_with_the_file(tmp_path: Path) -> None:
    (tmp_path / "ct-net.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(WeightsError, match="corrupt") as err:
        load_weights("ct-net", tmp_path)
    assert "ct-net.safetensors" in str(err.value)


def test_weights_of_another_model_are_refused(tmp_path: Path) -> None:
    model = build_model("ct-net", TINY_CONFIGS["ct-net"])
    save_weights(model, "ct-net", TINY_CONFIGS["ct-net"], tmp_path)
    (tmp_path / "ct-net.safetensors").rename(tmp_path / "deep-ct-net.safetensors")
    with pytest.raises(WeightsError, match="holds model 'ct-net'"):
        load_weights("deep-ct-net", tmp_path)


def test_truncated_weights_are_refused(tmp_path: Path) -> None:
    model = build_model("ct-net", TINY_CONFIGS["ct-net"])
    path = save_weights(model, "ct-net", TINY_CONFIGS["ct-net"], tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(WeightsError, match="ct-net.safetensors"):
        load_weights("ct-net", tmp_path)
