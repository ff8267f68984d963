"""Random training augmentations, applied after :func:`engine.preprocess.preprocess`.

They are geometric only (rotation, translation, flips, skew, smooth distortion) and act on
batches of preprocessed tensors, so the deterministic preprocessing can be cached once per image
and stays byte-identical to what inference computes. Never used at inference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["CT_NET_AUGMENT", "DEEP_CT_NET_AUGMENT", "AugmentConfig", "augment_batch"]


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transforms (all uniform).

    Attributes
    ----------
    rotation_deg
        Maximum absolute rotation.
    translate
        Maximum shift as a fraction of the image side.
    hflip, vflip
        Probability of a left-right / top-bottom flip.
    skew
        Maximum absolute shear factor.
    distortion
        Amplitude (fraction of the image side) of a smooth random displacement field.
    """

    rotation_deg: float = 15.0
    translate: float = 0.05
    hflip: float = 0.0
    vflip: float = 0.0
    skew: float = 0.0
    distortion: float = 0.0


#: Dialameh et al.: random rotation +-15 degrees and translation +-5 %.
DEEP_CT_NET_AUGMENT = AugmentConfig(rotation_deg=15.0, translate=0.05)
#: Yazdani et al.: rotation, LR and TB flips, random distortion and skew.
CT_NET_AUGMENT = AugmentConfig(rotation_deg=15.0, translate=0.0, hflip=0.5, vflip=0.5, skew=0.15,
                               distortion=0.02)


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply one random transform per image of ``x`` (N, C, H, W); border pixels are replicated."""
    n = x.shape[0]
    if n == 0:
        return x

    def u(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator) * 2.0 - 1.0

    angle = u(n) * math.radians(cfg.rotation_deg)
    cos, sin = torch.cos(angle), torch.sin(angle)
    shear = u(n) * cfg.skew
    sx = torch.where(torch.rand(n, generator=generator) < cfg.hflip, -1.0, 1.0)
    sy = torch.where(torch.rand(n, generator=generator) < cfg.vflip, -1.0, 1.0)
    # theta maps output coordinates to input coordinates in [-1, 1]
    a = torch.stack([torch.stack([cos, -sin + shear * cos], -1), torch.stack([sin, cos + shear * sin], -1)], -2)
    a = a * torch.stack([sx, sy], -1)[:, None, :]
    t = u(n, 2) * cfg.translate * 2.0
    theta = torch.cat([a, t[:, :, None]], dim=2).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    if cfg.distortion > 0:
        coarse = u(n, 2, 4, 4).to(x.dtype) * cfg.distortion * 2.0
        field = F.interpolate(coarse, size=x.shape[-2:], mode="bicubic", align_corners=False)
        grid = grid + field.permute(0, 2, 3, 1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
