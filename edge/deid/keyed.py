"""Keyed hashes with the site secret: pseudonyms, replacement UIDs and date offsets.

HMAC-SHA256 makes every replacement a pure function of (secret, original): the levels of a
slide stay one study and series, a second send of the same slide gets the same UIDs, and
nobody without the secret can recompute (or dictionary-attack) the mapping. Each use has its
own label so that, e.g., a patient ID and a UID with the same text map to unrelated values.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import date, timedelta

MIN_SECRET_BYTES = 16
_DAYS_BACK = (366, 3652)  # dates move back by 1 to 10 years


def _mac(secret: bytes, label: str, value: str) -> bytes:
    return hmac.new(secret, f"{label}\x1f{value}".encode(), hashlib.sha256).digest()


def new_uid(secret: bytes, uid: str, namespace: str) -> str:
    """A "2.25." UID (PS3.5 B.2) from 128 bits of the keyed hash of the original UID.

    `namespace` is the policy's (Policy.uid_namespace): copies made under two policies differ
    in content, so they must not share a SOP Instance UID (nor an outbox row)."""
    digest = _mac(secret, f"uid:{namespace}", uid.strip())
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def pseudonym(secret: bytes, label: str, value: str, length: int = 16) -> str:
    """Upper-case hex of the keyed hash, `length` characters (fits SH at 16, LO at 64)."""
    return _mac(secret, label, value.strip()).hex().upper()[:length]


def day_offset(secret: bytes, patient_key: str) -> int:
    """Days to add to every date of one patient (negative: into the past)."""
    low, high = _DAYS_BACK
    number = int.from_bytes(_mac(secret, "date-shift", patient_key)[:8], "big")
    return -(low + number % (high - low + 1))


def shift_da(value: str, days: int) -> str:
    """A DA value (YYYYMMDD) moved by `days`; "" when it is not a whole date."""
    text = value.strip()
    if len(text) != 8 or not text.isdigit():
        return ""
    try:
        moved = date(int(text[:4]), int(text[4:6]), int(text[6:])) + timedelta(days=days)
    except (ValueError, OverflowError):
        return ""
    return moved.strftime("%Y%m%d")


def shift_dt(value: str, days: int) -> str:
    """A DT value with its date part moved; time and offset kept; "" when it has no date."""
    text = value.strip()
    moved = shift_da(text[:8], days)
    return moved + text[8:] if moved else ""
