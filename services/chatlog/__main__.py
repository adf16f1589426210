"""python -m services.chatlog: serve the chatlog, or apply its schema."""

from __future__ import annotations

import argparse
import asyncio
import sys

from mesh import bootstrap

DESCRIPTION = (
    "The chatlog service: every inbound and outbound message, kept in SQLite (the embedded "
    "default) or Cassandra."
)


def _serve(args: argparse.Namespace) -> int:
    from mesh.tenants import Tenants
    from services.chatlog.server import serve
    from services.chatlog.settings import ChatlogSettings

    asyncio.run(serve(ChatlogSettings.from_env(), Tenants.from_env()))
    return 0


def _schema_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend",
        choices=["cassandra", "sqlite"],
        default="cassandra",
        help="which store (default: cassandra)",
    )


def _schema(args: argparse.Namespace) -> int:
    from services.chatlog.errors import StoreUnavailable

    try:
        asyncio.run(_apply_schema(args.backend))
    except StoreUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


async def _apply_schema(backend: str) -> None:
    from dataclasses import replace

    from services.chatlog.server import build_store
    from services.chatlog.settings import ChatlogSettings

    settings = ChatlogSettings.from_env()
    settings = replace(
        settings,
        backend=backend,
        cassandra=replace(settings.cassandra, apply_schema=True),
    )
    store = build_store(settings)
    try:
        await store.open()
    finally:
        await store.close()
    where = settings.sqlite_path if backend == "sqlite" else settings.cassandra.keyspace
    print(f"chatlog schema is in place ({backend}: {where})", flush=True)


COMMANDS = [
    bootstrap.Command(
        "serve",
        help="serve chatbot.chatlog.v1.ChatlogService over gRPC",
        description="Serve on GRPC_HOST:CHATLOG_PORT (127.0.0.1:50053) with health and "
        "reflection; /metrics on METRICS_PORT (9053). CHATLOG_BACKEND picks the store: "
        "sqlite (CHATLOG_SQLITE_PATH, default .data/chatlog.sqlite3) or cassandra "
        "(CASSANDRA_HOSTS, CASSANDRA_PORT, CASSANDRA_KEYSPACE, CASSANDRA_CONSISTENCY...). "
        "Tenants come from TENANTS_FILE or TENANT_ID. services/chatlog/README.md lists "
        "every setting.",
        run=_serve,
        traces=True,
    ),
    bootstrap.Command(
        "schema",
        help="create the store's keyspace and tables if missing (idempotent)",
        description="Create what is missing, change nothing that exists: the Cassandra "
        "keyspace (CASSANDRA_KEYSPACE, replication CASSANDRA_REPLICATION) and its tables, "
        "or with --backend sqlite the tables of CHATLOG_SQLITE_PATH. Run it before "
        "deploying with CASSANDRA_APPLY_SCHEMA=false, so replicas never race on DDL.",
        run=_schema,
        arguments=_schema_arguments,
        logs=True,
    ),
]


def main(argv: list[str] | None = None) -> int:
    return bootstrap.main("chatlog", DESCRIPTION, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
