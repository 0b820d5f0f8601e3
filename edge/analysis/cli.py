"""`edge doctor` and `edge models list | verify | build-engines`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from edge.analysis import registry
from edge.analysis.backends.base import BACKEND_NAMES, Backend, BackendUnavailable
from edge.analysis.backends.select import DEFAULT_CACHE_DIR, make_backend
from edge.analysis.doctor import check_models, diagnose, render
from edge.errors import EdgeError

EXIT_OK, EXIT_FAIL = 0, 1
_ENGINE_BACKENDS = ("tensorrt", "ort-tensorrt")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    doctor = sub.add_parser(
        "doctor",
        help="which inference backend runs here, the GPU, and whether the models verify",
        description="Check every inference backend, the GPU and the installed models. "
        "Exit 0 when a backend is usable and every model matches its manifest, 1 otherwise.",
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    doctor.add_argument("--backend", default="auto", choices=("auto", *BACKEND_NAMES))
    doctor.add_argument("--models-dir", type=Path, default=registry.DEFAULT_MODELS_DIR)
    doctor.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)

    models = sub.add_parser("models", help="list, verify and prepare the analysis models")
    models.add_argument("--models-dir", type=Path, default=registry.DEFAULT_MODELS_DIR)
    actions = models.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="the installed models and their manifests")
    listing.add_argument("--json", action="store_true")
    verify = actions.add_parser("verify", help="check every model file against its sha256")
    verify.add_argument("--json", action="store_true")
    build = actions.add_parser(
        "build-engines",
        help="build the TensorRT engines of every model now (first boot), not at first slide",
    )
    build.add_argument("--backend", default="auto", choices=("auto", *_ENGINE_BACKENDS))
    build.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR)


def cmd_doctor(args: argparse.Namespace) -> int:
    report = diagnose(args.models_dir, args.backend, args.cache_dir)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
    return EXIT_OK if report["ok"] else EXIT_FAIL


def cmd_models(args: argparse.Namespace) -> int:
    if args.action == "list":
        return _list(args.models_dir, args.json)
    if args.action == "verify":
        return _verify(args.models_dir, args.json)
    return _build(args.models_dir, args.backend, args.cache_dir)


def _list(models_dir: Path, as_json: bool) -> int:
    entries: list[dict[str, Any]] = []
    for name, folder in registry.discover(models_dir).items():
        try:
            spec = registry.load_manifest(folder)
        except registry.ModelError as exc:
            entries.append({"name": name, "folder": str(folder), "error": str(exc)})
            continue
        entries.append(
            {
                "name": spec.name,
                "version": spec.version,
                "folder": str(folder),
                "file": spec.path.name,
                "kind": spec.kind,
                "input_shape": list(spec.input_shape),
                "mpp": spec.mpp,
                "classes": list(spec.classes),
                "max_batch": spec.max_batch,
                "sha256": spec.sha256,
            }
        )
    if as_json:
        print(json.dumps(entries, indent=2))
    elif not entries:
        print(f"no models in {models_dir}")
    for e in [] if as_json else entries:
        if "error" in e:
            print(f"{e['name']}: {e['error']}")
        else:
            shape = "x".join(str(v) for v in e["input_shape"][1:])
            print(
                f"{e['name']} {e['version']}  {e['kind']}  input {shape} at {e['mpp']} µm/px  "
                f"classes {', '.join(e['classes'])}  {e['folder']}"
            )
    return EXIT_FAIL if any("error" in e for e in entries) else EXIT_OK


def _verify(models_dir: Path, as_json: bool) -> int:
    entries = check_models(models_dir)
    if as_json:
        print(json.dumps(entries, indent=2))
    else:
        for e in entries:
            print(f"✓ {e['name']}: {e['file']} matches" if e["ok"] else f"✗ {e['error']}")
    if not entries:
        # Nothing to verify is far more often a wrong --models-dir than a finished check.
        print(f"edge models verify: no models in {models_dir}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK if all(e["ok"] for e in entries) else EXIT_FAIL


def _engine_backend(preference: str, cache_dir: Path) -> Backend | str:
    """The backend that builds engines, or the message for when none applies."""
    names = _ENGINE_BACKENDS if preference == "auto" else (preference,)
    reasons = {}
    for name in names:
        backend = make_backend(name, cache_dir)
        reason = backend.unavailable()
        if reason is None:
            return backend
        reasons[name] = reason
    return "; ".join(f"{n}: {r}" for n, r in reasons.items())


def _build(models_dir: Path, preference: str, cache_dir: Path) -> int:
    backend = _engine_backend(preference, cache_dir)
    if isinstance(backend, str):
        if preference == "auto":
            # Not a failure: a CPU-only or CUDA-only box has no engines to build, and first-boot
            # scripts run this everywhere.
            print(f"no TensorRT backend on this machine ({backend}); nothing to build")
            return EXIT_OK
        print(f"edge models build-engines: {backend}", file=sys.stderr)
        return EXIT_FAIL
    folders = registry.discover(models_dir)
    if not folders:
        print(f"edge models build-engines: no models in {models_dir}", file=sys.stderr)
        return EXIT_FAIL
    failed = False
    for name, folder in folders.items():
        started = time.monotonic()
        try:
            spec = registry.load_model(folder)
            session = backend.open(spec)
            # One run: ONNX Runtime's TensorRT provider may defer the build to the first batch.
            session.run(np.zeros((1, *spec.input_shape[1:]), np.float32))
        except (EdgeError, BackendUnavailable) as exc:
            print(f"✗ {name}: {exc}", file=sys.stderr)
            failed = True
            continue
        seconds = time.monotonic() - started
        print(f"✓ {name}: {backend.name} engine ready in {seconds:.1f} s (cache {cache_dir})")
    return EXIT_FAIL if failed else EXIT_OK


COMMANDS = {"doctor": cmd_doctor, "models": cmd_models}
