"""A Graph API stand-in in its own process, light enough not to be the bottleneck.

``python -m bench.e2e.graph_process PORT`` answers the Send API
(``POST .../me/messages``) and the starter bot's order and weather APIs on
127.0.0.1:PORT, and prints one line per reply sent: ``<in_reply_to> <recipient>
<time.monotonic()>`` (the monotonic clock is the same for every process on
the machine, so the driver can compare it with its own). Prints ``ready``
first.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from urllib.parse import parse_qs, urlparse

from cli.graph_standin import DEMO_ORDERS

_count = 0


def _answer(method: str, target: str, body: bytes) -> tuple[int, object]:
    global _count
    url = urlparse(target)
    if method == "POST" and url.path.endswith("/me/messages"):
        try:
            doc = json.loads(body or b"{}")
        except ValueError:
            return 400, {"error": {"message": "bad JSON", "code": 100}}
        recipient = str((doc.get("recipient") or {}).get("id", ""))
        message = doc.get("message")
        if message is not None:
            metadata = json.loads(message.get("metadata") or "{}")
            _count += 1
            sys.stdout.write(f"{metadata.get('in_reply_to', '')} {recipient} {time.monotonic()}\n")
            return 200, {"recipient_id": recipient, "message_id": f"m_out_{_count}"}
        return 200, {"recipient_id": recipient}
    if method == "GET" and url.path.startswith("/orders/"):
        order = DEMO_ORDERS.get(url.path.rsplit("/", 1)[1])
        return (200, order) if order else (404, {"error": "none"})
    if method == "GET" and url.path == "/weather":
        city = parse_qs(url.query).get("city", ["?"])[0]
        return 200, {"city": city, "temperature_c": 18, "summary": "cloudy"}
    return 404, {"error": {"message": "unknown path", "code": 100}}


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            body = await reader.readexactly(length) if length else b""
            status, answer = _answer(method, target, body)
            raw = json.dumps(answer).encode()
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(raw)}\r\n\r\n".encode()
                + raw
            )
            sys.stdout.flush()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        writer.close()


async def _main(port: int) -> None:
    server = await asyncio.start_server(_serve, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main() -> int:
    try:
        import uvloop
    except ImportError:
        asyncio.run(_main(int(sys.argv[1])))
    else:
        uvloop.run(_main(int(sys.argv[1])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
