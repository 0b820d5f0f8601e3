"""The durable outbox: every instance to send, per destination, in SQLite."""

from edge.outbox.priority import instance_priority
from edge.outbox.queries import OutboxReader
from edge.outbox.retry import BreakerState, CircuitBreaker, RetryPolicy
from edge.outbox.schema import DatabaseCorrupt, SchemaTooNew, open_database
from edge.outbox.store import Outbox

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "DatabaseCorrupt",
    "Outbox",
    "OutboxReader",
    "RetryPolicy",
    "SchemaTooNew",
    "instance_priority",
    "open_database",
]
