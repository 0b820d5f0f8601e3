"""Native TensorRT: an engine built from the ONNX once per GPU model, cached on disk.

Building an engine takes seconds to minutes, so it is serialised to the cache directory under a
key of everything that makes an engine invalid: the model's bytes, the GPU model and compute
capability, the TensorRT version, the precision and the batch profile. A change of any of them
gives a new key, so a stale engine is never loaded. tensorrt and pycuda are imported only when
the backend is probed or used: the module imports on any machine.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from edge.analysis.backends.base import Array, BackendUnavailable, optional, run_chunked
from edge.analysis.backends.device import Gpu, cuda_info
from edge.analysis.registry import ModelError, ModelSpec
from edge.fileio import write_atomic

LOGGER = logging.getLogger(__name__)
WORKSPACE_BYTES = 1 << 30


def engine_key(
    model_sha256: str,
    gpu_name: str,
    capability: str,
    trt_version: str,
    precision: str,
    profile: tuple[int, int, int] = (1, 64, 64),
) -> str:
    """The cache key of an engine: a change of any part means the engine must be rebuilt."""
    parts = [
        model_sha256,
        gpu_name,
        capability,
        trt_version,
        precision,
        "x".join(map(str, profile)),
    ]
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _profile(spec: ModelSpec) -> tuple[int, int, int]:
    # opt = max: the analysis fills batches up to max_batch, so that is the shape to tune for.
    return 1, spec.max_batch, spec.max_batch


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, cache_dir: Path, precision: str = "auto") -> None:
        self.cache_dir = cache_dir
        self.precision = precision  # "auto" (fp16 where fast), "fp16" or "fp32"

    def _modules(self) -> tuple[ModuleType, ModuleType] | str:
        trt = optional("tensorrt")
        if trt is None:
            return "tensorrt not installed (the gpu extra: pip install 'edge[gpu]')"
        major, minor = (int(v) for v in trt.__version__.split(".")[:2])
        if (major, minor) < (8, 5):
            return f"tensorrt {trt.__version__} is too old (the tensor API needs 8.5 or later)"
        cuda = optional("pycuda.driver")
        if cuda is None:
            return "pycuda not installed (the gpu extra: pip install 'edge[gpu]')"
        return trt, cuda

    def unavailable(self) -> str | None:
        info = cuda_info()
        if info.problem is not None:
            return info.problem
        modules = self._modules()
        return modules if isinstance(modules, str) else None

    def open(self, spec: ModelSpec) -> TensorRTSession:
        reason = self.unavailable()
        if reason is not None:
            raise BackendUnavailable(f"tensorrt: {reason}")
        modules = self._modules()
        assert not isinstance(modules, str)
        trt, cuda = modules
        cuda.init()
        gpu = cuda_info().gpus[0]
        context = cuda.Device(0).retain_primary_context()
        context.push()
        try:
            logger = trt.Logger(trt.Logger.WARNING)
            fp16 = self._fp16(trt, logger)
            path = self.engine_path(spec, gpu, trt.__version__, "fp16" if fp16 else "fp32")
            if path.is_file():
                LOGGER.info("loading TensorRT engine %s for %s", path, spec.name)
                plan = path.read_bytes()
            else:
                plan = build_engine(trt, logger, spec, fp16)
                write_atomic(path, plan)
                LOGGER.info("built TensorRT engine %s for %s", path, spec.name)
            engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
            if engine is None:
                raise BackendUnavailable(f"tensorrt: cannot load the engine {path}; delete it")
            return TensorRTSession(spec, engine, cuda, context, path)
        finally:
            context.pop()

    def _fp16(self, trt: ModuleType, logger: Any) -> bool:
        if self.precision != "auto":
            return self.precision == "fp16"
        # Deprecated in TensorRT 10 (every supported GPU has fast FP16) but still answers there.
        return bool(getattr(trt.Builder(logger), "platform_has_fast_fp16", True))

    def engine_path(self, spec: ModelSpec, gpu: Gpu, trt_version: str, precision: str) -> Path:
        key = engine_key(spec.sha256, gpu.name, gpu.compute, trt_version, precision, _profile(spec))
        return self.cache_dir / "tensorrt" / f"{spec.name}-{key[:24]}.engine"


def build_engine(trt: ModuleType, logger: Any, spec: ModelSpec, fp16: bool) -> bytes:
    """The serialised engine for spec, with one optimisation profile for batch 1..max_batch."""
    explicit = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)
    builder = trt.Builder(logger)
    # TensorRT 10 networks are always explicit-batch and deprecate the flag; 8.x needs it.
    network = builder.create_network(0 if explicit is None else 1 << int(explicit))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(spec.path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ModelError(f"{spec.path}: TensorRT cannot parse the model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    _, c, h, w = spec.input_shape
    low, opt, high = _profile(spec)
    profile = builder.create_optimization_profile()
    profile.set_shape(spec.input_name, (low, c, h, w), (opt, c, h, w), (high, c, h, w))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ModelError(f"{spec.path}: TensorRT could not build an engine (see its log above)")
    return bytes(plan)


class TensorRTSession:
    """Runs an engine with device buffers sized for max_batch and one CUDA stream."""

    backend = "tensorrt"

    def __init__(self, spec: ModelSpec, engine: Any, cuda: ModuleType, ctx: Any, path: Path):
        self.spec = spec
        self.engine_path = path
        self._engine = engine
        self._cuda = cuda
        self._ctx = ctx
        ctx.push()
        try:
            self._exec = engine.create_execution_context()
            self._stream = cuda.Stream()
            _, c, h, w = spec.input_shape
            # Pinned host buffers: copies from pageable memory would not overlap with compute.
            self._host_in = cuda.pagelocked_empty((spec.max_batch, c, h, w), np.float32)
            self._in = cuda.mem_alloc(self._host_in.nbytes)
            self._exec.set_input_shape(spec.input_name, (spec.max_batch, c, h, w))
            out_shape = tuple(self._exec.get_tensor_shape(spec.output_name))
            dtype = np.dtype(trt_nptype(engine, spec.output_name))
            self._host_out = cuda.pagelocked_empty(out_shape, dtype)
            self._out = cuda.mem_alloc(self._host_out.nbytes)
            self._exec.set_tensor_address(spec.input_name, int(self._in))
            self._exec.set_tensor_address(spec.output_name, int(self._out))
        finally:
            ctx.pop()

    def run(self, batch: Array) -> Array:
        return run_chunked(self.spec, batch, self._run)

    def _run(self, chunk: Array) -> Array:
        cuda, n = self._cuda, chunk.shape[0]
        self._ctx.push()  # the daemon calls from worker threads; the context is per thread
        try:
            self._host_in[:n] = chunk
            self._exec.set_input_shape(self.spec.input_name, chunk.shape)
            cuda.memcpy_htod_async(self._in, self._host_in[:n], self._stream)
            if not self._exec.execute_async_v3(self._stream.handle):
                raise RuntimeError(f"TensorRT execution failed for model {self.spec.name}")
            cuda.memcpy_dtoh_async(self._host_out[:n], self._out, self._stream)
            self._stream.synchronize()
        finally:
            self._ctx.pop()
        return np.array(self._host_out[:n], dtype=np.float32)


def trt_nptype(engine: Any, name: str) -> Any:
    trt = optional("tensorrt")
    assert trt is not None
    return trt.nptype(engine.get_tensor_dtype(name))
