"""Fuzzing the parsers: damaged bytes end in the documented errors, never in anything else.

The pure header parsers may only raise JpegFormatError / J2kFormatError; opening and reading
a damaged slide may only raise edge.errors.EdgeError. Nothing may hang: every example runs
under an alarm. Example counts are sized for the whole file to run in well under a minute;
EDGE_FUZZ_SCALE multiplies them for a longer search.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import struct
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType

import imagecodecs
import numpy as np
import pytest
import tifffile
from hypothesis import event, given, settings
from hypothesis import strategies as st

from edge.convert import ConvertOptions, convert
from edge.errors import EdgeError, InputError
from edge.slide import aperio, j2k, jpeg
from edge.slide.open import open_slide
from edge.slide.synthetic import tissue, write_slide

SCALE = float(os.environ.get("EDGE_FUZZ_SCALE", "1"))  # e.g. 20 for a nightly deep run
# The default run is derandomized so CI sees the same examples every time; a deep run
# (EDGE_FUZZ_SCALE > 1) explores new random examples and is how new bugs are found.
DERANDOMIZE = SCALE <= 1
PARSER = settings(
    max_examples=int(2000 * SCALE), deadline=None, database=None, derandomize=DERANDOMIZE
)
SLIDE = settings(
    max_examples=int(800 * SCALE), deadline=None, database=None, derandomize=DERANDOMIZE
)
SECONDS_PER_EXAMPLE = 20


@contextmanager
def no_hang(seconds: int = SECONDS_PER_EXAMPLE) -> Iterator[None]:
    """Fail (instead of hanging the suite) when one example runs longer than `seconds`."""

    def expire(signum: int, frame: FrameType | None) -> None:
        raise AssertionError(f"no result after {seconds} s: the parser hangs")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@st.composite
def damaged(draw: st.DrawFn, seed: bytes, spans: tuple[tuple[int, int], ...]) -> bytes:
    """`seed` with a few bytes changed (mostly inside `spans`) and perhaps cut short."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 6))):
        start, end = draw(st.sampled_from(spans))
        pos = start + draw(st.integers(0, 1 << 20)) % max(1, end - start)
        if pos < len(data):
            data[pos] ^= draw(st.integers(1, 255))
    if draw(st.integers(0, 4)) == 0:
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


# -- JPEG and JPEG 2000 headers --------------------------------------------------------------


def _jpeg_seeds() -> list[bytes]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (24, 40, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (16, 16), dtype=np.uint8)
    return [
        bytes(imagecodecs.jpeg8_encode(rgb, level=80)),
        bytes(imagecodecs.jpeg8_encode(rgb, level=90, colorspace="RGB", outcolorspace="RGB")),
        bytes(imagecodecs.jpeg8_encode(grey, level=70)),
    ]


JPEG_SEEDS = _jpeg_seeds()
J2K_SEED = bytes(imagecodecs.jpeg2k_encode(tissue(48, 32, seed=4), level=0, codecformat="J2K"))


def _header_end(stream: bytes) -> int:
    return jpeg.iter_segments(stream)[-1][2]


@st.composite
def jpeg_streams(draw: st.DrawFn) -> bytes:
    seed = draw(st.sampled_from(JPEG_SEEDS))
    return draw(damaged(seed, ((0, _header_end(seed) + 8), (0, len(seed)))))


def _check_segments(data: bytes, segments: list[tuple[int, int, int]]) -> None:
    for marker, start, end in segments:
        assert 0 <= marker <= 0xFF
        assert 2 <= start <= end <= len(data)


@PARSER
@given(jpeg_streams())
def test_jpeg_parsers_on_damaged_headers(data: bytes) -> None:
    with no_hang():
        try:
            segments = jpeg.iter_segments(data)
        except jpeg.JpegFormatError:
            return
        _check_segments(data, segments)
        try:
            info = jpeg.inspect(data)
            label = jpeg.photometric(info, tiff_says_rgb=True)
            jpeg.needs_rgb_marker(info, tiff_says_rgb=False)
        except jpeg.JpegFormatError:
            return
        assert label in ("MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422")
        assert 0 <= info.width <= 0xFFFF and 0 <= info.height <= 0xFFFF


@PARSER
@given(st.binary(max_size=200), st.booleans())
def test_jpeg_parsers_on_arbitrary_bytes(tail: bytes, with_soi: bool) -> None:
    data = (jpeg.SOI if with_soi else b"") + tail
    with no_hang():
        try:
            _check_segments(data, jpeg.iter_segments(data))
            jpeg.inspect(data)
        except jpeg.JpegFormatError:
            pass
        try:
            prefix = jpeg.frame_prefix(data, add_rgb_marker=with_soi)
        except jpeg.JpegFormatError:
            return
        assert prefix.startswith(jpeg.SOI)
        assert jpeg.complete_frame(prefix, jpeg.SOI + b"\xff\xd9").startswith(jpeg.SOI)


def _j2k_header_end(stream: bytes) -> int:
    return stream.index(struct.pack(">H", j2k.SOT))


@PARSER
@given(damaged(J2K_SEED, ((0, _j2k_header_end(J2K_SEED) + 4),)))
def test_j2k_inspect_on_damaged_headers(data: bytes) -> None:
    with no_hang():
        try:
            info = j2k.inspect(data)
        except j2k.J2kFormatError:
            return
    assert info.photometric() in ("MONOCHROME2", "RGB", "YBR_RCT", "YBR_ICT")
    assert 1 <= info.precision <= 128


@PARSER
@given(st.binary(max_size=120))
def test_j2k_inspect_on_arbitrary_bytes(tail: bytes) -> None:
    with no_hang(), suppress(j2k.J2kFormatError):
        j2k.inspect(j2k.SOC + tail)


def test_the_seeds_parse() -> None:
    """The fuzz seeds themselves are valid, so the mutations start from real streams."""
    for seed in JPEG_SEEDS:
        assert jpeg.inspect(seed).is_baseline
    info = j2k.inspect(J2K_SEED)
    assert (info.width, info.height, info.components) == (48, 32, 3)


# -- Aperio ImageDescription -------------------------------------------------------------------


@PARSER
@given(st.text(max_size=300))
def test_aperio_description_of_any_text(text: str) -> None:
    props = aperio.parse_description(text)
    assert "header" in props
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in props.items())
    for value in props.values():
        number = aperio.as_float(value)
        assert number is None or number > 0
    when = aperio.scan_datetime(props)
    assert when is None or isinstance(when, datetime)


_KEY = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz ", min_size=1, max_size=12)
_VALUE = st.text(
    st.characters(blacklist_characters="|\r\n", blacklist_categories=("Cs",)), max_size=20
)


@PARSER
@given(
    st.text(st.characters(blacklist_characters="|"), max_size=40),
    st.lists(st.tuples(_KEY, _VALUE), max_size=8),
)
def test_aperio_description_fields_round_trip(header: str, fields: list[tuple[str, str]]) -> None:
    text = header + "".join(f"|{key} = {value}" for key, value in fields)
    props = aperio.parse_description(text)
    assert props["header"] == header.replace("\r\n", "\n").strip()
    first: dict[str, str] = {}
    for key, value in fields:
        first.setdefault(key.strip(), value.strip())
    for key, value in first.items():
        if key != "header":
            assert props[key] == value


@PARSER
@given(st.text(max_size=12), st.text(max_size=12))
def test_aperio_scan_datetime_never_raises(date: str, time: str) -> None:
    when = aperio.scan_datetime({"Date": date, "Time": time})
    assert when is None or isinstance(when, datetime)


# -- whole slides: open, stream and decode damaged copies --------------------------------------


@dataclass(frozen=True)
class Seed:
    data: bytes
    spans: tuple[tuple[int, int], ...]  # where damage is most interesting
    path: Path  # scratch file the damaged copies are written to


def _ifd_spans(path: Path) -> tuple[tuple[int, int], ...]:
    """Each directory with its out-of-line values (offset and byte-count arrays, tables)."""
    spans = []
    with tifffile.TiffFile(path) as tif:
        for page in tif.pages:
            ends = [page.offset + 2 + 12 * len(page.tags) + 4]
            ends += [
                tag.valueoffset + 16 * tag.count
                for tag in page.tags.values()
                if tag.valueoffset > page.offset and tag.code != 270
            ]
            spans.append((page.offset, min(max(ends), page.offset + 2048)))
        first = tif.pages[0]
        middle = len(first.dataoffsets) // 2
        offset = int(first.dataoffsets[middle])
        spans.append((offset, offset + int(first.databytecounts[middle])))  # a tile
    return (*spans, (0, 16))  # and the file header


@pytest.fixture(scope="module")
def svs_seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    root = tmp_path_factory.mktemp("fuzz-svs")
    source = write_slide(root / "seed.svs", 600, 400, "svs", seed=9, tile=128)
    return Seed(source.read_bytes(), _ifd_spans(source), root / "damaged.svs")


@pytest.fixture(scope="module")
def dicom_seed(tmp_path_factory: pytest.TempPathFactory) -> Seed:
    root = tmp_path_factory.mktemp("fuzz-dicom")
    source = write_slide(root / "seed.tiff", 512, 384, "tiff", seed=10, tile=128)
    level = Path(convert(source, root / "out").output) / "level-00.dcm"
    data = level.read_bytes()
    pixel_data = data.index(b"\xe0\x7f\x10\x00")
    return Seed(
        data, ((0, 132), (132, pixel_data), (pixel_data, pixel_data + 200)), root / "damaged.dcm"
    )


def exercise(path: Path) -> str:
    """Open, stream and decode everything; the only error allowed is an EdgeError."""
    try:
        source = open_slide(path)
    except EdgeError:
        return "refused"
    try:
        assert source.levels, "a slide without levels was accepted"
        for level in source.levels:
            frames = 0
            for frame in source.frames(level):
                pixels = source.decode(frame)
                assert pixels.dtype == np.uint8 and pixels.ndim == 3
                assert pixels.shape[2] == level.samples, (level, pixels.shape)
                frames += 1
            expected = (
                math.ceil(level.width / level.tile_width)
                * math.ceil(level.height / level.tile_height)
                * level.optical_paths
                * level.focal_planes
            )
            assert frames == expected, (level, frames)
        for image in source.associated:
            pixels = source.associated_pixels(image.kind)
            assert pixels.dtype == np.uint8 and pixels.ndim == 3
    except EdgeError:
        return "damaged"
    finally:
        source.close()
    return "read"


def convert_damaged(path: Path) -> str:
    """Convert with every level decoded (--dyadic); a refusal must be an InputError (not an
    OutputError blaming the disk) and leave nothing behind."""
    out = path.parent / "out"
    shutil.rmtree(out, ignore_errors=True)
    try:
        result = convert(path, out, ConvertOptions(dyadic=True))
    except InputError:
        assert not out.exists() or list(out.iterdir()) == []
        return "refused"
    folder = Path(result.output)
    assert sorted(p.name for p in out.iterdir()) == [folder.name]
    assert sorted(p.name for p in folder.iterdir()) == sorted(i["file"] for i in result.instances)
    return "converted"


def test_the_slide_seeds_read_cleanly(svs_seed: Seed, dicom_seed: Seed) -> None:
    for seed in (svs_seed, dicom_seed):
        seed.path.write_bytes(seed.data)
        assert exercise(seed.path) == "read"
        assert convert_damaged(seed.path) == "converted"


@pytest.mark.slow
@SLIDE
@given(data=st.data())
def test_open_slide_on_damaged_svs(svs_seed: Seed, data: st.DataObject) -> None:
    svs_seed.path.write_bytes(data.draw(damaged(svs_seed.data, svs_seed.spans)))
    with no_hang():
        event(exercise(svs_seed.path))
        event(convert_damaged(svs_seed.path))


@pytest.mark.slow
@SLIDE
@given(data=st.data())
def test_open_slide_on_damaged_dicom(dicom_seed: Seed, data: st.DataObject) -> None:
    dicom_seed.path.write_bytes(data.draw(damaged(dicom_seed.data, dicom_seed.spans)))
    with no_hang():
        event(exercise(dicom_seed.path))
        event(convert_damaged(dicom_seed.path))
