"""The admin console of the gateway: pages at ``/admin``, a JSON API at ``/api/admin``.

Administrators sign in (users in Redis, scrypt hashes, sessions with CSRF
tokens, growing delays after failed logins), then read the conversations of the
tenants granted to them, follow transcripts live, look at stats, replay dead
letters, take conversations over and answer as agents, export training
data, set how long messages are kept and erase one customer's data. See
`create_admin_app` for mounting it into the gateway.
"""

from services.gateway.admin.app import AdminConsole, create_admin_app
from services.gateway.admin.auth import Identity, SessionAuthenticator
from services.gateway.admin.backends import Backends, GrpcAdminBackends, StaticBackends
from services.gateway.admin.params import API_PREFIX, PAGES_PREFIX
from services.gateway.admin.settings import AdminSettings
from services.gateway.admin.users import ROLE_ADMIN, ROLE_VIEWER, User, UserStore

__all__ = [
    "API_PREFIX",
    "PAGES_PREFIX",
    "ROLE_ADMIN",
    "ROLE_VIEWER",
    "AdminConsole",
    "AdminSettings",
    "Backends",
    "GrpcAdminBackends",
    "Identity",
    "SessionAuthenticator",
    "StaticBackends",
    "User",
    "UserStore",
    "create_admin_app",
]
