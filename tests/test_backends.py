"""Inference backends: ort-cpu against a numpy reference, chunking, input checks, the selection
policy, the TensorRT engine cache key, `edge doctor` / `edge models`, and tools/gpu-check.

Models are built here with onnx.helper (through tools/gpu-check's builders). GPU backends are
checked by the `gpu`-marked tests, which skip where the library or the device is absent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from edge.analysis import registry
from edge.analysis.backends import (
    BACKEND_NAMES,
    BackendUnavailable,
    BatchError,
    UnknownBackend,
    choose,
    decide,
    open_session,
)
from edge.analysis.backends import select as select_module
from edge.analysis.backends.base import run_chunked
from edge.analysis.backends.ort import OrtBackend
from edge.analysis.backends.select import make_backend
from edge.analysis.backends.tensorrt import engine_key
from tests.helpers import load_script, run_edge

REPO = Path(__file__).resolve().parents[1]
GPU_CHECK = REPO / "tools" / "gpu-check"


gpu_check = load_script(GPU_CHECK, "gpu_check")


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    gpu_check.write_model(root, "tile", gpu_check.tile_model_proto(32, 4), "tile", max_batch=4)
    gpu_check.write_model(root, "dense", gpu_check.dense_model_proto(24, 4), "dense", max_batch=4)
    return root


def _spec(models_dir: Path, name: str) -> registry.ModelSpec:
    return registry.load_model(models_dir / name)


# ---- numpy reference ------------------------------------------------------------------------


def _weights(path: Path) -> dict[str, np.ndarray]:
    import onnx
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    k = w.shape[-1]
    pad = k // 2
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = sliding_window_view(xp, (k, k), axis=(2, 3))  # (N, C, H, W, k, k)
    return np.einsum("nchwij,ocij->nohw", windows, w) + b[None, :, None, None]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-x))


def reference(name: str, path: Path, x: np.ndarray) -> np.ndarray:
    p = _weights(path)
    h = np.maximum(_conv(x, p["c1_w"], p["c1_b"]), 0)
    if name == "dense":
        return _sigmoid(_conv(h, p["c2_w"], p["c2_b"]))
    h = np.maximum(_conv(h, p["c2_w"], p["c2_b"]), 0)
    gap = h.mean(axis=(2, 3), keepdims=True)
    return _sigmoid(_conv(gap, p["c3_w"], p["c3_b"])[:, :, 0, 0])


# ---- ort-cpu ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["tile", "dense"])
def test_ort_cpu_matches_numpy(models_dir: Path, name: str) -> None:
    spec = _spec(models_dir, name)
    session = OrtBackend("ort-cpu", threads=1).open(spec)
    assert session.backend == "ort-cpu"
    x = np.random.default_rng(0).standard_normal((3, *spec.input_shape[1:]), dtype=np.float32)
    out = session.run(x)
    assert out.dtype == np.float32
    expected = reference(name, spec.path, x)
    assert out.shape == expected.shape
    np.testing.assert_allclose(out, expected, atol=1e-5)


def test_batches_larger_than_max_batch_are_chunked(models_dir: Path) -> None:
    spec = _spec(models_dir, "tile")
    sizes: list[int] = []

    def record(chunk: np.ndarray) -> np.ndarray:
        sizes.append(chunk.shape[0])
        return chunk[:, :1, 0, 0].copy()

    x = np.random.default_rng(1).random((10, *spec.input_shape[1:]), dtype=np.float32)
    out = run_chunked(spec, x, record)
    assert sizes == [4, 4, 2]
    np.testing.assert_array_equal(out, x[:, :1, 0, 0])
    session = OrtBackend("ort-cpu", threads=1).open(spec)
    np.testing.assert_allclose(session.run(x), reference("tile", spec.path, x), atol=1e-5)


def test_ort_cpu_threads_sleep_when_idle(models_dir: Path) -> None:
    """The runtime's worker threads must not spin between runs: they would take the cores
    the tile decoders and the sender need in the same process."""
    session = OrtBackend("ort-cpu", threads=2).open(_spec(models_dir, "tile"))
    options = session._session.get_session_options()
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"


def test_wrong_input_is_refused_naming_model_and_shape(models_dir: Path) -> None:
    session = OrtBackend("ort-cpu", threads=1).open(_spec(models_dir, "tile"))
    with pytest.raises(BatchError, match=r"model tile .*\(N, 3, 32, 32\).*\(2, 3, 16, 16\)"):
        session.run(np.zeros((2, 3, 16, 16), np.float32))
    with pytest.raises(BatchError, match=r"\(N, 3, 32, 32\)"):
        session.run(np.zeros((3, 32, 32), np.float32))
    with pytest.raises(BatchError, match="float32"):
        session.run(np.zeros((1, 3, 32, 32), np.uint8))
    assert session.run(np.zeros((1, 3, 32, 32), np.float64)).dtype == np.float32


def test_manifest_disagreeing_with_graph_is_refused(tmp_path: Path) -> None:
    folder = gpu_check.write_model(tmp_path, "liar", gpu_check.tile_model_proto(32, 4), "tile")
    manifest = folder / "manifest.toml"
    manifest.write_text(manifest.read_text().replace('name = "input"', 'name = "pixels"'))
    with pytest.raises(registry.ModelError, match=r"model\.onnx.*'pixels'.*'input'"):
        OrtBackend("ort-cpu").open(registry.load_model(folder))


def test_manifest_cut_offs_are_read_and_bad_ones_named(tmp_path: Path) -> None:
    folder = gpu_check.write_model(tmp_path, "cuts", gpu_check.tile_model_proto(32, 4), "tile")
    manifest = folder / "manifest.toml"
    text = manifest.read_text().split("[thresholds]")[0]
    manifest.write_text(text + '[thresholds]\n"pen" = 0.25\n[area_thresholds]\n"pen" = 0.45\n')
    spec = registry.load_model(folder)
    assert (spec.thresholds, spec.area_thresholds) == ({"pen": 0.25}, {"pen": 0.45})
    for bad in ('"pen" = 1.5', '"pen" = "high"', '"pen" = true'):
        manifest.write_text(text + f"[area_thresholds]\n{bad}\n")
        with pytest.raises(registry.ModelError, match=r"manifest\.toml: \[area_thresholds\]"):
            registry.load_model(folder)


# ---- selection -------------------------------------------------------------------------------

NONE_USABLE: dict[str, str | None] = {n: f"{n} missing" for n in BACKEND_NAMES}


def test_auto_takes_the_first_usable_in_order() -> None:
    reasons = {**NONE_USABLE, "ort-cuda": None, "ort-cpu": None}
    chosen, report = decide("auto", reasons)
    assert chosen == "ort-cuda"
    assert report["ort-cuda"] == "selected"
    assert report["tensorrt"] == "tensorrt missing"
    assert "ort-cuda comes first" in report["ort-cpu"]
    # auto stops probing at the first usable backend: the rest are reported as not probed
    chosen, report = decide("auto", {"tensorrt": None})
    assert chosen == "tensorrt"
    assert report["ort-cpu"].startswith("not probed")


def test_named_preference_is_used_or_refused_with_its_reason() -> None:
    reasons = {**NONE_USABLE, "tensorrt": None, "ort-cpu": None}
    assert decide("ort-cpu", reasons)[0] == "ort-cpu"
    assert "ort-cpu was asked for" in decide("ort-cpu", reasons)[1]["tensorrt"]
    with pytest.raises(BackendUnavailable, match="torch-cuda cannot run here: torch-cuda missing"):
        decide("torch-cuda", reasons)
    with pytest.raises(BackendUnavailable, match=r"no inference backend.*ort-cpu: ort-cpu missing"):
        decide("auto", NONE_USABLE)


def test_unknown_backend_lists_the_valid_names() -> None:
    with pytest.raises(UnknownBackend, match=r"'cuda'.*auto.*tensorrt.*ort-cpu"):
        decide("cuda", NONE_USABLE)
    with pytest.raises(UnknownBackend):
        choose("onnx")


def test_choose_on_this_machine(tmp_path: Path) -> None:
    backend, report = choose("ort-cpu", tmp_path, threads=1)
    assert backend.name == "ort-cpu"
    assert report["ort-cpu"] == "selected"
    backend, report = choose("auto", tmp_path)
    assert backend.name in BACKEND_NAMES
    assert report[backend.name] == "selected"


class _Broken:
    name = "ort-cuda"

    def unavailable(self) -> str | None:
        return None

    def open(self, spec: registry.ModelSpec) -> Any:
        raise BackendUnavailable("ort-cuda: cuDNN missing")


def test_open_session_auto_falls_through_a_backend_that_fails_to_open(
    models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = make_backend

    def fake(name: str, cache_dir: Path, threads: int | None = None) -> Any:
        if name == "ort-cuda":
            return _Broken()
        if name == "ort-cpu":
            return real(name, cache_dir, threads)
        return type("Absent", (), {"name": name, "unavailable": lambda self: "absent"})()

    monkeypatch.setattr(select_module, "make_backend", fake)
    logged: list[str] = []
    session = open_session(_spec(models_dir, "tile"), log=logged.append)
    assert session.backend == "ort-cpu"
    assert logged and "cuDNN missing" in logged[0]
    with pytest.raises(BackendUnavailable, match="cuDNN"):
        open_session(_spec(models_dir, "tile"), "ort-cuda")


# ---- TensorRT engine cache key ---------------------------------------------------------------


def test_engine_key_changes_with_each_part() -> None:
    parts = ("a" * 64, "NVIDIA H100 80GB HBM3", "9.0", "10.3.0", "fp16", (1, 64, 64))
    base = engine_key(*parts)
    assert base == engine_key(*parts)
    changed = [
        ("b" * 64, *parts[1:]),
        (parts[0], "NVIDIA A100", *parts[2:]),
        (*parts[:2], "8.0", *parts[3:]),
        (*parts[:3], "10.4.0", *parts[4:]),
        (*parts[:4], "fp32", parts[5]),
        (*parts[:5], (1, 32, 64)),
    ]
    keys = {engine_key(*p) for p in changed}
    assert len(keys) == len(changed) and base not in keys


def test_tensorrt_module_imports_without_tensorrt(models_dir: Path, tmp_path: Path) -> None:
    backend = make_backend("tensorrt", tmp_path)
    reason = backend.unavailable()
    if reason is not None:
        assert reason.startswith(("no CUDA", "tensorrt", "pycuda"))
        with pytest.raises(BackendUnavailable, match="tensorrt"):
            backend.open(_spec(models_dir, "tile"))


# ---- command line ----------------------------------------------------------------------------


def test_doctor_json_with_good_models(models_dir: Path) -> None:
    done = run_edge("doctor", "--json", "--models-dir", str(models_dir), timeout=120)
    report = json.loads(done.stdout)
    assert done.returncode == 0, done.stdout + done.stderr
    assert report["ok"] and report["selected"] in BACKEND_NAMES
    assert report["backends"]["ort-cpu"] == {"usable": True, "reason": None}
    assert {m["name"]: m["ok"] for m in report["models"]} == {"dense": True, "tile": True}
    text = run_edge("doctor", "--models-dir", str(models_dir), "--backend", "ort-cpu")
    assert text.returncode == 0
    assert "✓ ort-cpu" in text.stdout and "would run: ort-cpu" in text.stdout


def test_corrupt_model_fails_doctor_and_verify_naming_the_file(tmp_path: Path) -> None:
    gpu_check.write_model(tmp_path, "good", gpu_check.tile_model_proto(32, 4), "tile")
    bad = gpu_check.write_model(tmp_path, "bad", gpu_check.dense_model_proto(24, 4), "dense")
    onnx_file = bad / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-1] ^= 0xFF
    onnx_file.write_bytes(bytes(data))

    doctor = run_edge("doctor", "--json", "--models-dir", str(tmp_path))
    assert doctor.returncode == 1
    entries = {m["name"]: m for m in json.loads(doctor.stdout)["models"]}
    assert entries["good"]["ok"] and not entries["bad"]["ok"]
    assert str(onnx_file) in entries["bad"]["error"] and "sha256" in entries["bad"]["error"]

    verify = run_edge("models", "--models-dir", str(tmp_path), "verify")
    assert verify.returncode == 1
    assert f"✗ {onnx_file}: sha256" in verify.stdout and "✓ good" in verify.stdout

    listing = run_edge("models", "--models-dir", str(tmp_path), "list", "--json")
    assert listing.returncode == 0  # list reads manifests; checksums are verify's job
    assert [m["name"] for m in json.loads(listing.stdout)] == ["bad", "good"]


def test_models_verify_and_build_engines_on_this_machine(models_dir: Path, tmp_path: Path) -> None:
    verify = run_edge("models", "--models-dir", str(models_dir), "verify")
    assert verify.returncode == 0 and "✓ tile" in verify.stdout
    empty = run_edge("models", "--models-dir", str(tmp_path / "none"), "verify")
    assert empty.returncode == 1 and "no models" in empty.stderr
    if make_backend("tensorrt", tmp_path).unavailable() is None:
        pytest.skip("TensorRT is usable here: the no-TensorRT messages do not apply")
    build = run_edge("models", "--models-dir", str(models_dir), "build-engines")
    assert build.returncode == 0 and "nothing to build" in build.stdout
    named = run_edge(
        "models", "build-engines", "--backend", "tensorrt", "--cache-dir", str(tmp_path)
    )
    assert named.returncode == 1 and "tensorrt:" in named.stderr


def test_doctor_rejects_an_unknown_backend() -> None:
    done = run_edge("doctor", "--backend", "cuda")
    assert done.returncode == 2 and "ort-cpu" in done.stderr


# ---- tools/gpu-check -------------------------------------------------------------------------


def test_gpu_check_runs_and_writes_a_report(tmp_path: Path) -> None:
    out = tmp_path / "report.md"
    done = subprocess.run(
        [
            sys.executable,
            str(GPU_CHECK),
            "--models-dir",
            str(tmp_path / "empty"),
            "--out",
            str(out),
            "--seconds",
            "0.02",
            "--batches",
            "1,8",
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    report = out.read_text()
    assert "| synthetic-tile | ort-cpu |" in report and "PASS" in report
    assert "## Throughput" in report and "batch 8" in report
    for name in BACKEND_NAMES[:-1]:
        assert f"- {name}: " in report  # each GPU backend: tried, or why not


# ---- GPU backends (skipped where the library or device is absent) ----------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("name", [n for n in BACKEND_NAMES if n != "ort-cpu"])
def test_gpu_backend_matches_ort_cpu(models_dir: Path, tmp_path: Path, name: str) -> None:
    backend = make_backend(name, tmp_path)
    reason = backend.unavailable()
    if reason is not None:
        pytest.skip(f"{name}: {reason}")
    for model in ("tile", "dense"):
        spec = _spec(models_dir, model)
        x = np.random.default_rng(2).random((9, *spec.input_shape[1:]), dtype=np.float32)
        expected = OrtBackend("ort-cpu").open(spec).run(x)
        session = backend.open(spec)
        assert session.backend == name
        np.testing.assert_allclose(session.run(x), expected, atol=1e-2)


@pytest.mark.gpu
def test_tensorrt_engine_is_cached(models_dir: Path, tmp_path: Path) -> None:
    backend = make_backend("tensorrt", tmp_path)
    reason = backend.unavailable()
    if reason is not None:
        pytest.skip(f"tensorrt: {reason}")
    spec = _spec(models_dir, "tile")
    first = backend.open(spec)
    engine = first.engine_path  # type: ignore[attr-defined]
    stamp = engine.stat().st_mtime_ns
    second = backend.open(spec)
    assert second.engine_path == engine  # type: ignore[attr-defined]
    assert engine.stat().st_mtime_ns == stamp  # loaded, not rebuilt
