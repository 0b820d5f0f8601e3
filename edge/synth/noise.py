"""Counter-based randomness: every random value is a hash of (seed, salt, coordinates).

A slide's content must not depend on the order in which regions are rendered, so nothing here
keeps state: a value at a lattice point is `hash(seed, salt, i, j)` (splitmix64 finaliser), and
smooth fields are bilinear (smoothstep) interpolations of those lattice values.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix(x: U64) -> U64:
    """splitmix64 finaliser (wrapping uint64 arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    out: U64 = x ^ (x >> np.uint64(31))
    return out


def hash_u64(seed: int, salt: int, *coords: npt.ArrayLike) -> U64:
    """A well-mixed 64-bit hash of (seed, salt, coords...), broadcast over the coordinates."""
    with np.errstate(over="ignore"):
        h = _mix(np.array([(seed * 0x632BE59BD9B4E019 + salt) % 2**64], np.uint64))
        for c in coords:
            arr = np.asarray(c, np.int64).astype(np.uint64)
            h = _mix(h + _GOLDEN + arr * _M2)
    return h


def uniform(h: U64) -> F64:
    """Map hashes to floats in [0, 1)."""
    out: F64 = (h >> np.uint64(11)).astype(np.float64) * (1.0 / 2**53)
    return out


def smoothstep(t: F64) -> F64:
    t = np.clip(t, 0.0, 1.0)
    out: F64 = t * t * (3.0 - 2.0 * t)
    return out


def value_noise(seed: int, salt: int, x: npt.ArrayLike, y: npt.ArrayLike, scale: float) -> F64:
    """Smooth noise in [0, 1) at points (x, y) (broadcast), lattice spacing `scale`."""
    fx = np.asarray(x, np.float64) / scale
    fy = np.asarray(y, np.float64) / scale
    ix = np.floor(fx).astype(np.int64)
    iy = np.floor(fy).astype(np.int64)
    tx = smoothstep(fx - ix)
    ty = smoothstep(fy - iy)
    v00 = uniform(hash_u64(seed, salt, ix, iy))
    v10 = uniform(hash_u64(seed, salt, ix + 1, iy))
    v01 = uniform(hash_u64(seed, salt, ix, iy + 1))
    v11 = uniform(hash_u64(seed, salt, ix + 1, iy + 1))
    top = v00 + (v10 - v00) * tx
    bottom = v01 + (v11 - v01) * tx
    out: F64 = top + (bottom - top) * ty
    return out


def rng(seed: int, *salt: int) -> np.random.Generator:
    """A generator for one planning decision (artifact, layout), independent of the others."""
    return np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, *salt])
