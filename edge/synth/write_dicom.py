"""DICOM WSI through edge's own pipeline: the model as a SlideSource, converted like a scan.

The source offers every 2x level down to one tile, each rendered directly from the model at
its downsample, as decoded frames (codec NONE); edge.convert then encodes, writes and
validates exactly as it does for a scanner file, into a folder renamed into place at the end.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

from edge import __version__
from edge.convert import ConvertOptions, convert_source
from edge.slide.model import (
    AssociatedImage,
    AssociatedKind,
    Codec,
    Level,
    OpticalPath,
    SlideMetadata,
)
from edge.slide.source import Frame, Pixels
from edge.synth.protocol import RGB, SlideModel
from edge.synth.write_common import (
    SCAN_TIME,
    LevelGeometry,
    Options,
    Ticker,
    level,
    ordered_map,
    pyramid,
    render_level,
    thumbnail_downsample,
)


def dicom_levels(model: SlideModel, options: Options) -> list[LevelGeometry]:
    return pyramid(model.spec, options.tile, 2, down_to_one_tile=True)


class ModelSource:
    """A SlideSource whose frames are rendered from a SlideModel instead of read from a file."""

    def __init__(self, model: SlideModel, path: Path, options: Options) -> None:
        spec = model.spec
        self.path = path
        self._model = model
        self._geometry = dicom_levels(model, options)
        self.levels = tuple(
            Level(
                index=i,
                width=g.width,
                height=g.height,
                tile_width=g.tile,
                tile_height=g.tile,
                codec=Codec.NONE,
                downsample=float(g.downsample),
            )
            for i, g in enumerate(self._geometry)
        )
        self.metadata = SlideMetadata(
            format="synthetic",
            vendor="edge synth",
            model=type(model).__name__,
            software=f"edge {__version__}",
            serial_number="SYNTH",
            mpp=spec.mpp,
            magnification=10 / spec.mpp,
            barcode=spec.barcode,
            scan_datetime=SCAN_TIME,
            optical_paths=(OpticalPath("1", "Brightfield"),),
            description=f"synthetic {spec.stain} slide, seed {spec.seed}",
        )
        # Associated images are small; render them once (the converter asks for each once).
        thumb = level(spec, thumbnail_downsample(spec), options.tile)
        self._associated: dict[AssociatedKind, RGB] = {
            AssociatedKind.LABEL: model.label(),
            AssociatedKind.OVERVIEW: model.macro(),
            AssociatedKind.THUMBNAIL: render_level(model, thumb),
        }
        self.associated = tuple(
            AssociatedImage(kind, image.shape[1], image.shape[0])
            for kind, image in self._associated.items()
        )

    def frames(self, level: Level) -> Iterator[Frame]:
        geometry = self._geometry[level.index]
        size, ds = geometry.tile, geometry.downsample

        def render(index: int) -> Pixels:
            row, col = divmod(index, geometry.across)
            return self._model.region(col * size, row * size, size, size, ds)

        # Rendered ahead in the pool while the converter encodes the previous frames.
        for index, pixels in enumerate(ordered_map(render, range(geometry.count))):
            yield Frame(level, index, None, pixels)

    def decode(self, frame: Frame) -> Pixels:
        assert frame.pixels is not None  # every frame carries its pixels
        return frame.pixels

    def associated_pixels(self, kind: AssociatedKind) -> Pixels:
        return self._associated[kind]

    def close(self) -> None:
        self._associated.clear()


def write_dicom(model: SlideModel, path: Path, options: Options, tick: Ticker) -> None:
    source = ModelSource(model, path, options)
    convert_options = ConvertOptions(
        format="jpeg2000" if options.jpeg2000 else "jpeg", quality=options.quality
    )
    # The same spec, model and options give the same UIDs, as a re-scan of one file would.
    key = f"synthetic\x1f{type(model).__name__}\x1f{sorted(asdict(model.spec).items())}"
    last = 0

    def progress(done: int, total: int) -> None:
        nonlocal last
        tick(done - last)
        last = done

    try:
        convert_source(source, path, key, convert_options, progress)
    finally:
        source.close()
