"""The contract between the slide model (what a slide looks like) and the writers (formats).

A model renders any axis-aligned region of the slide at any power-of-two downsample,
deterministically from its seed and independently of which other regions were rendered, so
writers can stream tiles level by level in any order with memory bounded by one tile row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

RGB = npt.NDArray[np.uint8]  # (height, width, 3)
Mask = npt.NDArray[np.bool_]  # (height, width)

ARTIFACT_KINDS = ("blur", "pen", "fold", "bubble", "debris", "edge", "stain")
STAINS = ("H&E", "IHC")


@dataclass(frozen=True)
class SlideSpec:
    """What to make. Sizes in level-0 pixels; mpp in micrometres per level-0 pixel."""

    width: int
    height: int
    seed: int = 0
    mpp: float = 0.25
    stain: str = "H&E"
    artifacts: tuple[str, ...] = ()  # kinds from ARTIFACT_KINDS; () = a clean slide
    barcode: str = ""
    # Every planted artifact's strength and size, each 0..1 within its kind's range (see
    # edge.synth.artifacts); None draws it from the seed (the default, as before).
    severity: float | None = None
    extent: float | None = None

    def __post_init__(self) -> None:
        for name in ("severity", "extent"):
            check_unit(name, getattr(self, name))


def check_unit(name: str, value: object) -> None:
    """ValueError unless `value` is None or a number from 0 to 1."""
    if value is None:
        return
    ok = isinstance(value, int | float | np.floating | np.integer) and not isinstance(value, bool)
    if not ok or not 0.0 <= float(value) <= 1.0:  # type: ignore[arg-type]
        raise ValueError(f"{name} {value!r}: expected a number from 0 to 1 (or none)")


@dataclass(frozen=True)
class Truth:
    """Ground truth of one slide (JSON-able via `as_dict`)."""

    spec: SlideSpec
    artifacts: tuple[dict[str, Any], ...]  # kind, bbox [x, y, w, h] level-0 px, severity, ...
    tissue_fraction: float  # of the slide area
    affected_fraction: dict[str, float]  # per kind: fraction of tissue area affected
    needs_rescan: bool
    reasons: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)


class SlideModel(Protocol):
    spec: SlideSpec

    def region(self, x: int, y: int, width: int, height: int, downsample: int = 1) -> RGB:
        """Pixels of the level-`downsample` image at (x, y) in THAT level's coordinates.

        The level is ceil(spec.width / downsample) x ceil(spec.height / downsample); a region
        reaching past the edge is filled with glass colour. Deterministic: the same call gives
        the same pixels in any process, in any order.
        """
        ...

    def masks(self, downsample: int) -> dict[str, Mask]:
        """Per-class boolean masks at that downsample: "tissue" and each planted kind."""
        ...

    def truth(self) -> Truth: ...

    def label(self) -> RGB:
        """The slide label image (with a barcode pattern encoding spec.barcode)."""
        ...

    def macro(self) -> RGB:
        """An overview photo of the whole glass slide, label included."""
        ...
