"""The dialogue process under fuzzing, and what must hold once a run ends.

After a run every user's queue drains within a bounded time, every event the
service accepted got a result (processed, or dead-lettered), none of them
dead-lettered (its dependencies are all up, so a dead letter means an event
it accepted but cannot process), and a new user still gets an answer.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import grpc
import redis
from chatbot.common.v1 import event_pb2
from chatbot.dialogue.v1 import dialogue_service_pb2 as pb
from chatbot.dialogue.v1 import dialogue_service_pb2_grpc
from grpc_health.v1 import health_pb2

from harness.redis_servers import RedisServer
from harness.support import ServiceProcess, health_status
from services.dialogue.keys import UserId, UserKeys
from tests.fuzz.calls import RawMethods

SERVING = health_pb2.HealthCheckResponse.SERVING
SERVICE = pb.DESCRIPTOR.services_by_name["DialogueService"]
# A user's queue key, and nothing else (event ids can end in ":q").
_QUEUE_KEY = re.compile(rb"^dlg:\{t:[^{}]*\}:q$")


class DialogueUnderFuzz:
    def __init__(self, process: ServiceProcess, redis_server: RedisServer, tenant: str) -> None:
        self.process = process
        self.tenant = tenant
        self.channel = grpc.insecure_channel(f"127.0.0.1:{process.port}")
        self.stub = dialogue_service_pb2_grpc.DialogueServiceStub(self.channel)
        self.raw = RawMethods(self.channel, SERVICE)
        self.redis = redis.Redis(port=redis_server.port)
        # (user, item id) of everything accepted since the last check.
        self.accepted: set[tuple[UserId, str]] = set()

    def close(self) -> None:
        self.channel.close()
        self.redis.close()

    def note_submitted(
        self, request: pb.SubmitEventsRequest, response: pb.SubmitEventsResponse
    ) -> None:
        assert len(response.results) == len(request.events)
        for event, result in zip(request.events, response.results, strict=True):
            assert result.event_id == event.event_id
            assert result.status in (pb.SUBMIT_STATUS_ACCEPTED, pb.SUBMIT_STATUS_DUPLICATE)
            if result.status == pb.SUBMIT_STATUS_ACCEPTED:
                user = event.user
                self.accepted.add(
                    (UserId(user.tenant_id, int(user.channel), user.user_id), event.event_id)
                )

    def queues(self) -> dict[str, int]:
        return {
            key.decode(): int(self.redis.llen(key))
            for key in self.redis.scan_iter(match="dlg:*:q", count=1000)
            if _QUEUE_KEY.match(key)
        }

    def ready_entries(self) -> int:
        """Users waiting in any shard's ready list."""
        return sum(int(self.redis.llen(key)) for key in self.redis.scan_iter(match="dlg:*:list"))

    def assert_healthy(self) -> None:
        assert self.process.proc.poll() is None, f"the dialogue exited:\n{self.process.tail()}"
        assert health_status(self.process.port) == SERVING, self.process.tail()

    def assert_drained(self, timeout: float) -> None:
        """Every queue empties; every accepted event has its result, none a dead letter's."""
        deadline = time.monotonic() + timeout
        while (queues := self.queues()) or self.ready_entries():
            assert time.monotonic() < deadline, (
                f"queues still not empty after {timeout:.0f}s: {sorted(queues.items())[:10]} "
                f"({len(queues)} users, {sum(queues.values())} items)\n{self.process.tail()}"
            )
            time.sleep(0.2)
        # Taken now, so a failure here does not carry over to the next run.
        accepted, self.accepted = self.accepted, set()
        missing, dead = [], []
        for user, item_id in accepted:
            result: Any = self.redis.get(UserKeys(user).result(item_id))
            if result is None:
                missing.append((user, item_id))
            elif result.startswith(b"E"):
                dead.append((user, item_id, result[1:300]))
        assert not missing, f"{len(missing)} accepted events have no result: {missing[:5]}"
        assert not dead, f"{len(dead)} accepted events went to the dead letters: {dead[:5]}"
        self.assert_answers_a_new_user()
        self.assert_healthy()

    def assert_answers_a_new_user(self) -> None:
        user = event_pb2.UserRef(
            tenant_id=self.tenant, channel=event_pb2.CHANNEL_API, user_id=f"new-{uuid.uuid4().hex}"
        )
        reply = self.stub.Converse(pb.ConverseRequest(user=user, text="hello"), timeout=30)
        assert reply.replies and reply.intent.name == "greet", reply
