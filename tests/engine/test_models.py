"""Architectures: output shapes, the residual-attention form H = (1 + M) * T, sizes under budget."""

from __future__ import annotations

import pytest
import torch

from engine.models import DEFAULT_CONFIGS, MODEL_NAMES, build_model
from engine.models.ct_net import AttentionModule
from engine.models.densenet import densenet121
from engine.models.fpa import FeaturePyramidAttention

from .conftest import TINY_CONFIGS

FP16_BUDGET_BYTES = 25 * 1024 * 1024


def _params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_full_width_densenet121_has_torchvision_parameter_count() -> None:
    assert _params(densenet121()) == 7_978_856


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_output_is_one_logit_per_image(name: str) -> None:
    model = build_model(name, TINY_CONFIGS[name]).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, 64, 64))
    assert out.shape == (3, 1)
    assert torch.isfinite(out).all()


def test_shipped_widths_produce_one_logit_at_their_input_size() -> None:
    for name in ("ct-net", "deep-ct-net"):
        model = build_model(name).eval()
        size = DEFAULT_CONFIGS[name]["image_size"]
        with torch.no_grad():
            assert model(torch.randn(1, 3, size, size)).shape == (1, 1)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_fp16_weights_fit_the_25_megabyte_budget(name: str) -> None:
    # the CXR model ships at 192 px (see its card); the flattened head depends on the input size
    cfg = {"image_size": 192} if name == "deep-cxr-net" else {}
    n = sum(t.numel() for t in build_model(name, cfg).state_dict().values())
    assert n * 2 < FP16_BUDGET_BYTES, f"{name}: {n} values = {n * 2 / 1e6:.1f} MB in fp16"


def test_unknown_model_name_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="deep-ct-net"):
        build_model("resnet-50")


def test_attention_module_output_is_one_plus_mask_times_trunk() -> None:
    torch.manual_seed(0)
    module = AttentionModule(channels=8, levels=2, p=1, t=2, r=1).eval()
    seen: dict[str, torch.Tensor] = {}
    module.trunk.register_forward_hook(lambda _m, _i, o: seen.__setitem__("t", o))
    module.mask.register_forward_hook(lambda _m, _i, o: seen.__setitem__("m", o))
    module.post.register_forward_pre_hook(lambda _m, i: seen.__setitem__("h", i[0]))
    with torch.no_grad():
        module(torch.randn(2, 8, 32, 32))
    assert seen["m"].shape == seen["t"].shape == (2, 8, 32, 32)
    assert ((seen["m"] > 0) & (seen["m"] < 1)).all(), "soft mask must be a sigmoid output"
    torch.testing.assert_close(seen["h"], (1 + seen["m"]) * seen["t"])


def test_attention_module_with_zero_mask_passes_the_trunk_through() -> None:
    """Forcing M(x) = 0 (the mask's last layer replaced by a constant) must give H = T."""
    module = AttentionModule(channels=8, levels=1).eval()
    module.mask.register_forward_hook(lambda _m, _i, o: torch.zeros_like(o))
    seen: dict[str, torch.Tensor] = {}
    module.trunk.register_forward_hook(lambda _m, _i, o: seen.__setitem__("t", o))
    module.post.register_forward_pre_hook(lambda _m, i: seen.__setitem__("h", i[0]))
    with torch.no_grad():
        module(torch.randn(1, 8, 16, 16))
    torch.testing.assert_close(seen["h"], seen["t"])


def test_ct_net_has_three_attention_stages_with_p1_t2_r1() -> None:
    model = build_model("ct-net", TINY_CONFIGS["ct-net"])
    stages = model.attention_modules
    assert [s.mask.levels for s in stages] == [3, 2, 1]
    assert all(len(s.pre) == 1 and len(s.trunk) == 2 and len(s.post) == 1 for s in stages)
    for stage in stages:  # r units between poolings, 2r at the deepest level
        assert [len(d) for d in stage.mask.down] == [1] * (stage.mask.levels - 1) + [2]


def test_fpa_keeps_spatial_size_and_records_its_attention() -> None:
    fpa = FeaturePyramidAttention(32, 16, 8).eval()
    for side in (8, 6, 4, 2):
        with torch.no_grad():
            out = fpa(torch.randn(2, 32, side, side))
        assert out.shape == (2, 16, side, side)
        assert fpa.last_attention is not None and fpa.last_attention.shape == (2, 16, side, side)


def test_deep_cxr_net_freezing_keeps_parts_one_and_two_fixed() -> None:
    model = build_model("deep-cxr-net", TINY_CONFIGS["deep-cxr-net"])
    model.freeze_pretrained_parts()
    model.train()
    assert not model.part1.training and not model.part2.training and model.part3.training
    before = {k: v.clone() for k, v in model.part1.state_dict().items()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model(torch.randn(4, 3, 64, 64)).pow(2).mean()
    loss.backward()
    opt.step()
    for k, v in model.part1.state_dict().items():
        assert torch.equal(v, before[k]), k
