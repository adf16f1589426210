"""The console's branch of the gateway's error tree (`services.gateway.errors`)::

AdminError                  500 internal: what the console answers for
├── NotAuthenticated        401 unauthenticated: no valid session (pages: redirect to login)
├── Forbidden               403 forbidden: signed in, but the role does not allow it
│   └── CsrfRejected        403 csrf_rejected: a POST without the session's CSRF token
├── NotFound                404 not_found: no such thing, or a tenant not granted
├── BadInput                400 bad_input: a parameter the console or a service refused
├── Conflict                409 conflict: the action does not fit the state (not handed off...)
├── LockedOut               429 locked_out: too many failed sign-ins
└── BackendUnavailable      503 unavailable: the chatlog, dialogue or Redis did not answer
    └── BackendTimeout      504 timeout: not within the console's deadline

The pages answer these with an HTML page (or the login redirect), the API
with ``{"error": code, "message": why}``: both in `services.gateway.admin.guard`.
"""

from __future__ import annotations

from services.gateway.errors import GatewayError


class AdminError(GatewayError): ...


class NotAuthenticated(AdminError, status=401, code="unauthenticated"): ...


class Forbidden(AdminError, status=403, code="forbidden"): ...


class CsrfRejected(Forbidden, code="csrf_rejected"): ...


class NotFound(AdminError, status=404, code="not_found"): ...


class BadInput(AdminError, status=400, code="bad_input"): ...


class Conflict(AdminError, status=409, code="conflict"): ...


class LockedOut(AdminError, status=429, code="locked_out"):
    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after  # seconds, for the Retry-After header


class BackendUnavailable(AdminError, status=503, code="unavailable"): ...


class BackendTimeout(BackendUnavailable, status=504, code="timeout"): ...
