"""Planted artifacts as data: parts (shapes with parameters), severity and truth fields,
plus the placement helpers the planners (artifacts.py) share."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.synth.layout import Layout, Piece
from edge.synth.protocol import SlideSpec
from edge.synth.shapes import Shape

INKS = {
    "green": (40, 150, 90),
    "blue": (40, 70, 170),
    "black": (35, 35, 40),
    "red": (190, 40, 50),
}
TISSUE_ONLY = ("fold", "stain")  # kinds whose mask is intersected with the tissue mask


@dataclass(frozen=True)
class Part:
    shape: Shape
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Artifact:
    kind: str
    index: int  # occurrence of this kind in spec.artifacts
    severity: float
    parts: tuple[Part, ...]
    params: dict[str, Any]  # what the effect needs
    info: dict[str, Any]  # kind-specific truth, JSON-able

    def bbox(self, width: int, height: int) -> list[int]:
        """[x, y, w, h] in level-0 px of the level-0 support, clipped to the slide."""
        boxes = [p.shape.box(p.shape.feather) for p in self.parts]
        x0 = max(0, math.floor(min(b[0] for b in boxes)))
        y0 = max(0, math.floor(min(b[1] for b in boxes)))
        x1 = min(width, math.ceil(max(b[2] for b in boxes)))
        y1 = min(height, math.ceil(max(b[3] for b in boxes)))
        return [x0, y0, max(0, x1 - x0), max(0, y1 - y0)]


Planner = Callable[[np.random.Generator, SlideSpec, Layout], Artifact]


def tissue_piece(g: np.random.Generator, layout: Layout) -> Piece:
    """A piece of tissue, the larger ones more often."""
    weights = np.array([p.radius * p.extent for p in layout.pieces])
    return layout.pieces[int(g.choice(len(weights), p=weights / weights.sum()))]


def tissue_point(g: np.random.Generator, piece: Piece) -> tuple[float, float]:
    """A point well inside the piece (level-0 px)."""
    if piece.kind == "core":
        i = int(g.integers(0, len(piece.points) - 1))
        (ax, ay), (bx, by) = piece.points[i], piece.points[i + 1]
        t = g.random()
        return ax + t * (bx - ax), ay + t * (by - ay)
    a, r = g.uniform(0, 2 * np.pi), piece.radius * 0.6 * math.sqrt(g.random())
    return piece.cx + r * math.cos(a), piece.cy + r * math.sin(a)


def inside(v: float, margin: float, size: int) -> float:
    """v moved to keep `margin` from both ends of [0, size] (to the middle if it cannot)."""
    return float(np.clip(v, min(margin, size / 2), max(size - margin, size / 2)))


def short_side(spec: SlideSpec) -> float:
    return float(min(spec.width, spec.height))
