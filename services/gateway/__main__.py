"""python -m services.gateway: serve the gateway (Messenger webhook, JSON channel)."""

from __future__ import annotations

import argparse
import sys

from mesh import bootstrap

DESCRIPTION = (
    "The gateway: the Messenger webhook, the JSON channel for other clients, authentication "
    "and rate limits, in front of the dialogue service."
)


def _serve(args: argparse.Namespace) -> int:
    from mesh.tenants import Tenants
    from services.gateway.server import build_app, serve
    from services.gateway.settings import GatewaySettings

    settings, tenants = GatewaySettings.from_env(), Tenants.from_env()
    serve(settings, tenants, build_app(settings, tenants))
    return 0


COMMANDS = [
    bootstrap.Command(
        "serve",
        help="serve HTTP on GATEWAY_HOST:GATEWAY_PORT (127.0.0.1:8080)",
        description="Serve /webhooks/messenger, /api/v1/messages, /healthz, /readyz and "
        "/metrics on GATEWAY_HOST:GATEWAY_PORT (127.0.0.1:8080). Events go to "
        "DIALOGUE_ADDRESS (127.0.0.1:50051); /readyz also asks CHATLOG_ADDRESS "
        "(127.0.0.1:50053) and NLU_ADDRESS (127.0.0.1:50052). Tenants come from "
        "TENANTS_FILE, or one from MESSENGER_APP_SECRET, MESSENGER_VERIFY_TOKEN, PAGE_ID "
        "and API_KEYS. Rate limits are counted in REDIS_URL. Tuning: GATEWAY_MAX_BODY_BYTES "
        "(1 MiB), GATEWAY_SUBMIT_TIMEOUT (3 s), GATEWAY_CONVERSE_TIMEOUT (10 s), "
        "GATEWAY_USER_RATE_LIMIT (30) and GATEWAY_TENANT_RATE_LIMIT (1200) per "
        "GATEWAY_RATE_LIMIT_WINDOW (60 s), GATEWAY_READY_REQUIRES (dialogue,chatlog,nlu). "
        "Behind a reverse proxy: GATEWAY_FORWARDED_ALLOW_IPS (127.0.0.1,::1) names the peers "
        "whose X-Forwarded-For/-Proto are believed; GATEWAY_HSTS_SECONDS (0: none) sends "
        "Strict-Transport-Security over https; ADMIN_COOKIE_SECURE (auto) makes the console's "
        "cookies Secure. "
        "The admin console is at /admin (its JSON API at /api/admin), behind a login: "
        "ADMIN_USERNAME and ADMIN_PASSWORD (or ADMIN_PASSWORD_FILE) create the first "
        "administrator; `chatbot users add` adds more.",
        run=_serve,
        traces=True,
    )
]


def main(argv: list[str] | None = None) -> int:
    return bootstrap.main("gateway", DESCRIPTION, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
