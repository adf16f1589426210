"""Which tenant a Messenger page belongs to, and which secrets sign its webhooks."""

from __future__ import annotations

from mesh.tenants import Tenant, Tenants


class PageDirectory:
    """Page id → tenant.

    One tenant configured without a page id (the single tenant from the
    environment, ``PAGE_ID`` unset) serves every page; otherwise a page must be
    named by a tenant.
    """

    def __init__(self, tenants: Tenants) -> None:
        self._tenants = tenants
        only = list(tenants)
        self._catch_all = only[0] if len(only) == 1 and not only[0].page_id else None
        self.secrets: tuple[str, ...] = tuple(
            dict.fromkeys(t.app_secret for t in tenants if t.app_secret)
        )
        self.verify_tokens: tuple[str, ...] = tuple(
            dict.fromkeys(t.verify_token for t in tenants if t.verify_token)
        )

    def tenant_for(self, page_id: str) -> Tenant | None:
        return self._tenants.by_page(page_id) or self._catch_all
