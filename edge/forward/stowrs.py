"""STOW-RS destination (DICOMweb, PS3.18 10.5): POST {url}/studies, files streamed from disk.

Every failure becomes an Outcome, never an exception. A request body is a
``multipart/related; type="application/dicom"`` stream produced by a generator (part headers,
then each file in 1 MiB chunks), with Content-Length computed up front from the file sizes, so
no instance is ever held in memory and no chunked encoding is needed. A batch is split into
several requests so each body stays under ``max_request_bytes``; a single instance larger than
the cap is PARK. Responses are classified by `edge.forward.status.classify_http`; a 202 or 409
is read for its FailedSOPSequence (0008,1198), each failure classified by `classify_dimse`.

Auth (`edge.forward.auth`): a bearer token file, HTTP basic, a Google service account or AWS
SigV4. On 401/403 the credentials are refreshed (file re-read, new token) and the request
repeated once; a second refusal is PARK for credentials we hold (basic, google, aws-sigv4) and
RETRY for a bearer token file. Credentials are never logged nor put in a reason.

Bandwidth: with a `TokenBucket` the body is let out at most at its rate (64 KiB pieces); the
bucket is shared by every request in flight (it has its own lock).

Link awareness (`edge.forward.link`, `adaptive = true`): each request's outcome (bytes, seconds,
answered / transport failure / refused by the peer) feeds a `LinkEstimator`. A batch is then
cut into requests of at most `request_bytes()` (an instance larger than that goes alone;
`max_request_bytes` stays the ceiling and the PARK limit), with up to `parallel()` of them in
flight (threads sharing the httpx Client), each next one planned when one ends. The
per-instance outcomes are classified exactly as without it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import ssl
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from edge.forward import link as linkmod
from edge.forward.auth import AuthError, Basic, BearerFile, RequestAuth
from edge.forward.link import Ending, LinkEstimator, Observation
from edge.forward.protocol import Item, Outcome, Verdict
from edge.forward.status import FollowUp, classify_dimse, classify_http
from edge.forward.throttle import TokenBucket, throttled

LOGGER = logging.getLogger(__name__)
E = TypeVar("E", bound=BaseException)

CHUNK = 1 << 20  # bytes read from a file per yield
EXCERPT = 200  # characters of a response body kept in a reason
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
PARALLEL_LIMIT = 4  # requests in flight at most (adaptive): a PACS is not a CDN
KEEPALIVE_S = 0.5  # adaptive: idle pooled connections are closed after this (see __init__)
REQUEST_FLOOR = 1 << 20  # adaptive requests are never cut below this (the config's minimum)


@dataclass(frozen=True)
class _Part:
    item: Item
    size: int  # the file's size when the batch was planned


class _Body:
    """A multipart/related body over files on disk: exact length, bytes generated lazily."""

    def __init__(self, parts: list[_Part], boundary: str) -> None:
        self.parts = parts
        self.boundary = boundary
        self.head = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii")
        self.tail = f"--{boundary}--\r\n".encode("ascii")

    @property
    def content_type(self) -> str:
        return f'multipart/related; type="application/dicom"; boundary={self.boundary}'

    def __len__(self) -> int:
        return sum(part_overhead(self.boundary) + part.size for part in self.parts) + len(self.tail)

    def __iter__(self) -> Iterator[bytes]:
        for part in self.parts:
            yield self.head
            remaining = part.size
            with part.item.path.open("rb") as stream:
                while remaining > 0:
                    chunk = stream.read(min(CHUNK, remaining))
                    if not chunk:
                        raise _FileChanged(
                            part.item, f"file shrank while being sent: {part.item.path}"
                        )
                    remaining -= len(chunk)
                    yield chunk
            yield b"\r\n"
        yield self.tail


class _FileChanged(Exception):
    def __init__(self, item: Item, reason: str) -> None:
        super().__init__(reason)
        self.item = item
        self.reason = reason


def part_overhead(boundary: str) -> int:
    """Bytes a part adds besides the file: its delimiter and header, and the closing CRLF."""
    return len(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n") + 2


def closing_overhead(boundary: str) -> int:
    return len(f"--{boundary}--\r\n")


def plan_requests(
    parts: list[_Part], boundary: str, max_request_bytes: int, target: int | None = None
) -> tuple[list[list[_Part]], list[_Part]]:
    """Split parts, in order, into request bodies of at most `target` bytes (default:
    max_request_bytes); a part larger than the target goes alone. Also return the parts too
    large for any request (over max_request_bytes) on their own. Pure."""
    limit = max_request_bytes if target is None else min(target, max_request_bytes)
    groups: list[list[_Part]] = []
    too_large: list[_Part] = []
    current: list[_Part] = []
    size = closing_overhead(boundary)
    for part in parts:
        need = part_overhead(boundary) + part.size
        if closing_overhead(boundary) + need > max_request_bytes:
            too_large.append(part)
            continue
        if current and size + need > limit:
            groups.append(current)
            current, size = [], closing_overhead(boundary)
        current.append(part)
        size += need
    if current:
        groups.append(current)
    return groups, too_large


class StowRsDestination:
    def __init__(
        self,
        name: str,
        url: str,
        *,
        auth: RequestAuth | None = None,
        token_file: Path | None = None,
        basic: tuple[str, str] | None = None,
        max_request_bytes: int = 1 << 30,
        timeout_s: float = 60,
        verify: bool | str | ssl.SSLContext = True,
        transport: httpx.BaseTransport | None = None,
        bucket: TokenBucket | None = None,
        link: LinkEstimator | None = None,
        link_state: Path | None = None,
        parallel_limit: int = PARALLEL_LIMIT,
    ) -> None:
        """`link`: adapt request size and concurrency to it (None: fixed max_request_bytes,
        one request at a time); `link_state`: a JSON file it is saved to after each batch."""
        if sum(x is not None for x in (auth, token_file, basic)) > 1:
            raise ValueError("StowRsDestination: give one of auth, token_file or basic")
        if token_file is not None:
            auth = BearerFile(token_file)
        elif basic is not None:
            auth = Basic(basic[0], None, basic[1])
        self.name = name
        self.url = url.rstrip("/")
        self.studies_url = f"{self.url}/studies"
        self.auth = auth
        self.bucket = bucket
        self.max_request_bytes = max_request_bytes
        self.timeout_s = timeout_s
        self.boundary = f"edge-{uuid.uuid4().hex}"
        if isinstance(verify, str):  # a CA bundle path (httpx 0.28 deprecates passing str)
            verify = ssl.create_default_context(cafile=verify)
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s),
            verify=verify,
            transport=transport,
            follow_redirects=False,
            # With requests in flight in parallel, a pooled connection may idle while others
            # finish; servers close idle ones after as little as 1 s (Orthanc), and a POST on
            # a connection closed under it fails like a drop. Close ours first.
            limits=httpx.Limits(
                max_connections=100,  # httpx's defaults but for the keep-alive
                max_keepalive_connections=20,
                keepalive_expiry=KEEPALIVE_S if link is not None else 5.0,
            ),
        )
        self.requests = 0  # POSTs made (for tests and diagnostics)
        self.link = link
        self.link_state = link_state
        self.parallel_limit = max(1, parallel_limit)
        self.most_in_flight = 0  # the most requests in flight at once (tests, diagnostics)
        self._lock = threading.Lock()
        self._auth_lock = threading.Lock()
        self._tally: _Tally | None = None

    # ------------------------------------------------------------------ public

    def send(self, items: list[Item]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        parts: list[_Part] = []
        for item in items:
            try:
                size = item.path.stat().st_size
            except FileNotFoundError:
                outcomes.append(Outcome(item.id, Verdict.PARK, f"queued file missing: {item.path}"))
                continue
            except OSError as exc:
                reason = f"cannot read queued file {item.path}: {exc}"
                outcomes.append(Outcome(item.id, Verdict.RETRY, reason))
                continue
            parts.append(_Part(item, size))
        groups, too_large = plan_requests(parts, self.boundary, self.max_request_bytes)
        for part in too_large:
            reason = (
                f"instance of {part.size} bytes does not fit one STOW-RS request"
                f" (max_request_bytes {self.max_request_bytes})"
            )
            outcomes.append(Outcome(part.item.id, Verdict.PARK, reason))
        if self.link is None:
            for group in groups:
                outcomes.extend(self._send_group(group))
            return outcomes
        outcomes.extend(self._send_adaptive([p for g in groups for p in g], self.link))
        return outcomes

    def request_bytes(self) -> int:
        """The request size the link calls for now (max_request_bytes when not adaptive)."""
        if self.link is None:
            return self.max_request_bytes
        return self.link.request_bytes(REQUEST_FLOOR, self.max_request_bytes, time.time())

    def close(self) -> None:
        self._client.close()

    # ------------------------------------------------------------------ adaptive

    def _send_adaptive(self, parts: list[_Part], link: LinkEstimator) -> list[Outcome]:
        """Up to parallel() requests in flight, each of at most request_bytes(), the next one
        planned (and started) as soon as one ends, so a drop shrinks the rest of the batch at
        once and no connection idles behind a slower request. A round ends after as many
        requests as were allowed in flight when it began, or at a transport failure."""
        outcomes: list[Outcome] = []
        pending = parts
        running: set[Future[list[Outcome]]] = set()
        self._tally = tally = _Tally()
        round_start, round_size, round_done = (
            time.monotonic(),
            link.parallel(self.parallel_limit),
            0,
        )
        try:
            with ThreadPoolExecutor(self.parallel_limit, thread_name_prefix="stowrs") as pool:
                while pending or running:
                    while pending and len(running) < link.parallel(self.parallel_limit):
                        groups, _ = plan_requests(
                            pending, self.boundary, self.max_request_bytes, self.request_bytes()
                        )
                        pending = pending[len(groups[0]) :]
                        running.add(pool.submit(self._send_group, groups[0]))
                        self.most_in_flight = max(self.most_in_flight, len(running))
                    done, running = wait(running, return_when=FIRST_COMPLETED)
                    for future in done:
                        outcomes.extend(future.result())  # _send_group never raises
                    round_done += len(done)
                    if round_done < round_size and not tally.transport_failures:
                        continue
                    now = time.monotonic()
                    level = link.end_round(
                        tally.ok_bytes, now - round_start, tally.transport_failures
                    )
                    LOGGER.debug(
                        "STOW-RS to %s: round of %d request(s), %d bytes answered, %d dropped;"
                        " next %d in flight",
                        self.studies_url,
                        round_done,
                        tally.ok_bytes,
                        tally.transport_failures,
                        level,
                    )
                    self._tally = tally = _Tally()
                    round_start, round_size, round_done = now, link.parallel(self.parallel_limit), 0
        finally:
            self._tally = None
            if self.link_state is not None:
                linkmod.save(link, self.link_state)
        return outcomes

    def _observe(self, size: int, started: float, ending: Ending, body_end: float | None) -> None:
        if self.link is None:
            return
        ended = time.monotonic()
        response_s = ended - body_end if body_end is not None and ending is Ending.OK else None
        obs = Observation(size, ended - started, ending, time.time(), response_s)
        self.link.observe(obs)
        tally = self._tally
        if tally is not None:
            tally.add(obs)

    # ------------------------------------------------------------------ one request

    def _send_group(self, parts: list[_Part]) -> list[Outcome]:
        try:
            return self._send_group_unguarded(parts)
        except Exception as exc:  # never raise: an unexpected failure is retried, then seen
            LOGGER.exception("STOW-RS to %s failed", self.studies_url)
            reason = f"STOW-RS to {self.studies_url} failed: {type(exc).__name__}: {exc}"
            return _all(parts, Verdict.RETRY, reason)

    def _send_group_unguarded(self, parts: list[_Part]) -> list[Outcome]:
        attempt = self._post(parts)
        if isinstance(attempt, list):
            return attempt
        response = attempt
        classified = classify_http(response.status_code)
        if classified.follow_up is FollowUp.REFRESH_AUTH and self.auth is not None:
            LOGGER.info(
                "STOW-RS to %s: HTTP %d, refreshing the %s credentials and retrying once",
                self.studies_url,
                response.status_code,
                self.auth.label,
            )
            try:
                with self._auth_lock:
                    self.auth.refresh()
            except AuthError as exc:
                return _all(parts, Verdict.PARK if exc.permanent else Verdict.RETRY, exc.reason)
            attempt = self._post(parts)
            if isinstance(attempt, list):
                return attempt
            response = attempt
            classified = classify_http(response.status_code)
        code = response.status_code
        follow = classified.follow_up
        if follow is FollowUp.REFRESH_AUTH:
            if self.auth is None:
                reason = f"HTTP {code} authentication required at {self.studies_url} but no auth"
                reason += f" is configured{_excerpt(response)}"
                return _all(parts, Verdict.PARK, reason)
            reason = (
                f"HTTP {code} authentication failed at {self.studies_url} ({self.auth.label}"
                f" credentials refused after a refresh){_excerpt(response)}"
            )
            return _all(parts, Verdict.PARK if self.auth.park_on_reject else Verdict.RETRY, reason)
        if follow is FollowUp.SPLIT_BATCH:
            if len(parts) > 1:
                half = len(parts) // 2
                LOGGER.info("STOW-RS to %s: HTTP 413, splitting %d", self.studies_url, len(parts))
                return self._send_group(parts[:half]) + self._send_group(parts[half:])
            reason = (
                f"HTTP 413 payload too large: {self.studies_url} refused a single instance"
                f" of {parts[0].size} bytes{_excerpt(response)}"
            )
            return _all(parts, Verdict.PARK, reason)
        if follow in (FollowUp.CHECK_FAILURES, FollowUp.CHECK_EXISTING) or (
            classified.verdict is Verdict.DELIVERED
        ):
            return self._per_instance(parts, response, classified.reason)
        return _all(parts, classified.verdict, f"{classified.reason}{_excerpt(response)}")

    def _post(self, parts: list[_Part]) -> httpx.Response | list[Outcome]:
        """The response, or outcomes for every part when no response could be had."""
        headers = {"Accept": "application/dicom+json"}
        body = _Body(parts, self.boundary)
        headers["Content-Type"] = body.content_type
        headers["Content-Length"] = str(len(body))
        try:
            if self.auth is not None:
                digest = _sha256(body) if self.auth.needs_payload_hash else None
                with self._auth_lock:  # requests in flight must not refresh a token twice
                    headers.update(self.auth.headers("POST", self.studies_url, digest))
        except AuthError as exc:
            return _all(parts, Verdict.PARK if exc.permanent else Verdict.RETRY, exc.reason)
        except _FileChanged as exc:
            return self._file_changed(parts, exc)
        except FileNotFoundError:
            return self._missing(parts)
        except OSError as exc:
            return _all(parts, Verdict.RETRY, f"reading queued files failed: {exc}")
        with self._lock:
            self.requests += 1
        content: Iterable[bytes] = throttled(body, self.bucket) if self.bucket is not None else body
        clock = _BodyClock(content)
        started = time.monotonic()
        try:
            response = self._client.post(self.studies_url, content=clock, headers=headers)
        except _FileChanged as exc:
            return self._file_changed(parts, exc)
        except httpx.HTTPError as exc:
            changed = _cause(exc, _FileChanged)
            if changed is not None:
                return self._file_changed(parts, changed)
            missing = _cause(exc, FileNotFoundError)
            if missing is not None:
                return self._missing(parts)
            reason = self._why_no_response(exc)
            LOGGER.warning("STOW-RS to %s: %s", self.studies_url, reason)
            if _cause(exc, ssl.SSLCertVerificationError) is not None:
                # An untrusted server certificate is not fixed by retrying: a person must.
                return _all(parts, Verdict.PARK, f"TLS certificate refused: {reason}")
            self._observe(len(body), started, Ending.TRANSPORT, None)
            return _all(parts, Verdict.RETRY, reason)
        except FileNotFoundError:
            return self._missing(parts)
        except OSError as exc:
            return _all(parts, Verdict.RETRY, f"reading queued files failed: {exc}")
        ending = Ending.OK if response.status_code < 400 else Ending.PEER
        self._observe(len(body), started, ending, clock.ended)
        return response

    def _missing(self, parts: list[_Part]) -> list[Outcome]:
        """A file vanished while the body was streamed: PARK it, RETRY the others."""
        return [
            Outcome(p.item.id, Verdict.PARK, f"queued file missing: {p.item.path}")
            if not p.item.path.is_file()
            else Outcome(
                p.item.id, Verdict.RETRY, "request aborted: another file in the batch vanished"
            )
            for p in parts
        ]

    def _file_changed(self, parts: list[_Part], exc: _FileChanged) -> list[Outcome]:
        return [
            Outcome(p.item.id, Verdict.RETRY, exc.reason)
            if p.item.id == exc.item.id
            else Outcome(p.item.id, Verdict.RETRY, "request aborted: a file in the batch changed")
            for p in parts
        ]

    def _why_no_response(self, exc: httpx.HTTPError) -> str:
        url = self.url
        if isinstance(exc, httpx.TimeoutException):
            kind = {
                httpx.ConnectTimeout: "connecting",
                httpx.ReadTimeout: "waiting for the response",
                httpx.WriteTimeout: "sending the request",
                httpx.PoolTimeout: "waiting for a connection",
            }.get(type(exc), "")
            where = f" {kind}" if kind else ""
            return f"timed out after {self.timeout_s:g} s{where} ({url})"
        if _cause(exc, ssl.SSLError) is not None or "SSL" in str(exc) or "TLS" in str(exc):
            return f"TLS error with {url}: {exc}"
        if _cause(exc, ConnectionRefusedError) is not None or "refused" in str(exc).lower():
            return f"connection refused to {url}"
        if isinstance(exc, httpx.ConnectError):
            return f"cannot connect to {url}: {exc}"
        if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
            return f"connection to {url} lost before a response: {exc}"
        return f"STOW-RS to {url} failed: {type(exc).__name__}: {exc}"

    # ------------------------------------------------------------------ per-instance results

    def _per_instance(
        self, parts: list[_Part], response: httpx.Response, http_reason: str
    ) -> list[Outcome]:
        code = response.status_code
        failures = _failed_sops(response)
        if failures is None:
            if code == 409:
                reason = f"{http_reason} (no FailedSOPSequence in the response){_excerpt(response)}"
                return _all(parts, Verdict.PARK, reason)
            return _all(parts, Verdict.DELIVERED, http_reason)
        outcomes = []
        for part in parts:
            uid = part.item.sop_instance_uid
            if uid not in failures:
                outcomes.append(Outcome(part.item.id, Verdict.DELIVERED, http_reason))
                continue
            failure = failures[uid]
            if failure is None:
                reason = f"HTTP {code}: listed as failed without a FailureReason"
                outcomes.append(Outcome(part.item.id, Verdict.RETRY, reason))
                continue
            classified = classify_dimse(failure)
            outcomes.append(
                Outcome(part.item.id, classified.verdict, f"HTTP {code}: {classified.reason}")
            )
        return outcomes


class _Tally:
    """One wave's answered bytes and transport failures (requests report from their threads)."""

    def __init__(self) -> None:
        self.ok_bytes = 0
        self.transport_failures = 0
        self._lock = threading.Lock()

    def add(self, obs: Observation) -> None:
        with self._lock:
            if obs.ending is Ending.OK:
                self.ok_bytes += obs.bytes
            elif obs.ending is Ending.TRANSPORT:
                self.transport_failures += 1


class _BodyClock:
    """The body's chunks, noting when the last one was handed over (the response wait is
    measured from there)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = chunks
        self.ended: float | None = None

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        self.ended = time.monotonic()


def _sha256(body: _Body) -> str:
    """The body's SHA-256 (hex), reading the files once more: a signed payload costs a read of
    the batch from disk (page cache, ~0.6 GB/s here), far below any uplink's time."""
    digest = hashlib.sha256()
    for chunk in body:
        digest.update(chunk)
    return digest.hexdigest()


def _failed_sops(response: httpx.Response) -> dict[str, int | None] | None:
    """SOP Instance UID -> FailureReason from a DICOM JSON store response; None when the body
    is not DICOM JSON (an empty FailedSOPSequence gives an empty dict)."""
    try:
        data: Any = json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        return None
    if isinstance(data, list) and len(data) == 1:
        data = data[0]
    if not isinstance(data, dict):
        return None
    failures: dict[str, int | None] = {}
    sequence = data.get(FAILED_SOP_SEQUENCE)
    entries = sequence.get("Value", []) if isinstance(sequence, dict) else []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        uid = _first_value(entry, REFERENCED_SOP_INSTANCE_UID)
        reason = _first_value(entry, FAILURE_REASON)
        if isinstance(uid, str):
            failures[uid] = (
                int(reason)
                if isinstance(reason, int | float | str) and str(reason).isdigit()
                else None
            )
    return failures


def _first_value(dataset: dict[str, Any], tag: str) -> Any:
    element = dataset.get(tag)
    if not isinstance(element, dict):
        return None
    values = element.get("Value")
    if isinstance(values, list) and values:
        return values[0]
    return None


def _excerpt(response: httpx.Response) -> str:
    try:
        text = " ".join(response.text.split())
    except Exception:  # an undecodable body adds nothing useful
        return ""
    if not text:
        return ""
    if len(text) > EXCERPT:
        text = text[:EXCERPT] + "..."
    return f": {text}"


def _cause(exc: BaseException, kind: type[E]) -> E | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, kind):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _all(parts: list[_Part], verdict: Verdict, reason: str) -> list[Outcome]:
    return [Outcome(part.item.id, verdict, reason) for part in parts]
