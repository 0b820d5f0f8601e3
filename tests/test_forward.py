"""Forwarding: status tables, the C-STORE destination against a real pynetdicom SCP, and the
folder destination. Items are real WSI instances converted from a synthetic slide."""

from __future__ import annotations

import errno
import os
import socket
import ssl
from pathlib import Path

import pytest
from pydicom import dcmread

from edge.convert import convert
from edge.forward.cstore import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    CStoreDestination,
    requested_contexts,
    split_by_contexts,
)
from edge.forward.folder import FolderDestination
from edge.forward.protocol import Destination, Item, Outcome, Verdict
from edge.forward.status import FollowUp, classify_dimse, classify_http
from tests.dicom_peers import WSI_CLASS, Behaviour, store_scp

# ---------------------------------------------------------------- status tables (pure)


@pytest.mark.parametrize(
    ("code", "verdict", "text"),
    [
        (0x0000, Verdict.DELIVERED, "success"),
        (0xB000, Verdict.DELIVERED, "coercion"),
        (0xB006, Verdict.DELIVERED, "discarded"),
        (0xB007, Verdict.DELIVERED, "does not match"),
        (0xB123, Verdict.DELIVERED, "warning"),
        (0x0111, Verdict.DELIVERED, "duplicate"),
        (0xA700, Verdict.RETRY, "out of resources"),
        (0xA7FE, Verdict.RETRY, "out of resources"),
        (0x0110, Verdict.RETRY, "processing failure"),
        (0x0213, Verdict.RETRY, "resource limitation"),
        (0xA900, Verdict.PARK, "does not match SOP class"),
        (0xA9AB, Verdict.PARK, "does not match SOP class"),
        (0xC000, Verdict.PARK, "cannot understand"),
        (0xC211, Verdict.PARK, "cannot understand"),
        (0x0122, Verdict.PARK, "SOP class not supported"),
        (0x0124, Verdict.PARK, "not authorized"),
        (0x0117, Verdict.PARK, "invalid SOP instance"),
        (0x1234, Verdict.RETRY, "unknown"),
    ],
)
def test_classify_dimse(code: int, verdict: Verdict, text: str) -> None:
    found = classify_dimse(code)
    assert found.verdict is verdict
    assert text in found.reason
    assert found.reason.startswith(f"0x{code:04X}")


def test_classify_dimse_comment_and_no_response() -> None:
    assert (
        classify_dimse(0xA700, "disk full").reason == "0xA700 refused: out of resources (disk full)"
    )
    assert classify_dimse(None).verdict is Verdict.RETRY


@pytest.mark.parametrize(
    ("code", "verdict", "follow"),
    [
        (200, Verdict.DELIVERED, FollowUp.NONE),
        (204, Verdict.DELIVERED, FollowUp.NONE),
        (202, Verdict.DELIVERED, FollowUp.CHECK_FAILURES),
        (409, Verdict.PARK, FollowUp.CHECK_EXISTING),
        (401, Verdict.RETRY, FollowUp.REFRESH_AUTH),
        (403, Verdict.RETRY, FollowUp.REFRESH_AUTH),
        (413, Verdict.PARK, FollowUp.SPLIT_BATCH),
        (408, Verdict.RETRY, FollowUp.NONE),
        (429, Verdict.RETRY, FollowUp.NONE),
        (500, Verdict.RETRY, FollowUp.NONE),
        (503, Verdict.RETRY, FollowUp.NONE),
        (400, Verdict.PARK, FollowUp.NONE),
        (415, Verdict.PARK, FollowUp.NONE),
        (302, Verdict.RETRY, FollowUp.NONE),
    ],
)
def test_classify_http(code: int, verdict: Verdict, follow: FollowUp) -> None:
    found = classify_http(code)
    assert (found.verdict, found.follow_up) == (verdict, follow)
    assert found.reason.startswith(f"HTTP {code}")


# ---------------------------------------------------------------- real WSI items


@pytest.fixture(scope="module")
def wsi_files(synthetic_tiff: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    result = convert(synthetic_tiff, tmp_path_factory.mktemp("wsi"))
    files = sorted(Path(result.output).glob("*.dcm"))
    assert len(files) >= 3
    return files


def item_for(path: Path, item_id: int) -> Item:
    ds = dcmread(path, stop_before_pixels=True)
    return Item(
        id=item_id,
        path=path,
        sop_class_uid=str(ds.SOPClassUID),
        sop_instance_uid=str(ds.SOPInstanceUID),
        transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
        size=path.stat().st_size,
    )


@pytest.fixture()
def items(wsi_files: list[Path]) -> list[Item]:
    return [item_for(path, number) for number, path in enumerate(wsi_files, start=1)]


def by_id(outcomes: list[Outcome]) -> dict[int, Outcome]:
    return {outcome.item_id: outcome for outcome in outcomes}


def destination(port: int, **kwargs: object) -> CStoreDestination:
    return CStoreDestination("pacs", "127.0.0.1", port, "PACS", **kwargs)  # type: ignore[arg-type]


def test_items_are_jpeg_wsi(items: list[Item]) -> None:
    assert any(item.sop_class_uid == WSI_CLASS for item in items)
    assert any(item.transfer_syntax_uid == "1.2.840.10008.1.2.4.50" for item in items)


def test_requested_contexts_and_split(items: list[Item]) -> None:
    pairs = requested_contexts(items)
    assert len(pairs) == len(set(pairs))
    for item in items:
        assert (item.sop_class_uid, item.transfer_syntax_uid) in pairs
        assert (item.sop_class_uid, EXPLICIT_VR_LITTLE_ENDIAN) in pairs
    fake = [Item(n, Path("x"), f"1.2.3.{n}", "1.2.840.10008.1.2.4.50", "1", 0) for n in range(100)]
    groups = split_by_contexts(fake)
    assert [len(g) for g in groups] == [64, 36]
    assert all(len(requested_contexts(g)) <= 128 for g in groups)


# ---------------------------------------------------------------- C-STORE, real SCP


def test_cstore_delivers_batch_on_one_association(items: list[Item]) -> None:
    with store_scp() as scp:
        dest: Destination = destination(scp.port)
        outcomes = dest.send(items)
        dest.close()
    assert {o.item_id for o in outcomes} == {item.id for item in items}
    assert all(o.verdict is Verdict.DELIVERED for o in outcomes), outcomes
    assert all(o.reason == "0x0000 success" for o in outcomes)
    assert (scp.requested, scp.accepted) == (1, 1)
    assert set(scp.received) == {item.sop_instance_uid for item in items}
    for item in items:
        assert scp.received[item.sop_instance_uid] == dcmread(item.path).PixelData


def test_cstore_streams_from_file(items: list[Item], monkeypatch: pytest.MonkeyPatch) -> None:
    """The path form must not parse the whole file (pynetdicom's dcmread fallback)."""
    import pynetdicom.association

    def no_dcmread(*args: object, **kwargs: object) -> None:
        raise AssertionError("send_c_store read the whole data set")

    monkeypatch.setattr(pynetdicom.association, "dcmread", no_dcmread)
    with store_scp() as scp:
        outcomes = destination(scp.port).send(items)
    assert all(o.verdict is Verdict.DELIVERED for o in outcomes), outcomes
    assert len(scp.received) == len(items)


def test_cstore_silent_peer_after_connect(items: list[Item]) -> None:
    """A socket that accepts but never answers the A-ASSOCIATE-RQ."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        outcomes = destination(port, timeout_s=1).send(items[:2])
    assert all(o.verdict is Verdict.RETRY for o in outcomes)
    assert "did not answer within 1 s" in outcomes[0].reason


@pytest.mark.parametrize(
    ("status", "verdict", "text"),
    [
        (0xA700, Verdict.RETRY, "0xA700 refused: out of resources"),
        (0xC000, Verdict.PARK, "0xC000 error: cannot understand"),
        (0x0122, Verdict.PARK, "0x0122 refused: SOP class not supported"),
        (0xB000, Verdict.DELIVERED, "0xB000 warning: coercion"),
        (0x0111, Verdict.DELIVERED, "0x0111 duplicate"),
    ],
)
def test_cstore_status_from_peer(
    items: list[Item], status: int, verdict: Verdict, text: str
) -> None:
    with store_scp(Behaviour(status=status)) as scp:
        outcomes = destination(scp.port).send(items[:2])
    assert len(outcomes) == 2
    for outcome in outcomes:
        assert outcome.verdict is verdict
        assert outcome.reason.startswith(text)
    assert scp.accepted == 1


def test_cstore_abort_mid_batch(items: list[Item]) -> None:
    with store_scp(Behaviour(abort_after=1)) as scp:
        outcomes = by_id(destination(scp.port).send(items))
    first, *rest = items
    assert outcomes[first.id].verdict is Verdict.DELIVERED
    assert set(scp.received) == {first.sop_instance_uid}
    for item in rest:
        assert outcomes[item.id].verdict is Verdict.RETRY
    assert "no C-STORE response" in outcomes[rest[0].id].reason
    assert "ended" in outcomes[rest[-1].id].reason
    assert f"after 2 of {len(items)} instances were sent" in outcomes[rest[-1].id].reason


def test_cstore_stall_times_out(items: list[Item]) -> None:
    with store_scp(Behaviour(stall_s=10)) as scp:
        outcomes = by_id(destination(scp.port, timeout_s=1).send(items[:2]))
    assert all(o.verdict is Verdict.RETRY for o in outcomes.values())
    assert "within 1 s" in outcomes[items[0].id].reason


def test_cstore_nothing_listening(items: list[Item]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    outcomes = destination(port, timeout_s=2).send(items)
    assert len(outcomes) == len(items)
    for outcome in outcomes:
        assert outcome.verdict is Verdict.RETRY
        assert outcome.reason == f"connection refused to 127.0.0.1:{port}"


def test_cstore_rejected_by_called_aet(items: list[Item]) -> None:
    with store_scp(Behaviour(require_called_aet="OTHER")) as scp:
        outcomes = destination(scp.port).send(items[:1])
    assert outcomes[0].verdict is Verdict.RETRY
    assert "association rejected" in outcomes[0].reason
    assert "Called AE title not recognised" in outcomes[0].reason


def test_cstore_class_not_supported_parks(items: list[Item]) -> None:
    ct = "1.2.840.10008.5.1.4.1.1.2"
    with store_scp(Behaviour(supported_classes=(ct,))) as scp:
        outcomes = destination(scp.port).send(items[:2])
    assert all(o.verdict is Verdict.PARK for o in outcomes)
    assert "accepted no presentation context" in outcomes[0].reason


def test_cstore_missing_file_parks(items: list[Item], tmp_path: Path) -> None:
    gone = Item(99, tmp_path / "gone.dcm", WSI_CLASS, "1.2.3.4", "1.2.840.10008.1.2.4.50", 1)
    with store_scp() as scp:
        outcomes = by_id(destination(scp.port).send([gone, *items[:1]]))
    assert outcomes[99] == Outcome(99, Verdict.PARK, f"queued file missing: {gone.path}")
    assert outcomes[items[0].id].verdict is Verdict.DELIVERED


def _tls_contexts() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    trustme = pytest.importorskip("trustme", reason="trustme not installed (pip install trustme)")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


def test_cstore_over_tls(items: list[Item]) -> None:
    server, client = _tls_contexts()
    with store_scp(tls=server) as scp:
        outcomes = destination(scp.port, tls=client).send(items[:2])
    assert all(o.verdict is Verdict.DELIVERED for o in outcomes), outcomes
    assert len(scp.received) == 2


def test_cstore_tls_untrusted_certificate(items: list[Item]) -> None:
    server, _ = _tls_contexts()
    untrusting = ssl.create_default_context()  # does not trust the test CA
    with store_scp(tls=server) as scp:
        outcomes = destination(scp.port, tls=untrusting, timeout_s=3).send(items[:2])
    for outcome in outcomes:
        assert outcome.verdict is Verdict.PARK, "no retry can fix an untrusted certificate"
        assert outcome.reason.startswith("TLS certificate refused: ")
        assert "CERTIFICATE_VERIFY_FAILED" in outcome.reason
    assert not scp.received


def test_cstore_mutual_tls_without_a_client_certificate_parks(items: list[Item]) -> None:
    """The PACS requires our certificate (mutual TLS) and we present none (or a wrong one):
    parked with the peer's reason, nothing sent."""
    server, client = _tls_contexts()
    server.verify_mode = ssl.CERT_REQUIRED  # the PACS wants a client certificate
    trustme = pytest.importorskip("trustme")
    server.load_verify_locations(cadata=trustme.CA().cert_pem.bytes().decode())
    with store_scp(tls=server) as scp:
        outcomes = destination(scp.port, tls=client, timeout_s=3).send(items[:1])
    (outcome,) = outcomes
    assert outcome.verdict is Verdict.PARK, outcome
    assert outcome.reason.startswith("TLS certificate refused: "), outcome.reason
    assert not scp.received


# ---------------------------------------------------------------- folder destination


def test_folder_layout_and_bytes(items: list[Item], tmp_path: Path) -> None:
    dest: Destination = FolderDestination("usb", tmp_path / "export")
    outcomes = dest.send(items)
    assert all(o.verdict is Verdict.DELIVERED for o in outcomes), outcomes
    for item in items:
        ds = dcmread(item.path, stop_before_pixels=True)
        target = (
            tmp_path
            / "export"
            / ds.StudyInstanceUID
            / ds.SeriesInstanceUID
            / f"{item.sop_instance_uid}.dcm"
        )
        assert target.read_bytes() == item.path.read_bytes()
    leftovers = [p for p in (tmp_path / "export").rglob("*") if p.name.startswith(".")]
    assert leftovers == []


def test_folder_idempotent_and_conflict(items: list[Item], tmp_path: Path) -> None:
    dest = FolderDestination("usb", tmp_path)
    first = dest.send(items[:1])[0]
    target = dest.target(items[0])
    inode = target.stat().st_ino
    again = dest.send(items[:1])[0]
    assert (first.verdict, again.verdict) == (Verdict.DELIVERED, Verdict.DELIVERED)
    assert again.reason.startswith("already present")
    assert target.stat().st_ino == inode  # not copied again
    target.write_bytes(b"something else")
    conflict = dest.send(items[:1])[0]
    assert conflict.verdict is Verdict.PARK
    assert "conflict" in conflict.reason


def test_folder_missing_source_parks(tmp_path: Path) -> None:
    gone = Item(7, tmp_path / "gone.dcm", WSI_CLASS, "1.2.3", "1.2.840.10008.1.2.4.50", 1)
    outcome = FolderDestination("usb", tmp_path / "out").send([gone])[0]
    assert outcome == Outcome(7, Verdict.PARK, f"queued file missing: {gone.path}")


def test_folder_disk_full_retries_and_leaves_nothing(
    items: list[Item], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("edge.forward.folder.os.fsync", full)
    outcome = FolderDestination("usb", tmp_path / "out").send(items[:1])[0]
    assert outcome.verdict is Verdict.RETRY
    assert "No space left on device" in outcome.reason and "ENOSPC" in outcome.reason
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_folder_unwritable_destination_retries(items: list[Item], tmp_path: Path) -> None:
    blocker = tmp_path / "out"
    blocker.write_bytes(b"a file where the folder should be")
    outcome = FolderDestination("usb", blocker).send(items[:1])[0]
    assert outcome.verdict is Verdict.RETRY
    assert "copy to" in outcome.reason


def test_p_data_tf_framing_matches_pynetdicom() -> None:
    """The C-STORE fast path frames P-DATA-TF PDUs itself; byte for byte what pynetdicom's
    state machine would have written."""
    from pynetdicom.pdu import P_DATA_TF
    from pynetdicom.pdu_primitives import P_DATA

    from edge.forward.cstore import p_data_tf

    for values in (
        [(1, b"\x02" + bytes(range(256)) * 4)],
        [(3, b"\x03" + b"\x00\x08" * 50), (5, b"\x00" + b"x" * 16372)],
    ):
        primitive = P_DATA()
        primitive.presentation_data_value_list = [[c, v] for c, v in values]
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        assert p_data_tf(values) == pdu.encode()


def test_stowrs_to_a_server_with_an_untrusted_certificate_parks(
    items: list[Item], tmp_path: Path
) -> None:
    """HTTPS to a DICOMweb store whose certificate no configured CA signed (a man in the
    middle, or a renewal the site has not rolled out): nothing is sent, parked with the
    reason; with its CA configured the same server is trusted."""
    import http.server
    import threading

    from edge import config
    from edge.forward import factory

    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf = ca.issue_cert("127.0.0.1")
    leaf.configure_cert(server_context)
    received: list[bytes] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = server_context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{httpd.server_address[1]}/dicom-web"

    def build(**extra: str) -> Destination:
        table = {"name": "cloud", "kind": "stowrs", "url": url, "timeout_s": 5, **extra}
        return factory.build(config.parse({"destination": [table]}).destinations[0])

    try:
        (outcome, *_) = build().send(items[:1])
        assert outcome.verdict is Verdict.PARK, outcome
        assert outcome.reason.startswith("TLS certificate refused"), outcome.reason
        assert not received, "nothing reached an untrusted server"
        ca_file = tmp_path / "ca.pem"
        ca.cert_pem.write_to_path(str(ca_file))
        (trusted, *_) = build(tls_ca_file=str(ca_file)).send(items[:1])
        assert trusted.verdict is Verdict.RETRY and "503" in trusted.reason, trusted
        assert received, "with its CA configured, the server is trusted"
        # Pinning: exactly the server's certificate is accepted, not another the same CA signed.
        pin, other = tmp_path / "pin.pem", tmp_path / "other.pem"
        leaf.cert_chain_pems[0].write_to_path(str(pin))
        ca.issue_cert("127.0.0.1").cert_chain_pems[0].write_to_path(str(other))
        received.clear()
        (pinned, *_) = build(tls_pin_file=str(pin)).send(items[:1])
        assert pinned.verdict is Verdict.RETRY and "503" in pinned.reason and received, pinned
        received.clear()
        (wrong, *_) = build(tls_pin_file=str(other)).send(items[:1])
        assert wrong.verdict is Verdict.PARK and wrong.reason.startswith("TLS certificate refused")
        assert not received, "a certificate other than the pinned one gets nothing"
    finally:
        httpd.shutdown()
