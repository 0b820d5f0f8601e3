"""Protocol status codes as lookup tables, each mapped by one pure function to a Verdict.

DIMSE C-STORE statuses come from DICOM PS3.4 Annex B.2.3 (Storage Service Class), GG.4.2
(Non-Patient Object Storage) and the general codes of PS3.7 Annex C. HTTP statuses are those
of a STOW-RS store (PS3.18 10.5.3). Shaped after pynetdicom's ``status.py``: tables first, one
small function over them, no I/O.

Decisions worth knowing:
- 0x0111 "Duplicate SOP Instance" is DELIVERED: our UIDs are fixed when the job is created, so
  a duplicate means an earlier attempt reached the PACS (its response was lost, or a person
  sent it by hand). Sending it again cannot produce a different result.
- 0x0117 "Invalid SOP Instance" is PARK: the peer rejects the UID itself; retrying the same
  bytes cannot help.
- An unknown code is RETRY (the reason names it) unless it lies in 0xCxxx "Cannot understand",
  which is PARK: resending bytes the peer cannot parse only repeats the failure.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from edge.forward.protocol import Verdict


@dataclass(frozen=True)
class Classified:
    verdict: Verdict
    reason: str


# Exact DIMSE codes: (verdict, meaning).
DIMSE_EXACT: dict[int, tuple[Verdict, str]] = {
    0x0000: (Verdict.DELIVERED, "success"),
    # warnings: the instance was stored
    0x0001: (Verdict.DELIVERED, "warning"),
    0x0107: (Verdict.DELIVERED, "warning: attribute list error"),
    0x0116: (Verdict.DELIVERED, "warning: attribute value out of range"),
    0xB000: (Verdict.DELIVERED, "warning: coercion of data elements"),
    0xB006: (Verdict.DELIVERED, "warning: elements discarded"),
    0xB007: (Verdict.DELIVERED, "warning: data set does not match SOP class"),
    # the peer already has it
    0x0111: (Verdict.DELIVERED, "duplicate SOP instance: the peer already has it"),
    # transient: the peer may manage later
    0xA700: (Verdict.RETRY, "refused: out of resources"),
    0x0110: (Verdict.RETRY, "processing failure"),
    0x0210: (Verdict.RETRY, "duplicate invocation"),
    0x0213: (Verdict.RETRY, "resource limitation"),
    0xFE00: (Verdict.RETRY, "cancelled"),
    # permanent: retrying the same bytes cannot help
    0xA900: (Verdict.PARK, "error: data set does not match SOP class"),
    0xC000: (Verdict.PARK, "error: cannot understand"),
    0x0105: (Verdict.PARK, "no such attribute"),
    0x0106: (Verdict.PARK, "invalid attribute value"),
    0x0117: (Verdict.PARK, "invalid SOP instance"),
    0x0118: (Verdict.PARK, "no such SOP class"),
    0x0119: (Verdict.PARK, "class-instance conflict"),
    0x0120: (Verdict.PARK, "missing attribute"),
    0x0121: (Verdict.PARK, "missing attribute value"),
    0x0122: (Verdict.PARK, "refused: SOP class not supported"),
    0x0124: (Verdict.PARK, "refused: not authorized"),
    0x0211: (Verdict.PARK, "unrecognized operation"),
    0x0212: (Verdict.PARK, "mistyped argument"),
}

# Ranges (inclusive), consulted when no exact code matches; first match wins.
DIMSE_RANGES: tuple[tuple[int, int, Verdict, str], ...] = (
    (0xA700, 0xA7FF, Verdict.RETRY, "refused: out of resources"),
    (0xA900, 0xA9FF, Verdict.PARK, "error: data set does not match SOP class"),
    (0xB000, 0xBFFF, Verdict.DELIVERED, "warning"),
    (0xC000, 0xCFFF, Verdict.PARK, "error: cannot understand"),
)


def classify_dimse(status: int | None, comment: str = "") -> Classified:
    """The verdict for a C-STORE response status; `None` means no response arrived."""
    if status is None:
        return Classified(Verdict.RETRY, "no C-STORE response (timeout or connection lost)")
    found = DIMSE_EXACT.get(status)
    if found is None:
        found = next(
            ((verdict, text) for lo, hi, verdict, text in DIMSE_RANGES if lo <= status <= hi),
            (Verdict.RETRY, "unknown status"),
        )
    verdict, meaning = found
    reason = f"0x{status:04X} {meaning}"
    if comment:
        reason += f" ({comment})"
    return Classified(verdict, reason)


class FollowUp(enum.Enum):
    """What the STOW-RS sender must do besides applying the verdict."""

    NONE = "none"
    CHECK_FAILURES = "check-failures"  # 202: read FailedSOPSequence; classify each reason
    CHECK_EXISTING = "check-existing"  # 409: DELIVERED if every failure is 0x0111 duplicate
    REFRESH_AUTH = "refresh-auth"  # 401/403: refresh the token before the retry
    SPLIT_BATCH = "split-batch"  # 413: send fewer instances per request


@dataclass(frozen=True)
class HttpClassified:
    verdict: Verdict
    reason: str
    follow_up: FollowUp = FollowUp.NONE


HTTP_EXACT: dict[int, tuple[Verdict, str, FollowUp]] = {
    200: (Verdict.DELIVERED, "stored", FollowUp.NONE),
    202: (Verdict.DELIVERED, "accepted with failures", FollowUp.CHECK_FAILURES),
    401: (Verdict.RETRY, "unauthorized: refresh credentials", FollowUp.REFRESH_AUTH),
    403: (Verdict.RETRY, "forbidden: refresh credentials", FollowUp.REFRESH_AUTH),
    408: (Verdict.RETRY, "request timeout", FollowUp.NONE),
    409: (Verdict.PARK, "conflict", FollowUp.CHECK_EXISTING),
    413: (Verdict.PARK, "payload too large: split the batch", FollowUp.SPLIT_BATCH),
    429: (Verdict.RETRY, "too many requests", FollowUp.NONE),
}

# Ranges (inclusive) for codes not in HTTP_EXACT; first match wins.
HTTP_RANGES: tuple[tuple[int, int, Verdict, str], ...] = (
    (200, 299, Verdict.DELIVERED, "success"),
    (400, 499, Verdict.PARK, "client error"),
    (500, 599, Verdict.RETRY, "server error"),
)


def classify_http(status_code: int) -> HttpClassified:
    """The verdict for a STOW-RS response status; unknown classes (1xx, 3xx, ...) RETRY."""
    exact = HTTP_EXACT.get(status_code)
    if exact is not None:
        verdict, meaning, follow = exact
        return HttpClassified(verdict, f"HTTP {status_code} {meaning}", follow)
    for lo, hi, verdict, meaning in HTTP_RANGES:
        if lo <= status_code <= hi:
            return HttpClassified(verdict, f"HTTP {status_code} {meaning}")
    return HttpClassified(Verdict.RETRY, f"HTTP {status_code} unexpected status")
