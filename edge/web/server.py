"""Running the app: uvicorn on a background thread, so the daemon can host it.

`serve(config, health)` binds the socket first (a port in use is an EdgeError at once, not a
log line from a thread), starts uvicorn on a daemon thread and returns a handle whose
`stop()` asks uvicorn to finish its requests and waits for the thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from edge import config as cfg
from edge.errors import EdgeError
from edge.system.httpd import Served, serve_app

LOGGER = logging.getLogger(__name__)


class WebError(EdgeError):
    """The dashboard cannot start (address in use, unreadable certificate)."""


@dataclass
class WebHandle:
    served: Served
    discovery: Any = None

    @property
    def url(self) -> str:
        return self.served.url

    @property
    def port(self) -> int:
        return self.served.port

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.discovery is not None:
            self.discovery.stop()
        self.served.stop(timeout_s)


def serve(config: cfg.Config, health: Any = None, listen: str | None = None) -> WebHandle:
    """Start the dashboard (listen overrides [web] listen; port 0 picks a free one)."""
    from edge.web.app import create_app
    from edge.web.discovery import Discovery

    web = config.web
    app = create_app(config, health)
    discovery = Discovery(interval_s=web.discover_s) if web.discover_s > 0 else None
    app.state.discovery = discovery
    served = serve_app(
        app,
        listen or web.listen,
        name="web",
        section="[web]",
        what="the dashboard",
        error=WebError,
        tls_cert_file=web.tls_cert_file,
        tls_key_file=web.tls_key_file,
    )
    url = served.url
    LOGGER.info("dashboard on %s", url)
    if discovery is not None:
        discovery.start()
    return WebHandle(served, discovery)
