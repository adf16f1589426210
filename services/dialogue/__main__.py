"""python -m services.dialogue: serve the dialogue service."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Coroutine
from typing import Any

from mesh import bootstrap

DESCRIPTION = "The dialogue service: every user's events answered in order, exactly once."


def _serve(args: argparse.Namespace) -> int:
    from mesh.tenants import Tenants
    from services.dialogue.server import serve
    from services.dialogue.settings import DialogueSettings

    _run(serve(DialogueSettings.from_env(), Tenants.from_env()))
    return 0


def _run(main: Coroutine[Any, Any, None]) -> None:
    # uvloop spends less CPU than asyncio's own loop on each socket operation,
    # and a worker does several per message.
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def _check_domain(args: argparse.Namespace) -> int:
    from mesh.tenants import Tenants
    from services.dialogue.domain import load_domains

    for tenant_id, domain in load_domains(Tenants.from_env()).items():
        print(
            f"{tenant_id}: {len(domain.responses)} responses, "
            f"{len(domain.actions)} actions, slots {sorted(domain.slots)}"
        )
    return 0


COMMANDS = [
    bootstrap.Command(
        "serve",
        help="serve chatbot.dialogue.v1.DialogueService and run this replica's workers",
        description="Serve on GRPC_HOST:DIALOGUE_PORT (127.0.0.1:50051) with health and "
        "reflection, /metrics on METRICS_PORT (9051). DIALOGUE_ROLE chooses the half: "
        "'intake' serves the API (events queued, acknowledged), 'worker' runs the turns "
        "(health and reflection only on its port), 'all' (the default) both in one process. "
        "Queues and leases live in REDIS_URL "
        "(a cluster node works too); the NLU and chatlog services are at NLU_ADDRESS and "
        "CHATLOG_ADDRESS; replies go to MESSENGER_GRAPH_API_URL. Tenants come from "
        "TENANTS_FILE or the MESSENGER_* variables; see the README for every setting.",
        run=_serve,
        traces=True,
    ),
    bootstrap.Command(
        "check-domain",
        help="load every tenant's domain file and report errors",
        description="Load the tenants and their domain files, print what each bot answers.",
        run=_check_domain,
    ),
]


def main(argv: list[str] | None = None) -> int:
    return bootstrap.main("dialogue", DESCRIPTION, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
