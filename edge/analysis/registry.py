"""The shipped models: each a folder under models/ with model.onnx, manifest.toml, MODEL_CARD.md.

The manifest is the contract between training (tools/train_models.py), the backends and the
analysis: which tensor goes in (shape, resolution, normalisation), which classes come out, and
the thresholds the verdict uses. A model whose file does not match its sha256 is refused with a
clear message rather than run, so a half-copied or tampered model never scores a slide.
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.errors import EdgeError

# The repository's models/ (editable installs and the source tree); config can point elsewhere.
DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[2] / "models"


class ModelError(EdgeError):
    """A model is missing, corrupt, or not what its manifest says."""


@dataclass(frozen=True)
class ModelSpec:
    """One model as its manifest.toml describes it."""

    name: str  # "focus", "artifact", "stain", or a site's own
    version: str
    path: Path  # the .onnx file
    sha256: str
    input_name: str
    # (batch, channels, height, width); batch is -1 (dynamic, up to max_batch)
    input_shape: tuple[int, int, int, int]
    output_name: str
    classes: tuple[str, ...]  # output channel i is the probability of classes[i]
    mpp: float  # micrometres per input pixel the model was trained at
    normalisation: str  # human-readable: how uint8 pixels become the input tensor
    max_batch: int = 64
    thresholds: dict[str, float] = field(default_factory=dict)
    # Cut-offs for the fraction-of-tissue estimate (qc.Thresholds.area_probability).
    area_thresholds: dict[str, float] = field(default_factory=dict)
    kind: str = "tile"  # "tile": one prediction per input; "dense": per output pixel
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def channels(self) -> int:
        return self.input_shape[1]

    @property
    def tile_size(self) -> tuple[int, int]:
        """(height, width) of one input."""
        return self.input_shape[2], self.input_shape[3]

    def identity(self) -> dict[str, str]:
        """What a report records about the model that scored a slide."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _need(manifest: Path, data: dict[str, Any], key: str, kind: type) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ModelError(f"{manifest}: '{key}' must be a {kind.__name__}, found {value!r}")
    return value


def load_manifest(folder: Path) -> ModelSpec:
    """Parse folder/manifest.toml (no checksum check: see `verify`)."""
    manifest = folder / "manifest.toml"
    try:
        data = tomllib.loads(manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{manifest}: no manifest.toml in the model folder") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ModelError(f"{manifest}: cannot read the manifest: {exc}") from None
    inp = _need(manifest, data, "input", dict)
    out = _need(manifest, data, "output", dict)
    shape = _need(manifest, inp, "shape", list)
    if len(shape) != 4 or not all(isinstance(v, int) for v in shape) or min(shape[1:]) < 1:
        raise ModelError(f"{manifest}: input.shape must be [batch, channels, height, width]")
    classes = _need(manifest, out, "classes", list)
    thresholds = _cut_offs(manifest, data, "thresholds")
    area_thresholds = _cut_offs(manifest, data, "area_thresholds")
    file = folder / _need(manifest, data, "file", str)
    return ModelSpec(
        name=_need(manifest, data, "name", str),
        version=_need(manifest, data, "version", str),
        path=file,
        sha256=_need(manifest, data, "sha256", str).lower(),
        input_name=_need(manifest, inp, "name", str),
        input_shape=(shape[0], shape[1], shape[2], shape[3]),
        output_name=_need(manifest, out, "name", str),
        classes=tuple(str(c) for c in classes),
        mpp=float(_need(manifest, inp, "mpp", float | int)),  # type: ignore[arg-type]
        normalisation=_need(manifest, inp, "normalisation", str),
        max_batch=int(data.get("max_batch", 64)),
        thresholds=thresholds,
        area_thresholds=area_thresholds,
        kind=str(data.get("kind", "tile")),
        extra={k: v for k, v in data.items() if k not in _KNOWN},
    )


def _cut_offs(manifest: Path, data: dict[str, Any], table: str) -> dict[str, float]:
    found = data.get(table, {})
    if not isinstance(found, dict) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and 0 <= v <= 1
        for v in found.values()
    ):
        raise ModelError(f"{manifest}: [{table}] must map class names to numbers in 0..1")
    return {str(k): float(v) for k, v in found.items()}


_KNOWN = {"name", "version", "file", "sha256", "input", "output", "max_batch", "kind"}
_KNOWN |= {"thresholds", "area_thresholds"}


def verify(spec: ModelSpec) -> None:
    """ModelError unless the model file exists and matches the manifest's sha256."""
    if not spec.path.is_file():
        raise ModelError(f"{spec.path}: model file missing (named in the {spec.name} manifest)")
    actual = sha256_file(spec.path)
    if actual != spec.sha256:
        raise ModelError(
            f"{spec.path}: sha256 {actual[:12]}... does not match the manifest's "
            f"{spec.sha256[:12]}... (corrupt or replaced model file); refusing to run it"
        )


def load_model(folder: Path) -> ModelSpec:
    """The manifest of folder, checked against the model file."""
    spec = load_manifest(folder)
    verify(spec)
    return spec


def discover(models_dir: Path = DEFAULT_MODELS_DIR) -> dict[str, Path]:
    """Model name -> folder for every models_dir/*/manifest.toml."""
    found: dict[str, Path] = {}
    if models_dir.is_dir():
        for manifest in sorted(models_dir.glob("*/manifest.toml")):
            found[manifest.parent.name] = manifest.parent
    return found
