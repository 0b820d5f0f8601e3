"""One slide's analysis: models opened once, the sampler riding the read pass, results out.

    analyser = Analyser.create(options)               # models verified, backend chosen
    consumer = analyser.start(source)                 # a TileConsumer for stream_tiles
    ... the convert pass (or a pass of its own) ...
    result = analyser.finish()                        # tissue, artifacts, stain, verdict

When the models cannot be used (missing, corrupt, wrong shape, no backend) or the slide is
not something they can judge (fluorescence), the result says "QC unavailable: <reason>" and
the conversion goes on: a slide is never lost because its QC could not run.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from edge.analysis import nets, qc, registry
from edge.analysis.backends.base import Session
from edge.analysis.backends.select import DEFAULT_CACHE_DIR, open_session
from edge.analysis.dense import DensePredictor, predict_dense
from edge.analysis.sampler import (
    GLASS_SPREAD,
    AnalysisSampler,
    FocusCrop,
    FocusGrid,
    FocusScores,
    Geometry,
    focus_level,
    low_mosaic,
    tissue_like,
)
from edge.errors import EdgeError
from edge.slide.source import SlideSource

LOGGER = logging.getLogger(__name__)
ASSUMED_MPP = 0.25
STAIN_PATCHES = 32
# The artifact model runs during the pass up to this mosaic size (maps 14 bytes a pixel
# beside the mosaic's sums: 117 MB at the limit; a 40k x 40k slide at 0.25 µm/px is 6.25 MP).
STREAM_MAX_MOSAIC_PIXELS = 8 << 20
# Where the artifact model runs: anything stained at all (clean glass is background).
_FAINT = functools.partial(tissue_like, spread=GLASS_SPREAD)


@dataclass(frozen=True)
class AnalysisOptions:
    backend: str = "auto"
    models_dir: Path = registry.DEFAULT_MODELS_DIR
    cache_dir: Path = DEFAULT_CACHE_DIR
    threads: int | None = None
    thresholds: qc.Thresholds = field(default_factory=qc.Thresholds)
    mpp: float | None = None  # override the file's pixel size
    # Skip decoding level-0 tiles that are clean glass in the source's own lower level.
    skip_glass: bool = True
    # Decode the source's own level at the focus model's resolution instead of level 0.
    lower_level: bool = False


@dataclass
class AnalysisResult:
    """Everything the outputs need. `available` False: `unavailable` says why."""

    available: bool
    unavailable: str = ""
    verdict: str = "review"
    reasons: list[str] = field(default_factory=list)
    geometry: Geometry | None = None
    maps: dict[str, npt.NDArray[np.floating[Any]]] = field(default_factory=dict)  # 0..1 each
    findings: qc.Findings | None = None
    stain: str = "unknown"
    stain_scores: dict[str, float] = field(default_factory=dict)
    priority: int = 0
    models: list[dict[str, str]] = field(default_factory=list)
    backend: str = ""
    seconds: dict[str, float] = field(default_factory=dict)
    tiles: dict[str, int] = field(default_factory=dict)  # level read, its tiles decoded / skipped
    crops_scored: int = 0
    site_scores: dict[str, float] = field(default_factory=dict)
    focus_scores: FocusScores = field(default_factory=FocusScores.empty)
    mosaic: npt.NDArray[np.uint8] | None = None


class _DenseWorker:
    """The artifact model on its own thread during the read pass: each time the sampler
    reports more final mosaic rows, the windows over them run (the runtime releases the
    GIL, so this overlaps the decoding). `finish` waits for the rest."""

    def __init__(self, predictor: DensePredictor) -> None:
        self.predictor = predictor
        self.seconds = 0.0  # time spent running windows
        self._final: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def start(self, rows: Callable[[int, int], npt.NDArray[np.uint8]]) -> None:
        self._thread = threading.Thread(
            target=self._loop, args=(rows,), name="edge-artifact", daemon=True
        )
        self._thread.start()

    def rows_final(self, rows: int) -> None:
        self._final.put(rows)

    def _loop(self, rows: Callable[[int, int], npt.NDArray[np.uint8]]) -> None:
        while True:
            final = self._final.get()
            if final < 0:
                return
            if self._error is not None:
                continue  # keep draining: finish() reports the error
            t = time.monotonic()
            try:
                self.predictor.advance(final, rows)
            except BaseException as exc:  # re-raised on the caller's thread
                self._error = exc
            self.seconds += time.monotonic() - t

    def stop(self) -> None:
        """End the thread (idempotent): after `finish`, or when the pass failed."""
        if self._thread is not None:
            self._final.put(-1)
            self._thread.join()
            self._thread = None

    def finish(self, rows: Callable[[int, int], npt.NDArray[np.uint8]]) -> npt.NDArray[np.float16]:
        """The whole map: the rows the pass left, run now."""
        self.stop()
        if self._error is not None:
            raise self._error
        t = time.monotonic()
        self.predictor.advance(self.predictor.height, rows)
        self.seconds += time.monotonic() - t
        return self.predictor.out


class QcUnavailable(EdgeError):
    """Analysis cannot run for this slide or on this box; the reason is for the technician."""


class Analyser:
    def __init__(
        self, options: AnalysisOptions, sessions: dict[str, Session], specs: dict[str, Any]
    ) -> None:
        self.options = options
        self.sessions = sessions
        self.specs = specs
        self._sampler: AnalysisSampler | None = None
        self._focus: FocusGrid | None = None
        self._focus_seconds = 0.0
        self._started = 0.0
        self._dense: _DenseWorker | None = None
        self.site: dict[str, tuple[Any, Session]] = {}
        self.site_errors: dict[str, str] = {}

    @classmethod
    def create(cls, options: AnalysisOptions = AnalysisOptions()) -> Analyser:
        """Verify and open the three models. Raises QcUnavailable with the reason."""
        sessions: dict[str, Session] = {}
        specs: dict[str, Any] = {}
        for name in ("focus", "artifact", "stain"):
            folder = options.models_dir / name
            try:
                spec = registry.load_model(folder)
                if spec.input_shape[1:] != nets.INPUT_SHAPES[name]:
                    raise registry.ModelError(
                        f"{spec.path}: input shape {list(spec.input_shape[1:])}, the analysis "
                        f"feeds {list(nets.INPUT_SHAPES[name])}"
                    )
                sessions[name] = open_session(
                    spec, options.backend, options.cache_dir, options.threads
                )
            except EdgeError as exc:
                raise QcUnavailable(f"model {name}: {exc}") from None
            specs[name] = spec
        # Per-class probability cut-offs come from the manifests (calibrated with the model)
        # unless the options already set them.
        cuts = {**specs["focus"].thresholds, **specs["artifact"].thresholds}
        cuts.update(options.thresholds.probability)
        area = {**specs["focus"].area_thresholds, **specs["artifact"].area_thresholds}
        area.update(options.thresholds.area_probability)
        options = dataclasses.replace(
            options,
            thresholds=dataclasses.replace(
                options.thresholds, probability=cuts, area_probability=area
            ),
        )
        analyser = cls(options, sessions, specs)
        analyser._open_site_models()
        return analyser

    def _open_site_models(self) -> None:
        """A site's own tile classifiers: any other model folder whose manifest says
        kind = "site". One that fails to load is reported, never fatal."""
        for name, folder in registry.discover(self.options.models_dir).items():
            if name in nets.INPUT_SHAPES:
                continue
            try:
                spec = registry.load_manifest(folder)
                if spec.kind != "site":
                    continue
                registry.verify(spec)
                session = open_session(
                    spec, self.options.backend, self.options.cache_dir, self.options.threads
                )
                self.site[name] = (spec, session)
            except EdgeError as exc:
                self.site_errors[name] = str(exc)
                LOGGER.warning("site model %s not used: %s", name, exc)

    @property
    def backend(self) -> str:
        return next(iter(self.sessions.values())).backend

    def start(self, source: SlideSource) -> AnalysisSampler:
        """The consumer to add to the slide's read pass. Raises QcUnavailable."""
        level = source.levels[0]
        fluorescent = any(p.illumination == "fluorescence" for p in source.metadata.optical_paths)
        if fluorescent or level.samples != 3:
            raise QcUnavailable("fluorescence or non-RGB slide: the QC models judge brightfield")
        mpp = self.options.mpp or source.metadata.mpp or ASSUMED_MPP
        geometry = Geometry.plan(level.width, level.height, mpp)
        self._focus = FocusGrid(geometry)
        focus_spec = self.specs["focus"]
        low = None
        if self.options.skip_glass:
            try:
                low = low_mosaic(source, geometry)
            except Exception as exc:  # the gate only saves time: without it, decode all
                LOGGER.warning(
                    "%s: lower level unreadable, decoding every tile: %s", source.path.name, exc
                )
        # During the pass the model's maps and the mosaic's sums are both in memory: done
        # only where the two are small, a huge slide's model runs after the sums are freed.
        mh, mw = geometry.mosaic_shape
        self._dense = (
            _DenseWorker(
                DensePredictor(
                    self.sessions["artifact"].run,
                    geometry.mosaic_shape,
                    len(nets.ARTIFACT_CLASSES),
                    busy=_FAINT,
                )
            )
            if mh * mw <= STREAM_MAX_MOSAIC_PIXELS
            else None
        )
        analysed = (0, 1)  # level index and downsample
        if self.options.lower_level:
            found = focus_level(source.levels, geometry)
            if found is not None:
                analysed = (found[0].index, found[1])
        self._sampler = AnalysisSampler(
            geometry,
            self._score_focus,
            focus_spec.max_batch,
            low=low,
            on_rows=self._dense.rows_final if self._dense is not None else None,
            level=analysed,
        )
        if self._dense is not None:
            self._dense.start(self._sampler.rows)
        self._started = time.monotonic()
        return self._sampler

    @property
    def level_index(self) -> int:
        """The level the pass analyses (after `start`): 0, or the source's own lower one."""
        return self._sampler.level_index if self._sampler is not None else 0

    def close(self) -> None:
        """Stop the slide's threads (a pass that failed never reaches `finish`)."""
        if self._sampler is not None:
            self._sampler.close()
        if self._dense is not None:
            self._dense.stop()

    def _score_focus(self, crops: list[FocusCrop], grey: npt.NDArray[np.uint8]) -> None:
        assert self._focus is not None
        t = time.monotonic()
        batch = grey[:, None].astype(np.float32) * np.float32(1 / 255)
        probs = self.sessions["focus"].run(batch)[:, 0]
        for crop, p in zip(crops, probs, strict=True):
            self._focus.add(crop, float(p))
        self._focus_seconds += time.monotonic() - t

    def finish(self, progress: Callable[[int, int], None] | None = None) -> AnalysisResult:
        """Tissue, artifacts, stain and the verdict, after the pass has ended. `progress`
        follows the tiles read back from the conversion's copy (AnalysisSampler.drain)."""
        assert self._sampler is not None and self._focus is not None
        sampler, geometry = self._sampler, self._sampler.geometry
        pass_seconds = time.monotonic() - self._started
        sampler.drain(progress)  # the tiles the conversion did not wait for (sampler docstring)
        drain_seconds = time.monotonic() - self._started - pass_seconds
        t = time.monotonic()
        if self._dense is not None and sampler.rows_in_order:
            # The model has worked on final rows during the pass; the rest run now.
            art = self._dense.finish(sampler.rows)
            model_seconds = self._dense.seconds
            mosaic = sampler.image()
            sampler.mosaic.release()
        else:  # a huge mosaic, or tiles that did not come row by row: all of it now
            self.close()
            mosaic = sampler.image()
            sampler.mosaic.release()
            art = predict_dense(
                self.sessions["artifact"].run, mosaic, len(nets.ARTIFACT_CLASSES), busy=_FAINT
            )
            model_seconds = time.monotonic() - t
        dense_seconds = time.monotonic() - t
        idx = {name: i for i, name in enumerate(nets.ARTIFACT_CLASSES)}
        pixel_mm2 = (geometry.mosaic_mpp / 1000.0) ** 2
        tissue = qc.tissue_mask(
            art,
            idx["tissue"],
            idx["background"],
            pixel_mm2,
            stained=functools.partial(qc.still_stained, mosaic),
        )
        maps: dict[str, npt.NDArray[np.floating[Any]]] = {
            "tissue": (1.0 - art[idx["background"]]).astype(np.float16)
        }
        maps["blur"] = np.where(self._focus.scored(), self._focus.probability(), 0).astype(
            np.float16
        )
        self._focus.release()
        for kind in ("pen", "fold", "bubble", "debris", "edge"):
            maps[kind] = art[idx[kind]]
        thresholds = self.options.thresholds
        found = qc.findings(
            maps, tissue, geometry.mosaic_downsample, geometry.mosaic_mpp, thresholds
        )
        stain, scores = self._stain(mosaic, tissue)
        verdict, reasons = qc.verdict(found, thresholds, stain, geometry.mosaic_mpp)
        site = self._site_scores(mosaic, tissue, geometry)
        return AnalysisResult(
            available=True,
            verdict=verdict,
            reasons=reasons,
            geometry=geometry,
            maps=maps,
            findings=found,
            stain=stain,
            stain_scores=scores,
            priority=priority(verdict, found, site),
            site_scores=site,
            models=[spec.identity() for spec in self.specs.values()]
            + [spec.identity() for spec, _ in self.site.values()],
            backend=self.backend,
            seconds={
                "pass": round(pass_seconds, 3),
                "read_back": round(drain_seconds, 3),
                "focus_model": round(self._focus_seconds, 3),
                "artifact_model": round(model_seconds, 3),
                "artifact_after_pass": round(dense_seconds, 3),
                "total_after_pass": round(time.monotonic() - t, 3),
            },
            crops_scored=sampler.crops_scored,
            tiles={
                "level": sampler.level_index,
                "decoded": sampler.tiles_seen,
                "skipped_glass": sampler.tiles_skipped,
                "read_back": sampler.tiles_read_back,
            },
            focus_scores=self._focus.scores,
            mosaic=mosaic,
        )

    def _site_scores(
        self, mosaic: npt.NDArray[np.uint8], tissue: npt.NDArray[np.bool_], geometry: Geometry
    ) -> dict[str, float]:
        """Each site model's score for the slide: the 95th percentile over tissue tiles of
        its manifest's `priority_class` (default: its last class)."""
        out: dict[str, float] = {}
        for name, (spec, session) in self.site.items():
            try:
                factor = _site_input(spec, geometry.mosaic_mpp)
            except QcUnavailable as exc:
                self.site_errors[name] = str(exc)
                continue
            size = spec.tile_size[0] * factor
            patches = tissue_patches(mosaic, tissue, size, 256)
            if not len(patches):
                continue
            n = len(patches)
            h = spec.tile_size[0]
            small = patches.reshape(n, h, factor, h, factor, 3).mean(axis=(2, 4))
            batch = np.ascontiguousarray(small.transpose(0, 3, 1, 2), np.float32) / 255.0
            probs = session.run(batch).reshape(n, -1)
            wanted = str(spec.extra.get("priority_class", spec.classes[-1]))
            column = spec.classes.index(wanted) if wanted in spec.classes else -1
            out[name] = round(float(np.percentile(probs[:, column], 95)), 4)
        return out

    def _stain(
        self, mosaic: npt.NDArray[np.uint8], tissue: npt.NDArray[np.bool_]
    ) -> tuple[str, dict[str, float]]:
        """Stain from up to STAIN_PATCHES tissue-filled 32 px patches of the mosaic."""
        patches = tissue_patches(mosaic, tissue, 32, STAIN_PATCHES)
        if not len(patches):  # thin or scattered tissue: accept patches that are mostly tissue
            patches = tissue_patches(mosaic, tissue, 32, STAIN_PATCHES, share=0.6)
        if not len(patches):
            return "unknown", {}
        batch = patches.transpose(0, 3, 1, 2).astype(np.float32) * np.float32(1 / 255)
        probs = self.sessions["stain"].run(np.ascontiguousarray(batch)).mean(axis=0)
        scores = {c: round(float(p), 4) for c, p in zip(nets.STAIN_CLASSES, probs, strict=True)}
        return nets.STAIN_CLASSES[int(np.argmax(probs))], scores


def _site_input(spec: Any, mosaic_mpp: float) -> int:
    """Mosaic px per site-model px (the model must see at least the mosaic's pixel size)."""
    factor: int = round(float(spec.mpp) / mosaic_mpp)
    if factor < 1 or abs(spec.mpp / mosaic_mpp - factor) > 0.25:
        raise QcUnavailable(
            f"site model {spec.name}: trained at {spec.mpp} µm/px, the mosaic is "
            f"{mosaic_mpp:.2f} µm/px (needs a whole multiple of it)"
        )
    return factor


def tissue_patches(
    mosaic: npt.NDArray[np.uint8],
    tissue: npt.NDArray[np.bool_],
    size: int,
    limit: int,
    share: float = 0.9,
) -> npt.NDArray[np.uint8]:
    """Up to `limit` size x size patches at least `share` tissue, spread over the slide."""
    h, w = tissue.shape
    found = []
    for y in range(0, h - size + 1, size):
        for x in range(0, w - size + 1, size):
            if tissue[y : y + size, x : x + size].mean() >= share:
                found.append(mosaic[y : y + size, x : x + size])
    if len(found) > limit:
        pick = np.linspace(0, len(found) - 1, limit).round().astype(int)
        found = [found[i] for i in pick]
    return np.stack(found) if found else np.zeros((0, size, size, 3), np.uint8)


def priority(verdict: str, found: qc.Findings, site: dict[str, float] | None = None) -> int:
    """0-100, higher first: a slide the technician must rescan, then ones to review, then by
    how much of the tissue any finding covers; a site classifier's score (0..1) lifts a
    slide by up to 60 (a likely tumour goes ahead of a clean routine slide)."""
    base = {"rescan": 80, "review": 50, "pass": 10}[verdict]
    worst = max(found.fractions.values(), default=0.0)
    lift = 60 * max(site.values(), default=0.0) if site else 0.0
    return int(min(100, base + round(20 * min(1.0, worst * 4)) + round(lift)))
