"""`edge doctor`: can this machine run the analysis, and on what?

Everything a technician or a support engineer needs in one screen: each backend with the
reason it can or cannot run, the one that would run, the GPU the driver sees, the library
versions, and whether every installed model matches its manifest.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

from edge.analysis import registry
from edge.analysis.backends.base import BACKEND_NAMES, BackendUnavailable, optional
from edge.analysis.backends.device import cuda_info
from edge.analysis.backends.select import decide, probe_all

# Distribution names: versions come from metadata, so nothing heavy is imported for them.
_LIBRARIES = ("onnxruntime", "onnxruntime-gpu", "onnx", "tensorrt", "pycuda", "torch", "onnx2torch")


def library_versions() -> dict[str, str]:
    found = {}
    for name in _LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def check_models(models_dir: Path) -> list[dict[str, Any]]:
    """One entry per model folder: manifest fields when it verifies, else the ModelError."""
    entries: list[dict[str, Any]] = []
    for name, folder in registry.discover(models_dir).items():
        entry: dict[str, Any] = {"name": name, "folder": str(folder)}
        try:
            spec = registry.load_model(folder)
        except registry.ModelError as exc:
            entry.update(ok=False, error=str(exc))
        else:
            entry.update(ok=True, version=spec.version, sha256=spec.sha256, file=str(spec.path))
        entries.append(entry)
    return entries


def diagnose(
    models_dir: Path, preference: str, cache_dir: Path, threads: int | None = None
) -> dict[str, Any]:
    reasons = probe_all(cache_dir, threads)
    try:
        selected: str | None = decide(preference, reasons)[0]
        selection_error = None
    except BackendUnavailable as exc:
        selected, selection_error = None, str(exc)
    info = cuda_info()
    ort = optional("onnxruntime")
    models = check_models(models_dir)
    return {
        "ok": selected is not None and all(m["ok"] for m in models),
        "preference": preference,
        "selected": selected,
        "selection_error": selection_error,
        "backends": {
            n: {"usable": reasons[n] is None, "reason": reasons[n]} for n in BACKEND_NAMES
        },
        "gpus": [
            {"index": g.index, "name": g.name, "compute": g.compute, "memory_mib": g.memory_mib}
            for g in info.gpus
        ],
        "cuda_driver": info.driver or None,
        "gpu_problem": info.problem,
        "libraries": library_versions(),
        "ort_providers": list(ort.get_available_providers()) if ort is not None else [],
        "models_dir": str(models_dir),
        "models": models,
    }


def render(report: dict[str, Any]) -> str:
    """The report as the lines `edge doctor` prints."""
    lines = [f"backends (preference: {report['preference']}):"]
    for name, state in report["backends"].items():
        mark, why = ("✓", "usable") if state["usable"] else ("✗", state["reason"])
        lines.append(f"  {mark} {name:<13} {why}")
    if report["selected"]:
        lines.append(f"would run: {report['selected']}")
    else:
        lines.append(f"would run: nothing: {report['selection_error']}")
    for gpu in report["gpus"]:
        lines.append(
            f"GPU {gpu['index']}: {gpu['name']}, compute capability {gpu['compute']}, "
            f"{gpu['memory_mib']} MiB, driver CUDA {report['cuda_driver']}"
        )
    if not report["gpus"]:
        lines.append(f"GPU: none: {report['gpu_problem']}")
    libraries = ", ".join(f"{k} {v}" for k, v in report["libraries"].items()) or "none"
    lines.append(f"libraries: {libraries}")
    lines.append(f"onnxruntime providers: {', '.join(report['ort_providers']) or 'none'}")
    lines.append(f"models in {report['models_dir']}:")
    for model in report["models"]:
        if model["ok"]:
            lines.append(f"  ✓ {model['name']} {model['version']} (sha256 {model['sha256'][:12]})")
        else:
            lines.append(f"  ✗ {model['name']}: {model['error']}")
    if not report["models"]:
        lines.append("  (none: the analysis has nothing to run until models are installed)")
    lines.append("ok" if report["ok"] else "NOT OK")
    return "\n".join(lines)
