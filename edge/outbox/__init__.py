"""The durable outbox: every instance to send, per destination, in SQLite."""
