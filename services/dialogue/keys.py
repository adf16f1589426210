"""Redis key names.

Every key of one user shares the hash tag ``{t:<tenant>:<channel>:<user>}``,
so in a Redis Cluster one user lives in one slot and every per-user script
runs there. The ready list, the index of active users and the chatlog outbox
are split into shards (``DIALOGUE_SHARDS``): a user belongs to one shard by a
stable hash, and each shard has its own hash tag, so under Redis Cluster the
shards spread over the primaries instead of one slot carrying every message.
Shard 0 keeps the names of an unsharded deployment (``{ready}``,
``{outbox}``), so data queued before sharding is still served. A tenant's
dead letters share ``{dlq:<tenant>}``.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from dataclasses import dataclass

_SAFE_USER = re.compile(r"^[A-Za-z0-9_.@-]{1,128}$")
_SEP = "\x1f"


@dataclass(frozen=True)
class ShardKeys:
    """One shard's ready list, active index and chatlog outbox."""

    index: int
    ready: str
    active: str
    outbox: str

    @classmethod
    def of(cls, index: int) -> ShardKeys:
        ready = "{ready}" if index == 0 else f"{{ready:{index}}}"
        outbox = "{outbox}" if index == 0 else f"{{outbox:{index}}}"
        return cls(index, f"dlg:{ready}:list", f"dlg:{ready}:active", f"dlg:{outbox}:chatlog")

    @property
    def outbox_dropped(self) -> str:
        """Records not written to a full outbox (same slot as the stream)."""
        return self.outbox.removesuffix(":chatlog") + ":dropped"


def shard_of(key: str, shards: int) -> int:
    """The shard of a user (or of a conversation's records): stable across processes."""
    return zlib.crc32(key.encode()) % shards if shards > 1 else 0


def all_shards(shards: int) -> list[ShardKeys]:
    return [ShardKeys.of(i) for i in range(shards)]


def _safe(user_id: str) -> str:
    # Braces would change the hash tag and colons the key's shape.
    if _SAFE_USER.match(user_id):
        return user_id
    return "h" + hashlib.sha256(user_id.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class UserId:
    """One user of one tenant on one channel: the unit of ordering."""

    tenant_id: str
    channel: int
    user_id: str

    def member(self) -> str:
        """The user as stored in the ready list and the active index."""
        return _SEP.join((self.tenant_id, str(self.channel), self.user_id))

    @classmethod
    def from_member(cls, member: str | bytes) -> UserId:
        text = member.decode() if isinstance(member, bytes) else member
        tenant, channel, user = text.split(_SEP, 2)
        return cls(tenant, int(channel), user)


class UserKeys:
    def __init__(self, user: UserId) -> None:
        tag = f"{{t:{user.tenant_id}:{user.channel}:{_safe(user.user_id)}}}"
        self.user = user
        self.prefix = f"dlg:{tag}"
        self.queue = f"{self.prefix}:q"
        self.lease = f"{self.prefix}:lease"
        self.fence = f"{self.prefix}:fence"
        self.sched = f"{self.prefix}:sched"
        self.tries = f"{self.prefix}:tries"
        self.slots = f"{self.prefix}:slots"
        self.handoff = f"{self.prefix}:handoff"
        self.last = f"{self.prefix}:last"
        self.sent = f"{self.prefix}:sent"
        self.dead_count = f"{self.prefix}:dead"
        self.dead_letters = f"{self.prefix}:dlq"
        self.unsettled = f"{self.prefix}:unsettled"

    def seen(self, event_id: str) -> str:
        return f"{self.prefix}:seen:{event_id}"

    def result(self, event_id: str) -> str:
        return f"{self.prefix}:res:{event_id}"

    def done(self, event_id: str) -> str:
        return f"{self.prefix}:done:{event_id}"


class TenantKeys:
    def __init__(self, tenant_id: str) -> None:
        tag = f"{{dlq:{tenant_id}}}"
        # id -> the user's member (where the record lives), or a whole record
        # as written before records moved to the user's slot.
        self.dead_items = f"dlq:{tag}:items"
        self.dead_index = f"dlq:{tag}:index"
