"""Authentication, in one place for the whole gateway.

Every route that needs to know its caller asks an `Authenticator` for a
`Principal`; the services behind the gateway trust what it forwards and check
nothing themselves. Schemes are authenticators in a chain:

- `ApiKeyAuthenticator`: ``Authorization: Bearer <key>``, a tenant's API key
  (the JSON channel). Keys are compared as SHA-256 digests with
  ``hmac.compare_digest`` against every configured key, so neither the
  comparison nor the position of a key in the list shows in the timing.
- sessions for the admin console: a ``SessionAuthenticator`` reading a
  session cookie fits the same `Authenticator` interface and joins the chain;
  its principals carry the tenants granted to the admin and their roles.

An authenticator answers None when the request carries none of its
credentials (the next one is asked), a `Principal` when they are good, and
raises `AuthenticationFailed` when they are present but wrong.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from starlette.requests import HTTPConnection

from mesh import ConfigError
from mesh.tenants import Tenants

SCHEME_API_KEY = "api_key"
ROLE_CHANNEL = "channel"


class AuthenticationError(Exception):
    """The request is not authenticated (401)."""


class AuthenticationRequired(AuthenticationError):
    """No credentials of any accepted scheme."""


class AuthenticationFailed(AuthenticationError):
    """Credentials were given and are wrong."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: an id safe to log, how they proved it, and what they may reach."""

    subject: str
    scheme: str
    tenant_ids: frozenset[str]
    roles: frozenset[str] = field(default_factory=frozenset)

    def can_access(self, tenant_id: str) -> bool:
        return tenant_id in self.tenant_ids


class Authenticator(Protocol):
    async def authenticate(self, conn: HTTPConnection) -> Principal | None: ...


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()


def bearer_token(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip()


class ApiKeyAuthenticator:
    """Tenants' API keys from `Tenants` (``api_keys``); one key belongs to one tenant."""

    def __init__(self, tenants: Tenants) -> None:
        self._keys: list[tuple[bytes, str]] = []
        seen: dict[bytes, str] = {}
        for tenant in tenants:
            for key in tenant.api_keys:
                if not key:
                    continue
                digest = _digest(key)
                if digest in seen and seen[digest] != tenant.id:
                    raise ConfigError(
                        f"an API key of tenant {tenant.id!r} is also a key of {seen[digest]!r}"
                    )
                seen[digest] = tenant.id
                self._keys.append((digest, tenant.id))

    async def authenticate(self, conn: HTTPConnection) -> Principal | None:
        token = bearer_token(conn)
        if token is None:
            return None
        if not token:
            raise AuthenticationFailed("the bearer token is empty")
        presented = _digest(token)
        tenant_id: str | None = None
        for digest, owner in self._keys:  # no early exit: every key costs the same
            if hmac.compare_digest(digest, presented):
                tenant_id = owner
        if tenant_id is None:
            raise AuthenticationFailed("the API key is not valid")
        return Principal(
            subject=f"api-key:{tenant_id}:{presented.hex()[:12]}",
            scheme=SCHEME_API_KEY,
            tenant_ids=frozenset({tenant_id}),
            roles=frozenset({ROLE_CHANNEL}),
        )


class AuthenticatorChain:
    """Asks each authenticator in turn; the first principal wins."""

    def __init__(self, authenticators: Iterable[Authenticator]) -> None:
        self._authenticators: Sequence[Authenticator] = tuple(authenticators)

    async def authenticate(self, conn: HTTPConnection) -> Principal | None:
        for authenticator in self._authenticators:
            principal = await authenticator.authenticate(conn)
            if principal is not None:
                return principal
        return None


async def require_principal(
    conn: HTTPConnection, authenticator: Authenticator, *, scheme: str | None = None
) -> Principal:
    """The caller, or AuthenticationError; ``scheme`` restricts which credentials count."""
    principal = await authenticator.authenticate(conn)
    if principal is None:
        raise AuthenticationRequired("credentials are required")
    if scheme is not None and principal.scheme != scheme:
        raise AuthenticationFailed(f"this route needs {scheme} credentials")
    return principal
