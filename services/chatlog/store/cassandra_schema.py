"""The Cassandra schema: one table per query (services/chatlog/README.md explains each).

``apply_schema`` is idempotent (``IF NOT EXISTS`` everywhere) and runs at
start-up or through ``python -m services.chatlog schema``. It never alters
what exists: a keyspace created with another replication keeps it (change it
with ALTER KEYSPACE and a repair, deliberately), and the shard count, fixed
at creation in ``chatlog_meta``, wins over the setting because rows already
written live in those shards.
"""

from __future__ import annotations

import re

from cassandra.cluster import Session

from mesh import ConfigError, get_logger

_log = get_logger("chatlog.cassandra")

_KEYSPACE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,47}$")
_DC = re.compile(r"^[A-Za-z0-9_.-]+$")

# The summary of a conversation, in `conversations` and `conversations_by_activity` alike.
_SUMMARY = """
    channel int,
    user_id text,
    first_ns bigint,
    last_message_id text,
    message_count bigint,
    last_preview text,
    last_direction int,
    last_intent text,
    last_intent_confidence float,
    last_intent_ns bigint,
    last_intent_message_id text,
    has_fallback boolean,
    handed_off boolean,
    intents set<text>,
    expire_ns bigint,"""

TABLES = (
    # Idempotency: one row per (tenant, message_id), written with IF NOT EXISTS.
    """CREATE TABLE IF NOT EXISTS {ks}.messages_by_id (
    tenant_id text,
    message_id text,
    conversation_id text,
    channel int,
    user_id text,
    create_ns bigint,
    expire_ns bigint,
    payload blob,
    PRIMARY KEY ((tenant_id, message_id)))""",
    # ListMessages: a conversation's transcript, one partition per month.
    """CREATE TABLE IF NOT EXISTS {ks}.messages_by_conversation (
    tenant_id text,
    conversation_id text,
    month int,
    create_ns bigint,
    message_id text,
    payload blob,
    PRIMARY KEY ((tenant_id, conversation_id, month), create_ns, message_id))
    WITH CLUSTERING ORDER BY (create_ns ASC, message_id ASC)""",
    # SearchMessages and GetStats: a tenant's messages per day, split in shards.
    """CREATE TABLE IF NOT EXISTS {ks}.messages_by_day (
    tenant_id text,
    day int,
    shard int,
    create_ns bigint,
    message_id text,
    conversation_id text,
    channel int,
    user_id text,
    direction int,
    search_text text,
    intent text,
    is_fallback boolean,
    processing_ns bigint,
    PRIMARY KEY ((tenant_id, day, shard), create_ns, message_id))
    WITH CLUSTERING ORDER BY (create_ns DESC, message_id DESC)
    AND compaction = {{'class': 'TimeWindowCompactionStrategy',
                       'compaction_window_unit': 'DAYS', 'compaction_window_size': 1}}""",
    # ExportTrainingData: training examples per intent and month, lowest confidence first.
    """CREATE TABLE IF NOT EXISTS {ks}.messages_by_intent (
    tenant_id text,
    intent text,
    month int,
    confidence float,
    message_id text,
    conversation_id text,
    create_ns bigint,
    text text,
    entities blob,
    is_fallback boolean,
    model_version text,
    PRIMARY KEY ((tenant_id, intent, month), confidence, message_id))
    WITH CLUSTERING ORDER BY (confidence ASC, message_id ASC)""",
    # A conversation's summary, read and rewritten on every append to it.
    """CREATE TABLE IF NOT EXISTS {ks}.conversations (
    tenant_id text,
    conversation_id text,
    last_ns bigint,"""
    + _SUMMARY
    + """
    PRIMARY KEY ((tenant_id, conversation_id)))""",
    # ListConversations: each conversation once, under the day of its latest message.
    """CREATE TABLE IF NOT EXISTS {ks}.conversations_by_activity (
    tenant_id text,
    day int,
    shard int,
    last_ns bigint,
    conversation_id text,"""
    + _SUMMARY
    + """
    PRIMARY KEY ((tenant_id, day, shard), last_ns, conversation_id))
    WITH CLUSTERING ORDER BY (last_ns DESC, conversation_id DESC)""",
    # ListConversations by user, and DeleteUserData.
    """CREATE TABLE IF NOT EXISTS {ks}.conversations_by_user (
    tenant_id text,
    user_id text,
    channel int,
    conversation_id text,
    PRIMARY KEY ((tenant_id, user_id), channel, conversation_id))""",
    # The days that hold a tenant's messages, newest first: what the per-day scans visit.
    """CREATE TABLE IF NOT EXISTS {ks}.tenant_days (
    tenant_id text,
    day int,
    PRIMARY KEY ((tenant_id), day))
    WITH CLUSTERING ORDER BY (day DESC)""",
    # The intents a tenant's examples were exported under: the export's partitions.
    """CREATE TABLE IF NOT EXISTS {ks}.tenant_intents (
    tenant_id text,
    intent text,
    PRIMARY KEY ((tenant_id), intent))""",
    # The highest fencing token stored per user (compare-and-set with Paxos).
    """CREATE TABLE IF NOT EXISTS {ks}.user_fences (
    tenant_id text,
    channel int,
    user_id text,
    fencing_token bigint,
    PRIMARY KEY ((tenant_id, channel, user_id)))""",
    # Written with the watermark as the write time: the latest watermark wins,
    # whatever order the receipts arrive in.
    """CREATE TABLE IF NOT EXISTS {ks}.receipts_by_conversation (
    tenant_id text,
    conversation_id text,
    delivered_ns bigint,
    read_ns bigint,
    PRIMARY KEY ((tenant_id, conversation_id)))""",
    """CREATE TABLE IF NOT EXISTS {ks}.retention_policies (
    tenant_id text PRIMARY KEY,
    message_ttl_seconds bigint,
    message_ttl_nanos int,
    update_ns bigint)""",
    """CREATE TABLE IF NOT EXISTS {ks}.chatlog_meta (
    name text PRIMARY KEY,
    value text)""",
)


def check_keyspace(name: str) -> str:
    if not _KEYSPACE.match(name):
        raise ConfigError(
            f"CASSANDRA_KEYSPACE={name!r}: expected a letter, then letters, digits or '_' (max 48)"
        )
    return name


def replication_cql(spec: str) -> str:
    """CQL replication options from ``CASSANDRA_REPLICATION``.

    ``SimpleStrategy:1`` (the local default), a bare ``3`` (SimpleStrategy,
    RF 3) or ``NetworkTopologyStrategy:dc1=3,dc2=3`` (production).
    """
    text = spec.strip()
    strategy, _, options = text.partition(":")
    if text.isdigit():
        strategy, options = "SimpleStrategy", text
    if strategy == "SimpleStrategy" and options.isdigit() and int(options) > 0:
        return f"{{'class': 'SimpleStrategy', 'replication_factor': {int(options)}}}"
    if strategy == "NetworkTopologyStrategy" and options:
        parts = []
        for item in options.split(","):
            dc, _, factor = item.strip().partition("=")
            if not _DC.match(dc) or not factor.isdigit():
                break
            parts.append(f"'{dc}': {int(factor)}")
        else:
            return "{'class': 'NetworkTopologyStrategy', " + ", ".join(parts) + "}"
    raise ConfigError(
        f"CASSANDRA_REPLICATION={spec!r}: expected SimpleStrategy:N, N, or "
        "NetworkTopologyStrategy:dc1=N,dc2=M"
    )


def apply_schema(session: Session, keyspace: str, replication: str, shards: int) -> int:
    """Creates what is missing (blocking: call it from a thread); returns the shard count."""
    session.execute(
        f"CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = {replication}",
        timeout=30,
    )
    for table in TABLES:
        session.execute(table.format(ks=keyspace), timeout=30)
    session.execute(
        f"INSERT INTO {keyspace}.chatlog_meta (name, value) VALUES ('shards', %s) IF NOT EXISTS",
        (str(shards),),
        timeout=30,
    )
    stored = read_shards(session, keyspace)
    if stored != shards:
        _log.warning(
            "the keyspace was created with another shard count: using it",
            extra={"stored_shards": stored, "configured_shards": shards},
        )
    _log.info("cassandra schema applied", extra={"keyspace": keyspace, "shards": stored})
    return stored


def read_shards(session: Session, keyspace: str) -> int:
    row = session.execute(
        f"SELECT value FROM {keyspace}.chatlog_meta WHERE name = 'shards'", timeout=30
    ).one()
    if row is None:
        raise LookupError(
            f"keyspace {keyspace} has no chatlog schema: run `python -m services.chatlog schema`"
        )
    return int(row.value)
