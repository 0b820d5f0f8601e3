"""Sync over poor links: what to send to a destination (parts of large instances)."""
