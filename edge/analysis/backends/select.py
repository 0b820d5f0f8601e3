"""Which backend runs the models here: the first usable one in preference order, or the one
named in the configuration.

`decide` is the whole policy as a pure function of {backend: reason it cannot run}, so it is
tested without any GPU library; `choose` probes the real backends and applies it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from edge.analysis.backends.base import BACKEND_NAMES, Backend, BackendUnavailable, Session
from edge.analysis.backends.ort import OrtBackend
from edge.analysis.backends.tensorrt import TensorRTBackend
from edge.analysis.backends.torch_cuda import TorchCudaBackend
from edge.analysis.registry import ModelSpec
from edge.errors import EdgeError

LOGGER = logging.getLogger(__name__)
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "edge" / "engines"
SELECTED = "selected"


class UnknownBackend(EdgeError, ValueError):
    """A backend name that is not one of BACKEND_NAMES (nor "auto")."""


def check_name(preference: str) -> str:
    if preference != "auto" and preference not in BACKEND_NAMES:
        raise UnknownBackend(
            f"unknown backend {preference!r}; choose auto or one of {', '.join(BACKEND_NAMES)}"
        )
    return preference


def decide(preference: str, reasons: Mapping[str, str | None]) -> tuple[str, dict[str, str]]:
    """(chosen name, {name: why not chosen, or "selected"}) for the probed reasons.

    reasons maps a backend to None (usable) or why it cannot run; backends not in it were not
    probed (auto stops probing at the first usable one). BackendUnavailable when nothing fits.
    """
    check_name(preference)
    candidates = BACKEND_NAMES if preference == "auto" else (preference,)
    chosen = next((n for n in candidates if n in reasons and reasons[n] is None), None)
    report: dict[str, str] = {}
    for name in BACKEND_NAMES:
        if name == chosen:
            report[name] = SELECTED
        elif name not in reasons:
            report[name] = f"not probed ({chosen} comes first)" if chosen else "not probed"
        elif reasons[name] is not None:
            report[name] = str(reasons[name])
        elif preference == "auto":
            report[name] = f"usable, but {chosen} comes first"
        else:
            report[name] = f"usable, but {preference} was asked for"
    if chosen is None:
        if preference == "auto":
            why = "; ".join(f"{n}: {r}" for n, r in report.items())
            raise BackendUnavailable(f"no inference backend can run here ({why})")
        raise BackendUnavailable(f"backend {preference} cannot run here: {report[preference]}")
    return chosen, report


def make_backend(
    name: str, cache_dir: Path = DEFAULT_CACHE_DIR, threads: int | None = None
) -> Backend:
    check_name(name)
    if name == "tensorrt":
        return TensorRTBackend(cache_dir)
    if name == "torch-cuda":
        return TorchCudaBackend()
    return OrtBackend(name, cache_dir, threads)


def probe_all(
    cache_dir: Path = DEFAULT_CACHE_DIR, threads: int | None = None
) -> dict[str, str | None]:
    """{backend: None or why it cannot run} for every backend (for `edge doctor`)."""
    return {name: make_backend(name, cache_dir, threads).unavailable() for name in BACKEND_NAMES}


def choose(
    preference: str = "auto", cache_dir: Path = DEFAULT_CACHE_DIR, threads: int | None = None
) -> tuple[Backend, dict[str, str]]:
    """The backend to use and why each other one was not chosen."""
    check_name(preference)
    reasons: dict[str, str | None] = {}
    backends: dict[str, Backend] = {}
    for name in BACKEND_NAMES if preference == "auto" else (preference,):
        backends[name] = make_backend(name, cache_dir, threads)
        reasons[name] = backends[name].unavailable()
        if reasons[name] is None:
            break  # probing the rest would import torch & co. for nothing
    chosen, report = decide(preference, reasons)
    return backends[chosen], report


def open_session(
    spec: ModelSpec,
    preference: str = "auto",
    cache_dir: Path = DEFAULT_CACHE_DIR,
    threads: int | None = None,
    log: Callable[[str], None] = LOGGER.warning,
) -> Session:
    """A session for spec; with "auto", a backend that fails to open gives way to the next one.

    A provider can look usable and still fail when the session starts (a missing cuDNN, for
    instance); the appliance should then run slower rather than not at all.
    """
    names = BACKEND_NAMES if check_name(preference) == "auto" else (preference,)
    for name in names:
        backend = make_backend(name, cache_dir, threads)
        if preference == "auto" and backend.unavailable() is not None:
            continue
        try:
            return backend.open(spec)
        except BackendUnavailable as exc:
            if preference != "auto":
                raise
            log(f"{exc}; trying the next backend")
    raise BackendUnavailable(f"no inference backend could open model {spec.name}")
