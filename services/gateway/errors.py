"""The gateway's errors, a small tree callers catch at the level they need::

GatewayError
├── DialogueError               the dialogue service did not take the call
│   ├── DialogueUnavailable     down, overloaded, or too slow: try again (503)
│   │   └── DialogueTimeout     the call's deadline passed (the event may be queued)
│   ├── DialogueRejected        it refused the input (INVALID_ARGUMENT and friends)
│   └── DialogueFailed          anything else, a broken answer included
└── RequestError                the client's request is unusable (4xx)
    ├── BodyTooLarge            413
    ├── MalformedBody           400: not JSON, not UTF-8, unreadable
    └── InvalidInput            422: JSON of the wrong shape
"""

from __future__ import annotations


class GatewayError(Exception):
    pass


class DialogueError(GatewayError):
    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class DialogueUnavailable(DialogueError):
    pass


class DialogueTimeout(DialogueUnavailable):
    pass


class DialogueRejected(DialogueError):
    pass


class DialogueFailed(DialogueError):
    pass


class RequestError(GatewayError):
    status = 400
    error = "bad_request"


class BodyTooLarge(RequestError):
    status = 413
    error = "body_too_large"


class MalformedBody(RequestError):
    status = 400
    error = "malformed_body"


class InvalidInput(RequestError):
    status = 422
    error = "invalid_input"
