"""JPEG stream surgery: table merging, colour-space labelling, APP14 insertion."""

from __future__ import annotations

import imagecodecs
import numpy as np
import pytest

from edge.slide import jpeg


def _image() -> np.ndarray:
    rng = np.random.default_rng(5)
    return (rng.integers(0, 255, (64, 64, 3)) // 16 * 16).astype(np.uint8)


def test_ycbcr_jfif_stream_is_labelled_ybr_422() -> None:
    data = bytes(imagecodecs.jpeg8_encode(_image(), level=90, subsampling="422"))
    info = jpeg.inspect(data)
    assert info.jfif and info.is_baseline and info.is_subsampled
    assert jpeg.photometric(info) == "YBR_FULL_422"
    assert not jpeg.needs_rgb_marker(info, tiff_says_rgb=True)


def test_rgb_coded_stream_is_labelled_rgb() -> None:
    data = bytes(
        imagecodecs.jpeg8_encode(_image(), level=90, colorspace="RGB", outcolorspace="RGB")
    )
    info = jpeg.inspect(data)
    assert jpeg.photometric(info) == "RGB"


def test_aperio_style_stream_gets_app14_and_decodes_as_rgb() -> None:
    """Aperio: component ids 0,1,2, no JFIF/Adobe marker, RGB samples, tables apart."""
    image = _image()
    rgb = bytes(imagecodecs.jpeg8_encode(image, level=95, colorspace="RGB", outcolorspace="RGB"))
    segments = jpeg.iter_segments(rgb)
    # Rebuild as Aperio does: tables in JPEGTables, tile = SOI SOF SOS..., ids 0,1,2.
    tables = b"\xff\xd8"
    tile = b"\xff\xd8"
    for marker, start, end in segments:
        seg = rgb[start - 4 : end]
        if marker in (0xDB, 0xC4):
            tables += seg
        elif marker == 0xC0:
            sof = bytearray(seg)
            for k in range(3):
                sof[4 + 6 + 3 * k] = k  # component ids 0, 1, 2
            tile += bytes(sof)
        elif marker == 0xDA:
            sos = bytearray(seg)
            for k in range(3):
                sos[4 + 1 + 2 * k] = k
            tile += bytes(sos) + rgb[end:]
    tables += jpeg.EOI
    merged_plain = tables[:-2] + tile[2:]
    info = jpeg.inspect(merged_plain)
    assert jpeg.photometric(info, tiff_says_rgb=True) == "RGB"
    assert jpeg.needs_rgb_marker(info, tiff_says_rgb=True)
    frame = jpeg.complete_frame(jpeg.frame_prefix(tables, add_rgb_marker=True), tile)
    assert jpeg.inspect(frame).adobe_transform == 0
    decoded = imagecodecs.jpeg8_decode(frame)
    guessed = imagecodecs.jpeg8_decode(merged_plain)  # libjpeg guesses YCbCr: wrong colours
    err_marked = np.abs(decoded.astype(int) - image).mean()
    err_guessed = np.abs(guessed.astype(int) - image).mean()
    assert err_marked < 3 < err_guessed


@pytest.mark.parametrize("bad", [b"", b"\xff\xd8", b"\x00\x01\x02", b"\xff\xd8\xff\xc0\x00\x30"])
def test_malformed_streams_raise_jpeg_format_error(bad: bytes) -> None:
    with pytest.raises(jpeg.JpegFormatError):
        jpeg.inspect(bad)
