"""The streaming frame writer: offset tables, odd-length frames, frame-count guard."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import imagecodecs
import numpy as np
import pydicom
import pytest
from pydicom.encaps import generate_frames

from edge.convert import convert
from edge.dicom import metadata as md
from edge.dicom import wsi
from edge.dicom.writer import FrameCopy, FrameWriter
from edge.errors import OutputError
from edge.slide.model import SlideMetadata
from tests.conftest import dciodvfy_errors

WHEN = datetime(2026, 11, 27, 9, 30)


def _spec(frames: int) -> md.ImageSpec:
    return md.ImageSpec(
        sop_instance_uid="2.25.1",
        instance_number=1,
        image_type=("DERIVED", "PRIMARY", "VOLUME", "NONE"),
        width=64 * frames,
        height=64,
        tile_width=64,
        tile_height=64,
        frames=frames,
        samples=3,
        photometric="RGB",
        codec="jpeg",
        lossy=True,
        pixel_spacing_mm=0.00025,
        base_width=64 * frames,
        base_height=64,
        base_pixel_spacing_mm=0.00025,
    )


def _ident() -> md.Identity:
    return md.Identity("2.25.2", "2.25.3", "2.25.4", "2.25.5", "2.25.6", "SLIDE-1")


def _frames(n: int) -> list[bytes]:
    rng = np.random.default_rng(1)
    out = []
    for _ in range(n):
        tile = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
        out.append(
            bytes(imagecodecs.jpeg8_encode(tile, level=80, colorspace="RGB", outcolorspace="RGB"))
        )
    return out


@pytest.mark.parametrize("extended", [False, True])
def test_frames_round_trip_through_both_offset_tables(tmp_path: Path, extended: bool) -> None:
    frames = _frames(5)
    frames[2] = frames[2] + b"\xff"  # an odd length must be padded, not corrupt the stream
    spec = _spec(5)
    ds = md.build_dataset(spec, SlideMetadata(format="test"), _ident(), WHEN)
    path = tmp_path / "x.dcm"
    with FrameWriter(path, ds, md.file_meta(spec), 5, extended_offsets=extended) as writer:
        for frame in frames:
            writer.add(frame)
    read = pydicom.dcmread(path)
    assert ("ExtendedOffsetTable" in read) == extended
    got = list(generate_frames(read.PixelData, number_of_frames=5))
    assert [g.rstrip(b"\0") for g in got] == [f.rstrip(b"\0") for f in frames]
    if extended:
        offsets = np.frombuffer(read.ExtendedOffsetTable, "<u8")
        lengths = np.frombuffer(read.ExtendedOffsetTableLengths, "<u8")
        assert list(lengths) == [len(f) for f in frames]
        assert offsets[0] == 0 and all(np.diff(offsets) > 0)
    ratio = float(read.LossyImageCompressionRatio)
    assert ratio == pytest.approx(5 * 64 * 64 * 3 / sum(len(f) for f in frames), rel=1e-3)
    assert dciodvfy_errors(path) == []


@pytest.mark.parametrize("extended", [False, True])
def test_frames_read_back_from_the_written_file_after_a_rename(
    tmp_path: Path, extended: bool
) -> None:
    """The analysis reads back tiles it fell behind on from the instance the conversion
    wrote (FrameCopy): the exact bytes of each frame, by index, also after the output folder
    was renamed into place, and never before the file is complete."""
    frames = _frames(4)
    frames[1] = frames[1] + b"\xff"  # odd: padded in the file, read back without the pad
    spec = _spec(4)
    ds = md.build_dataset(spec, SlideMetadata(format="test"), _ident(), WHEN)
    path = tmp_path / "partial" / "x.dcm"
    path.parent.mkdir()
    writer = FrameWriter(path, ds, md.file_meta(spec), 4, extended_offsets=extended)
    copy = FrameCopy(writer)
    for frame in frames:
        writer.add(frame)
    with pytest.raises(OutputError, match="before the file was closed"):
        copy.read(0)
    writer.close()
    copy.seal()
    path.parent.rename(tmp_path / "final")  # the atomic rename of the output folder
    assert [copy.read(i) for i in (3, 0, 2, 1)] == [frames[3], frames[0], frames[2], frames[1]]
    with pytest.raises(IndexError):
        copy.read(4)
    copy.close()
    copy.close()  # idempotent


def test_wrong_frame_count_is_an_error(tmp_path: Path) -> None:
    spec = _spec(3)
    ds = md.build_dataset(spec, SlideMetadata(format="test"), _ident(), WHEN)
    writer = FrameWriter(tmp_path / "x.dcm", ds, md.file_meta(spec), 3)
    writer.add(_frames(1)[0])
    with pytest.raises(OutputError, match="1 frames written, 3 declared"):
        writer.close()


def test_large_levels_switch_to_the_extended_offset_table(
    monkeypatch: pytest.MonkeyPatch, synthetic_tiff: Path, tmp_path: Path
) -> None:
    """Instances that may pass 4 GiB get an EOT; readers still open the slide."""
    import openslide

    monkeypatch.setattr(wsi, "EXTENDED_OFFSETS_ABOVE", 0)
    result = convert(synthetic_tiff, tmp_path)
    level0 = Path(result.output) / "level-00.dcm"
    assert "ExtendedOffsetTable" in pydicom.dcmread(level0)
    assert dciodvfy_errors(level0) == []
    slide = openslide.OpenSlide(str(level0))
    try:
        width, height = slide.dimensions
        region = slide.read_region((width // 2 - 300, height // 2 - 300), 0, (600, 600))
        assert np.asarray(region.convert("RGB")).std() > 5  # tissue came back, not blank frames
    finally:
        slide.close()
