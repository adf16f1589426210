"""The dialogue service's settings, read once from the environment.

``DIALOGUE_ROLE`` splits one image into the two halves of the service, so
intake (``SubmitEvents``, the webhook's acknowledgement) never waits behind
turn work on a shared event loop:

- ``intake``: the gRPC API only; events are deduplicated and queued.
- ``worker``: the turns (NLU, policy, chatlog, replies) and the chatlog
  outbox's writer, with health and reflection on its port but no API.
- ``all``: both in one process (one service to run by hand, ``make run-dialogue``).
"""

from __future__ import annotations

import os
import secrets
import socket
import uuid
from dataclasses import dataclass
from typing import Literal

from mesh import ConfigError, Env, get_logger
from mesh.graph import DEFAULT_GRAPH_API_URL
from services.dialogue.store import StoreSettings
from services.dialogue.worker import WorkerSettings

_log = get_logger("dialogue.settings")

Role = Literal["all", "intake", "worker"]
ROLES: tuple[Role, ...] = ("all", "intake", "worker")


def _role(value: str) -> Role:
    for role in ROLES:
        if value == role:
            return role
    raise ConfigError(f"DIALOGUE_ROLE must be one of {', '.join(ROLES)}, not {value!r}")


@dataclass(frozen=True)
class DialogueSettings:
    host: str
    port: int
    metrics_port: int
    redis_url: str
    nlu_address: str
    chatlog_address: str
    graph_api_url: str
    nlu_timeout_s: float
    chatlog_timeout_s: float
    store: StoreSettings
    workers: WorkerSettings
    page_token_secret: bytes
    grace_s: float
    role: Role = "all"

    @classmethod
    def from_env(cls, env: Env | None = None) -> DialogueSettings:
        env = env or Env()
        holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        secret = env.secret("DIALOGUE_PAGE_TOKEN_SECRET")
        role = _role(env.string("DIALOGUE_ROLE", "all"))
        # Page tokens are the API's (ListDeadLetters): a worker never signs one.
        if not secret and role != "worker":
            _log.warning(
                "DIALOGUE_PAGE_TOKEN_SECRET is not set: page tokens work only on this replica"
            )
        if secret and len(secret.encode()) < 16:
            raise ConfigError("DIALOGUE_PAGE_TOKEN_SECRET must have at least 16 characters")
        return cls(
            host=env.string("GRPC_HOST", "127.0.0.1"),
            port=env.integer("DIALOGUE_PORT", 50051, minimum=0),
            metrics_port=env.integer("METRICS_PORT", 9051, minimum=0),
            redis_url=env.string("REDIS_URL", "redis://127.0.0.1:6379/0"),
            nlu_address=env.string("NLU_ADDRESS", "127.0.0.1:50052"),
            chatlog_address=env.string("CHATLOG_ADDRESS", "127.0.0.1:50053"),
            graph_api_url=env.string("MESSENGER_GRAPH_API_URL", DEFAULT_GRAPH_API_URL),
            nlu_timeout_s=env.integer("NLU_TIMEOUT_MS", 3000, minimum=1) / 1000,
            chatlog_timeout_s=env.integer("CHATLOG_TIMEOUT_MS", 2000, minimum=1) / 1000,
            store=StoreSettings(
                holder=holder,
                lease_ms=env.integer("DIALOGUE_LEASE_MS", 10_000, minimum=100),
                dedupe_ttl_s=env.integer("DIALOGUE_DEDUPE_TTL_SECONDS", 48 * 3600, minimum=1),
                result_ttl_s=env.integer("DIALOGUE_RESULT_TTL_SECONDS", 3600, minimum=1),
                slot_ttl_s=env.integer("DIALOGUE_SLOT_TTL_SECONDS", 24 * 3600, minimum=1),
                stall_grace_s=env.number("DIALOGUE_STALL_GRACE_SECONDS", 5.0),
                reorder_window_ms=env.integer("DIALOGUE_REORDER_WINDOW_MS", 200, minimum=0),
                reorder_evidence_s=env.integer("DIALOGUE_REORDER_EVIDENCE_SECONDS", 30, minimum=1),
                shards=env.integer("DIALOGUE_SHARDS", 16, minimum=1),
                state_ttl_s=env.integer("DIALOGUE_STATE_TTL_SECONDS", 30 * 24 * 3600, minimum=60),
                dead_letters_max=env.integer("DIALOGUE_DEAD_LETTERS_MAX", 10_000, minimum=1),
                outbox_max=env.integer("DIALOGUE_OUTBOX_MAX_ENTRIES", 1_000_000, minimum=1),
            ),
            workers=WorkerSettings(
                concurrency=env.integer("DIALOGUE_WORKERS", 32, minimum=1),
                turn_items=env.integer("DIALOGUE_TURN_ITEMS", 1, minimum=1),
                max_attempts=env.integer("DIALOGUE_MAX_ATTEMPTS", 5, minimum=1),
                retry_backoff_s=env.integer("DIALOGUE_RETRY_BACKOFF_MS", 500, minimum=0) / 1000,
                sweep_interval_s=env.number("DIALOGUE_SWEEP_SECONDS", 3.0),
            ),
            page_token_secret=(secret or secrets.token_hex(32)).encode(),
            grace_s=env.number("SHUTDOWN_GRACE_SECONDS", 10.0),
            role=role,
        )

    @property
    def serves_api(self) -> bool:
        return self.role in ("all", "intake")

    @property
    def runs_workers(self) -> bool:
        return self.role in ("all", "worker")
