"""COVID CT-Net (Yazdani et al., 2020): a residual attention network (Wang et al., 2017).

Each attention module has a trunk branch T(x) (t residual units) and a soft-mask branch M(x)
(bottom-up top-down: max pooling, r residual units, bilinear up-sampling with skip connections,
two 1x1 convolutions, sigmoid); its output is H(x) = (1 + M(x)) * T(x). p residual units come
before and after. Three stages are stacked as in Attention-56 (masks with 3, 2 and 1 pooling
levels). Widths are a multiple ``width`` of Attention-56's (64 = original).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AttentionModule", "CTNet", "CTNetConfig", "ResidualUnit", "SoftMaskBranch"]


@dataclass(frozen=True)
class CTNetConfig:
    """Hyper-parameters of CT-Net.

    Attributes
    ----------
    width
        Stem channels; stage outputs are 4, 8, 16 and 32 times this (64 in Attention-56).
    p, t, r
        Residual units before/after each attention module, in the trunk, and between poolings.
    image_size
        Training input side (the network itself is size-agnostic: it ends in global pooling).
    dropout
        Dropout before the classifier.
    """

    width: int = 16
    p: int = 1
    t: int = 2
    r: int = 1
    image_size: int = 256
    dropout: float = 0.3

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


class ResidualUnit(nn.Module):
    """Pre-activation bottleneck residual unit (BN-ReLU-1x1, BN-ReLU-3x3, BN-ReLU-1x1)."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        mid = max(cout // 4, 1)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride=stride, bias=False) if (cin != cout or stride != 1) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(F.relu(self.bn2(out)))
        out = self.conv3(F.relu(self.bn3(out)))
        return out + (self.shortcut(pre) if self.shortcut is not None else x)


def _units(n: int, channels: int) -> nn.Sequential:
    return nn.Sequential(*[ResidualUnit(channels, channels) for _ in range(n)])


class SoftMaskBranch(nn.Module):
    """Bottom-up top-down soft mask M(x) in (0, 1), with ``levels`` max-pooling steps.

    Down: maxpool -> r units per level (a skip unit per level but the deepest); the deepest level
    has 2r units. Up: bilinear up-sampling to the skip's size plus the skip, then r units, and at
    full size two 1x1 convolutions and a sigmoid.
    """

    def __init__(self, channels: int, levels: int, r: int = 1) -> None:
        super().__init__()
        self.levels = levels
        self.down = nn.ModuleList(_units(r if i < levels - 1 else 2 * r, channels) for i in range(levels))
        self.skips = nn.ModuleList(ResidualUnit(channels, channels) for _ in range(levels - 1))
        self.up = nn.ModuleList(_units(r, channels) for _ in range(levels - 1))
        self.out = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
                                 nn.Conv2d(channels, channels, 1, bias=False), nn.BatchNorm2d(channels),
                                 nn.ReLU(inplace=True), nn.Conv2d(channels, channels, 1, bias=False),
                                 nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sizes, skips = [], []
        h = x
        for i in range(self.levels):
            sizes.append(h.shape[-2:])
            h = self.down[i](F.max_pool2d(h, 3, stride=2, padding=1))
            if i < self.levels - 1:
                skips.append(self.skips[i](h))
        for i in reversed(range(self.levels - 1)):
            h = F.interpolate(h, size=skips[i].shape[-2:], mode="bilinear", align_corners=False) + skips[i]
            h = self.up[i](h)
        h = F.interpolate(h, size=sizes[0], mode="bilinear", align_corners=False)
        return self.out(h)


class AttentionModule(nn.Module):
    """p units -> [trunk T(x), soft mask M(x)] -> (1 + M) * T -> p units.

    Attributes
    ----------
    last_mask
        M(x) of the last forward pass (detached), for attention-map explanations.
    """

    def __init__(self, channels: int, levels: int, p: int = 1, t: int = 2, r: int = 1) -> None:
        super().__init__()
        self.pre = _units(p, channels)
        self.trunk = _units(t, channels)
        self.mask = SoftMaskBranch(channels, levels, r)
        self.post = _units(p, channels)
        self.last_mask: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pre(x)
        t = self.trunk(x)
        m = self.mask(x)
        self.last_mask = m.detach()
        return self.post((1 + m) * t)


class CTNet(nn.Module):
    """Attention-56-style COVID CT-Net with one output logit.

    Layout (input 256): conv7x7/2 + maxpool (64x64) -> unit(4w) -> attention stage 1 (3 mask
    levels) -> unit(8w)/2 -> stage 2 (2 levels) -> unit(16w)/2 -> stage 3 (1 level) ->
    unit(32w)/2 -> 2 units -> BN-ReLU-global average pool -> dropout -> Linear.
    """

    name = "ct-net"

    def __init__(self, cfg: CTNetConfig | None = None, num_outputs: int = 1) -> None:
        super().__init__()
        self.cfg = c = cfg or CTNetConfig()
        w = c.width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(w),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, stride=2, padding=1))
        self.res1 = ResidualUnit(w, 4 * w)
        self.stage1 = AttentionModule(4 * w, 3, c.p, c.t, c.r)
        self.res2 = ResidualUnit(4 * w, 8 * w, stride=2)
        self.stage2 = AttentionModule(8 * w, 2, c.p, c.t, c.r)
        self.res3 = ResidualUnit(8 * w, 16 * w, stride=2)
        self.stage3 = AttentionModule(16 * w, 1, c.p, c.t, c.r)
        self.res4 = nn.Sequential(ResidualUnit(16 * w, 32 * w, stride=2), ResidualUnit(32 * w, 32 * w),
                                  ResidualUnit(32 * w, 32 * w))
        self.norm = nn.BatchNorm2d(32 * w)
        self.dropout = nn.Dropout(c.dropout)
        self.fc = nn.Linear(32 * w, num_outputs)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    @property
    def explain_layer(self) -> nn.Module:
        """The last attention block."""
        return self.stage3

    @property
    def attention_modules(self) -> list[AttentionModule]:
        return [self.stage1, self.stage2, self.stage3]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage1(self.res1(self.stem(x)))
        x = self.stage2(self.res2(x))
        x = self.stage3(self.res3(x))
        x = F.relu(self.norm(self.res4(x)))
        return self.fc(self.dropout(F.adaptive_avg_pool2d(x, 1).flatten(1)))
