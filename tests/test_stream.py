"""The single read pass: the writer is one consumer; another (analysis) rides the same pass."""

from __future__ import annotations

from pathlib import Path

from edge.convert import convert
from edge.slide.model import Level
from edge.slide.stream import StreamTile


class CountingConsumer:
    """Stands in for the analysis stage: wants decoded pixels of every level-0 tile."""

    def __init__(self) -> None:
        self.frames: dict[int, list[int]] = {}
        self.decoded = 0

    def start_level(self, level: Level) -> None:
        self.frames[level.index] = []

    def consume(self, tile: StreamTile) -> None:
        self.frames[tile.frame.level.index].append(tile.frame.index)
        if tile.frame.level.index == 0:
            pixels = tile.pixels()
            assert pixels is tile.pixels()  # decoded once, then shared
            self.decoded += 1

    def end_level(self, level: Level) -> None:
        assert self.frames[level.index] == list(range(level.frame_count))


def test_an_extra_consumer_sees_every_frame_once_in_the_same_pass(
    synthetic_svs: Path, tmp_path: Path
) -> None:
    consumer = CountingConsumer()
    result = convert(synthetic_svs, tmp_path, extra_consumers=(consumer,))
    volumes = [i for i in result.instances if i["how"] == "copied"]
    assert [len(consumer.frames[i]) for i in sorted(consumer.frames)] == [
        v["frames"] for v in volumes
    ]
    assert consumer.decoded == volumes[0]["frames"]
