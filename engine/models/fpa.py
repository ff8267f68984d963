"""Feature Pyramid Attention (FPA) from Li et al., "Pyramid Attention Network for Semantic
Segmentation" (BMVC 2018), as used by Deep-CT-Net on the backbone's last feature map.

A U-shaped pyramid (7x7, 5x5, 3x3 convolutions at 1/2, 1/4, 1/8 of the map) produces a pixel-wise
attention that multiplies a 1x1-convolved master branch; a global-average-pooling branch is
added. Up-sampling is bilinear to the skip's exact size (rather than transposed convolutions), so
the module works at any feature-map size, including the 8x8 map of a 256 input and smaller.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FeaturePyramidAttention"]


def _cbr(cin: int, cout: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class FeaturePyramidAttention(nn.Module):
    """FPA module.

    Parameters
    ----------
    in_channels
        Channels of the input feature map.
    out_channels
        Channels of the output (the master and global branches project to this).
    mid_channels
        Channels inside the pyramid (``in_channels // 4`` in the paper's code).

    Attributes
    ----------
    last_attention
        The pixel-wise attention map (N, out_channels, H, W) of the last forward pass, detached;
        kept for explanation maps.
    """

    def __init__(self, in_channels: int, out_channels: int, mid_channels: int | None = None) -> None:
        super().__init__()
        mid = mid_channels or max(in_channels // 4, 8)
        self.master = _cbr(in_channels, out_channels, 1)
        self.gpb = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1, bias=False),
                                 nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
        self.down1 = _cbr(in_channels, mid, 7, stride=2)
        self.down2 = _cbr(mid, mid, 5, stride=2)
        self.down3 = _cbr(mid, mid, 3, stride=2)
        self.conv1 = _cbr(mid, mid, 7)
        self.conv2 = _cbr(mid, mid, 5)
        self.conv3 = _cbr(mid, mid, 3)
        self.up_proj = nn.Sequential(nn.Conv2d(mid, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels),
                                     nn.ReLU(inplace=True))
        self.last_attention: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        master = self.master(x)
        glob = self.gpb(x)
        d1 = self.down1(x)
        d2 = self.down2(d1)
        d3 = self.down3(d2)
        x1, x2, x3 = self.conv1(d1), self.conv2(d2), self.conv3(d3)
        m2 = F.relu(x2 + F.interpolate(x3, size=x2.shape[-2:], mode="bilinear", align_corners=False))
        m1 = F.relu(x1 + F.interpolate(m2, size=x1.shape[-2:], mode="bilinear", align_corners=False))
        att = self.up_proj(F.interpolate(m1, size=x.shape[-2:], mode="bilinear", align_corners=False))
        self.last_attention = att.detach()
        return F.relu(master * att + glob)
