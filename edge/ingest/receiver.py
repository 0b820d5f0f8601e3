"""DICOM C-STORE receiver for DICOM-native scanners.

pynetdicom is told to spool each incoming dataset to a file as it arrives
(STORE_RECV_CHUNKED_DATASET), so memory stays flat however large a level is; the handler reads
only the header and copies the file to <spool>/<study>/<series>/<sop>.dcm (under a `.part`
name first, renamed when complete) before acknowledging.
The folder watcher treats each series folder as one slide once no instance has arrived for
`[receiver] settle_s`; the daemon removes the spooled copy after the slide is converted.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from edge import config as cfg

LOGGER = logging.getLogger(__name__)

BULK_ANNOTATIONS = "1.2.840.10008.5.1.4.1.1.91.1"  # Microscopy Bulk Simple Annotations
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class Receiver:
    def __init__(self, settings: cfg.Receiver, spool: Path) -> None:
        self.settings = settings
        self.spool = spool
        self.received = 0
        self._server: Any = None

    def start(self) -> None:
        self.spool.mkdir(parents=True, exist_ok=True)
        for stale in self.spool.rglob("*.dcm.part"):  # cut off by a crash, never acknowledged:
            stale.unlink(missing_ok=True)  # the scanner sends it again
        pynetdicom_config.STORE_RECV_CHUNKED_DATASET = True
        ae = AE(ae_title=self.settings.ae_title)
        for context in StoragePresentationContexts:
            # Every transfer syntax: WSI arrives JPEG, JPEG 2000 or HTJ2K encoded.
            ae.add_supported_context(str(context.abstract_syntax), ALL_TRANSFER_SYNTAXES)
        # pynetdicom's list stops at 120 classes; a scanner may send bulk annotations too.
        ae.add_supported_context(BULK_ANNOTATIONS, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.require_called_aet = True
        if self.settings.allowed_aets:
            ae.require_calling_aet = list(self.settings.allowed_aets)
        self._server = ae.start_server(
            (self.settings.listen, self.settings.port),
            block=False,
            evt_handlers=[(evt.EVT_C_STORE, self._on_store)],
        )
        LOGGER.info(
            "DICOM receiver %s listening on %s:%d",
            self.settings.ae_title,
            self.settings.listen,
            self.settings.port,
        )

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def _on_store(self, event: Any) -> int:
        request = event.request
        sop = str(request.AffectedSOPInstanceUID or "")
        spooled = getattr(event, "dataset_path", None)
        try:
            if spooled is not None:
                ds = dcmread(spooled, stop_before_pixels=True, force=True)
            else:
                ds = event.dataset
            study, series = str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)
        except Exception as exc:  # a malformed dataset: tell the scanner
            LOGGER.warning("receiver: unreadable instance from %s: %s", _peer(event), exc)
            return CANNOT_UNDERSTAND
        if not all(_UID.match(uid) and len(uid) <= 64 for uid in (sop, study, series)):
            LOGGER.warning("receiver: instance with invalid UIDs from %s refused", _peer(event))
            return CANNOT_UNDERSTAND
        folder = self.spool / study / series
        target = folder / f"{sop}.dcm"
        part = folder / f"{sop}.dcm.part"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with part.open("wb") as fh:
                if spooled is not None:
                    with open(spooled, "rb") as src:
                        shutil.copyfileobj(src, fh, 1 << 20)
                else:
                    fh.write(event.encoded_dataset(include_meta=True))
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(part, target)  # acknowledged only once it is on disk
        except OSError as exc:
            part.unlink(missing_ok=True)
            LOGGER.error("receiver: cannot store an instance: %s", exc.strerror or exc)
            return OUT_OF_RESOURCES
        self.received += 1
        return SUCCESS


def _peer(event: Any) -> str:
    requestor = event.assoc.requestor
    return f"{requestor.ae_title}@{requestor.address}"
