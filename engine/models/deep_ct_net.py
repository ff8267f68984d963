"""Deep-CT-Net (Dialameh et al., 2020): DenseNet-121 + feature pyramid attention + BN + FC.

The backbone's last feature map goes through an FPA layer, batch normalisation, flattening and a
fully connected layer to one logit (COVID vs non-COVID). :class:`DenseFPAEncoder` (backbone + FPA
+ BN) is shared with Deep-CXR-Net, whose three parts are each one such encoder.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.densenet import densenet121
from engine.models.fpa import FeaturePyramidAttention

__all__ = ["DeepCTNet", "DenseFPAConfig", "DenseFPAEncoder"]


@dataclass(frozen=True)
class DenseFPAConfig:
    """Widths of one DenseNet-121 + FPA encoder.

    Attributes
    ----------
    growth_rate
        DenseNet growth rate k (32 in the paper's DenseNet-121).
    num_init_features
        Stem channels (2k in DenseNet-121).
    fpa_channels
        Output channels of the FPA layer (the flattened feature is ``fpa_channels * (size/32)**2``).
    fpa_mid
        Channels inside the FPA pyramid (0: ``backbone channels // 4`` as in the PAN code; 32 keeps
        the 7x7 pyramid convolution from dominating the parameter budget).
    image_size
        Input side the flattened head was built for.
    dropout
        Dropout before the fully connected layer.
    """

    growth_rate: int = 12
    num_init_features: int = 24
    fpa_channels: int = 64
    fpa_mid: int = 32
    image_size: int = 256
    dropout: float = 0.5

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)

    @property
    def map_size(self) -> int:
        """Side of the last feature map (DenseNet downsamples by 32)."""
        return -(-self.image_size // 32)

    @property
    def feature_dim(self) -> int:
        return self.fpa_channels * self.map_size**2


class DenseFPAEncoder(nn.Module):
    """DenseNet-121 trunk -> ReLU -> FPA -> BatchNorm; returns the attended feature map (N, C, h, w)."""

    def __init__(self, cfg: DenseFPAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = densenet121(cfg.growth_rate, cfg.num_init_features, num_classes=0).features
        channels = densenet121(cfg.growth_rate, cfg.num_init_features, num_classes=0).num_features
        self.fpa = FeaturePyramidAttention(channels, cfg.fpa_channels, cfg.fpa_mid or None)
        self.norm = nn.BatchNorm2d(cfg.fpa_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.fpa(F.relu(self.backbone(x))))


class DeepCTNet(nn.Module):
    """Deep-CT-Net: :class:`DenseFPAEncoder` -> flatten -> dropout -> Linear -> one COVID logit.

    Parameters
    ----------
    cfg
        Widths and input size; the flattened head fixes the input size to ``cfg.image_size``.
    num_outputs
        1 for the binary triage model; >1 when the same network is pre-trained on another task.
    """

    name = "deep-ct-net"

    def __init__(self, cfg: DenseFPAConfig | None = None, num_outputs: int = 1) -> None:
        super().__init__()
        self.cfg = cfg or DenseFPAConfig()
        self.encoder = DenseFPAEncoder(self.cfg)
        self.dropout = nn.Dropout(self.cfg.dropout)
        self.fc = nn.Linear(self.cfg.feature_dim, num_outputs)

    @property
    def explain_layer(self) -> nn.Module:
        """The last attention block (its output is what Grad-CAM looks at)."""
        return self.encoder.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits (N, num_outputs); a sigmoid gives the COVID probability."""
        return self.fc(self.dropout(self.encoder(x).flatten(1)))
