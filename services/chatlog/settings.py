"""The chatlog's settings, read once from the environment (see README.md for the table)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mesh import ConfigError, Env, repo_root
from services.chatlog.records import DAY_NS
from services.chatlog.store.cassandra import CassandraConfig, consistency_level
from services.chatlog.store.cassandra_schema import check_keyspace, replication_cql
from services.chatlog.validation import Limits

BACKENDS = ("sqlite", "cassandra")


@dataclass(frozen=True)
class ChatlogSettings:
    host: str = "127.0.0.1"
    port: int = 50053
    metrics_port: int = 9053
    backend: str = "sqlite"
    sqlite_path: Path = Path(".data/chatlog.sqlite3")
    cassandra: CassandraConfig = field(default_factory=CassandraConfig)
    page_token_secret: bytes | None = None
    default_message_ttl_ns: int = 0  # 0: kept until deleted
    retention_cache_seconds: float = 30.0
    health_interval: float = 2.0
    maintenance_interval: float = 600.0
    grace: float = 10.0
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_env(cls, env: Env | None = None) -> ChatlogSettings:
        env = env or Env()
        backend = env.string("CHATLOG_BACKEND", "sqlite").lower()
        if backend not in BACKENDS:
            raise ConfigError(f"CHATLOG_BACKEND={backend!r}: expected one of {', '.join(BACKENDS)}")
        secret = env.secret("CHATLOG_PAGE_TOKEN_SECRET")
        if secret is not None and len(secret.encode()) < 16:
            raise ConfigError("CHATLOG_PAGE_TOKEN_SECRET must have at least 16 characters")
        retention_days = env.integer("CHATLOG_DEFAULT_RETENTION_DAYS", 0, minimum=0)
        for name in (
            "CHATLOG_RETENTION_CACHE_SECONDS",
            "CHATLOG_HEALTH_INTERVAL_SECONDS",
            "CHATLOG_MAINTENANCE_INTERVAL_SECONDS",
        ):
            if env.number(name, 1.0) <= 0:
                raise ConfigError(f"{name} must be positive")
        return cls(
            host=env.string("GRPC_HOST", "127.0.0.1"),
            port=env.integer("CHATLOG_PORT", 50053, minimum=0),
            metrics_port=env.integer("METRICS_PORT", 9053, minimum=0),
            backend=backend,
            sqlite_path=env.path("CHATLOG_SQLITE_PATH", repo_root() / ".data" / "chatlog.sqlite3"),
            cassandra=cassandra_config(env),
            page_token_secret=secret.encode() if secret else None,
            default_message_ttl_ns=retention_days * DAY_NS,
            retention_cache_seconds=env.number("CHATLOG_RETENTION_CACHE_SECONDS", 30.0),
            health_interval=env.number("CHATLOG_HEALTH_INTERVAL_SECONDS", 2.0),
            maintenance_interval=env.number("CHATLOG_MAINTENANCE_INTERVAL_SECONDS", 600.0),
            grace=env.number("SHUTDOWN_GRACE_SECONDS", 10.0),
        )


def cassandra_config(env: Env) -> CassandraConfig:
    hosts = tuple(
        h.strip() for h in env.string("CASSANDRA_HOSTS", "127.0.0.1").split(",") if h.strip()
    )
    if not hosts:
        raise ConfigError("CASSANDRA_HOSTS names no host")
    consistency = env.string("CASSANDRA_CONSISTENCY", "LOCAL_ONE").upper()
    try:
        consistency_level(consistency)
    except ValueError as exc:
        raise ConfigError(f"CASSANDRA_CONSISTENCY: {exc}") from None
    timeout = env.number("CASSANDRA_REQUEST_TIMEOUT_SECONDS", 5.0)
    connect = env.number("CASSANDRA_CONNECT_TIMEOUT_SECONDS", 3.0)
    if timeout <= 0 or connect <= 0:
        raise ConfigError("Cassandra timeouts must be positive")
    return CassandraConfig(
        hosts=hosts,
        port=env.integer("CASSANDRA_PORT", 9042, minimum=1),
        keyspace=check_keyspace(env.string("CASSANDRA_KEYSPACE", "chatbot")),
        consistency=consistency,
        replication=replication_cql(env.string("CASSANDRA_REPLICATION", "SimpleStrategy:1")),
        local_dc=env.optional("CASSANDRA_LOCAL_DC"),
        username=env.optional("CASSANDRA_USERNAME"),
        password=env.secret("CASSANDRA_PASSWORD"),
        request_timeout=timeout,
        connect_timeout=connect,
        apply_schema=env.boolean("CASSANDRA_APPLY_SCHEMA", True),
        shards=env.integer("CASSANDRA_SHARDS", 4, minimum=1),
        scan_budget=env.integer("CHATLOG_SCAN_BUDGET", 5_000, minimum=100),
        protocol_version=env.integer("CASSANDRA_PROTOCOL_VERSION", 5, minimum=3),
    )
