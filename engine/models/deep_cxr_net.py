"""Deep-CXR-Net (Dialameh et al., 2020): three DenseNet-121 + FPA parts, features concatenated,
two fully connected layers.

Part 1 (CheXpert in the paper; here a substitute task, see the model card) and part 2 (normal vs
pneumonia, Kermany) are pre-trained and then frozen; part 3 and the head learn COVID vs non-COVID.
"""

from __future__ import annotations

import torch
from torch import nn

from engine.models.deep_ct_net import DenseFPAConfig, DenseFPAEncoder

__all__ = ["DeepCXRNet", "PartClassifier"]


class PartClassifier(nn.Module):
    """One encoder with its own linear head, for pre-training a part on an auxiliary task."""

    def __init__(self, encoder: DenseFPAEncoder, num_outputs: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.encoder = encoder
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(encoder.cfg.feature_dim, num_outputs)

    @property
    def explain_layer(self) -> nn.Module:
        return self.encoder.norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.encoder(x).flatten(1)))


class DeepCXRNet(nn.Module):
    """Three encoders; concatenated flattened features -> FC(hidden) -> ReLU -> dropout -> FC(1).

    Parameters
    ----------
    cfg
        Widths shared by the three parts.
    hidden
        Width of the first fully connected layer.
    """

    name = "deep-cxr-net"

    def __init__(self, cfg: DenseFPAConfig | None = None, hidden: int = 64) -> None:
        super().__init__()
        self.cfg = cfg or DenseFPAConfig()
        self.hidden = hidden
        self.part1 = DenseFPAEncoder(self.cfg)
        self.part2 = DenseFPAEncoder(self.cfg)
        self.part3 = DenseFPAEncoder(self.cfg)
        self.head = nn.Sequential(nn.Dropout(self.cfg.dropout), nn.Linear(3 * self.cfg.feature_dim, hidden),
                                  nn.ReLU(inplace=True), nn.Dropout(self.cfg.dropout), nn.Linear(hidden, 1))

    @property
    def explain_layer(self) -> nn.Module:
        """The COVID part's last attention block."""
        return self.part3.norm

    def freeze_pretrained_parts(self) -> None:
        """Freeze parts 1 and 2 (weights and BN statistics), as in the paper's last stage."""
        for part in (self.part1, self.part2):
            part.eval()
            for p in part.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> DeepCXRNet:
        super().train(mode)
        for part in (self.part1, self.part2):
            if not any(p.requires_grad for p in part.parameters()):
                part.eval()  # frozen parts keep their BN statistics
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [p(x).flatten(1) for p in (self.part1, self.part2, self.part3)]
        return self.head(torch.cat(feats, 1))
