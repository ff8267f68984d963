"""PyTorch eager execution of the trained module as it is: the reference every runtime is
measured against (``triage bench inference`` prints ratios to eager fp32) and the fallback when no
other runtime loads."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import numpy as np
from numpy.typing import NDArray

from engine.runtimes.base import BackendInfo, RuntimeUnavailable

__all__ = ["EagerBackend"]


class EagerBackend:
    """The trained three-channel module, fp32 (fp16 on CUDA when asked), no graph optimisation."""

    def __init__(self, model: Any, device: str = "cpu", precision: str = "fp32", batch_size: int = 8) -> None:
        import torch

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeUnavailable("no CUDA GPU is visible to PyTorch; use TRIAGE_RUNTIME=onnxruntime on this machine")
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be fp32 or fp16, got {precision!r}")
        if precision == "fp16" and not device.startswith("cuda"):
            raise ValueError("fp16 eager runs on CUDA only")
        self._torch = torch
        if device != "cpu" or precision != "fp32":  # leave the caller's fp32 CPU module (explanations) alone
            model = copy.deepcopy(model)
            self._shared: Any = contextlib.nullcontext()
        else:  # the explanations' module itself: a forward here would cross one of theirs in another thread
            from engine.explain import model_lock

            self._shared = model_lock(model)
        self._model = model.eval().to(device)
        if precision == "fp16":
            self._model = self._model.half()
        self._dtype = torch.float16 if precision == "fp16" else torch.float32
        self._device = device
        self.info = BackendInfo("torch", precision, device, 3, batch_size, f"eager, {torch.get_num_threads()} threads")

    def logits(self, batch: Any) -> NDArray[np.float32]:
        torch = self._torch
        with self._shared, torch.inference_mode():
            x = batch if isinstance(batch, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(batch))
            x = x.to(self._device, self._dtype)
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            return self._model(x)[:, 0].float().cpu().numpy()
