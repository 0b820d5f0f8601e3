"""The contract between the outbox (what to send, durable state) and the destinations (how).

A destination receives a batch of queued instances (files on disk) and answers one Outcome per
instance. It never touches the database: the outbox worker turns outcomes into state changes
(delivered, retry at a later time, or parked with the reason), so every destination is testable
without SQLite and the outbox is testable without a network.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class Verdict(enum.Enum):
    DELIVERED = "delivered"  # the destination has the instance (now, or already had it)
    RETRY = "retry"  # a transient failure: try again later (network down, busy, 5xx)
    PARK = "park"  # a permanent failure: retrying cannot help; a person must look


@dataclass(frozen=True)
class Item:
    """One instance to send to one destination."""

    id: int  # outbox row id
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str
    size: int


@dataclass(frozen=True)
class Outcome:
    item_id: int
    verdict: Verdict
    reason: str = ""  # human-readable: the status code and what the peer said


class Destination(Protocol):
    name: str

    def send(self, items: list[Item]) -> list[Outcome]:
        """Send a batch; one Outcome per item, in any order. Must not raise for per-item or
        connection failures: those are Outcomes (RETRY for the whole batch if unreachable)."""
        ...

    def close(self) -> None: ...
