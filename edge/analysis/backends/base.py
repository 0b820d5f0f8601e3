"""The inference protocol every backend implements, and the checks they share.

A Session runs one model on float32 NCHW batches of any size; the backend behind it (TensorRT,
ONNX Runtime, PyTorch) is a choice of the machine, not of the analysis code. Batches larger
than the model's max_batch are cut into chunks here, so no backend sees more than its engine or
profile was built for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Protocol

import numpy as np
import numpy.typing as npt

from edge.analysis.registry import ModelError, ModelSpec
from edge.errors import EdgeError

Array = npt.NDArray[np.float32]

# The default preference order: fastest first, the always-available CPU last.
BACKEND_NAMES = ("tensorrt", "ort-tensorrt", "ort-cuda", "torch-cuda", "ort-cpu")


class BackendUnavailable(EdgeError):
    """The backend asked for cannot run on this machine (library, driver or device missing)."""


class BatchError(EdgeError, ValueError):
    """A batch that does not fit the model's input (shape or dtype)."""


class Session(Protocol):
    backend: str
    spec: ModelSpec

    def run(self, batch: Array) -> Array:
        """(N, C, H, W) float32 with N >= 1 -> the model's single output, (N, ...) float32."""
        ...


class Backend(Protocol):
    name: str

    def unavailable(self) -> str | None:
        """None when usable here, else a one-line reason."""
        ...

    def open(self, spec: ModelSpec) -> Session: ...


def optional(module: str) -> ModuleType | None:
    """The module, or None when it is not installed (accelerators are optional extras)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def check_batch(spec: ModelSpec, batch: npt.NDArray[np.generic]) -> Array:
    """The batch as float32 C-contiguous, or BatchError naming the model and the shape it takes."""
    expected = tuple(spec.input_shape[1:])
    if batch.ndim != 4 or tuple(batch.shape[1:]) != expected or batch.shape[0] < 1:
        c, h, w = expected
        raise BatchError(
            f"model {spec.name} ({spec.path.name}) takes input of shape (N, {c}, {h}, {w}) "
            f"with N >= 1, got {tuple(batch.shape)}"
        )
    if batch.dtype != np.float32:
        if not np.issubdtype(batch.dtype, np.floating):
            raise BatchError(
                f"model {spec.name} takes float32 input ({spec.normalisation}), got {batch.dtype}"
            )
        batch = batch.astype(np.float32)
    return np.ascontiguousarray(batch)


def run_chunked(spec: ModelSpec, batch: Array, run: Callable[[Array], Array]) -> Array:
    """run() over chunks of at most spec.max_batch inputs, outputs concatenated in order."""
    batch = check_batch(spec, batch)
    step = max(1, spec.max_batch)
    if batch.shape[0] <= step:
        return np.asarray(run(batch), dtype=np.float32)
    parts = [run(batch[i : i + step]) for i in range(0, batch.shape[0], step)]
    return np.concatenate(parts, axis=0).astype(np.float32, copy=False)


def check_io(
    spec: ModelSpec,
    inputs: Sequence[tuple[str, Sequence[object]]],
    outputs: Sequence[str],
) -> None:
    """ModelError unless the graph has the manifest's single input (with its C, H, W) and output.

    Checked when a session opens, so a manifest that disagrees with its model fails at start-up
    with both names in the message rather than at the first slide.
    """
    where = f"{spec.path} (model {spec.name})"
    if len(inputs) != 1 or len(outputs) != 1:
        raise ModelError(
            f"{where}: expected one input and one output, the graph has inputs "
            f"{[n for n, _ in inputs]} and outputs {list(outputs)}"
        )
    name, shape = inputs[0]
    if name != spec.input_name or outputs[0] != spec.output_name:
        raise ModelError(
            f"{where}: manifest names input {spec.input_name!r} / output {spec.output_name!r}, "
            f"the graph has {name!r} / {outputs[0]!r}"
        )
    dims = [d if isinstance(d, int) and d > 0 else -1 for d in shape]
    if len(dims) != 4 or dims[1:] != list(spec.input_shape[1:]):
        raise ModelError(
            f"{where}: manifest input shape {list(spec.input_shape)}, graph input shape {dims}"
        )
