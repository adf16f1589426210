"""Password hashes: scrypt with a per-user random salt, parameters kept in the hash.

A hash reads ``scrypt$<log2 n>$<r>$<p>$<salt, base64>$<key, base64>``, so the
cost can be raised later and old hashes still verify (`needs_rehash` says when
to store a new one). The cost is OWASP's for scrypt: N=2^17, r=8, p=1, which
takes 128 MiB and about half a second per derivation. Callers run it in a
thread, and check a dummy hash for unknown users so the timing does not tell
which names exist; at most `CONCURRENT` derivations run at once in a process,
so a burst of logins queues instead of exhausting the container's memory.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import secrets
import threading

_SCHEME = "scrypt"
LOG2_N = 17
R = 8
P = 1
_KEY_BYTES = 32
_SALT_BYTES = 16
_MAX_PASSWORD = 1024
CONCURRENT = 2
_slots = threading.BoundedSemaphore(CONCURRENT)


class InvalidHash(ValueError):
    """A stored hash that cannot be read."""


def _derive(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    # OpenSSL needs 128 * r * (N + p) bytes; hashlib's default maxmem is 32 MiB.
    with _slots:
        return hashlib.scrypt(
            password.encode("utf-8", "surrogatepass"),
            salt=salt,
            n=1 << log2_n,
            r=r,
            p=p,
            maxmem=128 * r * ((1 << log2_n) + p + 2) + 1024 * 1024,
            dklen=_KEY_BYTES,
        )


def hash_password(password: str, *, log2_n: int = LOG2_N, r: int = R, p: int = P) -> str:
    """A new hash at the current cost (other costs only to test upgrades)."""
    if not password:
        raise ValueError("the password is empty")
    if len(password) > _MAX_PASSWORD:
        raise ValueError(f"the password is over {_MAX_PASSWORD} characters")
    salt = secrets.token_bytes(_SALT_BYTES)
    key = _derive(password, salt, log2_n, r, p)
    return "$".join(
        [_SCHEME, str(log2_n), str(r), str(p), _b64(salt), _b64(key)],
    )


def verify_password(password: str, encoded: str) -> bool:
    """True when ``password`` matches; the comparison takes constant time."""
    scheme, log2_n, r, p, salt, key = _parse(encoded)
    if len(password) > _MAX_PASSWORD:
        password = password[:_MAX_PASSWORD] + "\x00"  # still costs a derivation, never matches
    candidate = _derive(password, salt, log2_n, r, p)
    return hmac.compare_digest(candidate, key) and scheme == _SCHEME


def needs_rehash(encoded: str) -> bool:
    _, log2_n, r, p, _, _ = _parse(encoded)
    return (log2_n, r, p) != (LOG2_N, R, P)


def _parse(encoded: str) -> tuple[str, int, int, int, bytes, bytes]:
    parts = encoded.split("$")
    if len(parts) != 6 or parts[0] != _SCHEME:
        raise InvalidHash("not an scrypt hash")
    try:
        log2_n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
        salt, key = _unb64(parts[4]), _unb64(parts[5])
    except ValueError as exc:
        raise InvalidHash(str(exc)) from None
    if not (10 <= log2_n <= 22 and 1 <= r <= 32 and 1 <= p <= 16) or not salt or not key:
        raise InvalidHash("scrypt parameters out of range")
    return parts[0], log2_n, r, p, salt, key


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


@functools.cache
def dummy_hash() -> str:
    """Checked against when the user does not exist, so that costs the same."""
    return hash_password(secrets.token_urlsafe(16))
