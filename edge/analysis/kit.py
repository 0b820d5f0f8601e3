"""Kit slides with known truth, sampled exactly as the appliance samples a scanner file.

Training (tools/train_models.py) and evaluation (tools/bench qc, tests) both use this: a
synthetic slide is written as a real SVS (JPEG tiles, the encoder's artifacts included), read
back through the same single pass and AnalysisSampler the daemon runs, and paired with the
model's truth masks on the same grids. What the models learn from is what they will see.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from edge.analysis.sampler import AnalysisSampler, FocusCrop, Geometry
from edge.slide.open import open_slide
from edge.slide.stream import stream_tiles
from edge.synth.model import SyntheticSlide, make_model
from edge.synth.protocol import SlideSpec, Truth
from edge.synth.writers import write


@dataclass
class KitSample:
    spec: SlideSpec
    truth: Truth
    geometry: Geometry
    mosaic: npt.NDArray[np.uint8]  # (h, w, 3) at geometry.mosaic_downsample
    masks: dict[str, npt.NDArray[np.bool_]]  # truth at the mosaic grid
    crops: list[FocusCrop]
    crop_pixels: npt.NDArray[np.uint8]  # (n, 64, 64) grey
    crop_blur: npt.NDArray[np.float32]  # fraction of each crop inside the blur truth mask
    crop_tissue: npt.NDArray[np.float32]  # fraction of each crop that is tissue (truth)


def crop_coverage(
    mask: npt.NDArray[np.bool_], d: int, crops: list[FocusCrop]
) -> npt.NDArray[np.float32]:
    out = np.zeros(len(crops), np.float32)
    for i, c in enumerate(crops):
        part = mask[c.y // d : (c.y + c.size) // d, c.x // d : (c.x + c.size) // d]
        out[i] = float(part.mean()) if part.size else 0.0
    return out


def procedural_texture(spec: SlideSpec) -> bool:
    """One kit slide in four gets procedural texture instead of real scans' texture, so the
    models also know tissue where no real texture is installed (a fresh appliance's sample
    slide) and do not learn one set of scans by heart."""
    return spec.seed % 4 == 3


def kit_model(spec: SlideSpec) -> SyntheticSlide:
    return make_model(spec, procedural=procedural_texture(spec))


def sample_kit_slide(spec: SlideSpec, workdir: Path | None = None, quality: int = 90) -> KitSample:
    """Write spec as SVS (in workdir or a temp folder), sample it, return pixels and truth."""
    model = kit_model(spec)
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = write(model, Path(tmp) / "kit.svs", "svs", quality=quality)
        source = open_slide(path)
        try:
            geometry = Geometry.plan(spec.width, spec.height, spec.mpp)
            crops: list[FocusCrop] = []
            pixels: list[npt.NDArray[np.uint8]] = []

            def keep(batch: list[FocusCrop], grey: npt.NDArray[np.uint8]) -> None:
                crops.extend(batch)
                pixels.append(grey)

            sampler = AnalysisSampler(geometry, keep)
            stream_tiles(source, (sampler,))
        finally:
            source.close()
    masks = model.masks(geometry.mosaic_downsample)
    fine = geometry.decode_scale * 16  # crop = 64 reduced px = 4 cells of this grid
    fine_masks = model.masks(fine)
    blur = fine_masks.get("blur", np.zeros_like(fine_masks["tissue"]))
    return KitSample(
        spec=spec,
        truth=model.truth(),
        geometry=geometry,
        mosaic=sampler.mosaic.image(),
        masks=masks,
        crops=crops,
        crop_pixels=np.concatenate(pixels) if pixels else np.zeros((0, 64, 64), np.uint8),
        crop_blur=crop_coverage(blur, fine, crops),
        crop_tissue=crop_coverage(fine_masks["tissue"], fine, crops),
    )
