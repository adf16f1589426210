"""One interface to both systems: deliver a message, see its replies, read the server's record.

For this stack a delivery is a signed Messenger webhook and a reply is a Send
API call the Graph API stand-in receives; for Rasa both are one REST call
(its response carries the reply). A receipt is a signed Messenger webhook to
both: this stack's gateway and Rasa's Messenger channel (``facebook``), which
is where Messenger would send it. Each target also says which processes are
the system (their CPU is the system's cost) and which are stand-ins.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import grpc
import httpx
import redis
from chatbot.chatlog.v1 import chatlog_service_pb2 as chatlog_pb
from chatbot.chatlog.v1 import chatlog_service_pb2_grpc as chatlog_grpc

from bench.e2e.load import Delivery, HttpPool, Message, Receipt, messenger_body, receipt_body
from bench.e2e.systems import APP_SECRET, PAGE_ID, GraphProcess, OurStack, RasaServer
from services.gateway.messenger.signature import sign

TENANT_ID = "default"
# Rasa's Messenger channel (``facebook`` in credentials.yml).
FACEBOOK_WEBHOOK = "/webhooks/facebook/webhook"


class Replies:
    """Every reply's time (``time.monotonic()``), by the message id it answers.

    Fed from any thread; awaited from the driver's event loop.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.times: dict[str, list[float]] = {}
        self._waiters: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Future[float]]] = {}

    def on_send(self, in_reply_to: str, recipient: str, at: float) -> None:
        with self._lock:
            self.times.setdefault(in_reply_to, []).append(at)
            waiter = self._waiters.pop(in_reply_to, None)
        if waiter is not None:
            loop, future = waiter
            loop.call_soon_threadsafe(_resolve, future, at)

    def first(self, mid: str) -> float | None:
        with self._lock:
            times = self.times.get(mid)
            return times[0] if times else None

    def answered(self, mids: Iterable[str]) -> int:
        with self._lock:
            return sum(1 for mid in mids if mid in self.times)

    async def wait(self, mid: str, timeout: float) -> float | None:
        """When ``mid`` was first answered, or None if not within ``timeout``."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if mid in self.times:
                return self.times[mid][0]
            future: asyncio.Future[float] = loop.create_future()
            self._waiters[mid] = (loop, future)
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return None
        finally:
            with self._lock:
                self._waiters.pop(mid, None)


def _resolve(future: asyncio.Future[float], at: float) -> None:
    if not future.done():
        future.set_result(at)


class Target:
    name: str
    port: int

    def __init__(self, redis_client: redis.Redis) -> None:
        self.replies = Replies()
        self.redis = redis_client
        self._pool: HttpPool | None = None
        self._pool_loop: asyncio.AbstractEventLoop | None = None

    def pool(self) -> HttpPool:
        # Connections belong to one event loop; every asyncio.run gets its own.
        loop = asyncio.get_running_loop()
        if self._pool is None or self._pool_loop is not loop:
            self._pool, self._pool_loop = HttpPool(self.port), loop
        return self._pool

    async def deliver(self, message: Message) -> Delivery:
        raise NotImplementedError

    async def deliver_receipt(self, receipt: Receipt) -> Delivery:
        raise NotImplementedError

    def system_roots(self) -> dict[str, list[int]]:
        raise NotImplementedError

    def standin_roots(self) -> dict[str, list[int]]:
        return {}

    def received(self, users: Iterable[str]) -> dict[str, dict[str, float]]:
        """Per user, when the server received each message id it has a record of."""
        raise NotImplementedError

    def unanswered(self, mids: dict[str, list[str]]) -> dict[str, int]:
        """Why messages (by user) got no reply, as far as the server's record tells."""
        received = self.received(mids)
        why: dict[str, int] = {}
        for user, mine in mids.items():
            for mid in mine:
                reason = "in the tracker" if mid in received[user] else "not in the tracker"
                why[reason] = why.get(reason, 0) + 1
        return why

    def stop(self) -> None:
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def answered(self, mids: Iterable[str]) -> int:
        """How many of ``mids`` were answered; fails at once if the system is gone."""
        if not self.alive():
            raise RuntimeError(f"{self.name} stopped during the run")
        return self.replies.answered(mids)


class StackTarget(Target):
    name = OurStack.name

    def __init__(self, workdir: Path, redis_client: redis.Redis, redis_url: str, python: str):
        super().__init__(redis_client)
        self.graph = GraphProcess(self.replies.on_send)
        self.stack = OurStack(workdir, redis_url, self.graph.port, python)
        self.port = self.stack.ports["gateway"]
        self._bodies: dict[str, bytes] = {}

    def wait_up(self) -> None:
        self.stack.wait_up()

    async def deliver(self, message: Message) -> Delivery:
        # A redelivery is the same body: same timestamp, same signature.
        body = self._bodies.get(message.mid)
        if body is None:
            body = self._bodies[message.mid] = messenger_body(
                PAGE_ID, message, int(time.time() * 1000)
            )
        status, _ = await self.pool().post(
            "/webhooks/messenger", body, {"X-Hub-Signature-256": sign(APP_SECRET, body)}
        )
        return Delivery(status)

    async def deliver_receipt(self, receipt: Receipt) -> Delivery:
        body = receipt_body(PAGE_ID, receipt)
        status, _ = await self.pool().post(
            "/webhooks/messenger", body, {"X-Hub-Signature-256": sign(APP_SECRET, body)}
        )
        return Delivery(status)

    def forget_bodies(self) -> None:
        self._bodies.clear()

    def system_roots(self) -> dict[str, list[int]]:
        return self.stack.process_roots()

    def standin_roots(self) -> dict[str, list[int]]:
        return {"Graph API stand-in": [self.graph.proc.pid]}

    def received(self, users: Iterable[str]) -> dict[str, dict[str, float]]:
        """From the chatlog, through its gRPC API: each inbound message's ``received_time``."""
        return {
            user: {mid: stored.received_time.ToNanoseconds() / 1e9 for mid, stored in mine.items()}
            for user, mine in self.inbound(users).items()
        }

    def unanswered(self, mids: dict[str, list[str]]) -> dict[str, int]:
        """Why messages (by user) got no reply, as far as the chatlog tells."""
        stored = self.inbound(mids)
        why: dict[str, int] = {}
        for user, mine in mids.items():
            for mid in mine:
                record = stored[user].get(mid)
                if record is None:
                    reason = "not in the chatlog"
                elif record.intent.name == "human_handoff":
                    reason = "a hand-off request (the bot falls silent)"
                elif record.handed_off:
                    reason = "after a hand-off request"
                else:
                    reason = f"stored, no reply ({record.intent.name or 'no intent'})"
                why[reason] = why.get(reason, 0) + 1
        return why

    def inbound(self, users: Iterable[str]) -> dict[str, dict[str, chatlog_pb.ChatMessage]]:
        result: dict[str, dict[str, chatlog_pb.ChatMessage]] = {}
        with grpc.insecure_channel(f"127.0.0.1:{self.stack.ports['chatlog']}") as channel:
            stub = chatlog_grpc.ChatlogServiceStub(channel)
            for user in users:
                times = result.setdefault(user, {})
                found = stub.ListConversations(
                    chatlog_pb.ListConversationsRequest(
                        tenant_id=TENANT_ID, user_id=user, page_size=10
                    ),
                    timeout=30,
                )
                for conversation in found.conversations:
                    token = ""
                    while True:
                        page = stub.ListMessages(
                            chatlog_pb.ListMessagesRequest(
                                tenant_id=TENANT_ID,
                                conversation_id=conversation.conversation_id,
                                page_size=1000,
                                page_token=token,
                                order=chatlog_pb.MESSAGE_ORDER_OLDEST_FIRST,
                            ),
                            timeout=30,
                        )
                        for stored in page.messages:
                            if stored.direction == chatlog_pb.DIRECTION_INBOUND:
                                times[stored.message_id] = stored
                        token = page.next_page_token
                        if not token:
                            break
        return result

    def alive(self) -> bool:
        return self.stack.proc.poll() is None

    def stop(self) -> None:
        try:
            self.stack.stop()
        finally:
            self.graph.stop()


class RasaTarget(Target):
    def __init__(self, server: RasaServer, redis_client: redis.Redis) -> None:
        super().__init__(redis_client)
        self.server = server
        self.name = server.name
        self.port = server.port

    def wait_up(self) -> None:
        self.server.wait_up()

    async def deliver(self, message: Message) -> Delivery:
        # The message id rides in the metadata, which Rasa keeps in its tracker.
        body = json.dumps(
            {"sender": message.user, "message": message.text, "metadata": {"mid": message.mid}}
        ).encode()
        status, payload = await self.pool().post("/webhooks/rest/webhook", body, {})
        # The REST channel's response is the reply itself.
        if status == 200 and json.loads(payload or b"[]"):
            self.replies.on_send(message.mid, message.user, time.monotonic())
        return Delivery(status)

    async def deliver_receipt(self, receipt: Receipt) -> Delivery:
        body = receipt_body(PAGE_ID, receipt)
        # Meta sends both headers; Rasa's channel checks the SHA-1 one.
        sha1 = hmac.new(APP_SECRET.encode(), body, hashlib.sha1).hexdigest()
        headers = {"X-Hub-Signature": f"sha1={sha1}", "X-Hub-Signature-256": sign(APP_SECRET, body)}
        status, payload = await self.pool().post(FACEBOOK_WEBHOOK, body, headers)
        # A bad signature is answered 200 "not validated": not an acknowledgement.
        return Delivery(status if payload == b"success" else 403)

    def system_roots(self) -> dict[str, list[int]]:
        return self.server.process_roots()

    def received(self, users: Iterable[str]) -> dict[str, dict[str, float]]:
        """From ``GET /conversations/<id>/tracker``: each user event's time.

        Rasa appends a user event when the message's turn under the
        conversation lock begins, so this is the order it took messages up.
        """
        result: dict[str, dict[str, float]] = {}
        with httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60) as client:
            for user in users:
                times = result.setdefault(user, {})
                response = client.get(f"/conversations/{user}/tracker")
                response.raise_for_status()
                for event in response.json().get("events", []):
                    mid = (event.get("metadata") or {}).get("mid")
                    if event.get("event") == "user" and mid and mid not in times:
                        times[mid] = float(event["timestamp"])
        return result

    def alive(self) -> bool:
        return self.server.proc.poll() is None

    def stop(self) -> None:
        self.server.stop()
