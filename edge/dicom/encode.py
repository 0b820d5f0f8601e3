"""Tile encoders for levels that cannot be copied: JPEG, JPEG 2000, HTJ2K, JPEG XL."""

from __future__ import annotations

from dataclasses import dataclass

import imagecodecs

from edge.slide.source import Pixels

FORMATS = ("jpeg", "jpeg2000", "htj2k", "jpegxl")


@dataclass(frozen=True)
class Encoder:
    """Encodes decoded tiles; `codec` is the key of the DICOM transfer syntax it produces.

    quality is 1..100 like JPEG's. The default 95 keeps every generated level of the real
    H&E test slides at >= 40 dB PSNR (tests/test_convert_real.py). For JPEG 2000 it maps to a
    target PSNR of 25 + quality // 4 dB; 100 means reversible (lossless) coding.
    """

    format: str = "jpeg"
    quality: int = 95

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"unknown format {self.format!r}; choose one of {', '.join(FORMATS)}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"quality {self.quality} is outside 1..100")

    @property
    def lossless(self) -> bool:
        return self.quality == 100 and self.format != "jpeg"

    @property
    def full_chroma(self) -> bool:
        """JPEG at quality >= 90 codes R, G, B directly (as Aperio does).

        Chroma subsampling caps PSNR near 35-38 dB on H&E whatever the quality, and the WSI IOD
        allows no unsubsampled YCbCr JPEG (YBR_FULL), so RGB coding is the route above 40 dB.
        """
        return self.quality >= 90

    @property
    def codec(self) -> str:
        return (
            f"{self.format}-lossless" if self.lossless and self.format != "jpegxl" else self.format
        )

    def photometric(self, samples: int) -> str:
        if samples == 1:
            return "MONOCHROME2"
        if self.format == "jpeg":
            return "RGB" if self.full_chroma else "YBR_FULL_422"
        if self.format in ("jpeg2000", "htj2k"):
            return "YBR_RCT" if self.lossless else "YBR_ICT"
        return "RGB"

    def encode(self, pixels: Pixels) -> bytes:
        if self.format == "jpeg":
            if pixels.shape[2] == 3 and self.full_chroma:
                return bytes(
                    imagecodecs.jpeg8_encode(
                        pixels, level=self.quality, colorspace="RGB", outcolorspace="RGB"
                    )
                )
            sub = "422" if pixels.shape[2] == 3 else None
            return bytes(imagecodecs.jpeg8_encode(pixels, level=self.quality, subsampling=sub))
        if self.format == "jpeg2000":
            if self.lossless:
                return bytes(imagecodecs.jpeg2k_encode(pixels, codecformat="J2K", reversible=True))
            return bytes(
                imagecodecs.jpeg2k_encode(
                    pixels, level=25 + self.quality // 4, codecformat="J2K", reversible=False
                )
            )
        if self.format == "htj2k":
            if self.lossless:
                return bytes(imagecodecs.htj2k_encode(pixels, reversible=True))
            # OpenJPH's quantisation step: 0.0005 at quality 100 up to ~0.05 at quality 1.
            step = 0.0005 * 100 ** ((100 - self.quality) / 99)
            return bytes(imagecodecs.htj2k_encode(pixels, level=step, reversible=False))
        if self.lossless:
            return bytes(imagecodecs.jpegxl_encode(pixels, lossless=True))
        return bytes(imagecodecs.jpegxl_encode(pixels, level=self.quality))
