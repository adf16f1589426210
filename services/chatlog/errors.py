"""The errors the servicer turns into gRPC status codes.

    ChatlogError
    ├── InvalidArgument      INVALID_ARGUMENT: the request is wrong; retrying will not help
    ├── NotFound             NOT_FOUND
    ├── StaleFencingToken    FAILED_PRECONDITION: the writer's lease passed to another worker
    └── StoreUnavailable     UNAVAILABLE: Cassandra or SQLite cannot be reached; retry later

Stores raise only these (and let real bugs through, which become INTERNAL).
"""

from __future__ import annotations


class ChatlogError(Exception):
    """Base of every error the chatlog reports to its clients."""


class InvalidArgument(ChatlogError):
    pass


class NotFound(ChatlogError):
    pass


class StaleFencingToken(ChatlogError):
    pass


class StoreUnavailable(ChatlogError):
    pass
