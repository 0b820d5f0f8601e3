"""The hub role (edge/hub, docs/hub.md) for real: the hub's server running, sites sending with
the appliance's own `edge send` (STOW-RS client, bearer token file), a real Orthanc behind a
forwarding hub, TLS with a throwaway CA."""

from __future__ import annotations

import hashlib
import json
import random
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid

from edge import config as cfg
from edge.dicom import parts as dicom_parts
from edge.forward.protocol import Item, Verdict
from edge.forward.stowrs import StowRsDestination
from edge.hub.multipart import MultipartError, PartData, PartEnd, PartStart, Splitter
from edge.hub.server import HubHandle, serve
from edge.outbox.header import read_header
from edge.outbox.schema import DATABASE
from edge.sync.plan import prepare_for
from edge.web import serve as serve_web
from tests.helpers import run_edge
from tests.orthanc import Orthanc, free_port, orthanc

__all__ = ["orthanc"]  # fixtures used by name

CT = 'multipart/related; type="application/dicom"; boundary={}'


# ---------------------------------------------------------------- fixtures and helpers


def token_file(path: Path, mode: int = 0o600) -> Path:
    path.write_text(secrets.token_urlsafe(24) + "\n")
    path.chmod(mode)
    return path


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic slide made and converted with the CLI, as a site would."""
    root = tmp_path_factory.mktemp("hub-slide")
    made = run_edge("synth", "-o", str(root / "s.svs"), "--size", "3000x2200", "--seed", "11")
    assert made.returncode == 0, made.stderr
    done = run_edge("convert", str(root / "s.svs"), "-o", str(root / "wsi"), "-q")
    assert done.returncode == 0, done.stderr
    folder = root / "wsi" / "s"
    assert len(list(folder.glob("*.dcm"))) >= 4
    return folder


@dataclass
class Rig:
    root: Path
    config_file: Path
    config: cfg.Config
    handle: HubHandle
    tokens: dict[str, Path]

    @property
    def store(self) -> Path:
        return self.config.hub_store_dir

    def stored(self, site: str) -> list[Path]:
        return sorted((self.store / site).rglob("*.dcm"))


def hub_toml(root: Path, tokens: dict[str, Path], extra: str = "", listen: str = "") -> str:
    sites = "".join(
        f'[[hub.site]]\nname = "{name}"\ntoken_file = "{path}"\n' for name, path in tokens.items()
    )
    return (
        f'[storage]\nstate_dir = "{root / "state"}"\n'
        f'[hub]\nlisten = "{listen or "127.0.0.1:0"}"\n{extra}\n{sites}'
    )


@pytest.fixture()
def hub(tmp_path: Path) -> Iterator[Rig]:
    with _rig(tmp_path) as rig:
        yield rig


@contextmanager
def _rig(root: Path, extra: str = "") -> Iterator[Rig]:
    root.mkdir(parents=True, exist_ok=True)
    tokens = {name: token_file(root / f"{name}.token") for name in ("site-a", "site-b")}
    status = token_file(root / "status.token")
    path = root / "hub.toml"
    path.write_text(hub_toml(root, tokens, f'status_token_file = "{status}"\n{extra}'))
    config = cfg.load(path)
    rig = Rig(root, path, config, serve(config), {**tokens, "status": status})
    try:
        yield rig
    finally:
        rig.handle.stop()


def site_toml(root: Path, url: str, token: Path, extra: str = "") -> Path:
    path = root / "site.toml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f'[storage]\nstate_dir = "{root / "state"}"\n'
        "[forward]\nretry_base_s = 0.2\nretry_ceiling_s = 0.5\n"
        f'[[destination]]\nname = "hub"\nkind = "stowrs"\nurl = "{url}"\n'
        f'token_file = "{token}"\ntimeout_s = 10\n{extra}'
    )
    return path


def send(site_config: Path, *paths: Path, timeout: float = 30) -> tuple[int, dict[str, object]]:
    proc = run_edge(
        "send",
        *map(str, paths),
        "--to",
        "hub",
        "--wait",
        "--timeout",
        str(timeout),
        "--config",
        str(site_config),
        "--json",
    )
    assert proc.stdout, proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def item(path: Path, n: int = 1) -> Item:
    h = read_header(path)
    return Item(n, path, h.sop_class_uid, h.sop_instance_uid, h.transfer_syntax_uid, h.size)


def body(boundary: str, *parts: bytes) -> bytes:
    out = b""
    for part in parts:
        out += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def bearer(path: Path) -> dict[str, str]:
    return {"Authorization": f"Bearer {path.read_text().strip()}"}


def status_json(rig: Rig) -> dict[str, dict[str, object]]:
    proc = run_edge("hub", "status", "--json", "--config", str(rig.config_file))
    assert proc.returncode == 0, proc.stderr
    return {s["site"]: s for s in json.loads(proc.stdout)["sites"]}


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_with_new_bytes(source: Path, target: Path, *, same_uid: bool, extra: int = 0) -> Path:
    """A copy of an instance with other bytes: the same SOP Instance UID (a conflict) or a new
    one; `extra` bytes of a private element make it as large as a test needs."""
    ds = pydicom.dcmread(source)
    ds.ContentTime = "235959"
    if not same_uid:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    if extra:
        block = ds.private_block(0x0009, "EDGE TEST", create=True)
        block.add_new(0x01, "OB", random.Random(1).randbytes(extra))
    ds.save_as(target, enforce_file_format=True)
    return target


# ---------------------------------------------------------------- the splitter (pure)


def test_splitter_any_chunking_gives_the_same_parts() -> None:
    rng = random.Random(7)
    payloads = [rng.randbytes(n) for n in (0, 1, 5000, 70_000)]
    # A payload holding most of the delimiter must not be cut there.
    payloads.append(b"\r\n--edge-b0undar" + b"\r\n--edge-b0undarX" + rng.randbytes(100))
    raw = b"preamble\r\n" + body("edge-b0undary", *payloads) + b"epilogue"
    for chunk in (1, 3, 64, 4096, len(raw)):
        splitter = Splitter("edge-b0undary")
        found: list[bytes] = []
        for start in range(0, len(raw), chunk):
            for event in splitter.feed(raw[start : start + chunk]):
                if isinstance(event, PartStart):
                    assert event.headers == {"content-type": "application/dicom"}
                    found.append(b"")
                elif isinstance(event, PartData):
                    found[-1] += event.data
                else:
                    assert isinstance(event, PartEnd)
        splitter.finish()
        assert found == payloads, f"chunk {chunk}"
    cut = Splitter("b")
    cut.feed(body("b", b"abc")[:-6])
    with pytest.raises(MultipartError, match="ended in part 1"):
        cut.finish()


# ---------------------------------------------------------------- two sites, real clients


def test_two_sites_send_and_status_counts(hub: Rig, slide: Path, tmp_path: Path) -> None:
    files = sorted(slide.glob("*.dcm"))
    site_a = site_toml(tmp_path / "a", hub.handle.url, hub.tokens["site-a"])
    code, result = send(site_a, slide)
    assert code == 0 and result["delivered"] == len(files), result
    site_b = site_toml(tmp_path / "b", hub.handle.url, hub.tokens["site-b"])
    code, result = send(site_b, files[0], files[1])
    assert code == 0 and result["delivered"] == 2, result

    # Byte for byte, under <site>/<study>/<series>/<sop>.dcm.
    header = read_header(files[0])
    stored = hub.stored("site-a")
    assert {sha(p) for p in stored} == {sha(p) for p in files} and len(stored) == len(files)
    for path in files:
        h = read_header(path)
        target = hub.store / "site-a" / h.study_uid / h.series_uid / f"{h.sop_instance_uid}.dcm"
        assert target.read_bytes() == path.read_bytes()
    assert len(hub.stored("site-b")) == 2
    assert not list((hub.store / ".incoming").iterdir()), "no temp file left behind"

    status = status_json(hub)
    total = sum(p.stat().st_size for p in files)
    a, b = status["site-a"], status["site-b"]
    assert (a["instances_today"], a["instances_total"]) == (len(files), len(files))
    assert (a["bytes_today"], a["bytes_total"]) == (total, total)
    assert a["last_address"] == "127.0.0.1" and a["last_status"] == 200
    assert a["series"] == [
        {
            "study_uid": header.study_uid,
            "series_uid": header.series_uid,
            "instances": len(files),
            "bytes": total,
            "last_at": a["series"][0]["last_at"],  # type: ignore[index]
        }
    ]
    assert b["instances_total"] == 2
    assert abs(float(a["last_contact_at"]) - time.time()) < 60  # type: ignore[arg-type]
    text = run_edge("hub", "status", "--config", str(hub.config_file)).stdout
    assert "site-a: last contact " in text and f"{len(files)} instance(s) today" in text
    assert f"series {header.series_uid}: {len(files)} instance(s)" in text

    # Sent again (a new outbox, as after a reinstall): success, no second copy.
    mtimes = {p: p.stat().st_mtime_ns for p in stored}
    again = site_toml(tmp_path / "a2", hub.handle.url, hub.tokens["site-a"])
    code, result = send(again, slide)
    assert code == 0 and result["delivered"] == len(files), result
    assert {p: p.stat().st_mtime_ns for p in hub.stored("site-a")} == mtimes
    after = status_json(hub)["site-a"]
    assert after["instances_total"] == len(files) and after["requests"] == a["requests"] + 1  # type: ignore[operator]

    # The dashboard's Sites panel (open_view: loopback without a login).
    web = serve_web(
        replace(hub.config, web=cfg.Web(open_view=True, discover_s=0)), listen="127.0.0.1:0"
    )
    try:
        page = httpx.get(web.url + "/destinations").text
    finally:
        web.stop()
    row = re.search(r'<tr data-site="site-a">(.*?)</tr>', page, re.S)
    assert row and f"{len(files)} instances" in row[1] and header.series_uid in row[1], page
    assert '<tr data-site="site-b">' in page

    # The status page for the hub's staff: its own token, not a site's.
    url = hub.handle.url.replace("/dicom-web", "/hub/status")
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers=bearer(hub.tokens["site-a"])).status_code == 401
    page = httpx.get(url, headers=bearer(hub.tokens["status"]))
    assert page.status_code == 200
    assert {s["site"]: s["instances_total"] for s in page.json()["sites"]} == {
        "site-a": len(files),
        "site-b": 2,
    }


def test_wrong_or_missing_token_is_401_and_the_site_retries(
    hub: Rig, slide: Path, tmp_path: Path
) -> None:
    wrong = token_file(tmp_path / "wrong.token")
    site = site_toml(tmp_path / "s", hub.handle.url, wrong)
    code, result = send(site, slide / "label.dcm", timeout=2)
    assert code == 3 and result["delivered"] == 0 and result["pending"] == 1, result
    listing = run_edge("queue", "--config", str(site), "list", "--json")
    (row,) = json.loads(listing.stdout)
    # A bearer token file is rotated by another program: the site retries, it does not park.
    assert row["state"] == "failed" and "HTTP 401" in row["last_error"], row
    assert wrong.read_text().strip() not in listing.stdout + listing.stderr

    data = body("b", (slide / "label.dcm").read_bytes())
    refused = httpx.post(
        hub.handle.url + "/studies", content=data, headers={"Content-Type": CT.format("b")}
    )
    assert refused.status_code == 401
    assert refused.headers["www-authenticate"].startswith("Bearer")
    assert not hub.stored("site-a") and not hub.stored("site-b")
    # A site's own token, once it is right, gets through.
    shutil.copy(hub.tokens["site-a"], wrong)
    code, result = send(site, slide / "label.dcm", timeout=10)
    assert code == 0 and result["delivered"] == 1, result


def test_a_bad_part_fails_alone_and_conflicts_never_overwrite(
    hub: Rig, slide: Path, tmp_path: Path
) -> None:
    label, overview = slide / "label.dcm", slide / "thumbnail.dcm"
    data = body("xyz", label.read_bytes(), b"not DICOM at all", overview.read_bytes())
    headers = {"Content-Type": CT.format("xyz"), **bearer(hub.tokens["site-a"])}
    answer = httpx.post(hub.handle.url + "/studies", content=data, headers=headers)
    assert answer.status_code == 202, answer.text
    assert answer.headers["content-type"] == "application/dicom+json"
    stored = [e["00081155"]["Value"][0] for e in answer.json()["00081199"]["Value"]]
    assert stored == [read_header(label).sop_instance_uid, read_header(overview).sop_instance_uid]
    (failed,) = answer.json()["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xC000]
    assert len(hub.stored("site-a")) == 2

    # Different bytes under a stored SOP Instance UID: refused (parked by the site), kept.
    other = copy_with_new_bytes(label, tmp_path / "other.dcm", same_uid=True)
    client = StowRsDestination("hub", hub.handle.url, token_file=hub.tokens["site-a"])
    try:
        (outcome,) = client.send([item(other)])
        assert outcome.verdict is Verdict.PARK and "0x0117" in outcome.reason, outcome
        (same,) = client.send([item(label)])
        assert same.verdict is Verdict.DELIVERED, same
    finally:
        client.close()
    h = read_header(label)
    kept = hub.store / "site-a" / h.study_uid / h.series_uid / f"{h.sop_instance_uid}.dcm"
    assert kept.read_bytes() == label.read_bytes()

    # The study in the URL must be the instances' study.
    wrong_study = httpx.post(
        hub.handle.url + "/studies/1.2.3",
        content=body("q", label.read_bytes()),
        headers={"Content-Type": CT.format("q"), **bearer(hub.tokens["site-a"])},
    )
    assert wrong_study.status_code == 409
    assert wrong_study.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
    garbage = httpx.post(
        hub.handle.url + "/studies",
        content=b"--q\r\nno end",
        headers={"Content-Type": CT.format("q"), **bearer(hub.tokens["site-a"])},
    )
    assert garbage.status_code == 400
    wrong_type = httpx.post(
        hub.handle.url + "/studies",
        content=b"{}",
        headers={"Content-Type": "application/json", **bearer(hub.tokens["site-a"])},
    )
    assert wrong_type.status_code == 415
    assert not list((hub.store / ".incoming").iterdir())


def test_requests_over_max_request_bytes_are_413(slide: Path, tmp_path: Path) -> None:
    with _rig(tmp_path, "max_request_bytes = 1048576") as rig:
        big = slide / "level-00.dcm"
        copies = [
            copy_with_new_bytes(slide / "label.dcm", tmp_path / f"c{n}.dcm", same_uid=False)
            for n in range(2)
        ]
        files = [p for p in sorted(slide.glob("*.dcm")) if p != big] + copies
        small = [item(p, n) for n, p in enumerate(files, start=2)]
        assert sum(i.size for i in small) > 1 << 20 > max(i.size for i in small)
        client = StowRsDestination(
            "hub", rig.handle.url, token_file=rig.tokens["site-a"], max_request_bytes=8 << 20
        )
        try:
            (outcome,) = client.send([item(big)])
            assert outcome.verdict is Verdict.PARK and "HTTP 413" in outcome.reason, outcome
            # A batch over the hub's limit is split by the client and arrives whole.
            outcomes = client.send(small)
            assert all(o.verdict is Verdict.DELIVERED for o in outcomes), outcomes
            assert client.requests > 2
        finally:
            client.close()
        assert len(rig.stored("site-a")) == len(small)
        # Chunked (no Content-Length): counted as it arrives.
        chunks = (big.read_bytes()[i : i + 65536] for i in range(0, big.stat().st_size, 65536))
        answer = httpx.post(
            rig.handle.url + "/studies",
            content=iter([b"--b\r\n\r\n", *chunks, b"\r\n--b--\r\n"]),
            headers={"Content-Type": CT.format("b"), **bearer(rig.tokens["site-a"])},
        )
        assert answer.status_code == 413
        assert not list((rig.store / ".incoming").iterdir())


def test_concatenation_parts_pass_through_unchanged(hub: Rig, slide: Path, tmp_path: Path) -> None:
    """A site capping instances at 1 MiB (prepare_for, as the daemon does) sends level 0 as
    concatenation parts; the hub stores them as they are, and its folder of the series opens
    as the same slide."""
    wsidicom = pytest.importorskip("wsidicom")
    np = pytest.importorskip("numpy")
    capped = cfg.Destination(
        name="hub", kind="stowrs", url=hub.handle.url, max_instance_bytes=1 << 20
    )
    files = sorted(slide.glob("*.dcm"))
    sent = prepare_for(capped, files, tmp_path / "parts")
    assert slide / "level-00.dcm" not in sent and len(sent) > len(files)
    site = site_toml(tmp_path / "s", hub.handle.url, hub.tokens["site-b"])
    code, result = send(site, *sent)
    assert code == 0 and result["delivered"] == len(sent), result
    stored = hub.stored("site-b")
    assert sorted(sha(p) for p in stored) == sorted(sha(p) for p in sent)
    (folder,) = {p.parent for p in stored}
    with wsidicom.WsiDicom.open(slide) as a, wsidicom.WsiDicom.open(folder) as b:
        assert b.size == a.size and len(b.levels) == len(a.levels)
        whole_a = np.asarray(a.read_region((0, 0), 0, a.size.to_tuple()))
        whole_b = np.asarray(b.read_region((0, 0), 0, b.size.to_tuple()))
    assert whole_a.std() > 5 and np.array_equal(whole_a, whole_b)
    openslide = pytest.importorskip("openslide")
    source = openslide.OpenSlide(slide / "level-00.dcm")
    copy = openslide.OpenSlide(stored[0])  # any file of the series: it finds the rest
    try:
        assert copy.level_dimensions == source.level_dimensions
        size = source.level_dimensions[0]
        assert np.array_equal(
            np.asarray(source.read_region((0, 0), 0, size)),
            np.asarray(copy.read_region((0, 0), 0, size)),
        )
    finally:
        source.close()
        copy.close()


def test_a_record_lost_in_a_crash_is_made_good_by_the_resend(
    hub: Rig, slide: Path, tmp_path: Path
) -> None:
    """Stored but not recorded (a crash between the two): the same bytes sent again are
    recorded, not stored twice; a temp file left by a stop is removed at the next start."""
    label = slide / "label.dcm"
    client = StowRsDestination("hub", hub.handle.url, token_file=hub.tokens["site-a"])
    try:
        assert client.send([item(label)])[0].verdict is Verdict.DELIVERED
        conn = sqlite3.connect(hub.config.state_dir / DATABASE)
        with conn:
            conn.execute("DELETE FROM hub_instances")
        conn.close()
        assert status_json(hub)["site-a"]["instances_total"] == 0
        (stored,) = hub.stored("site-a")
        stamp = stored.stat().st_mtime_ns
        assert client.send([item(label)])[0].verdict is Verdict.DELIVERED
    finally:
        client.close()
    assert status_json(hub)["site-a"]["instances_total"] == 1
    assert hub.stored("site-a") == [stored] and stored.stat().st_mtime_ns == stamp
    hub.handle.stop()
    left = hub.store / ".incoming" / "site-a-crashed.part"
    left.write_bytes(b"half a slide")
    hub.handle = serve(hub.config)  # stopped again by the fixture
    assert not left.exists()


def test_tls_with_a_self_signed_certificate(slide: Path, tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key, ca_file = tmp_path / "hub.pem", tmp_path / "hub.key", tmp_path / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    ca.cert_pem.write_to_path(str(ca_file))
    with _rig(tmp_path, f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"') as rig:
        assert rig.handle.url.startswith("https://")
        site = site_toml(
            tmp_path / "s", rig.handle.url, rig.tokens["site-a"], f'tls_ca_file = "{ca_file}"'
        )
        code, result = send(site, slide)
        assert code == 0 and result["delivered"] == len(list(slide.glob("*.dcm"))), result
        assert {sha(p) for p in rig.stored("site-a")} == {sha(p) for p in slide.glob("*.dcm")}
        # Without the CA the site refuses the hub (parked: a person must fix trust).
        untrusting = site_toml(tmp_path / "u", rig.handle.url, rig.tokens["site-b"])
        code, result = send(untrusting, slide / "label.dcm", timeout=5)
        assert code == 3 and result["parked"] == 1, result
        assert "TLS certificate refused" in str(result["parked_reasons"])


@pytest.mark.slow
def test_through_a_dropping_link_each_instance_arrives_once(
    hub: Rig, slide: Path, tmp_path: Path
) -> None:
    """Connections reset every 0.5-1.5 s mid-request (tools/linksim.py): uploads cut off leave
    nothing behind, answers lost after storing make the re-send a success, and the hub ends
    with every instance exactly once."""
    from tools.linksim import LinkSettings, LinkSim

    pieces = dicom_parts.split(slide / "level-00.dcm", tmp_path / "parts", 120_000)
    sent = [p for p in sorted(slide.glob("*.dcm")) if p.name != "level-00.dcm"] + pieces
    port = hub.handle.port
    settings = LinkSettings(rate_bps=8_000_000, latency_s=0.02, drop_every=(0.5, 1.5), seed=3)
    with LinkSim(("127.0.0.1", port), settings) as link:
        url = f"http://127.0.0.1:{link.port}/dicom-web"
        site = site_toml(tmp_path / "s", url, hub.tokens["site-a"], "max_request_bytes = 1048576\n")
        code, result = send(site, *sent, timeout=90)
        resets = link.stats.reset_connections
        print("hub through linksim:", result, link.stats.drops, link.stats.reset_connections)
    assert code == 0 and result["delivered"] == len(sent), result
    assert resets >= 1, "no request was cut off: the test proves nothing"
    stored = hub.stored("site-a")
    assert sorted(sha(p) for p in stored) == sorted(sha(p) for p in sent)
    assert status_json(hub)["site-a"]["instances_total"] == len(sent)
    assert not list((hub.store / ".incoming").iterdir())


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("mode", r"has mode 0644.*chmod 600"),
        ("missing", r"no such file"),
        ("short", r"at least 16 are needed"),
        ("same", r"holds the same token as"),
        ("nosite", r"listen is set but no \[\[hub.site\]\] may send"),
        ("forward", r"forward = true needs at least one \[\[destination\]\]"),
        ("deid", r"forward = true sends instances as received, but \['cloud'\] de-identify"),
        ("unknown", r"unknown setting\(s\) \['port'\]"),
        ("name", r"name '\.\./x' must be letters"),
        ("dotname", r"name '\.incoming' must be letters.*not starting with '\.'"),
        ("listen", r"listen must be ADDRESS:PORT"),
    ],
)
def test_config_mistakes_are_explained(tmp_path: Path, change: str, message: str) -> None:
    a, b = token_file(tmp_path / "a.token"), token_file(tmp_path / "b.token")
    hub: dict[str, object] = {
        "listen": "127.0.0.1:8042",
        "site": [{"name": "a", "token_file": str(a)}, {"name": "b", "token_file": str(b)}],
    }
    sites: list[dict[str, str]] = hub["site"]  # type: ignore[assignment]
    extra: dict[str, object] = {}
    if change == "mode":
        a.chmod(0o644)
    elif change == "missing":
        a.unlink()
    elif change == "short":
        a.write_text("short")
    elif change == "same":
        shutil.copy(a, b)
    elif change == "nosite":
        hub["site"] = []
    elif change == "forward":
        hub["forward"] = True
    elif change == "deid":
        hub["forward"] = True
        secret = tmp_path / "secret"
        secret.write_bytes(secrets.token_bytes(32))
        secret.chmod(0o600)
        extra = {
            "privacy": {"secret_file": str(secret)},
            "destination": [
                {"name": "pacs", "kind": "folder", "path": str(tmp_path)},
                {"name": "cloud", "kind": "folder", "path": str(tmp_path), "deidentify": "basic"},
            ],
        }
    elif change == "unknown":
        hub["port"] = 8042
    elif change == "name":
        sites[0]["name"] = "../x"
    elif change == "dotname":
        sites[0]["name"] = ".incoming"
    elif change == "listen":
        hub["listen"] = "8042"
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.parse({"hub": hub, **extra}, "edge.toml")


def test_status_before_anything_arrived(tmp_path: Path) -> None:
    a = token_file(tmp_path / "a.token")
    path = tmp_path / "hub.toml"
    path.write_text(hub_toml(tmp_path, {"site-a": a}))
    proc = run_edge("hub", "status", "--config", str(path))
    assert proc.returncode == 0, proc.stderr
    assert (
        proc.stdout.strip()
        == "site-a: last contact never, 0 instance(s) today (0 B), 0 in total (0 B)"
    )
    with _rig(tmp_path / "rig") as rig:  # no status_token_file: the page does not exist
        plain = replace(rig.config, hub=replace(rig.config.hub, status_token_file=""))
        handle = serve(plain, listen="127.0.0.1:0")
        try:
            url = handle.url.replace("/dicom-web", "/hub/status")
            assert httpx.get(url, headers=bearer(rig.tokens["status"])).status_code == 404
        finally:
            handle.stop()


def test_config_check_and_role_hub_need_listen(tmp_path: Path) -> None:
    a = token_file(tmp_path / "a.token", 0o640)
    path = tmp_path / "hub.toml"
    path.write_text(hub_toml(tmp_path, {"a": a}))
    check = run_edge("config", "check", "--config", str(path))
    assert check.returncode == 2 and "has mode 0640" in check.stderr, check.stderr
    assert a.read_text().strip() not in check.stderr
    plain = tmp_path / "site.toml"
    plain.write_text(f'[storage]\nstate_dir = "{tmp_path / "state"}"\n')
    run = run_edge("run", "--role", "hub", "--config", str(plain), timeout=60)
    assert run.returncode == 78 and "[hub] listen is not set" in run.stderr, run.stderr


# ---------------------------------------------------------------- the daemon, forwarding


@pytest.mark.slow
def test_hub_role_daemon_forwards_everything_to_orthanc(
    orthanc: Orthanc, slide: Path, tmp_path: Path
) -> None:
    orthanc.clear()
    a = token_file(tmp_path / "a.token")
    port = free_port()
    path = tmp_path / "hub.toml"
    path.write_text(
        hub_toml(tmp_path, {"site-a": a}, "forward = true", listen=f"127.0.0.1:{port}")
        + "[web]\nenabled = false\n[forward]\nretry_base_s = 0.2\nretry_ceiling_s = 1\n"
        f'[[destination]]\nname = "pacs"\nkind = "stowrs"\nurl = "{orthanc.dicomweb_url}"\n'
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "edge.cli", "run", "--role", "hub", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/dicom-web"
        deadline = time.monotonic() + 30
        while True:  # the daemon's start takes a moment (imports, database)
            try:
                httpx.post(url + "/studies", content=b"")
                break
            except httpx.TransportError:
                assert daemon.poll() is None and time.monotonic() < deadline, "hub not up"
                time.sleep(0.2)
        files = sorted(slide.glob("*.dcm"))
        pieces = dicom_parts.split(slide / "level-00.dcm", tmp_path / "parts", 120_000)
        sent = [p for p in files if p.name != "level-00.dcm"] + pieces
        code, result = send(site_toml(tmp_path / "s", url, a), *sent)
        assert code == 0 and result["delivered"] == len(sent), result
        wanted = {read_header(p).sop_instance_uid: p for p in sent}
        deadline = time.monotonic() + 40
        while set(orthanc.instances()) != set(wanted):
            assert daemon.poll() is None, "the hub daemon stopped"
            assert time.monotonic() < deadline, f"Orthanc has {orthanc.count()} of {len(wanted)}"
            time.sleep(0.3)
        assert len(orthanc.instances()) == len(wanted), "each instance exactly once"
        uid, source = next(iter(wanted.items()))
        assert orthanc.file(uid) == source.read_bytes()
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            out, _ = daemon.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            out, _ = daemon.communicate()
    assert daemon.returncode == 0, out
    assert "hub receiving STOW-RS" in out
    assert a.read_text().strip() not in out
