"""Slide sources: one protocol over every scanner format, streaming raw tiles."""

from edge.slide.model import (
    AssociatedImage,
    AssociatedKind,
    Codec,
    Level,
    SlideMetadata,
)
from edge.slide.open import open_slide
from edge.slide.source import SlideSource

__all__ = [
    "AssociatedImage",
    "AssociatedKind",
    "Codec",
    "Level",
    "SlideMetadata",
    "SlideSource",
    "open_slide",
]
