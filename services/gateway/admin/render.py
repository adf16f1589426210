"""HTML from Jinja2 templates (autoescaped) and the filters they use."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from chatbot.chatlog.v1 import chatlog_service_pb2 as chatlog_pb
from chatbot.common.v1 import event_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markupsafe import Markup, escape

from mesh.tenants import PAGE_INBOX_APP_ID
from services.gateway.admin.params import CHANNEL_NAMES

TEMPLATES = Path(__file__).resolve().parent / "templates"
_URL = re.compile(r"""https?://[^\s<>"'`]+""", re.IGNORECASE)
_TRAILING = ".,;:!?)]}"

TYPE_LABELS = {
    chatlog_pb.MESSAGE_TYPE_TEXT: "Text",
    chatlog_pb.MESSAGE_TYPE_IMAGE: "Image",
    chatlog_pb.MESSAGE_TYPE_AUDIO: "Audio",
    chatlog_pb.MESSAGE_TYPE_VIDEO: "Video",
    chatlog_pb.MESSAGE_TYPE_FILE: "File",
    chatlog_pb.MESSAGE_TYPE_LINK: "Link",
    chatlog_pb.MESSAGE_TYPE_STICKER: "Sticker",
    chatlog_pb.MESSAGE_TYPE_LOCATION: "Location",
    chatlog_pb.MESSAGE_TYPE_TEMPLATE: "Template",
    chatlog_pb.MESSAGE_TYPE_POSTBACK: "Postback",
    chatlog_pb.MESSAGE_TYPE_QUICK_REPLY: "Quick reply",
    chatlog_pb.MESSAGE_TYPE_REACTION: "Reaction",
    chatlog_pb.MESSAGE_TYPE_SYSTEM: "Event",
}
DELIVERY_LABELS = {
    chatlog_pb.DELIVERY_STATUS_SENT: "Sent",
    chatlog_pb.DELIVERY_STATUS_DELIVERED: "Delivered",
    chatlog_pb.DELIVERY_STATUS_READ: "Read",
}
AUTHOR_LABELS = {
    chatlog_pb.AUTHOR_USER: "User",
    chatlog_pb.AUTHOR_BOT: "Bot",
    chatlog_pb.AUTHOR_AGENT: "Agent",
    chatlog_pb.AUTHOR_PAGE: "Page",
}


def safe_url(url: str) -> str:
    """``url`` when it is http(s), else empty: no ``javascript:`` or ``data:`` links."""
    try:
        scheme = urlsplit(url.strip()).scheme.lower()
    except ValueError:
        return ""
    return url.strip() if scheme in ("http", "https") else ""


def linkify(text: str) -> Markup:
    """The text, escaped, with its http(s) URLs as links that open elsewhere."""
    out: list[str] = []
    position = 0
    for match in _URL.finditer(text):
        url = match.group(0)
        trail = ""
        while url and url[-1] in _TRAILING:
            url, trail = url[:-1], url[-1] + trail
        out.append(str(escape(text[position : match.start()])))
        out.append(
            f'<a href="{escape(url)}" rel="noopener noreferrer nofollow" target="_blank">'
            f"{escape(url)}</a>{escape(trail)}"
        )
        position = match.end()
    out.append(str(escape(text[position:])))
    return Markup("".join(out))


def when(stamp: Timestamp | None) -> str:
    if stamp is None or (stamp.seconds == 0 and stamp.nanos == 0):
        return ""
    return stamp.ToDatetime(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def iso(stamp: Timestamp | None) -> str:
    if stamp is None or (stamp.seconds == 0 and stamp.nanos == 0):
        return ""
    return stamp.ToDatetime(dt.timezone.utc).isoformat().replace("+00:00", "Z")


def millis(span: Duration | None) -> str:
    if span is None or (span.seconds == 0 and span.nanos == 0):
        return ""
    value = span.ToMilliseconds()
    return f"{value / 1000:.1f} s" if value >= 10_000 else f"{value} ms"


def percent(value: float) -> str:
    return f"{value * 100:.0f}%" if value >= 0.1 or value == 0 else f"{value * 100:.1f}%"


def channel_name(value: int) -> str:
    return CHANNEL_NAMES.get(int(value), "unknown")


def query_string(values: Mapping[str, Any], **changes: Any) -> str:
    merged = {**values, **changes}
    clean = {k: v for k, v in merged.items() if v not in (None, "", False)}
    return (
        ("?" + urlencode({k: "true" if v is True else v for k, v in clean.items()}))
        if clean
        else ""
    )


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        linkify=linkify,
        when=when,
        iso=iso,
        millis=millis,
        percent=percent,
        channel_name=channel_name,
        safe_url=safe_url,
    )
    env.globals.update(
        TYPE_LABELS=TYPE_LABELS,
        AUTHOR_LABELS=AUTHOR_LABELS,
        DELIVERY_LABELS=DELIVERY_LABELS,
        PAGE_INBOX_APP_ID=PAGE_INBOX_APP_ID,
        chatlog_pb=chatlog_pb,
        event_pb2=event_pb2,
        query_string=query_string,
        CHANNEL_NAMES=CHANNEL_NAMES,
    )
    return env


class Renderer:
    def __init__(self) -> None:
        self._env = _environment()

    def page(self, name: str, **context: Any) -> str:
        return self._env.get_template(name).render(**context)

    def message(self, message: chatlog_pb.ChatMessage, **context: Any) -> str:
        """One transcript bubble, as the live stream sends it."""
        module = self._env.get_template("_message.html").make_module(context)
        return str(module.bubble(message))  # type: ignore[attr-defined]
