"""The console's three outbound seams: the chatlog, the dialogue service, Redis.

`Backends` is what the console asks for them at request time. In the gateway
they come from `GrpcAdminBackends`, which opens the gRPC channels and the Redis
client in the app's lifespan (a ``grpc.aio`` channel belongs to its event
loop, so nothing is opened at construction); tests may hand real stubs and a
client they opened themselves to `StaticBackends`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

import grpc
from chatbot.chatlog.v1 import chatlog_service_pb2_grpc
from chatbot.dialogue.v1 import dialogue_service_pb2_grpc

from mesh.channels import open_channel
from mesh.redis_client import connect
from services.gateway.admin.errors import BackendUnavailable
from services.gateway.admin.users import RedisClient

if TYPE_CHECKING:  # the async stubs' types exist only in the generated .pyi files
    from chatbot.chatlog.v1.chatlog_service_pb2_grpc import (
        ChatlogServiceAsyncStub as ChatlogStub,
    )
    from chatbot.dialogue.v1.dialogue_service_pb2_grpc import (
        DialogueServiceAsyncStub as DialogueStub,
    )


class Backends(Protocol):
    @property
    def chatlog(self) -> ChatlogStub: ...

    @property
    def dialogue(self) -> DialogueStub: ...

    @property
    def redis(self) -> RedisClient: ...


class StaticBackends:
    """Stubs and a Redis client opened by the caller, who also closes them."""

    def __init__(self, chatlog: ChatlogStub, dialogue: DialogueStub, redis: RedisClient) -> None:
        self.chatlog = chatlog
        self.dialogue = dialogue
        self.redis = redis


class GrpcAdminBackends:
    """Channels to CHATLOG_ADDRESS and DIALOGUE_ADDRESS and a client of REDIS_URL."""

    def __init__(self, chatlog_address: str, dialogue_address: str, redis_url: str) -> None:
        self._addresses = (chatlog_address, dialogue_address)
        self._redis_url = redis_url
        self._channels: list[grpc.aio.Channel] = []
        self._chatlog: ChatlogStub | None = None
        self._dialogue: DialogueStub | None = None
        self._redis: RedisClient | None = None

    async def start(self) -> None:
        chatlog_channel = open_channel(self._addresses[0])
        dialogue_channel = open_channel(self._addresses[1])
        self._channels = [chatlog_channel, dialogue_channel]
        self._chatlog = chatlog_service_pb2_grpc.ChatlogServiceStub(chatlog_channel)
        self._dialogue = dialogue_service_pb2_grpc.DialogueServiceStub(dialogue_channel)
        self._redis = await connect(self._redis_url, timeout=2.0)

    async def close(self) -> None:
        channels, self._channels = self._channels, []
        for channel in channels:
            await channel.close()
        if self._redis is not None:
            await self._redis.aclose()
        self._chatlog = self._dialogue = self._redis = None

    @property
    def chatlog(self) -> ChatlogStub:
        if self._chatlog is None:
            raise BackendUnavailable("the console is not started")
        return self._chatlog

    @property
    def dialogue(self) -> DialogueStub:
        if self._dialogue is None:
            raise BackendUnavailable("the console is not started")
        return self._dialogue

    @property
    def redis(self) -> RedisClient:
        if self._redis is None:
            raise BackendUnavailable("the console is not started")
        return self._redis
