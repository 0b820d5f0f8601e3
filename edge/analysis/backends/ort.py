"""ONNX Runtime backends: TensorRT, CUDA and CPU execution providers.

ONNX Runtime quietly falls back to the CPU when a GPU provider fails to load (a missing cuDNN or
libnvinfer). A GPU backend that silently runs on the CPU would be a lie in every report, so a
session whose first provider is not the one asked for is refused with BackendUnavailable.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

import numpy as np

from edge.analysis.backends.base import (
    Array,
    BackendUnavailable,
    check_io,
    optional,
    run_chunked,
)
from edge.analysis.backends.device import cuda_problem
from edge.analysis.registry import ModelSpec

_PROVIDERS = {
    "ort-tensorrt": "TensorrtExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-cpu": "CPUExecutionProvider",
}
_NVINFER = ("libnvinfer.so.10", "libnvinfer.so.8", "libnvinfer.so", "nvinfer_10.dll")


class OrtSession:
    def __init__(self, backend: str, spec: ModelSpec, session: Any) -> None:
        self.backend = backend
        self.spec = spec
        self._session = session

    def run(self, batch: Array) -> Array:
        return run_chunked(self.spec, batch, self._run)

    def _run(self, chunk: Array) -> Array:
        (out,) = self._session.run([self.spec.output_name], {self.spec.input_name: chunk})
        return np.asarray(out, dtype=np.float32)


class OrtBackend:
    """One ONNX Runtime execution provider; `name` is one of ort-tensorrt, ort-cuda, ort-cpu."""

    def __init__(self, name: str, cache_dir: Path | None = None, threads: int | None = None):
        if name not in _PROVIDERS:
            raise ValueError(
                f"unknown ONNX Runtime backend {name!r}; use one of {list(_PROVIDERS)}"
            )
        self.name = name
        self.provider = _PROVIDERS[name]
        self.cache_dir = cache_dir
        self.threads = threads or os.cpu_count() or 1

    def unavailable(self) -> str | None:
        ort = optional("onnxruntime")
        if ort is None:
            return "onnxruntime not installed (pip install onnxruntime, or onnxruntime-gpu)"
        if self.provider not in ort.get_available_providers():
            return f"{self.provider} not in this onnxruntime {ort.__version__} build"
        if self.name == "ort-cpu":
            return None
        problem = cuda_problem()
        if problem is not None:
            return problem
        if self.name == "ort-tensorrt" and not _loadable(_NVINFER):
            return "TensorRT libraries (libnvinfer) not found for the TensorRT provider"
        return None

    def _providers(self, spec: ModelSpec) -> list[Any]:
        if self.name == "ort-cpu":
            return ["CPUExecutionProvider"]
        if self.name == "ort-cuda":
            return ["CUDAExecutionProvider", "CPUExecutionProvider"]
        cache = (self.cache_dir or Path.home() / ".cache" / "edge" / "engines") / "ort-trt"
        cache.mkdir(parents=True, exist_ok=True)
        _, c, h, w = spec.input_shape
        name = spec.input_name

        def shape(n: int) -> str:
            return f"{name}:{n}x{c}x{h}x{w}"

        options = {
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
            "trt_fp16_enable": True,
            # An explicit profile: the engine is built once for every batch size up to max_batch
            # instead of being rebuilt whenever a larger batch arrives.
            "trt_profile_min_shapes": shape(1),
            "trt_profile_opt_shapes": shape(spec.max_batch),
            "trt_profile_max_shapes": shape(spec.max_batch),
        }
        return [("TensorrtExecutionProvider", options), "CUDAExecutionProvider"]

    def open(self, spec: ModelSpec) -> OrtSession:
        reason = self.unavailable()
        if reason is not None:
            raise BackendUnavailable(f"{self.name}: {reason}")
        ort = optional("onnxruntime")
        assert ort is not None  # unavailable() said it imports
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = self.threads
        # Idle runtime threads sleep instead of spinning: the analysis shares the cores with
        # tile decoding, conversion and sending, and spinning threads starve them (the
        # artifact model on a busy 2-core box: 2.65 s spinning, 1.26 s not).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3  # errors only: provider fallbacks are checked below
        session = ort.InferenceSession(
            str(spec.path), sess_options=options, providers=self._providers(spec)
        )
        used = session.get_providers()
        if not used or used[0] != self.provider:
            raise BackendUnavailable(
                f"{self.name}: onnxruntime could not start {self.provider} for {spec.path.name} "
                f"(it would run on {used}); check the CUDA/cuDNN/TensorRT libraries"
            )
        check_io(
            spec,
            [(i.name, i.shape) for i in session.get_inputs()],
            [o.name for o in session.get_outputs()],
        )
        return OrtSession(self.name, spec, session)


def _loadable(names: tuple[str, ...]) -> bool:
    for name in names:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False
