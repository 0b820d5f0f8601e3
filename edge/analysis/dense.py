"""Run the per-pixel artifact model over a whole mosaic in overlapping windows.

The model sees fixed 256 x 256 windows (what TensorRT engines are built for); each window
contributes only its centre, MARGIN px in from every side, so every kept pixel had its full
context and there are no seams. Windows with nothing but clean glass are not run: glass is
background, and skipping it is most of the work on a typical slide.

`DensePredictor` runs a row of windows as soon as the mosaic rows it reads are final, so the
model can work while the read pass is still filling the mosaic further down (the daemon's
slide is then judged seconds sooner); `predict_dense` is the same over a finished mosaic.
Both run the same windows on the same pixels: the result does not depend on when rows came.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from edge.analysis.nets import ARTIFACT_MARGIN, INPUT_SHAPES
from edge.analysis.sampler import tissue_like

WINDOW = INPUT_SHAPES["artifact"][1]
MARGIN = ARTIFACT_MARGIN
INNER = WINDOW - 2 * MARGIN  # the kept centre of a window, and the step between windows
# The maps are float16 to halve their memory; numpy casts a float32 below float16's smallest
# normal number (2**-14) one element at a time through a floating-point exception, which made
# the cast of a softmax's many near-zero values ~6x slower than the model run itself. Such
# values are zero for every purpose here (cut-offs >= 0.1), so they are zeroed first.
HALF_TINY = np.float32(2.0**-14)
# Windows per run: each adds ~60 MB of the runtime's intermediate tensors (the peak of a
# 100k slide's analysis) and little speed.
BATCH = 2

Runner = Callable[[npt.NDArray[np.float32]], npt.NDArray[np.float32]]
Pixels = npt.NDArray[np.uint8]
Rows = Callable[[int, int], Pixels]  # (top, bottom) -> those final mosaic rows, (n, w, 3)
Busy = Callable[[Pixels], npt.NDArray[np.bool_]]  # where anything but clean glass is


class DensePredictor:
    """(classes, h, w) probabilities (float16: a probability needs no more than three
    digits), filled a row of windows at a time as `advance` says more mosaic rows are final."""

    def __init__(
        self,
        run: Runner,
        shape: tuple[int, int],
        classes: int,
        background: int = 0,
        busy: Busy = tissue_like,
    ) -> None:
        self.run = run
        self.height, self.width = shape
        self.busy = busy
        self.out = np.zeros((classes, self.height, self.width), np.float16)
        self.out[background] = 1.0
        self.windows = 0  # windows run so far
        self._next = 0  # top mosaic row of the next row of windows

    @property
    def done(self) -> bool:
        return self._next >= self.height

    def advance(self, final_rows: int, rows: Rows) -> None:
        """Run every row of windows whose pixels lie within the first `final_rows` rows."""
        while not self.done and final_rows >= min(self.height, self._next + INNER + MARGIN):
            self._run_row(self._next, rows)
            self._next += INNER

    def _run_row(self, y: int, rows: Rows) -> None:
        h, w = self.height, self.width
        top, bottom = max(0, y - MARGIN), min(h, y + INNER + MARGIN)
        strip = rows(top, bottom)
        kept = min(INNER, h - y)
        busy = self.busy(strip[y - top : y - top + kept])
        spots = [x for x in range(0, w, INNER) if busy[:, x : x + INNER].any()]
        if not spots:
            return
        # Beyond the mosaic's sides the outermost pixels repeat, as for the whole mosaic.
        above = MARGIN - (y - top)
        padded = np.pad(
            strip,
            ((above, WINDOW - above - len(strip)), (MARGIN, MARGIN + INNER), (0, 0)),
            mode="edge",
        )
        for i in range(0, len(spots), BATCH):
            group = spots[i : i + BATCH]
            batch = np.stack([padded[:, x : x + WINDOW] for x in group])
            probs = self.run(np.ascontiguousarray(batch.transpose(0, 3, 1, 2), np.float32) / 255.0)
            probs = np.where(probs >= HALF_TINY, probs, np.float32(0))  # a backend's buffer
            self.windows += len(group)
            for x, p in zip(group, probs, strict=True):
                ww = min(INNER, w - x)
                self.out[:, y : y + kept, x : x + ww] = p[
                    :, MARGIN : MARGIN + kept, MARGIN : MARGIN + ww
                ]


def predict_dense(
    run: Runner,
    mosaic: Pixels,
    classes: int,
    background: int = 0,
    busy: Busy = tissue_like,
) -> npt.NDArray[np.float16]:
    """(classes, h, w) probabilities for a finished (h, w, 3) mosaic."""
    h, w = mosaic.shape[:2]
    predictor = DensePredictor(run, (h, w), classes, background, busy)
    predictor.advance(h, lambda top, bottom: mosaic[top:bottom])
    return predictor.out
