"""Destinations from configuration: the one place that knows every kind."""

from __future__ import annotations

import ssl
from pathlib import Path

from edge import config
from edge.forward.cstore import CStoreDestination
from edge.forward.folder import FolderDestination
from edge.forward.protocol import Destination
from edge.forward.stowrs import StowRsDestination


def tls_context(dest: config.Destination) -> ssl.SSLContext:
    """A client TLS context: the peer verified (system CAs or tls_ca_file), TLS 1.2 at least
    (BCP 195), our own certificate for mutual TLS when configured."""
    try:
        context = ssl.create_default_context(cafile=dest.tls_ca_file or None)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if dest.tls_cert_file:
            context.load_cert_chain(dest.tls_cert_file, dest.tls_key_file)
    except (OSError, ssl.SSLError) as exc:
        raise config.ConfigError(f"destination {dest.name}: TLS files unusable: {exc}") from exc
    return context


def build(dest: config.Destination) -> Destination:
    if dest.kind == "cstore":
        return CStoreDestination(
            dest.name,
            dest.host,
            dest.port,
            dest.called_aet,
            dest.calling_aet,
            tls=tls_context(dest) if dest.tls else None,
            timeout_s=dest.timeout_s,
        )
    if dest.kind == "stowrs":
        return StowRsDestination(
            dest.name,
            dest.url,
            token_file=Path(dest.token_file) if dest.token_file else None,
            max_request_bytes=dest.max_request_bytes,
            timeout_s=dest.timeout_s,
            verify=tls_context(dest) if dest.url.startswith("https://") else True,
        )
    if dest.kind == "folder":
        return FolderDestination(dest.name, Path(dest.path))
    raise config.ConfigError(f"destination {dest.name}: kind {dest.kind!r} is not supported")
