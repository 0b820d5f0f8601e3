"""The single read loop: every frame of every level, once, handed to each consumer in turn.

The DICOM writer is one consumer; analysis (QC) will be another. Decoding happens at most once
per frame, on first demand, and is shared between consumers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from edge.slide.model import Level
from edge.slide.source import Frame, Pixels, SlideSource


class StreamTile:
    """A frame plus its decoded pixels, decoded lazily and only once."""

    __slots__ = ("_pixels", "_source", "frame")

    def __init__(self, frame: Frame, source: SlideSource) -> None:
        self.frame = frame
        self._source = source
        self._pixels: Pixels | None = frame.pixels

    def pixels(self) -> Pixels:
        if self._pixels is None:
            self._pixels = self._source.decode(self.frame)
        return self._pixels


class TileConsumer(Protocol):
    def start_level(self, level: Level) -> None: ...

    def consume(self, tile: StreamTile) -> None: ...

    def end_level(self, level: Level) -> None: ...


class CopiedFrames(Protocol):
    """A level's frames as the conversion wrote them, readable by index once the level ended."""

    def read(self, index: int) -> bytes: ...

    def close(self) -> None: ...


@runtime_checkable
class ReadsBack(Protocol):
    """A consumer that can take frames it falls behind on from the conversion's own copy
    (edge.dicom.writer.FrameCopy) instead of holding up the pass: `copies(level)` gives that
    level's copy, or None."""

    def read_back_from(self, copies: Callable[[Level], CopiedFrames | None]) -> None: ...


def stream_tiles(
    source: SlideSource,
    consumers: Sequence[TileConsumer],
    progress: Callable[[int], None] | None = None,
) -> None:
    """Read the slide once, largest level first, frames in TILED_FULL order."""
    for level in source.levels:
        for consumer in consumers:
            consumer.start_level(level)
        for frame in source.frames(level):
            tile = StreamTile(frame, source)
            for consumer in consumers:
                consumer.consume(tile)
            if progress is not None:
                progress(1)
        for consumer in consumers:
            consumer.end_level(level)
