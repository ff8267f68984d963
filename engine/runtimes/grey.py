"""Fold the grey-to-three-channel replication into the networks' stem convolutions.

Every network here sees greyscale copied into three identical channels (the papers' 256x256x3
input). A convolution over three identical channels equals a convolution over one channel with the
three kernels summed, so the inference runtimes take one channel: a third of the stem's
multiply-adds and of the input's memory traffic, the same logits up to float rounding (the tests
compare them).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["fold_grey_input", "stem_convolutions"]


def stem_convolutions(model: nn.Module) -> list[str]:
    """Names of the convolutions that read the three-channel input.

    These are the convolutions with three input channels; no layer inside these networks has a
    three-channel feature map, and the numerical tests would catch one that did.
    """
    return [name for name, mod in model.named_modules() if isinstance(mod, nn.Conv2d) and mod.in_channels == 3]


def fold_grey_input(model: nn.Module) -> nn.Module:
    """A copy of ``model`` that takes (N, 1, S, S) instead of three identical channels.

    Raises
    ------
    ValueError
        If the model has no three-channel convolution to fold (not one of this project's networks).
    """
    names = stem_convolutions(model)
    if not names:
        raise ValueError("the model has no convolution with three input channels to fold")
    folded = copy.deepcopy(model).eval()
    for name in names:
        conv = folded.get_submodule(name)
        assert isinstance(conv, nn.Conv2d)
        if conv.groups != 1:
            raise ValueError(f"cannot fold grouped stem convolution {name}")
        with torch.no_grad():
            weight = conv.weight.sum(dim=1, keepdim=True)
        conv.in_channels = 1
        conv.weight = nn.Parameter(weight, requires_grad=False)
    return folded
