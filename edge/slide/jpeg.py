"""JPEG stream surgery without decoding: marker parsing, table merging, colour-space tagging.

TIFF stores JPEG tiles abbreviated (tables once, in the JPEGTables tag); DICOM wants each frame
to be a complete interchange stream. Aperio writes RGB-coded JPEG without any marker that tells
a decoder so; an Adobe APP14 marker with transform 0 makes every libjpeg-based viewer decode it
as RGB instead of guessing YCbCr.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
# Adobe APP14, version 100, flags 0, 0, transform 0 (components are RGB, not YCbCr).
APP14_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"

_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, 0xD0, 0xD1, 0xD2, 0xD3, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8, 0xD9}


class JpegFormatError(ValueError):
    """The bytes are not the JPEG stream they were supposed to be."""


@dataclass(frozen=True)
class JpegInfo:
    sof: int  # 0xC0 baseline, 0xC1 extended, 0xC2 progressive, 0xC3 lossless ...
    precision: int
    width: int
    height: int
    components: tuple[tuple[int, int, int], ...]  # (id, h sampling, v sampling)
    adobe_transform: int | None
    jfif: bool

    @property
    def is_baseline(self) -> bool:
        return self.sof == 0xC0 and self.precision == 8

    @property
    def is_subsampled(self) -> bool:
        sampling = {(h, v) for _, h, v in self.components}
        return len(sampling) > 1


def iter_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, payload start, payload end) of each header segment up to and including SOS."""
    if data[:2] != SOI:
        raise JpegFormatError("stream does not start with SOI")
    out: list[tuple[int, int, int]] = []
    pos = 2
    size = len(data)
    while pos + 4 <= size:
        if data[pos] != 0xFF:
            raise JpegFormatError(f"expected a marker at byte {pos}, found 0x{data[pos]:02x}")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            out.append((marker, pos + 2, pos + 2))
            pos += 2
            if marker == 0xD9:
                return out
            continue
        (length,) = struct.unpack_from(">H", data, pos + 2)
        if length < 2 or pos + 2 + length > size:
            raise JpegFormatError(f"segment 0x{marker:02x} at byte {pos} overruns the stream")
        out.append((marker, pos + 4, pos + 2 + length))
        pos += 2 + length
        if marker == 0xDA:
            return out
    return out


def inspect(data: bytes) -> JpegInfo:
    """Frame header facts needed to label the stream in DICOM."""
    sof: tuple[int, bytes] | None = None
    adobe: int | None = None
    jfif = False
    for marker, start, end in iter_segments(data):
        payload = data[start:end]
        if marker in _SOF_MARKERS:
            sof = (marker, payload)
        elif marker == 0xEE and payload[:5] == b"Adobe" and len(payload) >= 12:
            adobe = payload[11]
        elif marker == 0xE0 and payload[:5] == b"JFIF\x00":
            jfif = True
    if sof is None:
        raise JpegFormatError("no frame header (SOF) before the scan")
    marker, p = sof
    if len(p) < 6:
        raise JpegFormatError("truncated frame header")
    precision, height, width, n = struct.unpack_from(">BHHB", p, 0)
    if len(p) < 6 + 3 * n:
        raise JpegFormatError("truncated frame header component list")
    comps = tuple((p[6 + 3 * k], p[7 + 3 * k] >> 4, p[7 + 3 * k] & 15) for k in range(n))
    return JpegInfo(marker, precision, width, height, comps, adobe, jfif)


def photometric(info: JpegInfo, tiff_says_rgb: bool = False) -> str:
    """DICOM PhotometricInterpretation for the decoded-as-stored components.

    Follows libjpeg's own rules (JFIF, then Adobe, then component ids) so the label matches
    what viewers decode; `tiff_says_rgb` covers Aperio-style streams with no marker at all.
    """
    if len(info.components) == 1:
        return "MONOCHROME2"
    if len(info.components) != 3:
        raise JpegFormatError(f"{len(info.components)} colour components; expected 1 or 3")
    ybr = "YBR_FULL_422" if info.is_subsampled else "YBR_FULL"
    if info.jfif:
        return ybr
    if info.adobe_transform is not None:
        return "RGB" if info.adobe_transform == 0 else ybr
    ids = tuple(c[0] for c in info.components)
    if ids == (ord("R"), ord("G"), ord("B")):
        return "RGB"
    if tiff_says_rgb and ids != (1, 2, 3):
        return "RGB"
    return ybr


def needs_rgb_marker(info: JpegInfo, tiff_says_rgb: bool) -> bool:
    """True when the stream is RGB but a decoder would guess YCbCr without an APP14 marker."""
    return (
        len(info.components) == 3
        and photometric(info, tiff_says_rgb) == "RGB"
        and info.adobe_transform is None
        and not info.jfif
        and tuple(c[0] for c in info.components) != (ord("R"), ord("G"), ord("B"))
    )


def frame_prefix(tables: bytes | None, add_rgb_marker: bool) -> bytes:
    """Bytes that go before a TIFF tile's own data (after dropping its SOI).

    The JPEGTables tag holds SOI, DQT/DHT segments, EOI; a complete stream is
    SOI [APP14] tables... tile-without-SOI.
    """
    prefix = SOI
    if add_rgb_marker:
        prefix += APP14_RGB
    if tables:
        if tables[:2] != SOI:
            raise JpegFormatError("JPEGTables does not start with SOI")
        body = tables[2:]
        if body.endswith(EOI):
            body = body[:-2]
        prefix += body
    return prefix


def complete_frame(prefix: bytes, tile: bytes) -> bytes:
    """A self-contained JPEG stream from an abbreviated TIFF tile."""
    if tile[:2] != SOI:
        raise JpegFormatError("tile does not start with SOI")
    if len(prefix) == 2:
        return tile
    return prefix + tile[2:]
