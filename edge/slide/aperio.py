"""Aperio ImageDescription parsing (pure)."""

from __future__ import annotations

from datetime import datetime


def parse_description(description: str) -> dict[str, str]:
    """Key/value pairs of an Aperio ImageDescription ("... |AppMag = 20|MPP = 0.4990|...").

    The first field is the library banner and geometry, kept under "header".
    """
    fields = description.replace("\r\n", "\n").split("|")
    out: dict[str, str] = {"header": fields[0].strip()}
    for item in fields[1:]:
        key, sep, value = item.partition("=")
        if sep:
            out.setdefault(key.strip(), value.strip())
    return out


def as_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number > 0 else None


def scan_datetime(props: dict[str, str]) -> datetime | None:
    """Aperio writes Date = MM/DD/YY and Time = HH:MM:SS."""
    date = props.get("Date")
    if not date:
        return None
    time = props.get("Time", "00:00:00").split(" ")[0]
    for fmt in ("%m/%d/%y %H:%M:%S", "%m/%d/%Y %H:%M:%S"):
        try:
            return datetime.strptime(f"{date} {time}", fmt)
        except ValueError:
            continue
    return None
