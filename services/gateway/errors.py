"""The gateway's errors: one tree, each error carrying the HTTP answer it stands for::

GatewayError                    500 internal
├── DialogueError               502 dialogue_error: the dialogue service did not take the call
│   ├── DialogueUnavailable     503 unavailable: down, overloaded, or too slow: try again
│   │   └── DialogueTimeout     504 timeout: the deadline passed (the event may be queued)
│   ├── DialogueRejected        422 rejected: it refused the input (INVALID_ARGUMENT and friends)
│   └── DialogueFailed          502: anything else, a broken answer included
├── RequestError                400 bad_request: the client's request is unusable
│   ├── BodyTooLarge            413 body_too_large
│   ├── MalformedBody           400 malformed_body: not JSON, not UTF-8, unreadable
│   └── InvalidInput            422 invalid_input: JSON of the wrong shape
└── AdminError                  the admin console's branch (`services.gateway.admin.errors`)

``status`` and ``code`` are what an edge answers by default
(`services.gateway.responses.error_json`); an edge that means something else
by an error (the webhook asks Messenger to retry a refused batch) says so itself.
"""

from __future__ import annotations

from typing import ClassVar


class GatewayError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init_subclass__(cls, *, status: int = 0, code: str = "") -> None:
        super().__init_subclass__()
        if status:
            cls.status = status
        if code:
            cls.code = code


class DialogueError(GatewayError, status=502, code="dialogue_error"):
    def __init__(self, message: str, rpc_code: str = "") -> None:
        super().__init__(message)
        self.rpc_code = rpc_code  # the gRPC status name, when the call got one


class DialogueUnavailable(DialogueError, status=503, code="unavailable"): ...


class DialogueTimeout(DialogueUnavailable, status=504, code="timeout"): ...


class DialogueRejected(DialogueError, status=422, code="rejected"): ...


class DialogueFailed(DialogueError): ...


class RequestError(GatewayError, status=400, code="bad_request"): ...


class BodyTooLarge(RequestError, status=413, code="body_too_large"): ...


class MalformedBody(RequestError, code="malformed_body"): ...


class InvalidInput(RequestError, status=422, code="invalid_input"): ...
