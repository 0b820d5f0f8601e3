"""`edge send` and `edge queue` against a real pynetdicom SCP and a folder."""

from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest

from edge.convert import convert
from tests.dicom_peers import Behaviour, store_scp
from tests.helpers import run_edge as edge


@pytest.fixture(scope="module")
def slide_dir(tmp_path_factory: pytest.TempPathFactory, synthetic_tiff: Path) -> Path:
    return Path(convert(synthetic_tiff, tmp_path_factory.mktemp("converted")).output)


def _config(tmp_path: Path, port: int = 1, folder: Path | None = None) -> Path:
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        f'[storage]\nstate_dir = "{tmp_path / "state"}"\n'
        "[forward]\nretry_base_s = 0.2\nretry_ceiling_s = 0.5\n"
        f'[[destination]]\nname = "pacs"\nkind = "cstore"\nport = {port}\n'
        'called_aet = "PACS"\ntimeout_s = 5\n'
        f'[[destination]]\nname = "archive"\nkind = "folder"\npath = "{folder or tmp_path}"\n'
    )
    return cfg


def test_send_to_pacs_delivers_everything_once(slide_dir: Path, tmp_path: Path) -> None:
    files = sorted(slide_dir.glob("*.dcm"))
    with store_scp() as scp:
        cfg = _config(tmp_path, scp.port)
        first = edge(
            "send", str(slide_dir), "--to", "pacs", "--wait", "--config", str(cfg), "--json"
        )
        assert first.returncode == 0, first.stderr
        assert json.loads(first.stdout)["delivered"] == len(files)
        assert len(scp.received) == len(files)
        stores = scp.stores
        again = edge("send", str(slide_dir), "--to", "pacs", "--wait", "--config", str(cfg))
        assert again.returncode == 0, again.stderr
        assert scp.stores == stores, "a delivered instance was sent a second time"
    stats = json.loads(edge("queue", "--config", str(cfg), "stats").stdout)
    assert stats["destinations"]["pacs"]["delivered"] == len(files)


def test_send_to_a_folder(slide_dir: Path, tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    cfg = _config(tmp_path, folder=archive)
    proc = edge("send", str(slide_dir), "--to", "archive", "--wait", "--config", str(cfg))
    assert proc.returncode == 0, proc.stderr
    written = sorted(archive.rglob("*.dcm"))
    assert len(written) == len(list(slide_dir.glob("*.dcm")))
    assert {p.read_bytes() for p in written} == {p.read_bytes() for p in slide_dir.glob("*.dcm")}


def test_unreachable_pacs_leaves_everything_pending(slide_dir: Path, tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cfg = _config(tmp_path, port)
    proc = edge(
        "send",
        str(slide_dir),
        "--to",
        "pacs",
        "--wait",
        "--timeout",
        "2",
        "--config",
        str(cfg),
        "--json",
    )
    assert proc.returncode == 3
    result = json.loads(proc.stdout)
    assert result["delivered"] == 0 and result["pending"] == len(list(slide_dir.glob("*.dcm")))
    assert result["retries"] >= 2 * result["pending"]  # retried, not given up
    rows = json.loads(edge("queue", "--config", str(cfg), "list", "--json").stdout)
    assert rows and all(r["state"] == "failed" for r in rows)
    assert "connection refused" in rows[0]["last_error"]


def test_rejected_instances_are_parked_with_the_pacs_reason(
    slide_dir: Path, tmp_path: Path
) -> None:
    with store_scp(Behaviour(status=0xC000)) as scp:
        cfg = _config(tmp_path, scp.port)
        proc = edge("send", str(slide_dir), "--to", "pacs", "--wait", "--config", str(cfg))
    assert proc.returncode == 3
    assert "parked: 0xC000" in proc.stdout
    parked = json.loads(
        edge("queue", "--config", str(cfg), "list", "--state", "parked", "--json").stdout
    )
    assert len(parked) == len(list(slide_dir.glob("*.dcm")))
    retry = edge("queue", "--config", str(cfg), "retry", str(parked[0]["id"]))
    assert retry.returncode == 0
    queued = json.loads(
        edge("queue", "--config", str(cfg), "list", "--state", "queued", "--json").stdout
    )
    assert [r["id"] for r in queued] == [parked[0]["id"]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--to", "cloud"], "no destination named 'cloud'"),
        (["--to", "pacs", "--config", "/nonexistent.toml"], "no such configuration file"),
    ],
)
def test_send_mistakes_exit_2(
    args: list[str], message: str, slide_dir: Path, tmp_path: Path
) -> None:
    if "--config" not in args:
        args = [*args, "--config", str(_config(tmp_path))]
    proc = edge("send", str(slide_dir), *args)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_send_over_mutual_tls(slide_dir: Path, tmp_path: Path) -> None:
    """TLS from the TOML: the PACS's certificate verified against tls_ca_file, and ours
    presented (mutual TLS); a PACS that cannot verify us refuses and nothing is delivered."""
    import ssl

    trustme = pytest.importorskip("trustme", reason="trustme not installed (pip install trustme)")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client = ca.issue_cert("edge.example")
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "edge.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "edge.key"))
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    ca.configure_trust(server)
    server.verify_mode = ssl.CERT_REQUIRED  # the PACS insists on a client certificate

    def config(with_client_cert: bool) -> Path:
        cfg = _config(tmp_path, port=scp.port)
        mutual = (
            (
                f'tls_cert_file = "{tmp_path / "edge.pem"}"\n'
                f'tls_key_file = "{tmp_path / "edge.key"}"\n'
            )
            if with_client_cert
            else ""
        )
        text = cfg.read_text().replace(
            'called_aet = "PACS"\n',
            f'called_aet = "PACS"\ntls = true\ntls_ca_file = "{tmp_path / "ca.pem"}"\n{mutual}',
        )
        cfg.write_text(text)
        return cfg

    with store_scp(tls=server) as scp:
        refused = edge(
            "send",
            str(slide_dir),
            "--to",
            "pacs",
            "--wait",
            "--timeout",
            "2",
            "--config",
            str(config(with_client_cert=False)),
            "--json",
        )
        assert refused.returncode == 3 and not scp.received
        shutil.rmtree(tmp_path / "state")  # a fresh outbox: the failed attempts are not due yet
        ok = edge(
            "send",
            str(slide_dir),
            "--to",
            "pacs",
            "--wait",
            "--config",
            str(config(with_client_cert=True)),
            "--json",
        )
        assert ok.returncode == 0, ok.stderr
        assert len(scp.received) == len(list(slide_dir.glob("*.dcm")))
