"""python -m services.chatlog: serve the chatlog, or apply its schema."""

from __future__ import annotations

import argparse
import asyncio
import sys

from mesh import ConfigError, configure_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m services.chatlog",
        description="The chatlog service: every inbound and outbound message, kept in "
        "SQLite (the embedded default) or Cassandra.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "serve",
        help="serve chatbot.chatlog.v1.ChatlogService over gRPC",
        description="Serve on GRPC_HOST:CHATLOG_PORT (127.0.0.1:50053) with health and "
        "reflection; /metrics on METRICS_PORT (9053). CHATLOG_BACKEND picks the store: "
        "sqlite (CHATLOG_SQLITE_PATH, default .data/chatlog.sqlite3) or cassandra "
        "(CASSANDRA_HOSTS, CASSANDRA_PORT, CASSANDRA_KEYSPACE, CASSANDRA_CONSISTENCY...). "
        "Tenants come from TENANTS_FILE or TENANT_ID. services/chatlog/README.md lists "
        "every setting.",
    )
    schema = commands.add_parser(
        "schema",
        help="create the store's keyspace and tables if missing (idempotent)",
        description="Create what is missing, change nothing that exists: the Cassandra "
        "keyspace (CASSANDRA_KEYSPACE, replication CASSANDRA_REPLICATION) and its tables, "
        "or with --backend sqlite the tables of CHATLOG_SQLITE_PATH. Run it before "
        "deploying with CASSANDRA_APPLY_SCHEMA=false, so replicas never race on DDL.",
    )
    schema.add_argument(
        "--backend",
        choices=["cassandra", "sqlite"],
        default="cassandra",
        help="which store (default: cassandra)",
    )
    return parser


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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            configure_logging("chatlog")
            from mesh.tenants import Tenants
            from mesh.tracing import setup_tracing, shutdown_tracing
            from services.chatlog.server import serve
            from services.chatlog.settings import ChatlogSettings

            settings, tenants = ChatlogSettings.from_env(), Tenants.from_env()
            setup_tracing("chatlog")
            try:
                asyncio.run(serve(settings, tenants))
            finally:
                shutdown_tracing()
            return 0
        if args.command == "schema":
            configure_logging("chatlog")
            from services.chatlog.errors import StoreUnavailable

            try:
                asyncio.run(_apply_schema(args.backend))
            except StoreUnavailable as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
            return 0
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
