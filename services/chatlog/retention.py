"""Retention policies per tenant, cached so appends do not read them every time.

A policy set through this replica applies at once; one set through another
replica applies here within ``cache_seconds`` (30 s by default). Either way
it applies to messages stored from then on, as the contract says: a message's
expiry is fixed when it is stored.
"""

from __future__ import annotations

import time

from services.chatlog.records import MAX_RETENTION_NS, RetentionRecord
from services.chatlog.store.base import ChatlogStore


class RetentionPolicies:
    def __init__(self, store: ChatlogStore, default_ttl_ns: int, cache_seconds: float) -> None:
        self._store = store
        self._default_ttl_ns = default_ttl_ns
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, RetentionRecord]] = {}

    async def get(self, tenant_id: str, *, fresh: bool = False) -> RetentionRecord:
        """The tenant's policy; ``fresh`` reads the store (GetRetentionPolicy does)."""
        cached = self._cache.get(tenant_id)
        if not fresh and cached is not None and time.monotonic() - cached[0] < self._cache_seconds:
            return cached[1]
        policy = await self._store.get_retention(tenant_id) or RetentionRecord(
            tenant_id, self._default_ttl_ns, None
        )
        self._cache[tenant_id] = (time.monotonic(), policy)
        return policy

    async def set(self, tenant_id: str, message_ttl_ns: int, now_ns: int) -> RetentionRecord:
        policy = RetentionRecord(tenant_id, message_ttl_ns, now_ns)
        await self._store.set_retention(policy)
        self._cache[tenant_id] = (time.monotonic(), policy)
        return policy

    async def expiry(self, tenant_id: str, create_ns: int) -> int | None:
        """When a message created at ``create_ns`` expires; None: kept until deleted."""
        ttl = (await self.get(tenant_id)).message_ttl_ns
        # Cassandra cannot expire a row later than 20 years on: longer policies mean that.
        return create_ns + min(ttl, MAX_RETENTION_NS) if ttl else None
