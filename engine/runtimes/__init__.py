"""Inference runtimes behind :class:`engine.predictor.Predictor` and how ``auto`` picks one.

``auto`` (the default of ``TRIAGE_RUNTIME``): TensorRT where it imports and a GPU is present, else
PyTorch on CUDA where a GPU is present, else ONNX Runtime on the CPU, else eager PyTorch. Each step
down is logged with the reason, so an operator can see why a GPU node runs slowly.
"""

from engine.runtimes.base import Backend, BackendInfo, RuntimeUnavailable

RUNTIMES = ("auto", "tensorrt", "cuda", "onnxruntime", "torch")

__all__ = ["RUNTIMES", "Backend", "BackendInfo", "RuntimeUnavailable", "gpu_present"]


def gpu_present() -> bool:
    """True where PyTorch sees a CUDA GPU (False, not an error, where torch is missing)."""
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
