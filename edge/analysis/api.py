"""Analysis entry points: a slide on its own (`edge analyse`) or riding a conversion.

Both end in the same outputs (edge.analysis.outputs). When QC cannot run, the report still
exists, with verdict "review" and the reason "QC unavailable: <why>", and a conversion that
carried the analysis still succeeds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.analysis.outputs import write_outputs
from edge.analysis.run import Analyser, AnalysisOptions, AnalysisResult, QcUnavailable
from edge.errors import EdgeError
from edge.slide.model import Level
from edge.slide.open import open_slide
from edge.slide.source import SlideSource
from edge.slide.stream import TileConsumer, stream_tiles

LOGGER = logging.getLogger(__name__)


def unavailable(reason: str) -> AnalysisResult:
    return AnalysisResult(
        available=False, unavailable=reason, verdict="review", reasons=[f"QC unavailable: {reason}"]
    )


class SlideAnalysis:
    """One slide's analysis state across a pass: the consumer to add, then the result."""

    def __init__(self, options: AnalysisOptions) -> None:
        self.options = options
        self._analyser: Analyser | None = None
        self._reason = ""
        try:
            self._analyser = Analyser.create(options)
        except QcUnavailable as exc:
            self._reason = str(exc)

    @property
    def level(self) -> int:
        """The level the analysis reads (after `consumers`): 0, or a lower one."""
        return self._analyser.level_index if self._analyser is not None else 0

    def consumers(self, source: SlideSource) -> tuple[TileConsumer, ...]:
        if self._analyser is None:
            return ()
        try:
            return (self._analyser.start(source),)
        except QcUnavailable as exc:
            self._reason = str(exc)
            self._analyser = None
            return ()

    def result(self, progress: Callable[[int, int], None] | None = None) -> AnalysisResult:
        """The slide's analysis; `progress(done, total)` follows the tiles it still reads
        after the conversion, and what it raises (a daemon stopping) ends the analysis and
        reaches the caller."""
        if self._analyser is None:
            return unavailable(self._reason)
        raised: list[BaseException] = []

        def watched(done: int, total: int) -> None:
            assert progress is not None
            try:
                progress(done, total)
            except BaseException as exc:
                raised.append(exc)
                raise

        try:
            return self._analyser.finish(watched if progress is not None else None)
        except EdgeError as exc:  # a model failing mid-slide: the slide is still converted
            if raised:
                raise
            LOGGER.warning("analysis failed: %s", exc)
            return unavailable(str(exc))
        finally:
            self.close()

    def close(self) -> None:
        """Release the slide's analysis threads; safe to call more than once, and needed when
        the pass failed before `result`."""
        if self._analyser is not None:
            self._analyser.close()


def analyse_file(
    path: Path,
    outdir: Path,
    options: AnalysisOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Analyse one slide with a read pass of its own; write outputs; return the report.
    Raises InputError for unreadable slides (QC problems end up in the report instead)."""
    return write_outputs(analyse_path(path, options, progress), outdir, path.name)


def analyse_path(
    path: Path,
    options: AnalysisOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> AnalysisResult:
    """The analysis of one slide, reading only the level it analyses."""
    analysis = SlideAnalysis(options or AnalysisOptions())
    source = open_slide(path)
    try:
        consumers = analysis.consumers(source)
        if consumers:
            level = source.levels[analysis.level]
            total = level.frame_count
            done = 0

            def tick(n: int) -> None:
                nonlocal done
                done += n
                if progress is not None:
                    progress(done, total)

            stream_tiles(_OneLevel(source, level), consumers, tick)
    except BaseException:
        analysis.close()
        raise
    finally:
        source.close()
    return analysis.result()


class _OneLevel:
    """A view of a source with one level: analysing alone reads nothing else."""

    def __init__(self, source: SlideSource, level: Level) -> None:
        self._source = source
        self.path = source.path
        self.metadata = source.metadata
        self.levels: tuple[Level, ...] = (level,)
        self.associated = source.associated

    def frames(self, level: Any) -> Any:
        return self._source.frames(level)

    def decode(self, frame: Any) -> Any:
        return self._source.decode(frame)

    def associated_pixels(self, kind: Any) -> Any:
        return self._source.associated_pixels(kind)

    def close(self) -> None:
        self._source.close()
