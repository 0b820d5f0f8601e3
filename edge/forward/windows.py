"""Send windows: the local times of day a destination may be sent to ("22:00-06:00").

Pure functions over minutes of the day and naive local datetimes. A window may cross midnight
(start after end); "00:00-24:00" is the whole day; no windows at all means always open. Start
is inclusive, end exclusive.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

DAY = 24 * 60
_SYNTAX = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


class WindowError(ValueError):
    """A window is not "HH:MM-HH:MM" with real times."""


@dataclass(frozen=True)
class Window:
    start: int  # minute of the day, 0..1439
    end: int  # minute of the day, 1..1440; below start: the window crosses midnight

    def contains(self, minute: int) -> bool:
        if self.start < self.end:
            return self.start <= minute < self.end
        return minute >= self.start or minute < self.end

    def __str__(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end)}"


def _hhmm(minute: int) -> str:
    return f"{minute // 60:02d}:{minute % 60:02d}"


def parse_window(text: str) -> Window:
    match = _SYNTAX.match(text)
    if match is None:
        raise WindowError(f"{text!r} is not HH:MM-HH:MM (e.g. '22:00-06:00')")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or m1 > 59:
        raise WindowError(f"{text!r}: start {h1:02d}:{m1:02d} is not a time of day (00:00-23:59)")
    if h2 > 24 or m2 > 59 or (h2 == 24 and m2 != 0):
        raise WindowError(f"{text!r}: end {h2:02d}:{m2:02d} is not a time of day (00:00-24:00)")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if end == 0:
        end = DAY  # "22:00-00:00" ends at midnight
    if start == end:
        raise WindowError(f"{text!r} is empty (start equals end); use 00:00-24:00 for all day")
    return Window(start, end)


def parse_windows(texts: tuple[str, ...] | list[str]) -> tuple[Window, ...]:
    return tuple(parse_window(text) for text in texts)


def minute_of(moment: dt.datetime) -> int:
    return moment.hour * 60 + moment.minute


def is_open(windows: tuple[Window, ...], moment: dt.datetime) -> bool:
    """Whether `moment` (local time) lies in a window; always True without windows."""
    if not windows:
        return True
    minute = minute_of(moment)
    return any(w.contains(minute) for w in windows)


def next_open(windows: tuple[Window, ...], moment: dt.datetime) -> dt.datetime:
    """The first moment at or after `moment` (to the minute) that lies in a window."""
    if is_open(windows, moment):
        return moment
    minute = minute_of(moment)
    # Minutes until each window's start (the next day when the start has passed today).
    wait = min((w.start - minute) % DAY for w in windows)
    base = moment.replace(second=0, microsecond=0)
    return base + dt.timedelta(minutes=wait)
