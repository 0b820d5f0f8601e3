"""Destinations from configuration: the one place that knows every kind."""

from __future__ import annotations

import ssl
from pathlib import Path

from edge import config
from edge.forward import auth, link
from edge.forward.cstore import CStoreDestination
from edge.forward.folder import FolderDestination
from edge.forward.protocol import Destination
from edge.forward.stowrs import StowRsDestination
from edge.forward.throttle import TokenBucket
from edge.forward.windows import Window, parse_windows


def tls_context(dest: config.Destination) -> ssl.SSLContext:
    """A client TLS context: the peer verified (system CAs or tls_ca_file), TLS 1.2 at least
    (BCP 195), our own certificate for mutual TLS when configured.

    With tls_pin_file the peer must present exactly that certificate: it is the only trust
    anchor (partial-chain verification lets a CA-issued leaf be one), so any other, even one
    a public CA signed, fails the handshake before a byte of the slide is sent."""
    try:
        if dest.tls_pin_file:
            pinned = Path(dest.tls_pin_file).read_text(encoding="ascii")
            context = ssl.create_default_context(cadata=pinned)
            context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        else:
            context = ssl.create_default_context(cafile=dest.tls_ca_file or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if dest.tls_cert_file:
            context.load_cert_chain(dest.tls_cert_file, dest.tls_key_file)
    except (OSError, ssl.SSLError, UnicodeDecodeError) as exc:
        raise config.ConfigError(f"destination {dest.name}: TLS files unusable: {exc}") from exc
    return context


def request_auth(dest: config.Destination) -> auth.RequestAuth | None:
    """The stowrs auth profile; secret files are read (and their modes checked) here, so a
    mistake is a ConfigError at start rather than a parked queue."""
    if dest.auth == "bearer":
        return auth.BearerFile(Path(dest.token_file))
    if dest.auth == "basic":
        return auth.Basic(dest.username, Path(dest.password_file))
    if dest.auth == "google":
        return auth.GoogleServiceAccount(Path(dest.credentials_file))
    if dest.auth == "aws-sigv4":
        return auth.AwsSigV4(
            Path(dest.credentials_file),
            region=dest.region,
            service=dest.aws_service,
            profile=dest.aws_profile,
        )
    return None


def windows(dest: config.Destination) -> tuple[Window, ...]:
    return parse_windows(dest.send_windows)


def build(dest: config.Destination, state_dir: Path | None = None) -> Destination:
    """`state_dir`: where an adaptive destination keeps its link estimate across runs."""
    try:
        return _build(dest, state_dir)
    except config.ConfigError as exc:
        if str(exc).startswith(f"destination {dest.name}"):
            raise
        raise config.ConfigError(f"destination {dest.name}: {exc}") from exc


def _build(dest: config.Destination, state_dir: Path | None) -> Destination:
    bucket = TokenBucket(dest.max_bytes_per_s) if dest.max_bytes_per_s > 0 else None
    if dest.kind == "cstore":
        return CStoreDestination(
            dest.name,
            dest.host,
            dest.port,
            dest.called_aet,
            dest.calling_aet,
            tls=tls_context(dest) if dest.tls else None,
            timeout_s=dest.timeout_s,
            bucket=bucket,
        )
    if dest.kind == "stowrs":
        state = link.state_path(state_dir, dest.name) if state_dir and dest.adaptive else None
        if state is not None:
            estimator: link.LinkEstimator | None = link.load(state)
        else:
            estimator = link.LinkEstimator() if dest.adaptive else None
        return StowRsDestination(
            dest.name,
            dest.url,
            auth=request_auth(dest),
            max_request_bytes=dest.max_request_bytes,
            timeout_s=dest.timeout_s,
            verify=tls_context(dest) if dest.url.startswith("https://") else True,
            bucket=bucket,
            link=estimator,
            link_state=state,
        )
    if dest.kind == "folder":
        return FolderDestination(dest.name, Path(dest.path), bucket=bucket)
    raise config.ConfigError(f"destination {dest.name}: kind {dest.kind!r} is not supported")
