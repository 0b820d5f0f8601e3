"""Destinations from configuration: the one place that knows every kind."""

from __future__ import annotations

from pathlib import Path

from edge import config
from edge.forward.cstore import CStoreDestination
from edge.forward.folder import FolderDestination
from edge.forward.protocol import Destination
from edge.forward.stowrs import StowRsDestination


def build(dest: config.Destination) -> Destination:
    if dest.kind == "cstore":
        return CStoreDestination(
            dest.name,
            dest.host,
            dest.port,
            dest.called_aet,
            dest.calling_aet,
            timeout_s=dest.timeout_s,
        )
    if dest.kind == "stowrs":
        return StowRsDestination(
            dest.name,
            dest.url,
            token_file=Path(dest.token_file) if dest.token_file else None,
            max_request_bytes=dest.max_request_bytes,
            timeout_s=dest.timeout_s,
        )
    if dest.kind == "folder":
        return FolderDestination(dest.name, Path(dest.path))
    raise config.ConfigError(f"destination {dest.name}: kind {dest.kind!r} is not supported")
