"""The console's errors, a small tree the pages and the API map to answers::

AdminError
├── NotAuthenticated        no valid session (pages: redirect to login; API: 401)
├── Forbidden               signed in, but the role does not allow it (403)
│   └── CsrfRejected        a POST without the session's CSRF token (403)
├── NotFound                no such thing, or a tenant not granted (404)
├── BadInput                a parameter the console or a service refused (400)
├── Conflict                the action does not fit the state (409: not handed off...)
├── LockedOut               too many failed logins (429)
└── BackendUnavailable      the chatlog, dialogue or Redis did not answer (503)
    └── BackendTimeout      within the console's deadline (504)
"""

from __future__ import annotations


class AdminError(Exception):
    status = 500
    code = "internal"


class NotAuthenticated(AdminError):
    status = 401
    code = "unauthenticated"


class Forbidden(AdminError):
    status = 403
    code = "forbidden"


class CsrfRejected(Forbidden):
    code = "csrf_rejected"


class NotFound(AdminError):
    status = 404
    code = "not_found"


class BadInput(AdminError):
    status = 400
    code = "bad_input"


class Conflict(AdminError):
    status = 409
    code = "conflict"


class LockedOut(AdminError):
    status = 429
    code = "locked_out"


class BackendUnavailable(AdminError):
    status = 503
    code = "unavailable"


class BackendTimeout(BackendUnavailable):
    status = 504
    code = "timeout"
