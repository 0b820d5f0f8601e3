"""Reading outputs back with independent readers, and image comparison."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import numpy as np
import numpy.typing as npt
import openslide

from edge.dicom import parts
from edge.dicom.pyramid import halve

Image = npt.NDArray[np.uint8]


def read_level(path: Path, level: int) -> Image:
    """A whole pyramid level as RGB through OpenSlide (TIFF, SVS or a DICOM folder's file)."""
    slide = openslide.OpenSlide(str(path))
    try:
        width, height = slide.level_dimensions[level]
        region = slide.read_region((0, 0), level, (width, height)).convert("RGB")
        return np.asarray(region)
    finally:
        slide.close()


def halve_times(image: Image, times: int) -> Image:
    for _ in range(times):
        h, w = image.shape[:2]
        image = halve(np.pad(image, ((0, h & 1), (0, w & 1), (0, 0)), mode="edge"))
    return image


def psnr(a: Image, b: Image) -> float:
    h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    diff = a[:h, :w].astype(np.float64) - b[:h, :w].astype(np.float64)
    mse = float(np.mean(diff * diff))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def dicom_frames(path: Path) -> list[bytes]:
    """Every encapsulated frame of a DICOM file, read by pydicom (not by our reader)."""
    import pydicom
    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(path)
    return list(generate_frames(ds.PixelData, number_of_frames=int(ds.NumberOfFrames)))


def dicom_mosaic(path: Path) -> Image:
    """The total pixel matrix of a single-plane TILED_FULL instance, decoded with imagecodecs."""
    import imagecodecs
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    rows, cols = int(ds.Rows), int(ds.Columns)
    width, height = int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows)
    across = math.ceil(width / cols)
    down = math.ceil(height / rows)
    samples = int(ds.SamplesPerPixel)
    out = np.zeros((down * rows, across * cols, samples), np.uint8)
    for i, frame in enumerate(dicom_frames(path)[: across * down]):
        if frame[:2] == b"\xff\xd8":
            tile = imagecodecs.jpeg8_decode(frame)
        else:
            tile = imagecodecs.jpeg2k_decode(frame)
        tile = tile.reshape(tile.shape[0], tile.shape[1], -1)
        r, c = divmod(i, across)
        out[r * rows : r * rows + tile.shape[0], c * cols : c * cols + tile.shape[1]] = tile
    return out[:height, :width]


def run_edge(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The `edge` command line as a technician runs it: a separate process."""
    return subprocess.run(
        [sys.executable, "-m", "edge.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
    )


def frames_of(path: Path) -> Iterator[bytes]:
    """The encoded frames of a tiled DICOM file (a level or a concatenation part), in order."""
    found = parts.scan(path)
    with path.open("rb") as fh:
        for offset, length in zip(found.offsets, found.lengths, strict=True):
            fh.seek(offset)
            yield fh.read(length)


def load_script(path: Path, name: str) -> ModuleType:
    """Import a script without a .py suffix (tools/bench, tools/gpu-check) as module `name`."""
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file runs
    loader.exec_module(module)
    return module
