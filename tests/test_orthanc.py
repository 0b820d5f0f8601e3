"""STOW-RS and C-STORE against a real Orthanc (Debian `orthanc` + `orthanc-dicomweb`).

Items are real WSI instances converted from the synthetic slide. The only mock is the bearer
token refresh (Orthanc has no bearer tokens): an httpx.MockTransport, no network.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from pydicom import dcmread

from edge.forward.cstore import CStoreDestination
from edge.forward.protocol import Item, Outcome, Verdict
from edge.forward.stowrs import StowRsDestination
from tests.orthanc import Orthanc, free_port, orthanc, orthanc_server
from tests.test_forward import item_for, wsi_files

__all__ = ["orthanc", "wsi_files"]  # fixtures used by name

pytestmark = pytest.mark.integration


@pytest.fixture()
def items(wsi_files: list[Path]) -> list[Item]:
    return [item_for(path, number) for number, path in enumerate(wsi_files, start=1)]


@pytest.fixture()
def empty(orthanc: Orthanc) -> Orthanc:
    orthanc.clear()
    assert orthanc.count() == 0
    return orthanc


def verdicts(outcomes: list[Outcome]) -> set[Verdict]:
    return {outcome.verdict for outcome in outcomes}


def assert_all(outcomes: list[Outcome], items: list[Item], verdict: Verdict) -> None:
    assert sorted(o.item_id for o in outcomes) == sorted(item.id for item in items)
    assert verdicts(outcomes) == {verdict}, outcomes


def assert_stored_identical(server: Orthanc, items: list[Item]) -> None:
    stored = server.instances()
    assert sorted(stored) == sorted(item.sop_instance_uid for item in items)
    for item in items:
        theirs = dcmread(io.BytesIO(server.file(item.sop_instance_uid)))
        ours = dcmread(item.path)
        assert theirs.PixelData == ours.PixelData, item.path
        assert str(theirs.file_meta.TransferSyntaxUID) == item.transfer_syntax_uid


def stow(server: Orthanc, **kwargs: object) -> StowRsDestination:
    return StowRsDestination("orthanc", server.dicomweb_url, **kwargs)  # type: ignore[arg-type]


def cstore(server: Orthanc) -> CStoreDestination:
    return CStoreDestination("orthanc", "127.0.0.1", server.dicom_port, "ORTHANC", timeout_s=10)


# ---------------------------------------------------------------- STOW-RS


def test_stow_delivers_and_resend_is_delivered(empty: Orthanc, items: list[Item]) -> None:
    dest = stow(empty)
    outcomes = dest.send(items)
    assert_all(outcomes, items, Verdict.DELIVERED)
    assert dest.requests == 1
    assert_stored_identical(empty, items)
    # (b) the same instances again: delivered, still one copy each
    again = dest.send(items)
    dest.close()
    assert_all(again, items, Verdict.DELIVERED)
    assert empty.count() == len(items)
    assert sorted(empty.instances()) == sorted(item.sop_instance_uid for item in items)


def test_stow_splits_requests_under_cap(empty: Orthanc, items: list[Item]) -> None:
    largest = max(item.size for item in items)
    posts: list[int] = []

    def count(request: httpx.Request) -> None:
        posts.append(int(request.headers["Content-Length"]))
        assert "chunked" not in request.headers.get("Transfer-Encoding", "")

    transport = httpx.HTTPTransport()
    cap = largest + 1000
    dest = stow(empty, max_request_bytes=cap, transport=transport)
    dest._client.event_hooks["request"] = [count]
    outcomes = dest.send(items)
    dest.close()
    assert_all(outcomes, items, Verdict.DELIVERED)
    assert len(posts) >= 2, posts
    assert all(length <= cap for length in posts)
    assert_stored_identical(empty, items)


def test_stow_single_instance_over_cap_is_parked(orthanc: Orthanc, items: list[Item]) -> None:
    big = max(items, key=lambda item: item.size)
    dest = stow(orthanc, max_request_bytes=big.size // 2)
    outcomes = dest.send([big])
    assert dest.requests == 0
    assert [o.verdict for o in outcomes] == [Verdict.PARK]
    assert "does not fit one STOW-RS request" in outcomes[0].reason
    assert f"max_request_bytes {big.size // 2}" in outcomes[0].reason


def test_stow_missing_file_is_parked(orthanc: Orthanc, items: list[Item], tmp_path: Path) -> None:
    gone = Item(99, tmp_path / "gone.dcm", "1.2", "1.2.3", "1.2.840.10008.1.2.1", 10)
    outcomes = stow(orthanc).send([gone])
    assert [(o.item_id, o.verdict) for o in outcomes] == [(99, Verdict.PARK)]
    assert "queued file missing" in outcomes[0].reason


# ---------------------------------------------------------------- C-STORE to Orthanc


def test_cstore_to_orthanc(empty: Orthanc, items: list[Item]) -> None:
    outcomes = cstore(empty).send(items)
    assert_all(outcomes, items, Verdict.DELIVERED)
    assert_stored_identical(empty, items)
    again = cstore(empty).send(items)
    assert_all(again, items, Verdict.DELIVERED)
    assert empty.count() == len(items)


# ---------------------------------------------------------------- outage


def test_outage_then_recovery(empty: Orthanc, items: list[Item]) -> None:
    empty.stop()
    try:
        down_stow = stow(empty, timeout_s=5).send(items)
        down_cstore = cstore(empty).send(items)
    finally:
        empty.start()
    assert_all(down_stow, items, Verdict.RETRY)
    assert f"connection refused to {empty.dicomweb_url}" in down_stow[0].reason
    assert_all(down_cstore, items, Verdict.RETRY)
    assert f"connection refused to 127.0.0.1:{empty.dicom_port}" in down_cstore[0].reason
    assert_all(stow(empty).send(items[:2]), items[:2], Verdict.DELIVERED)
    assert_all(cstore(empty).send(items[2:]), items[2:], Verdict.DELIVERED)
    assert_stored_identical(empty, items)


def test_stow_unreachable_port_names_it(items: list[Item]) -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    outcomes = StowRsDestination("x", url, timeout_s=2).send(items[:1])
    assert [o.verdict for o in outcomes] == [Verdict.RETRY]
    assert outcomes[0].reason == f"connection refused to {url}"


# ---------------------------------------------------------------- auth


def test_stow_basic_auth(items: list[Item], tmp_path: Path) -> None:
    with orthanc_server(tmp_path / "orthanc", users={"edge": "s3cret"}) as server:
        wrong = stow(server, basic=("edge", "wrong")).send(items[:1])
        # Our own password refused after a re-read: retrying cannot help, a person must look.
        assert [o.verdict for o in wrong] == [Verdict.PARK]
        assert "authentication failed" in wrong[0].reason
        assert "basic credentials refused" in wrong[0].reason
        assert "wrong" not in wrong[0].reason
        right = stow(server, basic=("edge", "s3cret")).send(items[:1])
        assert [o.verdict for o in right] == [Verdict.DELIVERED], right
        assert server.instances() == [items[0].sop_instance_uid]


def test_stow_bearer_token_reread_on_401(items: list[Item], tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("old-token\n")
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = request.read()
        assert len(body) == int(request.headers["Content-Length"])
        seen.append(request.headers.get("Authorization", ""))
        if request.headers.get("Authorization") != "Bearer new-token":
            token_file.write_text("new-token\n")  # the token was rotated meanwhile
            return httpx.Response(401, text="expired")
        return httpx.Response(200, json={})

    dest = StowRsDestination(
        "mock",
        "https://pacs.test/dicomweb",
        token_file=token_file,
        transport=httpx.MockTransport(handler),
    )
    outcomes = dest.send(items[:2])
    assert_all(outcomes, items[:2], Verdict.DELIVERED)
    assert seen == ["Bearer old-token", "Bearer new-token"]

    def always_401(request: httpx.Request) -> httpx.Response:
        request.read()
        seen.append(request.headers.get("Authorization", ""))
        return httpx.Response(401, text="no")

    seen.clear()
    dest = StowRsDestination(
        "mock",
        "https://pacs.test/dicomweb",
        token_file=token_file,
        transport=httpx.MockTransport(always_401),
    )
    outcomes = dest.send(items[:1])
    assert [o.verdict for o in outcomes] == [Verdict.RETRY]
    assert "authentication failed" in outcomes[0].reason
    assert "new-token" not in outcomes[0].reason
    assert len(seen) == 2  # one retry after re-reading the token, no more


def test_stow_failed_sop_sequence_mapping(items: list[Item]) -> None:
    """409 / 202 bodies as PS3.18 describes them: duplicates delivered, others classified."""
    a, b, c = items[:3]

    def failed(uid: str, reason: int) -> dict[str, object]:
        return {
            "00081155": {"vr": "UI", "Value": [uid]},
            "00081197": {"vr": "US", "Value": [reason]},
        }

    def handler(request: httpx.Request) -> httpx.Response:
        request.read()
        body = {
            "00081198": {
                "vr": "SQ",
                "Value": [failed(a.sop_instance_uid, 0x0111), failed(b.sop_instance_uid, 0xC000)],
            }
        }
        return httpx.Response(409, content=json.dumps(body).encode())

    dest = StowRsDestination("mock", "http://pacs.test", transport=httpx.MockTransport(handler))
    got = {o.item_id: o for o in dest.send([a, b, c])}
    assert got[a.id].verdict is Verdict.DELIVERED and "0x0111" in got[a.id].reason
    assert got[b.id].verdict is Verdict.PARK and "0xC000" in got[b.id].reason
    assert got[c.id].verdict is Verdict.DELIVERED


def test_edge_send_to_orthanc_over_both_protocols(
    orthanc: Orthanc, tmp_path: Path, wsi_files: list[Path]
) -> None:
    """The whole path a technician uses: config file, `edge send --wait`, Orthanc has it all."""
    orthanc.clear()
    slide = wsi_files[0].parent
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        f'[storage]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[[destination]]\nname = "web"\nkind = "stowrs"\nurl = "{orthanc.dicomweb_url}"\n'
        f'[[destination]]\nname = "pacs"\nkind = "cstore"\nport = {orthanc.dicom_port}\n'
        'called_aet = "ORTHANC"\n'
    )
    for name in ("web", "pacs"):
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "edge.cli",
                "send",
                str(slide),
                "--to",
                name,
                "--wait",
                "--config",
                str(cfg),
                "--json",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["delivered"] == len(list(slide.glob("*.dcm")))
    stored = set(orthanc.instances())
    assert stored == {
        dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in slide.glob("*.dcm")
    }
