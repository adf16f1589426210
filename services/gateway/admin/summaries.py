"""One line about an event, for tables (dead letters)."""

from __future__ import annotations

from chatbot.common.v1 import event_pb2


def event_summary(event: event_pb2.ChatEvent) -> str:
    kind = event.WhichOneof("kind")
    if kind == "message":
        message = event.message
        if message.text:
            return message.text[:200]
        if message.attachments:
            names = {
                value: name.removeprefix("ATTACHMENT_TYPE_").lower()
                for name, value in event_pb2.AttachmentType.items()
            }
            return (
                "[" + ", ".join(names.get(a.type, "attachment") for a in message.attachments) + "]"
            )
        return "[empty message]"
    if kind == "postback":
        return f"[postback] {event.postback.title or event.postback.payload}"[:200]
    if kind == "reaction":
        return f"[reaction] {event.reaction.emoji or event.reaction.reaction}"
    if kind is None:
        return f"[agent message {event.event_id}]" if event.event_id.startswith("agent:") else "[?]"
    return f"[{kind}]"
