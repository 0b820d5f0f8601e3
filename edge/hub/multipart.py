"""A streaming multipart/related splitter (RFC 2046 5.1, RFC 2387): bytes in, events out.

Pure: no I/O. `Splitter.feed(chunk)` returns the events the chunk completes: `PartStart`
(the part's headers), `PartData` (body bytes, in order), `PartEnd`. Only the tail that may
hold the start of a delimiter is kept between calls, so memory stays bounded by the chunk
size whatever the size of a part (a STOW-RS part can be 1 GB).
"""

from __future__ import annotations

from dataclasses import dataclass

from edge.errors import EdgeError

MAX_HEADER_BYTES = 16 << 10  # a part's header block larger than this is not a DICOM part


class MultipartError(EdgeError):
    """The body is not the multipart/related stream its Content-Type announced."""


@dataclass(frozen=True)
class PartStart:
    headers: dict[str, str]  # lower-case names


@dataclass(frozen=True)
class PartData:
    data: bytes


@dataclass(frozen=True)
class PartEnd:
    pass


Event = PartStart | PartData | PartEnd


def content_type_params(value: str) -> tuple[str, dict[str, str]]:
    """`multipart/related; type="application/dicom"; boundary=x` -> (media type, params)."""
    media, *rest = value.split(";")
    params: dict[str, str] = {}
    for piece in rest:
        key, sep, val = piece.strip().partition("=")
        if not sep:
            continue
        val = val.strip()
        if len(val) >= 2 and val[0] == val[-1] == '"':
            val = val[1:-1]
        params[key.strip().lower()] = val
    return media.strip().lower(), params


class Splitter:
    """Splits one multipart body; `finish()` raises MultipartError when it ended early."""

    def __init__(self, boundary: str) -> None:
        if not 0 < len(boundary) <= 70:
            raise MultipartError(f"multipart boundary must be 1..70 characters, found {boundary!r}")
        self._dash = b"--" + boundary.encode("latin-1")
        self._delimiter = b"\r\n" + self._dash
        self._buffer = b""
        self._state = "preamble"  # -> after-delimiter -> headers -> body -> ... -> done
        self.parts = 0

    @property
    def done(self) -> bool:
        return self._state == "done"

    def feed(self, chunk: bytes) -> list[Event]:
        self._buffer += chunk
        events: list[Event] = []
        while True:
            before = (self._state, len(self._buffer))
            self._step(events)
            if (self._state, len(self._buffer)) == before:
                return events

    def finish(self) -> None:
        if self._state != "done":
            where = "before the first part" if self.parts == 0 else f"in part {self.parts}"
            raise MultipartError(f"the multipart body ended {where} without its closing delimiter")

    def _step(self, events: list[Event]) -> None:
        buf = self._buffer
        if self._state == "preamble":
            # The first delimiter may open the body (no CRLF before it) or follow a preamble.
            if buf.startswith(self._dash):
                self._buffer = buf[len(self._dash) :]
                self._state = "after-delimiter"
                return
            at = buf.find(self._delimiter)
            if at >= 0:
                self._buffer = buf[at + len(self._delimiter) :]
                self._state = "after-delimiter"
            elif len(buf) > len(self._delimiter):
                self._buffer = buf[-len(self._delimiter) :]  # the preamble is discarded
        elif self._state == "after-delimiter":
            if len(buf) < 2:
                return
            if buf.startswith(b"--"):
                self._state = "done"
                self._buffer = b""  # the epilogue is ignored
                return
            end = buf.find(b"\r\n")
            if end < 0:
                if len(buf) > 1024:
                    raise MultipartError("a multipart delimiter is followed by garbage")
                return
            if buf[:end].strip(b" \t"):  # only transport padding may follow a delimiter
                raise MultipartError("a multipart delimiter is followed by garbage")
            self._buffer = buf[end + 2 :]
            self._state = "headers"
        elif self._state == "headers":
            end = buf.find(b"\r\n\r\n")
            if buf.startswith(b"\r\n"):  # a part without headers
                end, skip = 0, 2
            else:
                skip = 4
            if end < 0:
                if len(buf) > MAX_HEADER_BYTES:
                    raise MultipartError(f"a part's headers exceed {MAX_HEADER_BYTES} bytes")
                return
            headers: dict[str, str] = {}
            for line in buf[:end].decode("latin-1").split("\r\n"):
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            self._buffer = buf[end + skip :]
            self._state = "body"
            self.parts += 1
            events.append(PartStart(headers))
        elif self._state == "body":
            at = buf.find(self._delimiter)
            if at >= 0:
                if at:
                    events.append(PartData(buf[:at]))
                events.append(PartEnd())
                self._buffer = buf[at + len(self._delimiter) :]
                self._state = "after-delimiter"
                return
            # Keep what could be the start of a delimiter split across chunks.
            safe = len(buf) - len(self._delimiter) + 1
            if safe > 0:
                events.append(PartData(buf[:safe]))
                self._buffer = buf[safe:]
