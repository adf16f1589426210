"""Facebook Messenger: the webhook, its signatures, and its payloads as typed events."""

from services.gateway.messenger.events import ParsedBatch, parse_batch
from services.gateway.messenger.pages import PageDirectory
from services.gateway.messenger.signature import parse_signature, sign
from services.gateway.messenger.webhook import MessengerWebhook

__all__ = [
    "MessengerWebhook",
    "PageDirectory",
    "ParsedBatch",
    "parse_batch",
    "parse_signature",
    "sign",
]
