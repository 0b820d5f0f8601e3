"""Inference backends behind one Session protocol: TensorRT, ONNX Runtime (TensorRT, CUDA and
CPU providers) and PyTorch CUDA; `choose` picks the first that runs on this machine."""

from edge.analysis.backends.base import (
    BACKEND_NAMES,
    Backend,
    BackendUnavailable,
    BatchError,
    Session,
)
from edge.analysis.backends.select import UnknownBackend, choose, decide, open_session

__all__ = [
    "BACKEND_NAMES",
    "Backend",
    "BackendUnavailable",
    "BatchError",
    "Session",
    "UnknownBackend",
    "choose",
    "decide",
    "open_session",
]
