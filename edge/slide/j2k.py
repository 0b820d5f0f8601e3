"""JPEG 2000 codestream header facts (pure): size, components and colour transform."""

from __future__ import annotations

import struct
from dataclasses import dataclass

SOC = b"\xff\x4f"
SIZ = 0xFF51
COD = 0xFF52
SOT = 0xFF90


class J2kFormatError(ValueError):
    """Not the JPEG 2000 codestream it should be."""


@dataclass(frozen=True)
class J2kInfo:
    width: int
    height: int
    components: int
    precision: int
    mct: bool  # multiple component transform (colour transform) applied by the decoder
    reversible: bool  # 5-3 wavelet (lossless capable) vs 9-7
    high_throughput: bool

    def photometric(self) -> str:
        if self.components == 1:
            return "MONOCHROME2"
        if not self.mct:
            return "RGB"
        return "YBR_RCT" if self.reversible else "YBR_ICT"


def inspect(data: bytes) -> J2kInfo:
    """Parse the main header (SIZ, COD) of a raw codestream (J2C, not a JP2 box file)."""
    if data[:2] != SOC:
        raise J2kFormatError("codestream does not start with SOC (FF4F)")
    pos = 2
    siz: tuple[int, int, int, int, bool] | None = None
    cod: tuple[bool, bool] | None = None
    while pos + 4 <= len(data):
        (marker, length) = struct.unpack_from(">HH", data, pos)
        if marker == SOT:
            break
        body = data[pos + 4 : pos + 2 + length]
        if marker == SIZ:
            if len(body) < 36 + 3:
                raise J2kFormatError("truncated SIZ segment")
            rsiz, xsiz, ysiz, xo, yo = struct.unpack_from(">HIIII", body, 0)
            (csiz,) = struct.unpack_from(">H", body, 34)
            ssiz = body[36]
            siz = (xsiz - xo, ysiz - yo, csiz, (ssiz & 0x7F) + 1, bool(rsiz & 0x4000))
        elif marker == COD:
            if len(body) < 10:
                raise J2kFormatError("truncated COD segment")
            mct = body[4] == 1
            reversible = body[9] == 1
            cod = (mct, reversible)
        pos += 2 + length
    if siz is None or cod is None:
        raise J2kFormatError("main header lacks SIZ or COD")
    width, height, comps, precision, ht = siz
    return J2kInfo(width, height, comps, precision, cod[0], cod[1], ht)
