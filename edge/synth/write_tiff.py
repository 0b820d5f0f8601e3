"""Aperio SVS, generic pyramidal TIFF and OME-TIFF, streamed tile by tile through tifffile.

Tiles are encoded here (in the pool) and handed to tifffile as bytes, so tifffile only lays
out the file; each level is one `TiffWriter.write` call fed by an iterator.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from edge.synth.protocol import RGB, SlideModel
from edge.synth.write_common import (
    APERIO_BANNER,
    SCAN_TIME,
    Encode,
    LevelGeometry,
    Options,
    Ticker,
    clean_field,
    encoded_tiles,
    j2k,
    jpeg_rgb,
    jpeg_ycbcr,
    level,
    needs_bigtiff,
    pyramid,
    render_level,
    thumbnail_downsample,
)

_STRIP_ROWS = 16  # rows per strip of the SVS thumbnail and macro, as Aperio writes them
_JPEG2000_TIFF = 34712  # JPEG 2000 codestreams in a generic TIFF (what tifffile/GDAL write)
_APERIO_J2K_RGB = 33005  # Aperio's JPEG 2000 with the colour transform (RGB after decoding)
# Tell tifffile the streams code R, G, B (it would otherwise tag JPEG as YCbCr).
_APERIO_JPEG: dict[str, Any] = {
    "compression": "jpeg",
    "photometric": "rgb",
    "subsampling": (1, 1),
    "compressionargs": {"outcolorspace": "RGB"},
}


def svs_levels(model: SlideModel, options: Options) -> list[LevelGeometry]:
    return pyramid(model.spec, options.tile, 4, down_to_one_tile=False)


def plain_levels(model: SlideModel, options: Options) -> list[LevelGeometry]:
    return pyramid(model.spec, options.tile, 2, down_to_one_tile=True)


def _tiled(
    tif: tifffile.TiffWriter,
    model: SlideModel,
    geometry: LevelGeometry,
    encode: Encode,
    tick: Ticker,
    **tags: Any,
) -> None:
    tif.write(
        encoded_tiles(model, geometry, encode, tick),
        shape=(geometry.height, geometry.width, 3),
        dtype=np.uint8,
        tile=(geometry.tile, geometry.tile),
        **tags,
    )


def _strips(image: RGB, encode: Encode) -> Iterator[bytes]:
    for top in range(0, image.shape[0], _STRIP_ROWS):
        yield encode(np.ascontiguousarray(image[top : top + _STRIP_ROWS]))


def _striped_jpeg(tif: tifffile.TiffWriter, image: RGB, encode: Encode, **tags: Any) -> None:
    tif.write(
        _strips(image, encode),
        shape=image.shape,
        dtype=np.uint8,
        rowsperstrip=_STRIP_ROWS,
        metadata=None,
        **_APERIO_JPEG,
        **tags,
    )


def _aperio_properties(model: SlideModel, name: str) -> str:
    spec = model.spec
    return (
        f"|AppMag = {10 / spec.mpp:g}|StripeWidth = 2040|ScanScope ID = SYNTH"
        f"|Filename = {clean_field(name)}|Date = {SCAN_TIME:%m/%d/%y}"
        f"|Time = {SCAN_TIME:%H:%M:%S}|Time Zone = GMT+00:00|MPP = {spec.mpp:.4f}"
        f"|Barcode = {clean_field(spec.barcode)}"
    )


def write_svs(model: SlideModel, path: Path, options: Options, tick: Ticker) -> None:
    """Aperio layout: level 0, the thumbnail (page 1, striped), the 4x levels, label, macro."""
    spec, tile, quality = model.spec, options.tile, options.quality
    levels = svs_levels(model, options)
    encode = j2k(quality) if options.jpeg2000 else jpeg_rgb(quality)
    level_tags = (
        {"compression": _APERIO_J2K_RGB, "photometric": "rgb"} if options.jpeg2000 else _APERIO_JPEG
    )
    codec = f"J2K/KDU Q={quality}" if options.jpeg2000 else f"JPEG/RGB Q={quality}"
    props = _aperio_properties(model, options.name)
    size = f"{spec.width}x{spec.height}"
    thumb = render_level(model, level(spec, thumbnail_downsample(spec), tile))
    label, macro = model.label(), model.macro()
    with tifffile.TiffWriter(path, bigtiff=needs_bigtiff(spec)) as tif:
        _tiled(
            tif,
            model,
            levels[0],
            encode,
            tick,
            **level_tags,
            description=f"{APERIO_BANNER} \r\n{size} [0,0 {size}] ({tile}x{tile}) {codec}{props}",
            metadata=None,
        )
        _striped_jpeg(
            tif,
            thumb,
            jpeg_rgb(quality),
            description=f"{APERIO_BANNER} \r\n{size} -> {thumb.shape[1]}x{thumb.shape[0]} - "
            f"{props}",
        )
        for geometry in levels[1:]:
            _tiled(
                tif,
                model,
                geometry,
                encode,
                tick,
                **level_tags,
                description=f"{APERIO_BANNER} \r\n{size} [0,0 {size}] ({tile}x{tile}) -> "
                f"{geometry.width}x{geometry.height} {codec}{props}",
                metadata=None,
            )
        tif.write(
            label,
            compression="lzw",
            photometric="rgb",
            subfiletype=1,
            description=f"{APERIO_BANNER}\nlabel {label.shape[1]}x{label.shape[0]}",
            metadata=None,
        )
        _striped_jpeg(
            tif,
            macro,
            jpeg_rgb(quality),
            subfiletype=9,
            description=f"{APERIO_BANNER}\nmacro {macro.shape[1]}x{macro.shape[0]}",
        )


def _plain_codec(options: Options) -> tuple[Encode, dict[str, Any]]:
    """JFIF YCbCr 4:2:0 JPEG tagged as YCbCr (as libvips writes), or JPEG 2000 (34712)."""
    if options.jpeg2000:
        return j2k(options.quality), {"compression": _JPEG2000_TIFF, "photometric": "rgb"}
    tags = {"compression": "jpeg", "photometric": "ycbcr", "subsampling": (2, 2)}
    return jpeg_ycbcr(options.quality), tags


def write_generic_tiff(model: SlideModel, path: Path, options: Options, tick: Ticker) -> None:
    """Every 2x level in the main IFD chain, each with its own resolution in pixels per cm."""
    encode, codec_tags = _plain_codec(options)
    with tifffile.TiffWriter(path, bigtiff=needs_bigtiff(model.spec)) as tif:
        for i, geometry in enumerate(plain_levels(model, options)):
            per_cm = 1e4 / (model.spec.mpp * geometry.downsample)
            _tiled(
                tif,
                model,
                geometry,
                encode,
                tick,
                subfiletype=0 if i == 0 else 1,
                resolution=(per_cm, per_cm),
                resolutionunit="CENTIMETER",
                metadata=None,
                software="edge synth",
                **codec_tags,
            )


def write_ome_tiff(model: SlideModel, path: Path, options: Options, tick: Ticker) -> None:
    """Level 0 with the smaller levels in its SubIFDs, then label and macro as named images."""
    spec = model.spec
    encode, codec_tags = _plain_codec(options)
    levels = plain_levels(model, options)
    per_cm = 1e4 / spec.mpp
    with tifffile.TiffWriter(path, bigtiff=needs_bigtiff(spec), ome=True) as tif:
        _tiled(
            tif,
            model,
            levels[0],
            encode,
            tick,
            subifds=len(levels) - 1,
            resolution=(per_cm, per_cm),
            resolutionunit="CENTIMETER",
            metadata={
                "axes": "YXS",
                "UUID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"edge-synth:{spec!r}")),  # not random
                "Name": options.name,
                "PhysicalSizeX": spec.mpp,
                "PhysicalSizeY": spec.mpp,
                "PhysicalSizeXUnit": "µm",
                "PhysicalSizeYUnit": "µm",
            },
            **codec_tags,
        )
        for geometry in levels[1:]:
            _tiled(tif, model, geometry, encode, tick, subfiletype=1, **codec_tags)
        for name, image in (("label", model.label()), ("macro", model.macro())):
            tif.write(
                image,
                photometric="rgb",
                compression="lzw" if name == "label" else "jpeg",
                metadata={"axes": "YXS", "Name": name},
            )
