"""Reading request bodies: bounded while they arrive, parsed strictly."""

from __future__ import annotations

import json
from typing import Any, NoReturn

from starlette.requests import ClientDisconnect, Request

from services.gateway.errors import BodyTooLarge, MalformedBody


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, or BodyTooLarge as soon as it exceeds ``limit`` bytes.

    A declared Content-Length over the limit is refused before anything is
    read; a chunked body is refused at the chunk that crosses it, so a huge
    upload never sits in memory.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise MalformedBody("Content-Length is not a number") from None
        if length > limit:
            raise BodyTooLarge(f"the body has {length} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge(f"the body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        raise MalformedBody("the client disconnected before the body was complete") from None
    return b"".join(chunks)


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes) -> Any:
    """Strict JSON (no NaN or Infinity), or MalformedBody with the parser's reason."""
    if not raw.strip():
        raise MalformedBody("the body is empty")
    try:
        return json.loads(raw, parse_constant=_no_constants)
    except RecursionError:
        raise MalformedBody("the JSON is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, int digit limits
        raise MalformedBody(f"the body is not valid JSON: {exc}") from None
