"""The label and macro (overview) images of a synthetic slide.

The label follows the layout of a real slide label photographed by a scanner, without text:
a dark slide holder, a strip of bare glass along one side, a paper label with rounded
corners (white, orange, yellow or blue, by seed) and, when the spec has a barcode, a white
field with bars. The bars encode spec.barcode's UTF-8 bytes, most significant bit first, a
1 as a wide bar (3 modules) and a 0 as a narrow one (1 module), each followed by a 1-module
space, between a start (bar 1, space 1, bar 1) and a stop (bar 3, space 1, bar 1) guard; a
long code is split over up to four rows so a module is at least 2 px wide.

The macro is the whole slide, rendered at a power-of-two downsample near 1/40 (1/32, or
coarser to keep it within 4096 px), beside the label scaled to the macro's height.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from edge.synth.noise import rng
from edge.synth.protocol import RGB, SlideSpec

if TYPE_CHECKING:
    from edge.synth.model import SyntheticSlide

LABEL_SIZE = 600
PAPERS = ((236, 236, 228), (238, 178, 70), (246, 228, 130), (176, 208, 236))
MACRO_DOWNSAMPLE = 32  # ~1/40 of the slide, the usual scale of a macro photograph
MACRO_MAX = 4096


def bar_modules(data: bytes) -> list[int]:
    """Alternating bar / space widths in modules, starting with a bar (see the doc)."""
    widths = [1, 1, 1, 1]  # start guard and its trailing space
    for byte in data:
        for bit in range(7, -1, -1):
            widths += [3 if (byte >> bit) & 1 else 1, 1]
    return [*widths, 3, 1, 1]


def _rounded_box(h: int, w: int, radius: float) -> npt.NDArray[np.bool_]:
    yy, xx = np.mgrid[0:h, 0:w]
    dx = np.maximum(np.maximum(radius - xx, xx - (w - 1 - radius)), 0)
    dy = np.maximum(np.maximum(radius - yy, yy - (h - 1 - radius)), 0)
    out: npt.NDArray[np.bool_] = dx * dx + dy * dy <= radius * radius
    return out


def _bars(img: RGB, code: str, top: int, left: int, height: int, width: int) -> None:
    """A white field at img[top:top+height, left:left+width] with the code's bars."""
    img[top : top + height, left : left + width] = 250
    raw = code.encode("utf-8")
    if not raw:
        return
    inner = width - 16
    rows = min(4, max(1, math.ceil(2 * sum(bar_modules(raw)) / inner)))
    per_row = math.ceil(len(raw) / rows)
    row_h = (height - 8 * (rows + 1)) // rows
    for r in range(rows):
        widths = bar_modules(raw[r * per_row : (r + 1) * per_row])
        module = max(1, inner // sum(widths))
        x = left + 8 + (inner - module * sum(widths)) // 2
        y0 = top + 8 + r * (row_h + 8)
        for i, wd in enumerate(widths):
            if i % 2 == 0:
                img[y0 : y0 + row_h, max(x, left) : min(x + wd * module, left + width)] = 20
            x += wd * module


def label_image(spec: SlideSpec) -> RGB:
    g = rng(spec.seed, 500)
    s = LABEL_SIZE
    img = np.empty((s, s, 3), np.uint8)
    shade = np.linspace(30, 16, s)[:, None, None]
    img[...] = (shade * np.array([1.0, 1.0, 1.15])).astype(np.uint8)  # the slide holder
    img[:, : s // 14] = (196, 212, 228)  # bare glass along the edge
    paper = np.array(PAPERS[int(g.integers(0, len(PAPERS)))], np.float32)
    m = s // 14
    box = _rounded_box(s - 2 * m, s - 3 * m, radius=s / 12)
    grain = g.normal(0, 3.0, (*box.shape, 1)).astype(np.float32)
    region = img[m : s - m, 2 * m : s - m]
    region[box] = np.clip(paper + grain, 0, 255).astype(np.uint8)[box]
    if spec.barcode:
        _bars(img, spec.barcode, top=2 * m, left=3 * m, height=s // 3, width=s - 5 * m)
    return img


def _resize_nearest(img: RGB, height: int, width: int) -> RGB:
    rows = (np.arange(height) * img.shape[0] // max(height, 1)).clip(0, img.shape[0] - 1)
    cols = (np.arange(width) * img.shape[1] // max(width, 1)).clip(0, img.shape[1] - 1)
    out: RGB = img[rows][:, cols]
    return out


def macro_image(model: SyntheticSlide) -> RGB:
    spec = model.spec
    d = MACRO_DOWNSAMPLE
    while max(spec.width, spec.height) / d > MACRO_MAX:
        d *= 2
    lw, lh = -(-spec.width // d), -(-spec.height // d)
    slide = model.region(0, 0, lw, lh, d)
    label = _resize_nearest(label_image(spec), lh, lh)
    b = max(2, lh // 20)
    out = np.empty((lh + 2 * b, lh + lw + 3 * b, 3), np.uint8)
    out[...] = (18, 18, 22)
    out[b : b + lh, b : b + lh] = label
    out[b : b + lh, 2 * b + lh : 2 * b + lh + lw] = slide
    return out
