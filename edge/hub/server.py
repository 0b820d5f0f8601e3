"""Running the hub: uvicorn on a background thread of the daemon, on its own port.

As the dashboard (edge.web.server): the socket is bound first, so a port in use is an
EdgeError at start rather than a log line from a thread; `stop()` lets requests in flight
finish for a few seconds, then closes the database thread.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from edge import config as cfg
from edge.errors import EdgeError
from edge.hub.service import HubService
from edge.hub.stow import create_app

LOGGER = logging.getLogger(__name__)


class HubError(EdgeError):
    """The hub cannot start (address in use, missing certificate)."""


@dataclass
class HubHandle:
    server: uvicorn.Server
    thread: threading.Thread
    service: HubService
    url: str  # the DICOMweb root sites send to, e.g. https://hub:8042/dicom-web
    port: int

    def stop(self, timeout_s: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=timeout_s)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout=timeout_s)
        self.service.close()


def _bind(listen: str) -> socket.socket:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as exc:
        sock.close()
        raise HubError(f"[hub] listen {listen}: cannot bind: {exc.strerror or exc}") from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def serve(config: cfg.Config, listen: str | None = None) -> HubHandle:
    """Start the hub (listen overrides [hub] listen; port 0 picks a free one)."""
    hub = config.hub
    address = listen or hub.listen
    if not address:
        raise HubError("[hub] listen is not set: the hub has no address to receive on")
    for name in (hub.tls_cert_file, hub.tls_key_file):
        if name and not Path(name).is_file():
            raise HubError(f"[hub] TLS file {name} does not exist")
    service = HubService(config)
    service.prepare()
    sock = _bind(address)
    host, port = sock.getsockname()[:2]
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(service),
            log_level="warning",
            access_log=False,
            ssl_certfile=hub.tls_cert_file or None,
            ssl_keyfile=hub.tls_key_file or None,
            timeout_graceful_shutdown=5,
        )
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="hub", daemon=True
    )
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            service.close()
            raise HubError(f"[hub] the hub did not start on {host}:{port}")
        time.sleep(0.02)
    scheme = "https" if hub.tls_cert_file else "http"
    shown = f"[{host}]" if ":" in host else host
    url = f"{scheme}://{shown}:{port}/dicom-web"
    LOGGER.info("hub receiving STOW-RS on %s from %d site(s)", url, len(hub.site))
    return HubHandle(server, thread, service, url, int(port))
