"""``X-Hub-Signature-256``: HMAC-SHA256 of the raw request bytes with the app secret.

Always the bytes as received: Meta escapes non-ASCII (and may escape ``/``,
``<``, ``%``, ``@``) when it signs, so re-serialized JSON would not match. The
older ``X-Hub-Signature`` (SHA-1) is not accepted.
"""

from __future__ import annotations

import hashlib
import hmac

HEADER = "x-hub-signature-256"
_PREFIX = "sha256="


def parse_signature(header: str | None) -> bytes | None:
    """The 32-byte digest in a ``sha256=<hex>`` header, or None when absent or malformed."""
    if not header:
        return None
    header = header.strip()
    if not header.lower().startswith(_PREFIX) or len(header) != len(_PREFIX) + 64:
        return None
    try:
        return bytes.fromhex(header[len(_PREFIX) :])
    except ValueError:
        return None


def digest(secret: str, body: bytes) -> bytes:
    return hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()


def matches(secret: str, body: bytes, signature: bytes) -> bool:
    return hmac.compare_digest(digest(secret, body), signature)


def sign(secret: str, body: bytes) -> str:
    """The header value Meta would send for ``body`` (for tests and the benchmark)."""
    return _PREFIX + digest(secret, body).hex()
