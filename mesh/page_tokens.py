"""Opaque, tamper-checked page tokens.

A token carries a cursor (where the next page starts: the sort key of the
last row seen) and an HMAC-SHA256 over the cursor *and* the request's other
parameters (tenant, filters, order; not the page size, which may change
between pages). A token that was altered, forged, or issued for another
query, tenant, RPC or backend fails the check and raises the caller's
INVALID_ARGUMENT error, so a client can never steer a store with a cursor of
its own making. The chatlog and the dialogue service both page this way.

The cursor is signed, not encrypted: it holds sort keys (times and ids the
client has already seen on the page), never anything else.

Every replica of a service must share its secret
(``CHATLOG_PAGE_TOKEN_SECRET``, ``DIALOGUE_PAGE_TOKEN_SECRET``) for a token
from one to work on another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Callable, Sequence
from typing import Any

_VERSION = 1
_MAC_BYTES = 16
MAX_TOKEN_CHARS = 4096


class PageTokens:
    """Issues and reads the page tokens of one service (``backend``: what the
    cursors index, so a token of one store never reads another's); a bad token
    raises ``invalid(message)``, the service's own INVALID_ARGUMENT error."""

    def __init__(
        self,
        secret: bytes,
        backend: str,
        invalid: Callable[[str], Exception] = ValueError,
    ) -> None:
        if len(secret) < 16:
            raise ValueError("the page-token secret must have at least 16 bytes")
        self._secret = secret
        self._backend = backend
        self._invalid = invalid

    def _mac(self, kind: str, binding: Sequence[Any], body: bytes) -> bytes:
        context = json.dumps([self._backend, kind, list(binding)], separators=(",", ":"))
        message = context.encode() + b"\0" + body
        return hmac.new(self._secret, message, hashlib.sha256).digest()[:_MAC_BYTES]

    def issue(self, kind: str, binding: Sequence[Any], cursor: Sequence[Any]) -> str:
        """A token for ``cursor``, valid only for a request of ``kind`` with ``binding``."""
        body = json.dumps([_VERSION, list(cursor)], separators=(",", ":")).encode()
        raw = body + self._mac(kind, binding, body)
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    def read(self, token: str, kind: str, binding: Sequence[Any]) -> list[Any]:
        """The cursor of ``token``; the invalid error unless it was issued for this request."""
        invalid = self._invalid(
            "page_token is invalid: it was altered, or issued for a different request "
            "(another RPC, tenant, filter or order)"
        )
        if len(token) > MAX_TOKEN_CHARS:
            raise invalid
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise invalid from None
        body, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if len(raw) <= _MAC_BYTES or not hmac.compare_digest(mac, self._mac(kind, binding, body)):
            raise invalid
        try:
            version, cursor = json.loads(body)
        except (ValueError, TypeError):
            raise invalid from None
        if version != _VERSION or not isinstance(cursor, list):
            raise invalid
        return cursor
