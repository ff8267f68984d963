"""The networks and the registry that maps model names to constructors.

Names: ``ct-net`` (COVID CT-Net), ``deep-ct-net`` (Deep-CT-Net), ``deep-cxr-net`` (Deep-CXR-Net).
A model is rebuilt from its name and the ``config`` dict stored with its weights.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from engine.models.ct_net import CTNet, CTNetConfig
from engine.models.deep_ct_net import DeepCTNet, DenseFPAConfig
from engine.models.deep_cxr_net import DeepCXRNet

__all__ = ["DEFAULT_CONFIGS", "MODEL_NAMES", "CTNet", "DeepCTNet", "DeepCXRNet", "build_model"]


def _ct_net(cfg: Mapping[str, Any]) -> nn.Module:
    return CTNet(CTNetConfig(**cfg))


def _deep_ct_net(cfg: Mapping[str, Any]) -> nn.Module:
    return DeepCTNet(DenseFPAConfig(**cfg))


def _deep_cxr_net(cfg: Mapping[str, Any]) -> nn.Module:
    c = dict(cfg)
    hidden = int(c.pop("hidden", 64))
    return DeepCXRNet(DenseFPAConfig(**c), hidden=hidden)


_REGISTRY: dict[str, Callable[[Mapping[str, Any]], nn.Module]] = {
    "ct-net": _ct_net,
    "deep-ct-net": _deep_ct_net,
    "deep-cxr-net": _deep_cxr_net,
}
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)

#: The widths the shipped weights were trained with (see the model cards).
DEFAULT_CONFIGS: dict[str, dict[str, Any]] = {
    "ct-net": CTNetConfig().to_dict(),
    "deep-ct-net": DenseFPAConfig().to_dict(),
    "deep-cxr-net": {**DenseFPAConfig().to_dict(), "hidden": 64},
}


def build_model(name: str, config: Mapping[str, Any] | None = None) -> nn.Module:
    """Build an untrained network by registry name.

    Parameters
    ----------
    name
        One of :data:`MODEL_NAMES`.
    config
        Constructor settings; unspecified keys take :data:`DEFAULT_CONFIGS`.

    Raises
    ------
    KeyError
        For an unknown name (the message lists the known ones).
    """
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(MODEL_NAMES)}")
    cfg = {**DEFAULT_CONFIGS[name], **(config or {})}
    return _REGISTRY[name](cfg)
