"""Chat events as the gateway hands them to the dialogue service."""

from __future__ import annotations

import time

from chatbot.common.v1 import event_pb2

TENANT = "default"


def message_event(
    user_id: str, mid: str, text: str, *, at_ms: int | None = None
) -> event_pb2.ChatEvent:
    """A Messenger text message of ``user_id`` to the default tenant's page, sent at ``at_ms``."""
    event = event_pb2.ChatEvent(
        event_id=mid,
        user=event_pb2.UserRef(
            tenant_id=TENANT, channel=event_pb2.CHANNEL_MESSENGER, user_id=user_id
        ),
        recipient_id="page-1",
        message=event_pb2.Message(mid=mid, text=text),
    )
    now = at_ms or int(time.time() * 1000)
    event.event_time.FromMilliseconds(now)
    event.receive_time.FromMilliseconds(int(time.time() * 1000))
    return event
