"""The local web dashboard and API (FastAPI): what the technician sees at the scanner.

`serve(config, health)` runs it on a background thread (the daemon hosts it); `create_app`
builds the ASGI app for tests and other servers.
"""

from __future__ import annotations

from typing import Any

from edge import config as cfg


def serve(config: cfg.Config, health: Any = None, listen: str | None = None) -> Any:
    """Start the dashboard on a background thread; returns a handle with .stop() and .url."""
    from edge.web.server import serve as _serve

    return _serve(config, health, listen)


__all__ = ["serve"]
