"""The gateway's settings, read once from the environment."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from mesh import ConfigError, Env

_DEPENDENCIES = ("dialogue", "chatlog", "nlu")


@dataclass(frozen=True)
class GatewaySettings:
    host: str = "127.0.0.1"
    port: int = 8080
    dialogue_address: str = "127.0.0.1:50051"
    chatlog_address: str = "127.0.0.1:50053"
    nlu_address: str = "127.0.0.1:50052"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Webhook bodies larger than this are refused (413) while they are read.
    max_body_bytes: int = 1024 * 1024
    # The whole SubmitEvents exchange of one webhook must finish within this,
    # far below Messenger's 5 s, so a slow dialogue service turns into a 503
    # that Messenger retries instead of a hung request.
    submit_timeout: float = 3.0
    # A batch is sent in chunks of at most this many events and bytes.
    submit_chunk_events: int = 500
    submit_chunk_bytes: int = 2 * 1024 * 1024
    # The JSON channel's synchronous mode waits at most this for the replies.
    converse_timeout: float = 10.0
    retry_after_seconds: int = 1
    # JSON channel requests per window, per user and per tenant; 0 disables.
    user_rate_limit: int = 30
    tenant_rate_limit: int = 1200
    rate_limit_window: float = 60.0
    readiness_timeout: float = 1.0
    # The dependencies /readyz requires to be SERVING (every one is reported).
    ready_requires: tuple[str, ...] = _DEPENDENCIES
    # Peers (addresses, networks, or "*") whose X-Forwarded-For and
    # X-Forwarded-Proto uvicorn believes: the reverse proxy in front, so that the
    # client's address (login lockout, logs) and scheme (Secure cookies, HSTS)
    # are the browser's, not the proxy's. Anyone else's headers are ignored.
    forwarded_allow_ips: tuple[str, ...] = ("127.0.0.1", "::1")
    # Strict-Transport-Security max-age on https responses; 0 sends none (local
    # http runs; a browser ignores the header over http anyway).
    hsts_seconds: int = 0

    @classmethod
    def from_env(cls, env: Env | None = None) -> GatewaySettings:
        env = env or Env()
        requires = tuple(
            name.strip()
            for name in env.string("GATEWAY_READY_REQUIRES", ",".join(_DEPENDENCIES)).split(",")
            if name.strip()
        )
        unknown = sorted(set(requires) - set(_DEPENDENCIES))
        if unknown:
            raise ConfigError(
                f"GATEWAY_READY_REQUIRES names {', '.join(unknown)}; "
                f"the known dependencies are {', '.join(_DEPENDENCIES)}"
            )
        return cls(
            host=env.string("GATEWAY_HOST", "127.0.0.1"),
            port=env.integer("GATEWAY_PORT", 8080, minimum=0),
            dialogue_address=_address(env, "DIALOGUE", 50051),
            chatlog_address=_address(env, "CHATLOG", 50053),
            nlu_address=_address(env, "NLU", 50052),
            redis_url=env.string("REDIS_URL", "redis://127.0.0.1:6379/0"),
            max_body_bytes=env.integer("GATEWAY_MAX_BODY_BYTES", 1024 * 1024, minimum=1),
            submit_timeout=_positive(env, "GATEWAY_SUBMIT_TIMEOUT", 3.0),
            submit_chunk_events=env.integer("GATEWAY_SUBMIT_CHUNK_EVENTS", 500, minimum=1),
            submit_chunk_bytes=env.integer(
                "GATEWAY_SUBMIT_CHUNK_BYTES", 2 * 1024 * 1024, minimum=1024
            ),
            converse_timeout=_positive(env, "GATEWAY_CONVERSE_TIMEOUT", 10.0),
            retry_after_seconds=env.integer("GATEWAY_RETRY_AFTER", 1, minimum=0),
            user_rate_limit=env.integer("GATEWAY_USER_RATE_LIMIT", 30, minimum=0),
            tenant_rate_limit=env.integer("GATEWAY_TENANT_RATE_LIMIT", 1200, minimum=0),
            rate_limit_window=_positive(env, "GATEWAY_RATE_LIMIT_WINDOW", 60.0),
            readiness_timeout=_positive(env, "GATEWAY_READINESS_TIMEOUT", 1.0),
            ready_requires=requires,
            forwarded_allow_ips=_peers(env, "GATEWAY_FORWARDED_ALLOW_IPS", "127.0.0.1,::1"),
            hsts_seconds=env.integer("GATEWAY_HSTS_SECONDS", 0, minimum=0),
        )

    @property
    def dependency_addresses(self) -> dict[str, str]:
        return {
            "dialogue": self.dialogue_address,
            "chatlog": self.chatlog_address,
            "nlu": self.nlu_address,
        }


def _address(env: Env, service: str, default_port: int) -> str:
    # `<SERVICE>_ADDRESS` wins; else the local default follows `<SERVICE>_PORT`,
    # so `make run` with a moved port needs one variable, not two.
    port = env.integer(f"{service}_PORT", default_port, minimum=1)
    return env.string(f"{service}_ADDRESS", f"127.0.0.1:{port}")


def _positive(env: Env, name: str, default: float) -> float:
    value = env.number(name, default)
    if value <= 0:
        raise ConfigError(f"{name}={value} must be positive")
    return value


def _peers(env: Env, name: str, default: str) -> tuple[str, ...]:
    # uvicorn quietly treats a malformed entry as a name that never matches;
    # here it is a configuration error instead.
    peers = tuple(p.strip() for p in env.string(name, default).split(",") if p.strip())
    if "*" in peers:
        return ("*",)  # uvicorn honours "*" only on its own
    for peer in peers:
        try:
            ipaddress.ip_network(peer)
        except ValueError as exc:
            raise ConfigError(f"{name}: {peer!r} is not an address or a network: {exc}") from None
    return peers
