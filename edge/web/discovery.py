"""PACS and hubs on the LAN (mDNS: `_dicom._tcp`, `_dicom-tls._tcp`, `_edge-wsi._tcp`), for the
Destinations page: found in the background every minute, so a page never waits on a browse."""

from __future__ import annotations

import logging
import threading
from typing import Any

LOGGER = logging.getLogger(__name__)

INTERVAL_S = 60.0
BROWSE_S = 3.0


class Discovery:
    def __init__(
        self, interval_s: float = INTERVAL_S, exclude: tuple[str, ...] = (), interfaces: Any = None
    ) -> None:
        self.interval_s = interval_s
        self.interfaces = interfaces  # zeroconf's choice (None: all interfaces)
        self.exclude = exclude  # our own announcements
        self.peers: list[Any] = []
        self.error = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="mdns-browse", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=BROWSE_S + 2)

    def _run(self) -> None:
        from zeroconf import InterfaceChoice

        from edge.system.mdns import browse

        interfaces = self.interfaces if self.interfaces is not None else InterfaceChoice.All
        while not self._stop.is_set():
            try:
                found = browse(BROWSE_S, exclude=self.exclude, interfaces=interfaces)
                self.peers = sorted(found, key=lambda p: (p.kind, p.name))
                self.error = ""
            except Exception as exc:  # no multicast here: say so on the page, keep trying
                self.error = f"mDNS browse failed: {exc}"
                LOGGER.debug("%s", self.error)
            self._stop.wait(self.interval_s)
