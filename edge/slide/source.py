"""The SlideSource protocol every reader implements, and the tile it hands out."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from edge.slide.model import AssociatedImage, AssociatedKind, Level, SlideMetadata

Pixels = npt.NDArray[np.uint8]


@dataclass(frozen=True)
class Frame:
    """One stored tile of a level, in DICOM TILED_FULL order.

    `data` is a complete encoded frame when the level's codec can be copied into DICOM,
    otherwise None and `pixels` holds the decoded tile (tile_height x tile_width x samples).
    """

    level: Level
    index: int  # position in TILED_FULL order: column fastest, then row, then plane
    data: bytes | None
    pixels: Pixels | None = None

    @property
    def col(self) -> int:
        return self.index % self.level.tiles_across

    @property
    def row(self) -> int:
        return (self.index // self.level.tiles_across) % self.level.tiles_down

    @property
    def plane(self) -> int:
        return self.index // self.level.tile_count


class SlideSource(Protocol):
    """A scanner file (or DICOM series) opened for one streaming pass.

    Levels are ordered largest first. `frames(level)` yields every frame of a level once,
    in order, reading the file sequentially; memory stays bounded by a few tiles (or one band
    of tiles for strip-based formats). `decode(frame)` turns a copied frame into pixels for the
    consumers (pyramid building, analysis) that need them.
    """

    path: Path
    metadata: SlideMetadata
    levels: tuple[Level, ...]
    associated: tuple[AssociatedImage, ...]

    def frames(self, level: Level) -> Iterator[Frame]: ...

    def decode(self, frame: Frame) -> Pixels: ...

    def associated_pixels(self, kind: AssociatedKind) -> Pixels: ...

    def close(self) -> None: ...
