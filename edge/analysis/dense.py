"""Run the per-pixel artifact model over a whole mosaic in overlapping windows.

The model sees fixed 256 x 256 windows (what TensorRT engines are built for); each window
contributes only its centre, MARGIN px in from every side, so every kept pixel had its full
context and there are no seams. Windows with nothing but clean glass are not run: glass is
background, and skipping it is most of the work on a typical slide.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from edge.analysis.nets import ARTIFACT_MARGIN, INPUT_SHAPES
from edge.analysis.sampler import tissue_like

WINDOW = INPUT_SHAPES["artifact"][1]
MARGIN = ARTIFACT_MARGIN
# Windows per run: each adds ~60 MB of the runtime's intermediate tensors (the peak of a
# 100k slide's analysis) and little speed.
BATCH = 2

Runner = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]


def predict_dense(
    run: Runner,
    mosaic: npt.NDArray[np.uint8],
    classes: int,
    background: int = 0,
    busy: npt.NDArray[np.bool_] | None = None,
) -> npt.NDArray[np.float16]:
    """(classes, h, w) probabilities for an (h, w, 3) mosaic, as float16 (half the memory;
    a probability needs no more than three digits)."""
    h, w = mosaic.shape[:2]
    inner = WINDOW - 2 * MARGIN
    padded = np.pad(
        mosaic, ((MARGIN, MARGIN + inner), (MARGIN, MARGIN + inner), (0, 0)), mode="edge"
    )
    out = np.zeros((classes, h, w), np.float16)
    out[background] = 1.0
    if busy is None:  # where anything but clean glass is (the caller may have it already)
        busy = tissue_like(mosaic)
    spots: list[tuple[int, int]] = []
    for y in range(0, h, inner):
        for x in range(0, w, inner):
            if busy[y : y + inner, x : x + inner].any():
                spots.append((y, x))
    for i in range(0, len(spots), BATCH):
        group = spots[i : i + BATCH]
        batch = np.stack([padded[y : y + WINDOW, x : x + WINDOW] for y, x in group])
        probs = run(np.ascontiguousarray(batch.transpose(0, 3, 1, 2), np.float32) / 255.0)
        for (y, x), p in zip(group, probs, strict=True):
            hh, ww = min(inner, h - y), min(inner, w - x)
            out[:, y : y + hh, x : x + ww] = p[:, MARGIN : MARGIN + hh, MARGIN : MARGIN + ww]
    return out
