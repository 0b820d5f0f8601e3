"""Heatmaps as coloured, transparent overlays for the slide view.

The analysis writes each class as an 8-bit grey PNG (255 = certain). A browser cannot colour
a grey image without a canvas, so the server turns it into RGBA: the class's colour with the
grey value as alpha; the page stacks these over the mosaic and toggles them with CSS.
"""

from __future__ import annotations

import io
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from edge.analysis.geojson import COLORS


def colour_of(name: str) -> str:
    r, g, b = COLORS.get(name, (255, 255, 0))
    return f"#{r:02x}{g:02x}{b:02x}"


def overlay_png(path: Path, name: str) -> bytes:
    st = path.stat()
    return _overlay(str(path), name, st.st_mtime_ns, st.st_size)


@lru_cache(maxsize=64)
def _overlay(path: str, name: str, _mtime: int, _size: int) -> bytes:
    with Image.open(path) as image:
        grey = np.asarray(image.convert("L"), dtype=np.uint8)
    rgba = np.empty((*grey.shape, 4), np.uint8)
    rgba[..., :3] = COLORS.get(name, (255, 255, 0))
    rgba[..., 3] = grey
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, "PNG", compress_level=1)
    return out.getvalue()
