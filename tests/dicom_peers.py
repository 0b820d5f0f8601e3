"""A real pynetdicom Storage SCP, in-process on a free loopback port, with fault injection."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt

# The SCP must parse the data set to compare pixel data; relaxed reading is fine here.
WSI_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"


@dataclass
class Behaviour:
    status: int = 0x0000  # answered to every C-STORE
    abort_after: int | None = None  # abort the association on store number N+1
    stall_s: float = 0.0  # sleep this long before answering
    supported_classes: tuple[str, ...] | None = None  # None: every storage class
    require_called_aet: str | None = None


@dataclass
class StoreScp:
    port: int
    behaviour: Behaviour
    received: dict[str, bytes] = field(default_factory=dict)  # SOP Instance UID -> PixelData
    store_uids: list[str] = field(default_factory=list)  # every stored UID, repeats included
    requested: int = 0
    accepted: int = 0
    stores: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    wake: threading.Event = field(default_factory=threading.Event)

    def on_requested(self, event: Any) -> None:
        with self.lock:
            self.requested += 1

    def on_accepted(self, event: Any) -> None:
        with self.lock:
            self.accepted += 1

    def on_store(self, event: Any) -> int:
        with self.lock:
            self.stores += 1
            number = self.stores
        b = self.behaviour
        if b.abort_after is not None and number > b.abort_after:
            event.assoc.abort()
            return 0xA700
        if b.stall_s:
            self.wake.wait(b.stall_s)
        if b.status in (0x0000, 0x0111) or 0xB000 <= b.status <= 0xBFFF:
            ds = event.dataset
            with self.lock:
                # SR and annotations have no pixels: the UID is what counts for them.
                self.received[str(ds.SOPInstanceUID)] = bytes(ds.get("PixelData", b""))
                self.store_uids.append(str(ds.SOPInstanceUID))
        return b.status


@contextmanager
def store_scp(
    behaviour: Behaviour | None = None, tls: ssl.SSLContext | None = None
) -> Iterator[StoreScp]:
    behaviour = behaviour or Behaviour()
    ae = AE(ae_title=behaviour.require_called_aet or "PACS")
    ae.require_called_aet = behaviour.require_called_aet is not None
    classes = behaviour.supported_classes
    if classes is None:
        # pynetdicom's list stops at 120 classes; the appliance also sends bulk annotations.
        classes = (
            *(str(cx.abstract_syntax) for cx in StoragePresentationContexts),
            "1.2.840.10008.5.1.4.1.1.91.1",
        )
    for sop_class in classes:
        ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    scp = StoreScp(port=0, behaviour=behaviour)
    handlers: list[Any] = [
        (evt.EVT_C_STORE, scp.on_store),
        (evt.EVT_REQUESTED, scp.on_requested),
        (evt.EVT_ACCEPTED, scp.on_accepted),
    ]
    server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=handlers, ssl_context=tls)
    assert server is not None
    scp.port = int(server.server_address[1])
    try:
        yield scp
    finally:
        scp.wake.set()
        server.shutdown()
