"""Send order: lower number = sooner. Pure.

Results (SR, SEG, annotations, parametric maps) first, so a QC verdict or triage reaches the
hospital in seconds; then what lets a viewer open a slide early (thumbnail, label, overview);
then the pyramid from its smallest level to level 0. A slide-level boost (a rescan request,
a high triage priority) moves all of a slide's instances ahead of unboosted slides.
"""

from __future__ import annotations

from collections.abc import Sequence

RESULT_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
        "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
        "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
        "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
        "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
        "1.2.840.10008.5.1.4.1.1.91.1",  # Microscopy Bulk Simple Annotations
        "1.2.840.10008.5.1.4.1.1.30",  # Parametric Map
    }
)

RESULT = 0
THUMBNAIL = 10
LABEL = 20
OVERVIEW = 30
VOLUME = 100  # + bit length of the level's pixel count: smaller levels first, level 0 last
OTHER = 200
BOOST_STEP = 1000  # one boost step outranks every role of an unboosted slide

_ROLES = {"THUMBNAIL": THUMBNAIL, "LABEL": LABEL, "OVERVIEW": OVERVIEW}


def instance_priority(
    sop_class_uid: str, image_type: Sequence[str], pixels: int, boost: int = 0
) -> int:
    """Priority of one instance from its SOP class, ImageType (value 3 is the WSI flavour:
    VOLUME, THUMBNAIL, LABEL, OVERVIEW) and total pixel count; `boost` >= 0 for the slide."""
    if boost < 0:
        raise ValueError(f"priority boost {boost}: need >= 0 (higher = sooner)")
    if sop_class_uid in RESULT_CLASSES:
        rank = RESULT
    else:
        flavour = str(image_type[2]).upper() if len(image_type) > 2 else ""
        if flavour in _ROLES:
            rank = _ROLES[flavour]
        elif flavour == "VOLUME":
            rank = VOLUME + min(max(pixels, 0).bit_length(), OTHER - VOLUME - 1)
        else:
            rank = OTHER
    return rank - BOOST_STEP * boost
