"""What every call to Facebook's Graph API carries, whichever service makes it."""

from __future__ import annotations

import functools
import hashlib
import hmac

from mesh.tenants import Tenant

# The Graph API with its version pinned: Meta changes behaviour between versions.
DEFAULT_GRAPH_API_URL = "https://graph.facebook.com/v21.0"


def graph_headers(tenant: Tenant) -> dict[str, str]:
    """The page token, in a header: URLs end up in logs, proxies and traces."""
    return {"Authorization": f"Bearer {tenant.page_access_token}"}


@functools.lru_cache(maxsize=256)
def appsecret_proof(app_secret: str, access_token: str) -> str:
    """HMAC-SHA256 of the token under the app secret, hex: Graph calls carry it so that a
    leaked token is useless without the secret (required once the app enables it)."""
    return hmac.new(app_secret.encode(), access_token.encode(), hashlib.sha256).hexdigest()


def graph_params(tenant: Tenant) -> dict[str, str]:
    """Query parameters of every Graph call: the proof, when the app secret is known."""
    if not (tenant.app_secret and tenant.page_access_token):
        return {}
    return {"appsecret_proof": appsecret_proof(tenant.app_secret, tenant.page_access_token)}
