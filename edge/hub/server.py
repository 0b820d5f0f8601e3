"""Running the hub: uvicorn on a background thread of the daemon, on its own port.

Started as the dashboard is (edge.system.httpd); `stop()` lets requests in flight finish for a
few seconds, then closes the database thread.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from edge import config as cfg
from edge.errors import EdgeError
from edge.hub.service import HubService
from edge.hub.stow import create_app
from edge.system.httpd import Served, serve_app

LOGGER = logging.getLogger(__name__)


class HubError(EdgeError):
    """The hub cannot start (address in use, missing certificate)."""


@dataclass
class HubHandle:
    served: Served
    service: HubService
    url: str  # the DICOMweb root sites send to, e.g. https://hub:8042/dicom-web

    @property
    def port(self) -> int:
        return self.served.port

    def stop(self, timeout_s: float = 10.0) -> None:
        self.served.stop(timeout_s)
        self.service.close()


def serve(config: cfg.Config, listen: str | None = None) -> HubHandle:
    """Start the hub (listen overrides [hub] listen; port 0 picks a free one)."""
    hub = config.hub
    address = listen or hub.listen
    if not address:
        raise HubError("[hub] listen is not set: the hub has no address to receive on")
    service = HubService(config)
    service.prepare()
    try:
        served = serve_app(
            create_app(service),
            address,
            name="hub",
            section="[hub]",
            what="the hub",
            error=HubError,
            tls_cert_file=hub.tls_cert_file,
            tls_key_file=hub.tls_key_file,
        )
    except HubError:
        service.close()
        raise
    url = f"{served.url}/dicom-web"
    LOGGER.info("hub receiving STOW-RS on %s from %d site(s)", url, len(hub.site))
    return HubHandle(served, service, url)
