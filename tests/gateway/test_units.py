"""The gateway's small parts on their own: settings, signatures, authentication,
chunking, and the app in-process with a hand-written dialogue client."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import httpx
import pytest
from chatbot.common.v1 import event_pb2 as ev
from chatbot.dialogue.v1 import dialogue_service_pb2 as pb
from starlette.applications import Starlette
from starlette.requests import HTTPConnection
from starlette.testclient import TestClient

from mesh import ConfigError, Env
from mesh.tenants import Tenant, Tenants
from services.gateway import GatewaySettings, create_app
from services.gateway.auth import (
    ApiKeyAuthenticator,
    AuthenticationFailed,
    AuthenticationRequired,
    AuthenticatorChain,
    Principal,
    require_principal,
)
from services.gateway.dialogue import chunks, submit_all
from services.gateway.errors import DialogueError, DialogueFailed, DialogueRejected
from services.gateway.messenger.signature import parse_signature, sign

# ---- settings -----------------------------------------------------------------


def test_settings_defaults() -> None:
    settings = GatewaySettings.from_env(Env({}))
    assert (settings.host, settings.port) == ("127.0.0.1", 8080)
    assert settings.dependency_addresses == {
        "dialogue": "127.0.0.1:50051",
        "chatlog": "127.0.0.1:50053",
        "nlu": "127.0.0.1:50052",
    }
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.submit_timeout == 3.0
    # Local runs: only a proxy on this machine is believed, and no HSTS over http.
    assert settings.forwarded_allow_ips == ("127.0.0.1", "::1")
    assert settings.hsts_seconds == 0


def test_forwarded_peers_are_addresses_networks_or_any() -> None:
    given = {"GATEWAY_FORWARDED_ALLOW_IPS": " 10.0.0.0/8, fd00::/8 ,192.0.2.7,"}
    assert GatewaySettings.from_env(Env(given)).forwarded_allow_ips == (
        "10.0.0.0/8",
        "fd00::/8",
        "192.0.2.7",
    )
    for anyone in ("*", "10.0.0.0/8,*"):
        star = GatewaySettings.from_env(Env({"GATEWAY_FORWARDED_ALLOW_IPS": anyone}))
        assert star.forwarded_allow_ips == ("*",)


def test_addresses_follow_the_ports_unless_given() -> None:
    settings = GatewaySettings.from_env(
        Env({"DIALOGUE_PORT": "6000", "CHATLOG_ADDRESS": "dns:///chatlog:50053"})
    )
    assert settings.dialogue_address == "127.0.0.1:6000"
    assert settings.chatlog_address == "dns:///chatlog:50053"


@pytest.mark.parametrize(
    "environ",
    [
        {"GATEWAY_PORT": "http"},
        {"GATEWAY_SUBMIT_TIMEOUT": "0"},
        {"GATEWAY_MAX_BODY_BYTES": "0"},
        {"GATEWAY_READY_REQUIRES": "dialogue,cache"},
        # uvicorn would take these as names that never match, trusting no one.
        {"GATEWAY_FORWARDED_ALLOW_IPS": "ingress-nginx"},
        {"GATEWAY_FORWARDED_ALLOW_IPS": "10.1.2.3/8"},
        {"GATEWAY_HSTS_SECONDS": "-1"},
    ],
)
def test_bad_settings_fail_loudly(environ: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=next(iter(environ))):
        GatewaySettings.from_env(Env(environ))


# ---- signatures ---------------------------------------------------------------


def test_signature_header_parsing() -> None:
    digest = parse_signature(sign("s", b"body"))
    assert digest is not None and len(digest) == 32
    assert parse_signature(sign("s", b"body").upper().replace("SHA256", "sha256")) == digest
    for bad in (None, "", "sha256=", "sha1=" + "0" * 40, "sha256=" + "g" * 64, "0" * 71):
        assert parse_signature(bad) is None


# ---- authentication -----------------------------------------------------------


def _conn(authorization: str | None) -> HTTPConnection:
    headers = [(b"authorization", authorization.encode())] if authorization else []
    return HTTPConnection({"type": "http", "headers": headers})


TENANTS = Tenants(
    [Tenant(id="a", api_keys=("key-a", "")), Tenant(id="b", page_id="2", api_keys=("key-b",))]
)


async def test_api_keys_name_their_tenant() -> None:
    auth = ApiKeyAuthenticator(TENANTS)
    principal = await auth.authenticate(_conn("Bearer key-b"))
    assert principal is not None
    assert principal.tenant_ids == frozenset({"b"}) and principal.can_access("b")
    assert "key-b" not in principal.subject
    assert await auth.authenticate(_conn(None)) is None
    assert await auth.authenticate(_conn("Basic key-a")) is None
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate(_conn("Bearer key-c"))
    with pytest.raises(AuthenticationFailed):
        await auth.authenticate(_conn("Bearer"))


def test_a_key_shared_by_two_tenants_is_a_configuration_error() -> None:
    with pytest.raises(ConfigError, match="also a key"):
        ApiKeyAuthenticator(
            Tenants([Tenant(id="a", api_keys=("k",)), Tenant(id="b", api_keys=("k",))])
        )


class _SessionsForTests:
    """What the admin console's session authenticator will look like."""

    async def authenticate(self, conn: HTTPConnection) -> Principal | None:
        if conn.headers.get("authorization") == "Session s1":
            return Principal("admin:alice", "session", frozenset({"a", "b"}), frozenset({"admin"}))
        return None


async def test_the_chain_takes_the_first_scheme_that_knows_the_request() -> None:
    chain = AuthenticatorChain([ApiKeyAuthenticator(TENANTS), _SessionsForTests()])
    session = await require_principal(_conn("Session s1"), chain)
    assert session.scheme == "session" and session.can_access("a")
    with pytest.raises(AuthenticationFailed, match="api_key"):
        await require_principal(_conn("Session s1"), chain, scheme="api_key")
    with pytest.raises(AuthenticationRequired):
        await require_principal(_conn(None), chain)


# ---- chunking and submission --------------------------------------------------


def _event(event_id: str, text: str = "") -> ev.ChatEvent:
    return ev.ChatEvent(
        event_id=event_id,
        user=ev.UserRef(tenant_id="a", channel=ev.CHANNEL_MESSENGER, user_id="u"),
        message=ev.Message(mid=event_id, text=text),
    )


def test_chunks_respect_counts_and_bytes() -> None:
    events = [_event(f"m{i}", "x" * 100) for i in range(10)]
    assert [len(c) for c in chunks(events, 4, 10_000)] == [4, 4, 2]
    assert [len(c) for c in chunks(events, 100, 400)] == [3, 3, 3, 1]
    assert [len(c) for c in chunks([_event("big", "x" * 5000)], 10, 100)] == [1]
    assert [len(c) for c in chunks([_event(str(i)) for i in range(2500)], 5000, 10**9)] == [
        1000,
        1000,
        500,
    ]


class FakeDialogue:
    """A hand-written DialogueClient: answers as told, records the chunks it got."""

    def __init__(self, *, answer: str = "ok", error: DialogueError | None = None) -> None:
        self.answer = answer
        self.error = error
        self.batches: list[list[str]] = []

    async def submit_events(
        self, events: Sequence[ev.ChatEvent], *, timeout: float
    ) -> Sequence[pb.SubmitEventResult]:
        self.batches.append([e.event_id for e in events])
        if self.error is not None:
            raise self.error
        if self.answer == "short":
            return []
        if self.answer == "unspecified":
            return [pb.SubmitEventResult(event_id=e.event_id) for e in events]
        return [
            pb.SubmitEventResult(event_id=e.event_id, status=pb.SUBMIT_STATUS_ACCEPTED)
            for e in events
        ]

    async def converse(self, request: pb.ConverseRequest, *, timeout: float) -> pb.ConverseResponse:
        raise DialogueRejected("text over the limit")


@pytest.mark.parametrize("answer", ["short", "unspecified"])
async def test_broken_answers_are_failures(answer: str) -> None:
    with pytest.raises(DialogueFailed):
        await submit_all(
            FakeDialogue(answer=answer), [_event("m1")], timeout=1, max_events=10, max_bytes=10**6
        )


async def test_chunks_go_in_order_one_at_a_time() -> None:
    client = FakeDialogue()
    events = [_event(f"m{i}") for i in range(5)]
    results = await submit_all(client, events, timeout=1, max_events=2, max_bytes=10**6)
    assert client.batches == [["m0", "m1"], ["m2", "m3"], ["m4"]]
    assert [r.event_id for r in results] == [f"m{i}" for i in range(5)]


def _app_tenants() -> Tenants:
    return Tenants([Tenant(id="acme", page_id="111", app_secret="sec", api_keys=("key",))])


def _webhook_body() -> bytes:
    item = {"sender": {"id": "9"}, "timestamp": 1, "message": {"mid": "m_1", "text": "t"}}
    return json.dumps({"object": "page", "entry": [{"id": "111", "messaging": [item]}]}).encode()


@asynccontextmanager
async def serving(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """The app in-process, its lifespan run as a server would."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as http:
            yield http


@pytest.mark.parametrize(
    ("client", "status"),
    [
        (FakeDialogue(), 200),
        (FakeDialogue(answer="unspecified"), 502),
        (FakeDialogue(error=DialogueRejected("unknown tenant")), 502),
    ],
)
async def test_the_app_in_process_maps_dialogue_answers(client: FakeDialogue, status: int) -> None:
    app = create_app(GatewaySettings(), _app_tenants(), client)
    body = _webhook_body()
    async with serving(app) as http:
        response = await http.post(
            "/webhooks/messenger", content=body, headers={"X-Hub-Signature-256": sign("sec", body)}
        )
        assert response.status_code == status
        rejected = await http.post(
            "/api/v1/messages",
            json={"user_id": "u", "text": "t", "sync": True},
            headers={"Authorization": "Bearer key"},
        )
        assert rejected.status_code == 422
        assert (await http.get("/readyz")).json()["status"] == "ready"
    assert client.batches == [["m_1"]]


@pytest.mark.parametrize(
    ("hsts_seconds", "base_url", "expected"),
    [
        (31536000, "https://gateway", "max-age=31536000"),
        (31536000, "http://gateway", None),  # never over plain http (RFC 6797)
        (0, "https://gateway", None),
    ],
)
def test_hsts_is_sent_over_https_when_configured(
    hsts_seconds: int, base_url: str, expected: str | None
) -> None:
    app = create_app(GatewaySettings(hsts_seconds=hsts_seconds), _app_tenants(), FakeDialogue())
    with TestClient(app, base_url=base_url) as client:
        for response in (client.get("/healthz"), client.get("/no/such/path")):
            assert response.headers.get("strict-transport-security") == expected


async def test_the_app_closes_what_it_started() -> None:
    class Resource(FakeDialogue):
        started = closed = False

        async def start(self) -> None:
            self.started = True

        async def close(self) -> None:
            self.closed = True

    client = Resource()
    async with serving(create_app(GatewaySettings(), _app_tenants(), client)):
        assert client.started and not client.closed
    assert client.closed
