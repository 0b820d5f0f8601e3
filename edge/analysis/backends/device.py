"""What the CUDA driver says about the GPUs, read through libcuda with ctypes.

No CUDA library of ours is needed for this, so `edge doctor` and the backends can tell "no
driver" from "no device" from "library missing" on any machine, and the TensorRT engine cache
can be keyed on the GPU model and compute capability.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass

_NAMES = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")
_CC_MAJOR, _CC_MINOR = 75, 76  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR / _MINOR


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    capability: tuple[int, int]
    memory_mib: int

    @property
    def compute(self) -> str:
        return f"{self.capability[0]}.{self.capability[1]}"


@dataclass(frozen=True)
class CudaInfo:
    gpus: tuple[Gpu, ...]
    driver: str  # CUDA version the driver supports, e.g. "12.4"; "" when no driver
    problem: str | None  # None when at least one GPU is visible


def _load() -> ctypes.CDLL | None:
    for name in _NAMES:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


@functools.cache
def cuda_info() -> CudaInfo:
    """The visible GPUs, or the reason there are none (cached: the hardware does not change)."""
    lib = _load()
    if lib is None:
        return CudaInfo((), "", "no CUDA driver (libcuda not found)")
    version = ctypes.c_int(0)
    lib.cuDriverGetVersion(ctypes.byref(version))
    driver = f"{version.value // 1000}.{version.value % 1000 // 10}" if version.value else ""
    status = lib.cuInit(0)
    if status != 0:
        # 100 = CUDA_ERROR_NO_DEVICE, 999 = unknown (often a container without the device nodes)
        return CudaInfo((), driver, f"no CUDA device: cuInit failed with error {status}")
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return CudaInfo((), driver, "no CUDA device: the driver sees none")
    gpus = []
    for index in range(count.value):
        device = ctypes.c_int(0)
        lib.cuDeviceGet(ctypes.byref(device), index)
        name = ctypes.create_string_buffer(256)
        lib.cuDeviceGetName(name, 256, device)
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        lib.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, device)
        lib.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, device)
        memory = ctypes.c_size_t(0)
        lib.cuDeviceTotalMem_v2(ctypes.byref(memory), device)
        gpus.append(
            Gpu(
                index,
                name.value.decode(errors="replace"),
                (major.value, minor.value),
                memory.value >> 20,
            )
        )
    return CudaInfo(tuple(gpus), driver, None)


def cuda_problem() -> str | None:
    """None when a CUDA GPU is visible, else why not."""
    return cuda_info().problem
