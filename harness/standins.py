"""Real servers standing in for what the dialogue service and the console talk to.

- ``GraphApi``: an HTTP/1.1 keep-alive server in place of Facebook's Send API,
  Messenger Profile API (the semantics ``cli.graph_standin`` serves ``make run``
  with) and User Profile API, recording every message and failing on command
  (error codes, delays, ``Connection: close`` on every answer, answers lost
  after the message arrived); with an app secret it refuses calls without the
  right ``appsecret_proof``, as Meta does once an app requires it; for the
  recipients whose last message time it is given, it enforces Messenger's
  24-hour window and the HUMAN_AGENT tag's 7 days with Meta's error (code 10,
  subcode 2018278), and answers 551 for people who cannot be reached; the
  Handover Protocol's edges (pass, take and request thread control, the
  thread's owner, the page's secondary receivers) keep each thread's owner,
  record every call and answer Meta's refusals on command.
- ``KeywordNlu``: a gRPC NluService answering by keyword, with a settable delay
  and an on/off switch: the small, fast model of the ordering tests.
- ``RecordingChatlog``: a gRPC ChatlogService keeping appends by message id
  and refusing stale fencing tokens as the real chatlog does.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

import grpc
from chatbot.chatlog.v1 import chatlog_service_pb2 as chatlog_pb
from chatbot.chatlog.v1 import chatlog_service_pb2_grpc
from chatbot.common.v1 import nlu_result_pb2
from chatbot.nlu.v1 import nlu_service_pb2 as nlu_pb
from chatbot.nlu.v1 import nlu_service_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from cli.graph_standin import PAGE_INBOX_APP_ID, profile_call, thread_call, thread_error
from harness.support import free_port


@dataclass
class SentMessage:
    recipient: str
    text: str
    in_reply_to: str
    body: dict[str, Any]
    time: float


@dataclass
class GraphApi:
    """``POST /me/messages`` recorder; also serves the actions' APIs.

    It speaks HTTP/1.1 with keep-alive, as the Graph API does.
    ``close_connections``: every answer carries ``Connection: close`` and the
    connection ends after it. ``lose_answers``: that many messages are recorded
    (they arrived) and their connections close without an answer, as when an
    answer is lost on its way back; ``answer_delay_s`` holds answers back after
    recording the message, and ``GET /me`` (a breaker's probe) and the User
    Profile API's lookups (``GET /<version>/<psid>?fields=``) as well.
    ``on_message`` is called with each message once it is recorded, before it
    is answered: it may hold that one answer back, or pause its sender.

    ``/me/messenger_profile`` keeps the page's ``profile`` (GET, POST, DELETE as
    Meta's API) and records each call in ``profile_calls``; ``profile_rule``
    may fail one. ``app_secret``: every call must carry ``appsecret_proof`` for
    its token; ``page_tokens``: only these tokens are valid (else code 190).
    Each call refused for its token or proof is kept in ``refusals``.

    ``last_user_message_ms``: recipient -> when that person last wrote (epoch ms);
    a message to them is refused as Meta does outside the window its type allows
    (RESPONSE 24 hours, ``MESSAGE_TAG`` HUMAN_AGENT 7 days). ``unavailable``:
    recipients answered with 551. Each such refusal is kept in ``window_refusals``.
    """

    port: int = 0
    sent: list[SentMessage] = field(default_factory=list)
    actions: list[dict[str, Any]] = field(default_factory=list)
    # Send API sender actions (mark_seen, typing_on, typing_off) in arrival order.
    sender_actions: list[dict[str, Any]] = field(default_factory=list)
    delay_s: float = 0.0
    # Return (status, body) to fail a message, or None to accept it.
    rule: Callable[[dict[str, Any]], tuple[int, dict[str, Any]] | None] | None = None
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    weather_status: int = 200
    tokens: set[str] = field(default_factory=set)  # page tokens the Send API calls carried
    close_connections: bool = False
    lose_answers: int = 0  # how many of the next messages arrive and get no answer
    answer_delay_s: float = 0.0  # after a message is recorded (it arrived), and for GET /me
    on_message: Callable[[SentMessage], None] | None = None
    app_secret: str = ""
    page_tokens: set[str] = field(default_factory=set)  # empty: any token is valid
    refusals: list[dict[str, Any]] = field(default_factory=list)  # {path, code, message}
    profile: dict[str, Any] = field(default_factory=dict)
    profile_calls: list[dict[str, Any]] = field(default_factory=list)  # {method, query, body}
    # (method, body or query) -> (status, body) to fail a profile call, or None.
    profile_rule: Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]] | None] | None = None
    last_user_message_ms: dict[str, int] = field(default_factory=dict)
    unavailable: set[str] = field(default_factory=set)
    window_refusals: list[dict[str, Any]] = field(default_factory=list)
    probe_status: int = 200
    # User Profile API: psid -> fields the page may read (anyone else: code 100,
    # subcode 2018218); ``people_failures``: psid -> (status, body) answered
    # instead; ``people_calls``: each psid asked, in order.
    people: dict[str, dict[str, str]] = field(default_factory=dict)
    people_failures: dict[str, tuple[int, dict[str, Any]]] = field(default_factory=dict)
    people_calls: list[str] = field(default_factory=list)
    # Handover Protocol: this app's id, the page's other receivers, each
    # recipient's thread owner (absent: idle), every call {edge, body or query},
    # and a rule that may refuse one: (edge, body) -> (status, body) or None.
    app_id: str = "1111"
    secondary_receivers: dict[str, str] = field(
        default_factory=lambda: {PAGE_INBOX_APP_ID: "Page Inbox", "2222": "Support desk"}
    )
    thread_owners: dict[str, str] = field(default_factory=dict)
    thread_calls: list[dict[str, Any]] = field(default_factory=list)
    thread_rule: Callable[[str, dict[str, Any]], tuple[int, dict[str, Any]] | None] | None = None
    probes: int = 0  # GET /me: the breaker asking whether the API answers
    peers: set[int] = field(default_factory=set)  # client ports: one per connection
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> GraphApi:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: without TCP_NODELAY a kept-alive
            # connection waits for the client's delayed ACK (~40 ms) between them.
            disable_nagle_algorithm = True

            def log_message(self, *args: Any) -> None:
                pass

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                if api.close_connections:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(raw)

            def _body(self) -> dict[str, Any]:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"{}")
                return body if isinstance(body, dict) else {}

            def _refuse(self, query: dict[str, list[str]]) -> bool:
                """Answers a call whose token or proof Meta would refuse; True if it did."""
                refusal = self._refusal(query)
                if refusal is not None:
                    code, message, _ = refusal
                    path = urlparse(self.path).path
                    with api.lock:
                        api.refusals.append({"path": path, "code": code, "message": message})
                    self._error(400, *refusal)
                return refusal is not None

            def _refusal(self, query: dict[str, list[str]]) -> tuple[int, str, str] | None:
                if query.get("access_token"):
                    # Meta accepts it, but a URL is logged everywhere: the clients must not.
                    return 100, "token in URL", "OAuthException"
                token = self.headers.get("Authorization", "").removeprefix("Bearer ").strip()
                if not token:
                    return 190, "An active access token must be used", "OAuthException"
                with api.lock:
                    api.tokens.add(token)
                if api.page_tokens and token not in api.page_tokens:
                    message = "Invalid OAuth access token - Cannot parse access token"
                    return 190, message, "OAuthException"
                if api.app_secret:
                    proof = query.get("appsecret_proof", [""])[0]
                    expected = hmac.new(
                        api.app_secret.encode(), token.encode(), hashlib.sha256
                    ).hexdigest()
                    if not proof:
                        message = "API calls from the server require an appsecret_proof argument"
                        return 100, message, "GraphMethodException"
                    if not hmac.compare_digest(proof, expected):
                        message = "Invalid appsecret_proof provided in the API argument"
                        return 100, message, "GraphMethodException"
                return None

            def _error(
                self, status: int, code: int, message: str, kind: str, subcode: int = 0
            ) -> None:
                error: dict[str, Any] = {"message": message, "type": kind, "code": code}
                error["fbtrace_id"] = "AStandInTrace"
                if subcode:
                    error["error_subcode"] = subcode
                self._reply(status, {"error": error})

            def _profile(self, method: str, body: dict[str, Any]) -> None:
                query = parse_qs(urlparse(self.path).query)
                if self._refuse(query):
                    return None
                with api.lock:
                    api.profile_calls.append({"method": method, "query": query, "body": body})
                failure = api.profile_rule(method, body or query) if api.profile_rule else None
                if failure is not None:
                    return self._reply(*failure)
                with api.lock:
                    answer = profile_call(api.profile, method, query, body)
                if "error" in answer:
                    error = answer["error"]
                    code, subcode = error["code"], error.get("error_subcode", 0)
                    return self._error(400, code, error["message"], "OAuthException", subcode)
                return self._reply(200, answer)

            def do_DELETE(self) -> None:
                body = self._body()
                if not urlparse(self.path).path.endswith("/me/messenger_profile"):
                    return self._reply(404, {"error": {"message": "unknown path", "code": 100}})
                return self._profile("DELETE", body)

            def _thread(self, edge: str, body: dict[str, Any]) -> None:
                if self._refuse(parse_qs(urlparse(self.path).query)):
                    return None
                with api.lock:
                    api.thread_calls.append({"edge": edge, "body": body})
                failure = api.thread_rule(edge, body) if api.thread_rule else None
                if failure is not None:
                    return self._reply(*failure)
                with api.lock:
                    answer = _thread_call(api, edge, body)
                if "error" in answer:
                    error = answer["error"]
                    code, subcode = error["code"], error.get("error_subcode", 0)
                    return self._error(400, code, error["message"], "OAuthException", subcode)
                return self._reply(200, answer)

            def do_POST(self) -> None:
                with api.lock:
                    api.peers.add(self.client_address[1])
                body = self._body()
                path = urlparse(self.path).path
                if path.endswith("/me/messenger_profile"):
                    return self._profile("POST", body)
                edge = path.rsplit("/", 1)[-1]
                if edge in _THREAD_EDGES and path.endswith(f"/me/{edge}"):
                    return self._thread(edge, body)
                if not path.endswith("/me/messages"):
                    return self._reply(404, {"error": {"message": "unknown path", "code": 100}})
                if self._refuse(parse_qs(urlparse(self.path).query)):
                    return None
                if "sender_action" in body:
                    with api.lock:
                        api.sender_actions.append(body)
                    return self._reply(200, {"recipient_id": body["recipient"]["id"]})
                if api.delay_s:
                    time.sleep(api.delay_s)
                failure = api.rule(body) if api.rule else None
                if failure is not None:
                    return self._reply(*failure)
                refusal = _window_refusal(api, body)
                if refusal is not None:
                    with api.lock:
                        api.window_refusals.append({"body": body, "error": refusal})
                    return self._error(400, *refusal)
                message = body.get("message", {})
                metadata = json.loads(message.get("metadata") or "{}")
                sent = SentMessage(
                    recipient=body["recipient"]["id"],
                    text=message.get("text", ""),
                    in_reply_to=metadata.get("in_reply_to", ""),
                    body=body,
                    time=time.monotonic(),
                )
                with api.lock:
                    api.sent.append(sent)
                    count = len(api.sent)
                if api.on_message is not None:
                    api.on_message(sent)
                with api.lock:
                    lose = api.lose_answers > 0
                    api.lose_answers -= lose
                if lose:
                    self.close_connection = True  # arrived, and no answer goes back
                    return None
                if api.answer_delay_s:
                    time.sleep(api.answer_delay_s)
                self._reply(
                    200, {"recipient_id": body["recipient"]["id"], "message_id": f"m_out{count}"}
                )

            def _person(self, psid: str, query: dict[str, list[str]]) -> None:
                with api.lock:
                    api.people_calls.append(psid)
                if api.answer_delay_s:
                    time.sleep(api.answer_delay_s)
                if self._refuse(query):
                    return None
                failure = api.people_failures.get(psid)
                if failure is not None:
                    return self._reply(*failure)
                person = api.people.get(psid)
                if person is None:
                    message = "(#100) No profile available for that user."
                    return self._error(400, 100, message, "OAuthException", 2018218)
                fields = query.get("fields", [""])[0].split(",")
                found = {k: v for k, v in person.items() if k in fields}
                return self._reply(200, {"id": psid, **found})

            def do_GET(self) -> None:
                url = urlparse(self.path)
                if url.path.endswith("/me/messenger_profile"):
                    return self._profile("GET", {})
                if url.path.endswith(("/me/thread_owner", "/me/secondary_receivers")):
                    query = {k: v[0] for k, v in parse_qs(url.query).items()}
                    return self._thread(url.path.rsplit("/", 1)[-1], query)
                if url.path.endswith("/me"):
                    with api.lock:
                        api.probes += 1
                    if self._refuse(parse_qs(url.query)):
                        return None
                    if api.answer_delay_s:
                        time.sleep(api.answer_delay_s)
                    return self._reply(api.probe_status, {"id": "page-1"})
                person = _PERSON.match(url.path)
                if person is not None:
                    return self._person(person.group(1), parse_qs(url.query))
                with api.lock:
                    api.actions.append({"path": url.path, "query": parse_qs(url.query)})
                if url.path.startswith("/orders/"):
                    order = api.orders.get(url.path.rsplit("/", 1)[1])
                    if order is None:
                        return self._reply(404, {"error": "no such order"})
                    return self._reply(200, order)
                if url.path == "/weather":
                    if api.weather_status != 200:
                        return self._reply(api.weather_status, {"error": "down"})
                    city = parse_qs(url.query).get("city", ["?"])[0]
                    return self._reply(200, {"city": city, "temperature_c": 21, "summary": "sunny"})
                self._reply(404, {})

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def replies_by_user(self) -> dict[str, list[str]]:
        """The ``in_reply_to`` of every message sent, per recipient, in send order."""
        out: dict[str, list[str]] = defaultdict(list)
        with self.lock:
            for message in self.sent:
                out[message.recipient].append(message.in_reply_to)
        return out

    def clear(self) -> None:
        with self.lock:
            self.sent.clear()
            self.actions.clear()
            self.sender_actions.clear()
        self.rule = None
        self.delay_s = 0.0
        self.answer_delay_s = 0.0
        self.close_connections = False
        self.lose_answers = 0
        self.on_message = None
        self.app_secret = ""
        self.page_tokens.clear()
        self.refusals.clear()
        self.profile.clear()
        self.profile_calls.clear()
        self.profile_rule = None
        self.probe_status = 200
        self.probes = 0
        self.last_user_message_ms.clear()
        self.unavailable.clear()
        self.window_refusals.clear()
        self.people.clear()
        self.people_failures.clear()
        self.people_calls.clear()
        self.peers.clear()
        self.thread_owners.clear()
        self.thread_calls.clear()
        self.thread_rule = None


_TAGS = {"CONFIRMED_EVENT_UPDATE", "POST_PURCHASE_UPDATE", "ACCOUNT_UPDATE", "HUMAN_AGENT"}
_HOUR_MS = 3600 * 1000


def _window_refusal(api: GraphApi, body: dict[str, Any]) -> tuple[int, str, str, int] | None:
    """Meta's error for a message its type does not allow now, or None."""
    kind, tag = body.get("messaging_type"), body.get("tag")
    if kind not in ("RESPONSE", "UPDATE", "MESSAGE_TAG"):
        return (
            100,
            "(#100) Param messaging_type must be one of {RESPONSE, UPDATE, MESSAGE_TAG}",
            "OAuthException",
            0,
        )
    if kind == "MESSAGE_TAG" and tag not in _TAGS:
        return 100, "(#100) Param tag must be a valid message tag", "OAuthException", 0
    if kind != "MESSAGE_TAG" and tag:
        return (
            100,
            "(#100) Param tag is only allowed with messaging_type MESSAGE_TAG",
            "OAuthException",
            0,
        )
    recipient = str(body.get("recipient", {}).get("id", ""))
    if recipient in api.unavailable:
        return 551, "This person isn't available right now.", "OAuthException", 1545041
    last = api.last_user_message_ms.get(recipient)
    if last is None:
        return None
    allowed = 7 * 24 * _HOUR_MS if tag == "HUMAN_AGENT" else 24 * _HOUR_MS
    if kind == "MESSAGE_TAG" and tag != "HUMAN_AGENT":
        return None
    if time.time() * 1000 - last > allowed:
        message = "(#10) This message is sent outside of allowed window."
        return 10, message, "OAuthException", 2018278
    return None


_THREAD_EDGES = ("pass_thread_control", "take_thread_control", "request_thread_control")
# The User Profile API: GET /<version>/<psid>.
_PERSON = re.compile(r"^/v\d+\.\d+/(?!me$)([^/]+)$")


def _thread_call(api: GraphApi, edge: str, body: dict[str, Any]) -> dict[str, Any]:
    """The Handover Protocol on ``api.thread_owners``; a person who is unavailable,
    or whose window has closed, is refused as Meta refuses them."""

    def refuse(psid: str) -> dict[str, Any] | None:
        if psid in api.unavailable:
            return thread_error(551, "This person isn't available right now.", 1545041)
        last = api.last_user_message_ms.get(psid)
        if last is not None and time.time() * 1000 - last > 24 * _HOUR_MS:
            return thread_error(10, "This message is sent outside of allowed window.", 2018278)
        return None

    return thread_call(
        edge, body, app_id=api.app_id, receivers=api.secondary_receivers,
        owners=api.thread_owners, refuse=refuse,
    )  # fmt: skip


KEYWORDS = [
    ("order", "order_status"),
    ("weather", "weather"),
    ("human", "human_handoff"),
    ("hello", "greet"),
    ("bye", "goodbye"),
    ("thank", "thanks"),
    ("help", "help"),
    ("hours", "opening_hours"),
]


class _KeywordNluServicer(nlu_service_pb2_grpc.NluServiceServicer):
    def __init__(self, owner: KeywordNlu) -> None:
        self._owner = owner

    def Parse(
        self, request: nlu_pb.ParseRequest, context: grpc.ServicerContext
    ) -> nlu_pb.ParseResponse:
        owner = self._owner
        with owner.lock:
            owner.calls.append(request.text)
        if owner.delay_s:
            time.sleep(owner.delay_s)
        if not owner.up:
            context.abort(grpc.StatusCode.UNAVAILABLE, "keyword NLU is down")
        lowered = request.text.lower()
        intent = next((name for word, name in KEYWORDS if word in lowered), "")
        entities = []
        for token in request.text.replace("?", " ").split():
            if token.isdigit() and len(token) >= 5:
                start = request.text.find(token)
                entities.append(
                    nlu_result_pb2.Entity(entity="order_id", value=token, start=start,
                                          end=start + len(token), extractor="keyword")
                )  # fmt: skip
            if token.istitle() and "weather" in lowered and token.lower() != "weather":
                start = request.text.find(token)
                entities.append(
                    nlu_result_pb2.Entity(entity="city", value=token, start=start,
                                          end=start + len(token), extractor="keyword")
                )  # fmt: skip
        confidence = 0.95 if intent else 0.2
        name = intent or "nlu_fallback"
        return nlu_pb.ParseResponse(
            text=request.text,
            intent=nlu_result_pb2.Intent(name=name, confidence=confidence),
            intent_ranking=[nlu_result_pb2.Intent(name=name, confidence=confidence)],
            entities=entities,
            model_version="keyword-1",
            is_fallback=not intent,
        )


class KeywordNlu:
    def __init__(self) -> None:
        self.port = free_port()
        self.delay_s = 0.0
        self.up = True
        self.calls: list[str] = []
        self.lock = threading.Lock()
        self._server = self._serve()

    def _serve(self) -> grpc.Server:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=64))
        # Stand-ins implement only what the dialogue service calls.
        servicer = _KeywordNluServicer(self)  # type: ignore[abstract]
        nlu_service_pb2_grpc.add_NluServiceServicer_to_server(servicer, server)
        health_servicer = health.HealthServicer()
        health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        server.add_insecure_port(self.address)
        server.start()
        return server

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.stop(0)


class _RecordingChatlogServicer(chatlog_service_pb2_grpc.ChatlogServiceServicer):
    def __init__(self, owner: RecordingChatlog) -> None:
        self._owner = owner

    def AppendMessages(
        self, request: chatlog_pb.AppendMessagesRequest, context: grpc.ServicerContext
    ) -> chatlog_pb.AppendMessagesResponse:
        owner = self._owner
        if not owner.up:
            context.abort(grpc.StatusCode.UNAVAILABLE, "recording chatlog is down")
        results = []
        with owner.lock:
            owner.receipts.extend(request.receipts)
            for message in request.messages:
                owner.attempts.append(message)
                user = (message.user.tenant_id, message.user.channel, message.user.user_id)
                token = message.fencing_token
                if token and token < owner.highest.get(user, 0):
                    owner.rejected.append(message)
                    context.abort(
                        grpc.StatusCode.FAILED_PRECONDITION, f"stale fencing token {token}"
                    )
                if token:
                    owner.highest[user] = max(owner.highest.get(user, 0), token)
                key = (message.user.tenant_id, message.message_id)
                if key in owner.messages:
                    status = chatlog_pb.APPEND_STATUS_ALREADY_EXISTS
                else:
                    owner.messages[key] = message
                    status = chatlog_pb.APPEND_STATUS_CREATED
                results.append(
                    chatlog_pb.AppendResult(message_id=message.message_id, status=status)
                )
        return chatlog_pb.AppendMessagesResponse(results=results)


class RecordingChatlog:
    def __init__(self) -> None:
        self.port = free_port()
        self.up = True
        self.messages: dict[tuple[str, str], chatlog_pb.ChatMessage] = {}
        self.attempts: list[chatlog_pb.ChatMessage] = []
        self.receipts: list[chatlog_pb.Receipt] = []
        self.rejected: list[chatlog_pb.ChatMessage] = []
        self.highest: dict[tuple[str, int, str], int] = {}
        self.lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        servicer = _RecordingChatlogServicer(self)  # type: ignore[abstract]
        chatlog_service_pb2_grpc.add_ChatlogServiceServicer_to_server(servicer, self._server)
        self._server.add_insecure_port(f"127.0.0.1:{self.port}")
        self._server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self._server.stop(0)

    def inbound(self, user_id: str) -> list[chatlog_pb.ChatMessage]:
        with self.lock:
            return [
                m for m in self.messages.values()
                if m.user.user_id == user_id and m.direction == chatlog_pb.DIRECTION_INBOUND
            ]  # fmt: skip
