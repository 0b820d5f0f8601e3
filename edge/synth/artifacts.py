"""Planted artifacts: where each one lies, how strong it is, what the truth says about it.

Every artifact is planned from its own generator, seeded by (slide seed, kind, occurrence),
so adding or removing one kind never moves another, and the clean slide (artifacts=()) is
the same slide. Sizes are fractions of the slide's short side (or micrometres where a real
size is known, capped by the slide) and shapes stay inside the slide. An artifact is a union
of parts (shapes.py); its mask is the union of their supports. What each kind does to pixels
is in effects.py.

    blur    defocus: Gaussian PSF, radius 2-8 µm (sigma = radius / 2), over an elliptic region
            with a gradual 12% feather, or the whole slide (1 in 4)
    pen     1-4 strokes of one ink (green, blue, black, red), 300-1000 µm wide (at most 3% of
            the short side and 1/20 of the shortest stroke), each 10-40% of the long side:
            rings and arcs circling a region, bent lines, cursive scribbles; tissue and glass
    fold    a band across a tissue piece where the tissue lies doubled (transmission of the
            tissue times that of a neighbouring strip), with a darker crease along its rim
    bubble  1-3 near-circular air bubbles, 6-15% of the short side: dark refractive rim,
            washed-out interior
    debris  8-30 dark specks, mostly 3-12 µm (1 in 10 up to 40 µm), sharp grit to soft dust,
            scattered or in a cluster, and 0-4 fibres
    edge    a coverslip edge: a near-straight line parallel to a side, a dark shadow band
            and slightly brighter glass beyond
    stain   optical density scaled by 0.35-0.7 (under) or 1.4-2.0 (over), per channel within
            +-10%, over a region or the whole slide (1 in 2); tissue only

Severity in [0, 1]: blur (radius_um - 1) / 7; pen the ink's opacity; fold how fully the
second layer adds (1: transmissions multiply); bubble how much the interior is washed out;
debris the specks' mean opacity; edge the shadow's depth; stain |ln factor| / ln 2.5.

SlideSpec.severity and SlideSpec.extent (each 0..1, None = drawn from the seed) set every
artifact's strength and size at a place in its kind's range above (0 the mildest or smallest
the kind makes, 1 the strongest or largest); what is not set is still drawn, and every draw is
still made, so setting one changes nothing else about the slide:

    kind    severity sets                          extent sets
    blur    radius 2-8 µm                          region radius 12-30% (always a region)
    pen     ink opacity 0.55-0.95                  each stroke 10-40% of the long side
    fold    second layer 0.5-1 (darkening)         length 0.6-1.4 and width 0.04-0.1 of the
                                                   piece's radius (a core's crease: width
                                                   0.2-0.45 of its radius)
    bubble  wash 0.25-0.7 and rim 0.4-0.7          radius 6-15% of the short side
    debris  speck and fibre opacity 0.5-0.95       8-30 specks
    edge    shadow depth 0.35-0.75, gain 3-8%      inset 5-25% of the slide, band 0.4-1.2%
    stain   factor 0.7-0.35 (under), 1.4-2.0 (over) region radius 20-40% (always a region)

The truth records the settings as "set_severity" / "set_extent". All sizes are fractions of the
slide (or of a tissue piece) and are moved or clipped to stay inside it, so no setting can make
an artifact that does not fit.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from edge.synth.layout import Layout
from edge.synth.noise import rng
from edge.synth.placement import (
    INKS,
    TISSUE_ONLY,
    Artifact,
    Part,
    Planner,
    inside,
    short_side,
    tissue_piece,
    tissue_point,
)
from edge.synth.protocol import ARTIFACT_KINDS, SlideSpec
from edge.synth.shapes import Capsules, Ellipse, Everywhere, HalfPlane

__all__ = ["INKS", "PLANNERS", "TISSUE_ONLY", "Artifact", "Part", "plan_artifacts"]


def _set(setting: float | None, drawn: Any, lo: float, hi: float) -> Any:
    """`drawn` (from the seed) unchanged, or the spec's setting (0..1) placed in [lo, hi]."""
    return drawn if setting is None else lo + float(setting) * (hi - lo)


def _plan_blur(g: np.random.Generator, spec: SlideSpec, layout: Layout) -> Artifact:
    radius_um = float(_set(spec.severity, g.uniform(2.0, 8.0), 2.0, 8.0))
    sigma = radius_um / spec.mpp / 2.0
    if g.random() < 0.25 and spec.extent is None:
        part, scope = Part(Everywhere()), "slide"
    else:
        cx, cy = tissue_point(g, tissue_piece(g, layout))
        rx = short_side(spec) * _set(spec.extent, g.uniform(0.12, 0.3), 0.12, 0.3)
        ry = rx * g.uniform(0.6, 1.0)
        shape = Ellipse(cx, cy, rx, ry, g.uniform(0, np.pi), feather=0.12 * rx)
        part, scope = Part(shape), "region"
    severity = float(np.clip((radius_um - 1.0) / 7.0, 0.0, 1.0))
    info = {"scope": scope, "radius_um": round(radius_um, 3), "sigma_px": round(sigma, 3)}
    return Artifact("blur", 0, severity, (part,), {"sigma": sigma}, info)


def _fit(pts: np.ndarray, margin: float, spec: SlideSpec) -> np.ndarray:
    """Shift the stroke to keep `margin` from the slide's sides where it fits, then clip."""
    for axis, size in ((0, spec.width), (1, spec.height)):
        lo, hi = pts[:, axis].min(), pts[:, axis].max()
        if hi - lo <= size - 2 * margin:
            pts[:, axis] += max(margin - lo, 0.0) - max(hi - (size - margin), 0.0)
        pts[:, axis] = np.clip(pts[:, axis], margin, max(size - margin, margin))
    return pts


def _stroke(
    g: np.random.Generator, spec: SlideSpec, layout: Layout, hw: float, length: float
) -> tuple[tuple[float, float], ...]:
    """A smooth polyline about `length` long: a ring around a region, an arc, a line or a
    handwritten-looking scribble, starting on tissue (it runs onto glass freely)."""
    cx, cy = tissue_point(g, tissue_piece(g, layout))
    style = g.choice(["ring", "arc", "line", "scribble"], p=[0.3, 0.2, 0.25, 0.25])
    turn = g.uniform(0, 2 * np.pi)
    if style in ("ring", "arc"):  # circling (or half-circling) a region of interest
        span = (
            g.uniform(np.radians(330), np.radians(390))
            if style == "ring"
            else (g.uniform(np.radians(90), np.radians(220)))
        )
        radius = length / span
        a = g.uniform(0, 2 * np.pi) + span * np.linspace(0, 1, 96)
        r = radius * (1 + 0.05 * np.sin(2 * a + g.uniform(0, 6)) + 0.04 * np.linspace(-1, 1, 96))
        u, v = r * np.cos(a), r * g.uniform(0.65, 1.0) * np.sin(a)
    elif style == "line":  # a gently bent line (an arrow's shaft, a margin mark)
        t = np.linspace(-0.5, 0.5, 48)
        u, v = length * t, length * g.uniform(-0.12, 0.12) * (1 - 4 * t * t)
    else:  # cursive loops along a baseline (a letter, a number, a scrawl)
        loops = int(g.integers(3, 9))
        t = np.linspace(0, 2 * np.pi * loops, 40 * loops)
        h = length / (loops * g.uniform(2.5, 4.0))
        adv = length / t[-1] * 0.6
        u = adv * t - h * g.uniform(0.6, 1.1) * np.sin(t) - adv * t[-1] / 2
        v = h * np.cos(t) * (1 + 0.3 * np.sin(t / loops * g.uniform(0.5, 2)))
    c, s = np.cos(turn), np.sin(turn)
    pts = np.stack([cx + c * u - s * v, cy + s * u + c * v], axis=1)
    pts = _fit(pts, hw + 1, spec)
    return tuple((float(px), float(py)) for px, py in pts)


def _plan_pen(g: np.random.Generator, spec: SlideSpec, layout: Layout) -> Artifact:
    colour = str(g.choice(list(INKS)))
    width_um = float(g.uniform(300, 1000))
    opacity = float(_set(spec.severity, g.uniform(0.55, 0.95), 0.55, 0.95))
    drawn = g.uniform(0.1, 0.4, int(g.integers(1, 5)))
    if spec.extent is not None:
        drawn = np.full(drawn.shape, _set(spec.extent, None, 0.1, 0.4))
    lengths = float(max(spec.width, spec.height)) * drawn
    # One pen, one width: at most 3% of the short side and 1/20 of the shortest stroke.
    cap = min(0.015 * short_side(spec), float(lengths.min()) / 40)
    hw = max(1.5, min(width_um / spec.mpp / 2, cap))
    strokes = tuple(
        Part(Capsules(_stroke(g, spec, layout, hw, float(n)), hw, feather=2.0)) for n in lengths
    )
    info = {"colour": colour, "rgb": list(INKS[colour]), "width_um": round(width_um, 1)}
    info |= {"width_px": round(2 * hw, 1), "strokes": len(strokes)}
    params = {"ink": INKS[colour], "opacity": opacity}
    return Artifact("pen", 0, opacity, tuple(strokes), params, info)


def _plan_fold(g: np.random.Generator, spec: SlideSpec, layout: Layout) -> Artifact:
    piece = tissue_piece(g, layout)
    cx, cy = tissue_point(g, piece)
    if piece.kind == "core":  # a crease across the core
        (ax, ay), (bx, by) = piece.points[0], piece.points[-1]
        angle = math.atan2(by - ay, bx - ax) + np.pi / 2 + g.uniform(-0.4, 0.4)
        hw = piece.radius * _set(spec.extent, g.uniform(0.2, 0.45), 0.2, 0.45)
        length = 2.4 * piece.radius
    else:
        angle = g.uniform(0, np.pi)
        length = piece.radius * _set(spec.extent, g.uniform(0.6, 1.4), 0.6, 1.4)
        hw = piece.radius * _set(spec.extent, g.uniform(0.04, 0.1), 0.04, 0.1)
    hw = max(hw, 4.0)
    ux, uy = math.cos(angle), math.sin(angle)
    bend = g.uniform(-0.1, 0.1) * length
    pts = tuple(
        (
            inside(cx + t * length / 2 * ux - abs(t) * bend * uy, hw, spec.width),
            inside(cy + t * length / 2 * uy + abs(t) * bend * ux, hw, spec.height),
        )
        for t in (-1.0, 0.0, 1.0)
    )
    strength = float(_set(spec.severity, g.uniform(0.5, 1.0), 0.5, 1.0))
    shift = 2 * hw * g.uniform(0.8, 1.5) * g.choice([-1, 1])
    params = {"shift": (-uy * shift, ux * shift), "strength": strength, "rim": max(2.0, 0.15 * hw)}
    info = {"width_px": round(2 * hw, 1), "length_px": round(length, 1)}
    info |= {"strength": round(strength, 3)}
    return Artifact("fold", 0, strength, (Part(Capsules(pts, hw, feather=2.0)),), params, info)


def _plan_bubble(g: np.random.Generator, spec: SlideSpec, layout: Layout) -> Artifact:
    parts, radii = [], []
    for _ in range(int(g.integers(1, 4))):
        r = short_side(spec) * _set(spec.extent, g.uniform(0.06, 0.15), 0.06, 0.15)
        radii.append(round(r, 1))
        if g.random() < 0.7:
            cx, cy = tissue_point(g, tissue_piece(g, layout))
        else:
            cx, cy = g.uniform(0, spec.width), g.uniform(0, spec.height)
        rx, ry = r, r * g.uniform(0.8, 1.0)
        shape = Ellipse(
            inside(cx, r, spec.width),
            inside(cy, r, spec.height),
            rx,
            ry,
            g.uniform(0, np.pi),
            feather=2.0,
        )
        ring = max(3.0 / min(rx, ry), g.uniform(0.06, 0.12))
        rim = float(_set(spec.severity, g.uniform(0.4, 0.7), 0.4, 0.7))
        parts.append(Part(shape, {"ring": ring, "rim": rim}))
    wash = float(_set(spec.severity, g.uniform(0.25, 0.7), 0.25, 0.7))
    info = {"count": len(parts), "radii_px": radii}
    return Artifact("bubble", 0, wash, tuple(parts), {"wash": wash}, info)


def _plan_debris(g: np.random.Generator, spec: SlideSpec, layout: Layout) -> Artifact:
    n = int(g.integers(8, 31))
    n = n if spec.extent is None else round(_set(spec.extent, None, 8, 30))
    clustered = g.random() < 0.5
    cx, cy = tissue_point(g, tissue_piece(g, layout))
    spread = 0.15 * short_side(spec)
    parts = []
    for _ in range(n):
        r = max(2.0, (g.uniform(10, 40) if g.random() < 0.1 else g.uniform(3, 12)) / spec.mpp)
        if clustered:
            x, y = cx + g.normal(0, spread / 2), cy + g.normal(0, spread / 2)
        else:
            x, y = g.uniform(0, spec.width), g.uniform(0, spec.height)
        shape = Ellipse(
            inside(x, r, spec.width),
            inside(y, r, spec.height),
            r,
            r * g.uniform(0.4, 1.0),
            g.uniform(0, np.pi),
            feather=max(1.5, r * g.uniform(0.1, 0.8)),  # sharp grit to soft dust
        )
        grey = g.uniform(25, 80)
        colour = (grey * g.uniform(1.0, 1.3), grey * g.uniform(0.9, 1.1), grey)
        opacity = float(_set(spec.severity, g.uniform(0.5, 0.95), 0.5, 0.95))
        parts.append(Part(shape, {"colour": colour, "opacity": opacity}))
    fibres = int(g.integers(0, 5))
    for _ in range(fibres):
        hw = max(1.5, g.uniform(1.5, 4) / spec.mpp)
        length = g.uniform(60, 300) / spec.mpp
        x, y = (
            g.uniform(length, max(spec.width - length, length)),
            g.uniform(length, max(spec.height - length, length)),
        )
        a = g.uniform(0, 2 * np.pi) + np.cumsum(g.uniform(-0.4, 0.4, 4))
        pts = np.array([x, y]) + np.cumsum(length / 4 * np.stack([np.cos(a), np.sin(a)], 1), 0)
        pts[:, 0] = np.clip(pts[:, 0], hw, spec.width - hw)
        pts[:, 1] = np.clip(pts[:, 1], hw, spec.height - hw)
        fibre = Capsules(tuple((float(px), float(py)) for px, py in pts), hw, feather=1.5)
        opacity = float(_set(spec.severity, 0.8, 0.5, 0.95))
        parts.append(Part(fibre, {"colour": (70.0, 60.0, 55.0), "opacity": opacity}))
    severity = float(np.mean([p.params["opacity"] for p in parts]))
    info = {"specks": n, "fibres": fibres, "clustered": bool(clustered)}
    return Artifact("debris", 0, severity, tuple(parts), {}, info)


def _plan_edge(g: np.random.Generator, spec: SlideSpec, layout: Layout) -> Artifact:
    side = str(g.choice(["left", "right", "top", "bottom"]))
    w, h = spec.width, spec.height
    across = w if side in ("left", "right") else h
    inset = across * _set(spec.extent, g.uniform(0.05, 0.25), 0.05, 0.25)
    tilt = math.radians(g.uniform(-2, 2))
    # The normal points to the side beyond the coverslip.
    normal = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "top": (0.0, -1.0), "bottom": (0.0, 1.0)}
    nx, ny = normal[side]
    nx, ny = nx * math.cos(tilt) - ny * math.sin(tilt), nx * math.sin(tilt) + ny * math.cos(tilt)
    px = {"left": inset, "right": w - inset}.get(side, w / 2)
    py = {"top": inset, "bottom": h - inset}.get(side, h / 2)
    band = max(6.0, short_side(spec) * _set(spec.extent, g.uniform(0.004, 0.012), 0.004, 0.012))
    depth = float(_set(spec.severity, g.uniform(0.35, 0.75), 0.35, 0.75))
    gain = float(1 + _set(spec.severity, g.uniform(0.03, 0.08), 0.03, 0.08))
    shape = HalfPlane(px, py, nx, ny, band, (0.0, 0.0, float(w), float(h)), feather=2.0)
    info = {"side": side, "band_px": round(band, 1), "shadow_depth": round(depth, 3)}
    info |= {"brightness_gain": round(gain, 3)}
    params = {"band": band, "depth": depth, "gain": gain}
    return Artifact("edge", 0, depth, (Part(shape),), params, info)


def _plan_stain(g: np.random.Generator, spec: SlideSpec, layout: Layout) -> Artifact:
    under = g.random() < 0.55
    drawn = g.uniform(0.35, 0.7) if under else g.uniform(1.4, 2.0)
    f = float(
        _set(spec.severity, drawn, 0.7, 0.35) if under else _set(spec.severity, drawn, 1.4, 2.0)
    )
    factors = tuple(float(f * g.uniform(0.9, 1.1)) for _ in range(3))
    if g.random() < 0.5 and spec.extent is None:
        part, scope = Part(Everywhere()), "slide"
    else:
        cx, cy = tissue_point(g, tissue_piece(g, layout))
        rx = short_side(spec) * _set(spec.extent, g.uniform(0.2, 0.4), 0.2, 0.4)
        part = Part(Ellipse(cx, cy, rx, rx * g.uniform(0.6, 1.0), g.uniform(0, np.pi), 0.3 * rx))
        scope = "region"
    severity = float(min(1.0, abs(math.log(f)) / math.log(2.5)))
    info: dict[str, Any] = {"scope": scope, "direction": "under" if under else "over"}
    info |= {"od_factor": [round(v, 3) for v in factors]}
    return Artifact("stain", 0, severity, (part,), {"factors": factors}, info)


PLANNERS: dict[str, Planner] = {
    "blur": _plan_blur,
    "pen": _plan_pen,
    "fold": _plan_fold,
    "bubble": _plan_bubble,
    "debris": _plan_debris,
    "edge": _plan_edge,
    "stain": _plan_stain,
}


def _plain(v: Any) -> Any:
    """numpy scalars to Python numbers (truth fields go to JSON), rounded to 0.001."""
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    return round(v, 3) if isinstance(v, float) else v


def plan_artifacts(spec: SlideSpec, layout: Layout) -> tuple[Artifact, ...]:
    """One artifact per entry of spec.artifacts (a kind may repeat), in that order."""
    out = []
    seen: dict[str, int] = {}
    for kind in spec.artifacts:
        if kind not in PLANNERS:
            raise ValueError(f"artifact kind {kind!r}: choose from {', '.join(ARTIFACT_KINDS)}")
        index = seen.get(kind, 0)
        seen[kind] = index + 1
        g = rng(spec.seed, 300 + ARTIFACT_KINDS.index(kind), index)
        a = PLANNERS[kind](g, spec, layout)
        info = {k: _plain(v) for k, v in a.info.items()}
        if spec.severity is not None:
            info["set_severity"] = float(spec.severity)
        if spec.extent is not None:
            info["set_extent"] = float(spec.extent)
        out.append(Artifact(a.kind, index, round(a.severity, 3), a.parts, a.params, info))
    return tuple(out)
