"""Storage backends behind one protocol: SQLite (the embedded default) and Cassandra."""

from services.chatlog.store.base import ChatlogStore

__all__ = ["ChatlogStore"]
