"""STOW-RS authentication from the TOML: basic against a real Orthanc with a registered user,
and the cloud profiles (google service account, AWS SigV4) through tests/cloud_proxy.py, a
loopback front door that checks credentials as the cloud does and forwards to a real Orthanc.

Not tested here: the real Google and AWS endpoints (no internet on the build machines).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge import config
from edge.forward import factory
from edge.forward.protocol import Item, Verdict
from edge.forward.stowrs import StowRsDestination
from tests.cloud_proxy import AwsKey, CloudProxy, ServiceAccount, cloud_proxy
from tests.orthanc import Orthanc, orthanc, orthanc_server
from tests.test_forward import item_for, wsi_files
from tests.test_orthanc import empty, items

__all__ = ["empty", "items", "orthanc", "wsi_files"]  # fixtures used by name

pytestmark = pytest.mark.integration


def stowrs(url: str, **settings: Any) -> StowRsDestination:
    """A destination built the way the daemon builds it: TOML table -> parse -> factory."""
    table = {"name": "cloud", "kind": "stowrs", "url": url, **settings}
    dest = factory.build(config.parse({"destination": [table]}).destinations[0])
    assert isinstance(dest, StowRsDestination)
    return dest


def secret(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def uids(items: list[Item]) -> list[str]:
    return sorted(item.sop_instance_uid for item in items)


# ---------------------------------------------------------------- basic (real Orthanc users)


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with orthanc_server(tmp_path_factory.mktemp("guarded"), users={"edge": "s3cret"}) as server:
        yield server


def test_password_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    password = secret(tmp_path / "pw", "s3cret", mode=0o644)
    with pytest.raises(config.ConfigError) as info:
        stowrs("http://127.0.0.1:1/dicom-web", username="edge", password_file=str(password))
    message = str(info.value)
    assert str(password) in message and "mode 0644" in message and "chmod 600" in message
    assert "s3cret" not in message


def test_basic_from_toml_delivers(guarded: Orthanc, items: list[Item], tmp_path: Path) -> None:
    guarded.clear()
    password = secret(tmp_path / "pw", "s3cret")
    dest = stowrs(guarded.dicomweb_url, auth="basic", username="edge", password_file=str(password))
    outcomes = dest.send(items)
    dest.close()
    assert {o.verdict for o in outcomes} == {Verdict.DELIVERED}, outcomes
    assert sorted(guarded.instances()) == uids(items)


def test_basic_password_reread_after_401(
    guarded: Orthanc, items: list[Item], tmp_path: Path
) -> None:
    guarded.clear()
    password = secret(tmp_path / "pw", "old-password")
    dest = stowrs(guarded.dicomweb_url, username="edge", password_file=str(password))
    secret(password, "s3cret")  # an operator fixed the file while the daemon runs
    outcomes = dest.send(items[:1])
    assert [o.verdict for o in outcomes] == [Verdict.DELIVERED], outcomes
    assert dest.requests == 2  # refused once, re-read, accepted
    assert guarded.instances() == [items[0].sop_instance_uid]


def test_basic_wrong_password_is_parked(
    guarded: Orthanc, items: list[Item], tmp_path: Path
) -> None:
    password = secret(tmp_path / "pw", "wrong-password")
    dest = stowrs(guarded.dicomweb_url, username="edge", password_file=str(password))
    outcomes = dest.send(items[:2])
    assert [o.verdict for o in outcomes] == [Verdict.PARK, Verdict.PARK]
    reason = outcomes[0].reason
    assert "HTTP 401 authentication failed" in reason
    assert "basic credentials refused after a refresh" in reason
    assert "wrong-password" not in reason
    assert dest.requests == 2  # one re-read, not retried forever


# ---------------------------------------------------------------- google service account


@pytest.fixture(scope="module")
def account() -> ServiceAccount:
    return ServiceAccount.generate()


@pytest.fixture()
def google(empty: Orthanc, account: ServiceAccount) -> Iterator[CloudProxy]:
    with cloud_proxy(CloudProxy(empty.http_url, "google", account=account)) as proxy:
        yield proxy


def google_dest(proxy: CloudProxy, key: Path, **settings: Any) -> StowRsDestination:
    return stowrs(proxy.dicomweb_url, auth="google", credentials_file=str(key), **settings)


def test_google_delivers(
    google: CloudProxy, account: ServiceAccount, empty: Orthanc, items: list[Item], tmp_path: Path
) -> None:
    dest = google_dest(google, account.key_file(tmp_path / "key.json", google.token_uri))
    outcomes = dest.send(items)
    dest.close()
    assert {o.verdict for o in outcomes} == {Verdict.DELIVERED}, outcomes
    assert sorted(empty.instances()) == uids(items)
    assert google.issued == 1 and google.refusals() == []


def test_google_token_refreshed_before_expiry_mid_series(
    google: CloudProxy, account: ServiceAccount, empty: Orthanc, items: list[Item], tmp_path: Path
) -> None:
    google.token_lifetime_s = 5
    dest = google_dest(google, account.key_file(tmp_path / "key.json", google.token_uri))
    first = dest.send(items[:1])
    time.sleep(4.5)  # the token is still valid for 0.5 s: inside the refresh margin (1 s)
    rest = dest.send(items[1:])
    dest.close()
    assert {o.verdict for o in first + rest} == {Verdict.DELIVERED}
    assert google.issued == 2  # a new token before the old one expired ...
    assert google.refusals() == []  # ... so the store never saw an expired one
    assert sorted(empty.instances()) == uids(items)


def test_google_revoked_token_gets_401_then_refresh(
    google: CloudProxy, account: ServiceAccount, empty: Orthanc, items: list[Item], tmp_path: Path
) -> None:
    dest = google_dest(google, account.key_file(tmp_path / "key.json", google.token_uri))
    assert [o.verdict for o in dest.send(items[:1])] == [Verdict.DELIVERED]
    google.revoke_all()
    outcomes = dest.send(items[1:])
    assert {o.verdict for o in outcomes} == {Verdict.DELIVERED}
    assert google.issued == 2
    assert [line for line in google.refusals() if "unknown token" in line]
    assert sorted(empty.instances()) == uids(items)


def test_google_wrong_key_is_parked(
    google: CloudProxy, account: ServiceAccount, empty: Orthanc, items: list[Item], tmp_path: Path
) -> None:
    other = ServiceAccount.generate(account.email)  # same account name, another private key
    key = account.key_file(tmp_path / "key.json", google.token_uri, other.private_pem)
    dest = google_dest(google, key)
    outcomes = dest.send(items[:2])
    assert [o.verdict for o in outcomes] == [Verdict.PARK, Verdict.PARK]
    reason = outcomes[0].reason
    assert "google auth" in reason and "refused the service-account key" in reason
    assert str(key) in reason and "Invalid JWT Signature" in reason
    assert "PRIVATE KEY" not in reason
    assert empty.count() == 0 and dest.requests == 0


def test_google_key_file_must_be_private(
    google: CloudProxy, account: ServiceAccount, tmp_path: Path
) -> None:
    key = account.key_file(tmp_path / "key.json", google.token_uri)
    key.chmod(0o640)
    with pytest.raises(config.ConfigError, match=r"credentials_file .*key.json has mode 0640"):
        google_dest(google, key)


# ---------------------------------------------------------------- AWS SigV4


@pytest.fixture()
def aws(empty: Orthanc) -> Iterator[CloudProxy]:
    with cloud_proxy(CloudProxy(empty.http_url, "aws-sigv4", aws=AwsKey())) as proxy:
        yield proxy


def aws_dest(proxy: CloudProxy, credentials: Path, **settings: Any) -> StowRsDestination:
    assert proxy.aws is not None
    return stowrs(
        proxy.dicomweb_url,
        auth="aws-sigv4",
        credentials_file=str(credentials),
        aws_profile="edge",
        region=proxy.aws.region,
        **settings,
    )


def test_aws_sigv4_delivers(
    aws: CloudProxy, empty: Orthanc, items: list[Item], tmp_path: Path
) -> None:
    assert aws.aws is not None
    dest = aws_dest(aws, aws.aws.credentials_file(tmp_path / "credentials"))
    # Several requests: each signed with its own payload hash.
    dest.max_request_bytes = max(item.size for item in items) + 4096
    outcomes = dest.send(items)
    dest.close()
    assert {o.verdict for o in outcomes} == {Verdict.DELIVERED}, outcomes
    assert dest.requests >= 2
    assert aws.refusals() == [] and len(aws.log) == dest.requests
    assert sorted(empty.instances()) == uids(items)


def test_aws_wrong_secret_is_parked(
    aws: CloudProxy, empty: Orthanc, items: list[Item], tmp_path: Path
) -> None:
    assert aws.aws is not None
    credentials = aws.aws.credentials_file(tmp_path / "credentials", secret="not-the-secret")
    dest = aws_dest(aws, credentials)
    outcomes = dest.send(items[:1])
    assert [o.verdict for o in outcomes] == [Verdict.PARK]
    reason = outcomes[0].reason
    assert "HTTP 403 authentication failed" in reason and "aws-sigv4 credentials" in reason
    assert "not-the-secret" not in reason
    assert aws.refusals() and all("SignatureDoesNotMatch" in r for r in aws.refusals())
    assert empty.count() == 0 and dest.requests == 2


def test_aws_rotated_secret_is_reread(
    aws: CloudProxy, empty: Orthanc, items: list[Item], tmp_path: Path
) -> None:
    assert aws.aws is not None
    credentials = aws.aws.credentials_file(tmp_path / "credentials", secret="old-secret")
    dest = aws_dest(aws, credentials)
    aws.aws.credentials_file(credentials)  # rotated on disk after start
    assert [o.verdict for o in dest.send(items[:1])] == [Verdict.DELIVERED]
    assert empty.instances() == [items[0].sop_instance_uid]


def test_aws_missing_profile_names_it(tmp_path: Path) -> None:
    credentials = AwsKey().credentials_file(tmp_path / "credentials")
    with pytest.raises(config.ConfigError, match=r"no profile \[prod\] \(found: edge\)"):
        stowrs(
            "http://127.0.0.1:1/x",
            auth="aws-sigv4",
            credentials_file=str(credentials),
            aws_profile="prod",
            region="eu-west-1",
        )


def test_aws_proxy_refuses_tampered_body_and_stale_date(
    aws: CloudProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stand-in checks what AWS checks: a body that is not the signed one, an old date."""
    import datetime as dt
    import hashlib

    import botocore.auth
    import httpx

    from edge.forward.auth import AwsSigV4

    assert aws.aws is not None
    signer = AwsSigV4(
        aws.aws.credentials_file(tmp_path / "credentials"),
        region=aws.aws.region,
        service=aws.aws.service,
        profile="edge",
    )
    url = f"{aws.dicomweb_url}/studies"
    body = b"signed body"
    headers = signer.headers("POST", url, hashlib.sha256(body).hexdigest())
    assert httpx.post(url, content=b"other body", headers=headers).status_code == 403
    assert aws.refusals()[-1].endswith("XAmzContentSHA256Mismatch")
    stale = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(minutes=10)
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: stale)
    headers = signer.headers("POST", url, hashlib.sha256(body).hexdigest())
    assert httpx.post(url, content=body, headers=headers).status_code == 403
    assert "Signature expired" in aws.refusals()[-1]


def test_google_token_endpoint_down_is_retried(
    account: ServiceAccount, items: list[Item], tmp_path: Path
) -> None:
    from tests.orthanc import free_port

    down = f"http://127.0.0.1:{free_port()}/token"
    dest = stowrs(
        "http://127.0.0.1:1/dicom-web",
        auth="google",
        credentials_file=str(account.key_file(tmp_path / "key.json", down)),
    )
    outcomes = dest.send(items[:1])
    assert [o.verdict for o in outcomes] == [Verdict.RETRY]
    assert f"google auth: token endpoint {down} unreachable" in outcomes[0].reason


def test_edge_send_google_from_toml(
    google: CloudProxy,
    account: ServiceAccount,
    empty: Orthanc,
    wsi_files: list[Path],
    tmp_path: Path,
) -> None:
    """The technician's path: edge.toml with auth = "google", `edge send --wait`."""
    import json
    import subprocess
    import sys

    key = account.key_file(tmp_path / "key.json", google.token_uri)
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        f'[storage]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[[destination]]\nname = "gcp"\nkind = "stowrs"\nurl = "{google.dicomweb_url}"\n'
        f'auth = "google"\ncredentials_file = "{key}"\n'
    )
    slide = wsi_files[0].parent
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge.cli",
            "send",
            str(slide),
            "--to",
            "gcp",
            "--wait",
            "--timeout",
            "120",
            "--config",
            str(cfg),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["delivered"] == len(wsi_files)
    assert sorted(empty.instances()) == sorted(
        item_for(path, 0).sop_instance_uid for path in wsi_files
    )
    assert "BEGIN PRIVATE KEY" not in proc.stderr + proc.stdout
