"""DIMSE C-STORE destination (pynetdicom): one association per batch, files streamed from disk.

Every failure becomes an Outcome, never an exception: a peer that cannot be reached, refuses,
rejects, aborts or stalls gives RETRY for the items not yet answered; a per-item status is
classified by `edge.forward.status`; a queued file that has gone is PARK.

Streaming: pynetdicom's ``send_c_store(path)`` reads the whole file with ``dcmread`` unless the
process-wide ``pynetdicom._config.STORE_SEND_CHUNKED_DATASET`` is True; with it, the data set
is sent straight from the file in PDU-sized chunks (its own transfer syntax, no conversion).
This module turns it on.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import struct
import time
from collections.abc import Iterable
from typing import Any, cast

from pydicom.dataset import Dataset
from pynetdicom import AE, _config, evt
from pynetdicom.association import Association
from pynetdicom.pdu_primitives import A_ASSOCIATE, P_DATA

from edge.forward.protocol import Item, Outcome, Verdict
from edge.forward.status import classify_dimse
from edge.forward.throttle import TokenBucket

LOGGER = logging.getLogger(__name__)

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
# The transfer syntaxes our WSI instances use (documentation and validation of the queue).
WSI_TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.4.50",  # JPEG baseline (8 bit)
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K lossless
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    EXPLICIT_VR_LITTLE_ENDIAN,
)
MAX_CONTEXTS = 128  # PS3.8: presentation context IDs are odd numbers 1..255


def requested_contexts(items: Iterable[Item]) -> list[tuple[str, str]]:
    """(SOP class, transfer syntax) pairs to propose, one transfer syntax per context so the
    peer can accept each independently; each SOP class also gets explicit VR little endian as
    a fallback. Pure; keeps first-seen order."""
    pairs: dict[tuple[str, str], None] = {}
    for item in items:
        pairs[(item.sop_class_uid, item.transfer_syntax_uid)] = None
        pairs[(item.sop_class_uid, EXPLICIT_VR_LITTLE_ENDIAN)] = None
    return list(pairs)


def split_by_contexts(items: list[Item], limit: int = MAX_CONTEXTS) -> list[list[Item]]:
    """Split a batch, in order, into groups whose contexts fit one association. Pure."""
    groups: list[list[Item]] = []
    current: list[Item] = []
    for item in items:
        if current and len(requested_contexts([*current, item])) > limit:
            groups.append(current)
            current = []
        current.append(item)
    if current:
        groups.append(current)
    return groups


class CStoreDestination:
    def __init__(
        self,
        name: str,
        host: str,
        port: int,
        called_aet: str,
        calling_aet: str = "EDGE",
        tls: ssl.SSLContext | None = None,
        timeout_s: float = 30,
        max_pdu: int = 0,
        bucket: TokenBucket | None = None,
    ) -> None:
        self.name = name
        self.host = host
        self.port = port
        self.called_aet = called_aet
        self.calling_aet = calling_aet
        self.tls = tls
        self.timeout_s = timeout_s
        self.max_pdu = max_pdu
        self.bucket = bucket  # bandwidth cap on the P-DATA PDUs we send

    @property
    def peer(self) -> str:
        return f"{self.host}:{self.port}"

    def send(self, items: list[Item]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        ready: list[Item] = []
        for item in items:
            if item.path.is_file():
                ready.append(item)
            else:
                outcomes.append(Outcome(item.id, Verdict.PARK, f"queued file missing: {item.path}"))
        for group in split_by_contexts(ready):
            outcomes.extend(self._send_group(group))
        return outcomes

    def close(self) -> None:
        """Nothing held between batches: each batch opens and releases its association."""

    def _ae(self, items: list[Item]) -> AE:
        ae = AE(ae_title=self.calling_aet)
        ae.acse_timeout = self.timeout_s
        ae.dimse_timeout = self.timeout_s
        ae.network_timeout = self.timeout_s
        ae.connection_timeout = self.timeout_s
        ae.maximum_pdu_size = self.max_pdu
        for sop_class, syntax in requested_contexts(items):
            ae.add_requested_context(sop_class, [syntax])
        return ae

    def _send_group(self, items: list[Item]) -> list[Outcome]:
        _config.STORE_SEND_CHUNKED_DATASET = True
        ae = self._ae(items)
        tls_args = (self.tls, self.host) if self.tls is not None else None
        connected: list[bool] = []  # EVT_CONN_OPEN fired: TCP (and TLS) connection made
        try:
            assoc = ae.associate(
                self.host,
                self.port,
                ae_title=self.called_aet,
                max_pdu=self.max_pdu,
                tls_args=tls_args,
                evt_handlers=[(evt.EVT_CONN_OPEN, lambda event: connected.append(True))],
            )
        except Exception as exc:  # pynetdicom raises only for local misuse; keep the contract
            LOGGER.warning("association with %s failed: %s", self.peer, exc)
            return retry_all(items, f"association with {self.peer} failed: {exc}")
        if not assoc.is_established:
            if assoc.is_aborted and assoc.rejected_contexts and not assoc.accepted_contexts:
                # The peer supports none of the proposed (class, syntax) pairs: like 0x0122.
                return [
                    Outcome(
                        item.id,
                        Verdict.PARK,
                        f"{self.peer} accepted no presentation context for "
                        f"{item.sop_class_uid} in {item.transfer_syntax_uid}",
                    )
                    for item in items
                ]
            why = self._why_not_established(assoc, bool(connected))
            if why.startswith(CERTIFICATE_PROBLEM):
                # Retrying cannot fix a certificate nobody trusts: a person must (parked).
                return [Outcome(item.id, Verdict.PARK, why) for item in items]
            return retry_all(items, why)
        _bound_send_queue(assoc, self.bucket, direct=self.tls is None)
        outcomes: list[Outcome] = []
        answered = True  # did the last store get a response (or fail before sending)?
        try:
            for index, item in enumerate(items):
                if index and (not assoc.is_established or not answered):
                    # pynetdicom may report is_established for a moment after an A-ABORT has
                    # arrived; a store that got no response means the association is gone.
                    reason = (
                        f"association with {self.peer} ended (aborted by the peer or timed out)"
                        f" after {index} of {len(items)} instances were sent"
                    )
                    outcomes.extend(retry_all(items[index:], reason))
                    break
                outcome, answered = self._store(assoc, item)
                outcomes.append(outcome)
        finally:
            if assoc.is_established:
                if answered:
                    assoc.release()
                else:
                    assoc.abort()
            ae.shutdown()
        return outcomes

    def _store(self, assoc: Association, item: Item) -> tuple[Outcome, bool]:
        """The item's outcome, and False when no response came (the association is lost)."""
        try:
            status = assoc.send_c_store(item.path)
        except FileNotFoundError:
            return Outcome(item.id, Verdict.PARK, f"queued file missing: {item.path}"), True
        except OSError as exc:
            return Outcome(
                item.id, Verdict.RETRY, f"cannot read queued file {item.path}: {exc}"
            ), True
        except ValueError as exc:  # no accepted presentation context for this class/syntax
            return Outcome(item.id, Verdict.PARK, f"{self.peer} refused the context: {exc}"), True
        except AttributeError as exc:  # file meta lacks the SOP class/instance/syntax
            return Outcome(item.id, Verdict.PARK, f"queued file is not sendable: {exc}"), True
        except RuntimeError as exc:  # association went away between check and send
            return Outcome(
                item.id, Verdict.RETRY, f"association with {self.peer} lost: {exc}"
            ), False
        except Exception as exc:  # never raise: an unexpected failure is retried, then seen
            LOGGER.exception("C-STORE of %s to %s failed", item.path, self.peer)
            reason = f"C-STORE to {self.peer} failed: {type(exc).__name__}: {exc}"
            return Outcome(item.id, Verdict.RETRY, reason), False
        code = _status_code(status)
        if code is None:
            return Outcome(item.id, Verdict.RETRY, self._why_no_response(assoc)), False
        comment = str(status.get("ErrorComment", "") or "")
        classified = classify_dimse(code, comment)
        return Outcome(item.id, classified.verdict, classified.reason), True

    def _why_no_response(self, assoc: Association) -> str:
        if assoc.acse.is_aborted("a-abort"):
            return f"no C-STORE response: association aborted by {self.peer}"
        if assoc.acse.is_aborted("a-p-abort"):
            return f"no C-STORE response: connection to {self.peer} closed"
        return f"no C-STORE response from {self.peer} within {self.timeout_s:g} s"

    def _why_not_established(self, assoc: Association, connected: bool) -> str:
        if assoc.is_rejected:
            rsp = assoc.acceptor.primitive
            if isinstance(rsp, A_ASSOCIATE):
                return (
                    f"association rejected by {self.peer}: {rsp.result_str}, "
                    f"source {rsp.source_str}, reason {rsp.reason_str}"
                )
            return f"association rejected by {self.peer}"
        if connected and self.tls is not None:
            # TLS 1.3: a PACS refusing our certificate says so only after the handshake.
            probed = self._probe(read=True)
            if probed.startswith(CERTIFICATE_PROBLEM):
                return probed
        if connected:
            return (
                f"no association with {self.peer} after connecting: the peer aborted or did"
                f" not answer within {self.timeout_s:g} s"
            )
        # pynetdicom only logs why the connection failed (and marks it aborted); probe once.
        return self._probe()

    def _probe(self, read: bool = False) -> str:
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout_s) as sock:
                if self.tls is not None:
                    with self.tls.wrap_socket(sock, server_hostname=self.host) as tls:
                        if read:  # the peer's verdict on our certificate, if it has one
                            tls.settimeout(min(self.timeout_s, 2.0))
                            with contextlib.suppress(TimeoutError):
                                tls.recv(1)
        except ssl.SSLError as exc:
            if isinstance(exc, ssl.SSLCertVerificationError) or any(
                alert in str(exc) for alert in _CERTIFICATE_ALERTS
            ):
                return f"{CERTIFICATE_PROBLEM}: {exc} (peer {self.peer})"
            return f"TLS handshake failed: {exc} (peer {self.peer})"
        except ConnectionRefusedError:
            return f"connection refused to {self.peer}"
        except TimeoutError:
            return f"connection to {self.peer} timed out after {self.timeout_s:g} s"
        except OSError as exc:
            return f"cannot connect to {self.peer}: {exc.strerror or exc}"
        return f"no association with {self.peer}: no answer within {self.timeout_s:g} s"


CERTIFICATE_PROBLEM = "TLS certificate refused"
# The peer's alerts when it refuses our certificate (mutual TLS) or has none we accept.
_CERTIFICATE_ALERTS = (
    "ALERT_UNKNOWN_CA",
    "ALERT_BAD_CERTIFICATE",
    "ALERT_CERTIFICATE_REQUIRED",
    "ALERT_CERTIFICATE_UNKNOWN",
    "ALERT_CERTIFICATE_EXPIRED",
    "ALERT_CERTIFICATE_REVOKED",
)


def retry_all(items: Iterable[Item], reason: str) -> list[Outcome]:
    return [Outcome(item.id, Verdict.RETRY, reason) for item in items]


def _status_code(status: Any) -> int | None:
    if not isinstance(status, Dataset) or "Status" not in status:
        return None
    return int(cast(int, status.Status))


SEND_QUEUE_PDUS = 16  # P-DATA PDUs waiting for the socket at most (~16 x max PDU size)


def _bound_send_queue(assoc: Any, bucket: TokenBucket | None = None, direct: bool = False) -> None:
    """Backpressure for pynetdicom's sender, the bandwidth cap, and the fast path.

    pynetdicom encodes a data set into P-DATA PDUs as fast as it can read the file and queues
    them for its socket thread without limit, so a slow link queued a whole 1 GB level in memory
    (685 MB RSS in tools/bench forward). Wait while the queue is long instead. With a bucket,
    each P-DATA PDU also waits for its bytes' share of the cap before it is queued.

    `direct` (plain TCP only): P-DATA PDUs are framed here and written to the socket by this
    thread instead of passing one by one through pynetdicom's state machine thread, which
    costs ~140 µs a PDU (a 16 KB PDU each: 75,000 of them for a 1.2 GB slide). P-DATA does not
    change the association's state (DT-1 keeps Sta6), and nothing else is sent while a store is
    in flight, so the stream stays what the state machine would have written. Not with TLS:
    an SSL socket must not be written by one thread while another reads it.
    """
    dul = assoc.dul
    put = dul.send_pdu
    raw = getattr(dul.socket, "socket", None) if direct else None

    def throttled(primitive: Any) -> None:
        if isinstance(primitive, P_DATA):
            if bucket is not None:
                bucket.take(sum(len(pdv[1]) for pdv in primitive.presentation_data_value_list))
            if raw is not None:
                # Whatever the state machine still holds goes first: the order is the protocol.
                while dul.to_provider_queue.qsize() and assoc.is_established:
                    time.sleep(0.0002)
                try:
                    raw.sendall(p_data_tf(primitive.presentation_data_value_list))
                except OSError:
                    dul.event_queue.put("Evt17")  # transport closed: the DUL aborts, as it would
                return
            while dul.to_provider_queue.qsize() >= SEND_QUEUE_PDUS and assoc.is_established:
                time.sleep(0.0005)
        put(primitive)

    dul.send_pdu = throttled


def p_data_tf(values: Iterable[tuple[int, bytes]]) -> bytes:
    """A P-DATA-TF PDU (PS3.8 9.3.5): type 04H, length, then per value an item of length,
    presentation context ID and the value (message control header + fragment). Pure."""
    items = b"".join(
        struct.pack(">IB", len(value) + 1, context) + value for context, value in values
    )
    return struct.pack(">BBI", 0x04, 0x00, len(items)) + items
