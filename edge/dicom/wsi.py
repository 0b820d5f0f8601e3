"""The DICOM WSI consumer of the tile stream: one instance per output pyramid level.

Source levels are copied frame by frame (or re-encoded when their codec is not DICOM's);
generated levels are fed from the decoded tiles of their parent through Downsamplers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from edge.dicom.encode import Encoder
from edge.dicom.metadata import ImageSpec
from edge.dicom.pyramid import Downsampler, PlannedLevel
from edge.dicom.writer import FrameCopy, FrameWriter
from edge.slide.model import Codec, Level
from edge.slide.source import Pixels
from edge.slide.stream import StreamTile

EXTENDED_OFFSETS_ABOVE = 3 << 30  # bytes of pixel data; BOT offsets are 32-bit

_COPY_CODEC = {
    Codec.JPEG: "jpeg",
    Codec.JPEG2000: "jpeg2000",
    Codec.HTJ2K: "htj2k",
    Codec.JPEGXL: "jpegxl",
}

# Opens the FrameWriter for a spec (header building lives with the caller).
OpenWriter = Callable[[ImageSpec, str, bool], FrameWriter]


@dataclass
class WrittenInstance:
    file: str
    spec: ImageSpec
    how: str  # "copied", "re-encoded", "generated"


def pad_tile(tile: Pixels, width: int, height: int) -> Pixels:
    h, w = tile.shape[:2]
    if h == height and w == width:
        return tile
    out = np.full((height, width, tile.shape[2]), 255, dtype=np.uint8)
    out[: min(h, height), : min(w, width)] = tile[:height, :width]
    return out


def replicate_edges(tile: Pixels, valid_width: int, valid_height: int) -> Pixels:
    """Fill the part of an edge tile beyond the image with its last valid column/row.

    TIFF and DICOM pad edge tiles with arbitrary pixels; averaging those into the level below
    would draw a dark or noisy border along the right and bottom of every generated level.
    """
    h, w = tile.shape[:2]
    if valid_width >= w and valid_height >= h:
        return tile
    tile = tile.copy()
    if valid_width < w:
        tile[:, valid_width:] = tile[:, valid_width - 1 : valid_width]
    if valid_height < h:
        tile[valid_height:, :] = tile[valid_height - 1 : valid_height, :]
    return tile


def _valid(planned: PlannedLevel, col: int, row: int) -> tuple[int, int]:
    """Width and height of the image part of tile (col, row)."""
    return (
        min(planned.tile_width, planned.width - col * planned.tile_width),
        min(planned.tile_height, planned.height - row * planned.tile_height),
    )


class WsiWriter:
    def __init__(
        self,
        levels: tuple[Level, ...],
        plan: list[PlannedLevel],
        specs: list[ImageSpec],
        encoder: Encoder,
        open_writer: OpenWriter,
    ) -> None:
        self.levels = levels
        self.plan = plan
        self.specs = specs
        self.encoder = encoder
        self._open = open_writer
        self._writers: dict[int, FrameWriter] = {}
        self._downsamplers: dict[int, Downsampler] = {}  # by plan index of the parent
        self.written: list[WrittenInstance] = []
        self._copies: dict[int, FrameCopy] = {}  # by plan index: levels read back (frame_copy)
        self._current: int | None = None  # plan index of the level being written
        self._copy = False  # its frames are copied verbatim

    @staticmethod
    def level_spec_codec(level: Level, encoder: Encoder) -> tuple[str, str, bool, bool]:
        """(codec key, photometric, lossy, copied) for a source level's output instance."""
        if level.codec is not Codec.NONE and level.photometric:
            codec = _COPY_CODEC[level.codec]
            if level.codec in (Codec.JPEG2000, Codec.HTJ2K) and not level.lossy:
                codec += "-lossless"
            return codec, level.photometric, level.lossy, True
        return encoder.codec, encoder.photometric(level.samples), not encoder.lossless, False

    def _plan_index(self, level: Level) -> int | None:
        return next((i for i, p in enumerate(self.plan) if p.source == level.index), None)

    def _start(self, index: int, how: str) -> None:
        spec = self.specs[index]
        name = f"level-{index:02d}.dcm"
        estimate = self._estimate_bytes(index)
        self._writers[index] = self._open(spec, name, estimate > EXTENDED_OFFSETS_ABOVE)
        self.written.append(WrittenInstance(name, spec, how))
        for child, planned in enumerate(self.plan):
            if planned.parent == index:
                self._start(child, "generated")
                self._downsamplers[index] = Downsampler(
                    self.plan[index], spec.samples, self._emitter(child)
                )

    def _estimate_bytes(self, index: int) -> int:
        planned = self.plan[index]
        if planned.source is not None:
            level = self.levels[planned.source]
            if level.stored_bytes:
                return int(level.stored_bytes * 1.01) + 1024 * level.frame_count
        spec = self.specs[index]
        raw = planned.tiles * planned.tile_width * planned.tile_height * spec.samples
        return raw if self.encoder.lossless else raw // 4

    def _emitter(self, index: int) -> Callable[[int, int, Pixels], None]:
        def emit(col: int, row: int, tile: Pixels) -> None:
            tile = replicate_edges(tile, *_valid(self.plan[index], col, row))
            self._writers[index].add(self.encoder.encode(tile))
            child = self._downsamplers.get(index)
            if child is not None:
                child.add(col, row, tile)

        return emit

    def start_level(self, level: Level) -> None:
        index = self._plan_index(level)
        self._current = index
        if index is None:  # a source level the plan rebuilds instead
            return
        copied = self.level_spec_codec(level, self.encoder)[3]
        self._start(index, "copied" if copied else "re-encoded")
        self._copy = copied
        self._tile_size = (level.tile_width, level.tile_height)

    def frame_copy(self, level: Level) -> FrameCopy | None:
        """`level`'s frames as copied into its instance, readable by index once the level has
        ended; None unless the level being written is this one, copied verbatim. Asked by
        another consumer from its start_level, which comes after this writer's."""
        index = self._plan_index(level)
        if index is None or index != self._current or not self._copy:
            return None
        copy = self._copies.get(index)
        if copy is None:
            copy = self._copies[index] = FrameCopy(self._writers[index])
        return copy

    def consume(self, tile: StreamTile) -> None:
        if self._current is None:
            return
        frame = tile.frame
        writer = self._writers[self._current]
        if self._copy:
            assert frame.data is not None
            writer.add(frame.data)
        else:
            writer.add(self.encoder.encode(pad_tile(tile.pixels(), *self._tile_size)))
        downsampler = self._downsamplers.get(self._current)
        if downsampler is not None and frame.plane == 0:
            pixels = pad_tile(tile.pixels(), *self._tile_size)
            valid = _valid(self.plan[self._current], frame.col, frame.row)
            downsampler.add(frame.col, frame.row, replicate_edges(pixels, *valid))

    def end_level(self, level: Level) -> None:
        index = self._plan_index(level)
        if index is None:
            return
        chain = [index]
        while True:
            child = next((i for i, p in enumerate(self.plan) if p.parent == chain[-1]), None)
            if child is None:
                break
            chain.append(child)
        for i in chain:
            self._writers.pop(i).close()
            self._downsamplers.pop(i, None)
            copy = self._copies.pop(i, None)
            if copy is not None:
                copy.seal()

    def abort(self) -> None:
        for writer in self._writers.values():
            writer.abort()
        self._writers.clear()


def spec_for_plan(
    plan: list[PlannedLevel], index: int, base: ImageSpec, frames: int, **changes: object
) -> ImageSpec:
    """A level's ImageSpec from the level-0 template: size, tiles and spacing scaled."""
    planned = plan[index]
    spacing = (
        base.base_pixel_spacing_mm * base.base_width / planned.width
        if base.base_pixel_spacing_mm
        else None
    )
    return replace(
        base,
        width=planned.width,
        height=planned.height,
        tile_width=planned.tile_width,
        tile_height=planned.tile_height,
        frames=frames,
        pixel_spacing_mm=spacing,
        **changes,  # type: ignore[arg-type]
    )
