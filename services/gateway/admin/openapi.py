"""The OpenAPI 3.1 document of the console's JSON API, written by hand.

A test holds it to the mounted routes: every route documented, every
documented operation routed.

Bodies are the contracts' messages in the proto3 JSON mapping; their schemas
name the message (``x-proto``) rather than repeat every field, since the
``.proto`` files are the reference and carry a comment on each field.
"""

from __future__ import annotations

import copy
import functools
from typing import Any

from services.gateway.admin.params import API_PREFIX

_TENANT = {
    "name": "tenant",
    "in": "path",
    "required": True,
    "description": "A tenant granted to the signed-in user (others answer 404).",
    "schema": {"type": "string"},
}


def _q(name: str, description: str, kind: str = "string", **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": extra.pop("required", False),
        "description": description,
        "schema": {"type": kind, **extra},
    }


def _proto(name: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": f"`{name}` in the proto3 JSON mapping.",
        "x-proto": name,
        "additionalProperties": True,
    }


_PAGE = [
    _q("page_token", "The `next_page_token` of the previous page."),
    _q("page_size", "Items per page (default 50).", "integer", minimum=1, maximum=1000),
]
_CHANNEL = _q("channel", "Only this channel.", enum=["messenger", "api"])
_DATES = [
    _q("start", "From this UTC date (YYYY-MM-DD) or RFC 3339 time, inclusive."),
    _q("end", "To this UTC date (inclusive: the whole day) or RFC 3339 time (exclusive)."),
]
_USER = [
    _q("channel", "The user's channel.", required=True, enum=["messenger", "api"]),
    _q("user_id", "The user's id on that channel.", required=True),
]


def _ok(schema: dict[str, Any], media: str = "application/json") -> dict[str, Any]:
    return {
        "200": {"description": "OK", "content": {media: {"schema": schema}}},
        "400": {"$ref": "#/components/responses/BadInput"},
        "401": {"$ref": "#/components/responses/NotAuthenticated"},
        "404": {"$ref": "#/components/responses/NotFound"},
        "503": {"$ref": "#/components/responses/Unavailable"},
    }


def _action(schema: dict[str, Any]) -> dict[str, Any]:
    responses = _ok(schema)
    responses["403"] = {"$ref": "#/components/responses/Forbidden"}
    responses["409"] = {"$ref": "#/components/responses/Conflict"}
    return responses


def _body(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {"type": "object", "properties": properties, "required": required}
            },
            "application/x-www-form-urlencoded": {
                "schema": {"type": "object", "properties": properties, "required": required}
            },
        },
    }


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


@functools.cache
def _document() -> dict[str, Any]:
    t = "/tenants/{tenant}"
    csrf: list[dict[str, list[str]]] = [{"session": [], "csrf": []}]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Chatbot admin API",
            "version": "1",
            "description": "What the admin console's pages use: conversations, transcripts, "
            "live updates, stats, dead letters, hand-off and the training-data export. Sign in "
            "at /admin/login; the session cookie authenticates every call, and every POST also "
            "needs the session's CSRF token (from GET /me) in the X-CSRF-Token header. Viewers "
            "read; admins also act (replay, hand-off, agent messages, retention, erasure).",
        },
        "servers": [{"url": API_PREFIX}],
        "security": [{"session": []}],
        "paths": {
            "/openapi.json": {
                "get": {"summary": "This document.", "responses": _ok({"type": "object"})}
            },
            "/me": {
                "get": {
                    "summary": "The signed-in user, their tenants and the session's CSRF token.",
                    "responses": _ok({"$ref": "#/components/schemas/Me"}),
                }
            },
            f"{t}/conversations": {
                "get": {
                    "summary": "Conversations, latest activity first.",
                    "description": "A Messenger conversation whose customer the page may know "
                    "carries `customer`: `name`, `first_name`, `last_name` and `picture` (a URL "
                    "on Meta's CDN), from Meta's User Profile API, cached; without it, show "
                    "`user.user_id`.",
                    "parameters": [
                        _TENANT,
                        *_PAGE,
                        _CHANNEL,
                        *_DATES,
                        _q("intent", "Only conversations with an inbound message of this intent."),
                        _q("fallback", "true: only conversations with a fallback.", "boolean"),
                        _q(
                            "handed_off",
                            "Only conversations that are (or are not) handed off.",
                            "boolean",
                        ),
                        _q("user", "Only this user's conversations."),
                    ],
                    "responses": _ok(_proto("chatbot.chatlog.v1.ListConversationsResponse")),
                }
            },
            f"{t}/search": {
                "get": {
                    "summary": "Messages containing every word of `q`, newest first "
                    "(at most 31 days; the last 7 by default).",
                    "parameters": [
                        _TENANT,
                        _q("q", "The words to find.", required=True),
                        *_DATES,
                        _CHANNEL,
                        *_PAGE,
                    ],
                    "responses": _ok(_proto("chatbot.chatlog.v1.SearchMessagesResponse")),
                }
            },
            f"{t}/messages": {
                "get": {
                    "summary": "A conversation's transcript, with tokens to page both ways.",
                    "parameters": [
                        _TENANT,
                        _q("conversation_id", "The conversation.", required=True),
                        _q(
                            "order",
                            "oldest_first (default) or newest_first.",
                            enum=["oldest_first", "newest_first"],
                        ),
                        *_PAGE,
                    ],
                    "responses": _ok(_proto("chatbot.chatlog.v1.ListMessagesResponse")),
                }
            },
            f"{t}/live": {
                "get": {
                    "summary": "Server-sent events as a conversation's new messages arrive.",
                    "description": "Events: `message` (`{id, html}`: the transcript bubble; the "
                    "last of a batch carries the resume token as its SSE id), `update` "
                    "(`{id, html}`: a recent reply drawn again, first for each, then when its "
                    "delivery status changes), `state` (`{handed_off, agent_id}` when it "
                    "changes), `problem` (`{message}`) and `signed-out` (`{message}`). "
                    "The stream ends after `max_seconds` (the server's limit by default); "
                    "reconnect with `Last-Event-ID` to resume.",
                    "parameters": [
                        _TENANT,
                        _q("conversation_id", "The conversation.", required=True),
                        _q(
                            "page_token",
                            "Resume after the message this token anchors (a "
                            "`previous_page_token` of /messages with order=newest_first).",
                        ),
                        _q("max_seconds", "End the stream after this long.", "number"),
                    ],
                    "responses": _ok({"type": "string"}, "text/event-stream"),
                }
            },
            f"{t}/state": {
                "get": {
                    "summary": "A user's live state in the dialogue service (queue, hand-off).",
                    "parameters": [_TENANT, *_USER],
                    "responses": _ok(_proto("chatbot.dialogue.v1.ConversationState")),
                }
            },
            f"{t}/handoff": {
                "post": {
                    "summary": "Take a conversation over (the bot goes silent) or hand it back.",
                    "description": "Admins only.",
                    "security": csrf,
                    "parameters": [_TENANT],
                    "requestBody": _body(
                        {
                            "channel": {"type": "string", "enum": ["messenger", "api"]},
                            "user_id": {"type": "string"},
                            "handed_off": {"type": "boolean"},
                            "reason": {"type": "string", "maxLength": 200},
                        },
                        ["channel", "user_id", "handed_off"],
                    ),
                    "responses": _action(_proto("chatbot.dialogue.v1.ConversationState")),
                }
            },
            f"{t}/agent-messages": {
                "post": {
                    "summary": "Answer a handed-off user as the signed-in agent, through the "
                    "user's channel.",
                    "description": "Admins only. 409 when the conversation is not handed off or "
                    "the channel refused the message (outside Messenger's 24-hour window).",
                    "security": csrf,
                    "parameters": [_TENANT],
                    "requestBody": _body(
                        {
                            "channel": {"type": "string", "enum": ["messenger", "api"]},
                            "user_id": {"type": "string"},
                            "text": {"type": "string", "maxLength": 2000},
                            "request_id": {
                                "type": "string",
                                "description": "Makes a retry send the message once.",
                            },
                        },
                        ["channel", "user_id", "text"],
                    ),
                    "responses": _action(_proto("chatbot.dialogue.v1.SendAgentMessageResponse")),
                }
            },
            f"{t}/stats": {
                "get": {
                    "summary": "Traffic per UTC day: messages, latency, intents, fallbacks.",
                    "parameters": [
                        _TENANT,
                        _q("start", "The first UTC day (YYYY-MM-DD).", required=True),
                        _q("end", "The last UTC day, included.", required=True),
                        _CHANNEL,
                    ],
                    "responses": _ok(_proto("chatbot.chatlog.v1.GetStatsResponse")),
                }
            },
            f"{t}/dead-letters": {
                "get": {
                    "summary": "Events that failed for good, latest failure first.",
                    "parameters": [_TENANT, *_PAGE],
                    "responses": _ok(_proto("chatbot.dialogue.v1.ListDeadLettersResponse")),
                }
            },
            f"{t}/dead-letters/{{dead_letter_id}}/replay": {
                "post": {
                    "summary": "Queue a dead letter's event again (admins only).",
                    "security": csrf,
                    "parameters": [
                        _TENANT,
                        {
                            "name": "dead_letter_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                    ],
                    "responses": _action(_proto("chatbot.dialogue.v1.ReplayDeadLetterResponse")),
                }
            },
            f"{t}/retention": {
                "get": {
                    "summary": "How long the tenant's messages are kept (admins only).",
                    "parameters": [_TENANT],
                    "responses": _action(_proto("chatbot.chatlog.v1.RetentionPolicy")),
                },
                "post": {
                    "summary": "Set how long messages stored from now on are kept (admins only).",
                    "security": csrf,
                    "parameters": [_TENANT],
                    "requestBody": _body(
                        {
                            "days": {
                                "type": "integer",
                                "minimum": 0,
                                "description": "Days after storing; 0 keeps until deleted.",
                            }
                        },
                        ["days"],
                    ),
                    "responses": _action(_proto("chatbot.chatlog.v1.RetentionPolicy")),
                },
            },
            f"{t}/erase": {
                "post": {
                    "summary": "Erase one customer's messages and conversations (admins only).",
                    "description": "Cannot be undone; `confirm` must repeat `user_id` (else "
                    "400). Without `channel`, every channel. Leaves an audit log line.",
                    "security": csrf,
                    "parameters": [_TENANT],
                    "requestBody": _body(
                        {
                            "channel": {"type": "string", "enum": ["messenger", "api"]},
                            "user_id": {"type": "string"},
                            "confirm": {"type": "string", "description": "`user_id` again."},
                        },
                        ["user_id", "confirm"],
                    ),
                    "responses": _action(_proto("chatbot.chatlog.v1.DeleteUserDataResponse")),
                }
            },
            f"{t}/training-data": {
                "get": {
                    "summary": "Users' messages as training examples, lowest confidence first.",
                    "parameters": [_TENANT, *_EXPORT],
                    "responses": _ok(_proto("chatbot.chatlog.v1.ExportTrainingDataResponse")),
                }
            },
            f"{t}/training-data.yml": {
                "get": {
                    "summary": "The same examples as a Rasa NLU YAML file to download.",
                    "parameters": [_TENANT, *_EXPORT],
                    "responses": _ok({"type": "string"}, "application/x-yaml"),
                }
            },
        },
        "components": {
            "securitySchemes": {
                "session": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "chatbot_admin",
                    "description": "The session cookie set by signing in at /admin/login "
                    "(named __Host-chatbot_admin over https).",
                },
                "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token"},
            },
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
                    "required": ["error", "message"],
                },
                "Me": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "role": {"type": "string", "enum": ["viewer", "admin"]},
                        "tenants": {"type": "array", "items": {"type": "string"}},
                        "csrf_token": {"type": "string"},
                    },
                },
            },
            "responses": {
                "BadInput": _error("A parameter was refused."),
                "NotAuthenticated": _error("No valid session: sign in."),
                "Forbidden": _error("The role does not allow it, or the CSRF token is wrong."),
                "NotFound": _error("No such thing, or a tenant not granted."),
                "Conflict": _error("Not possible in the current state."),
                "Unavailable": _error("A service behind the console is unavailable."),
            },
        },
    }


_EXPORT = [
    *_DATES,
    _q("intents", "Comma-separated intents to export."),
    _q("min_confidence", "At least this confidence.", "number", minimum=0, maximum=1),
    _q("max_confidence", "At most this confidence.", "number", minimum=0, maximum=1),
    _q("limit", "At most this many examples (default 200).", "integer", minimum=1, maximum=10000),
]


def document() -> dict[str, Any]:
    return copy.deepcopy(_document())
