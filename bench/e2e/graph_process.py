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

from cli.graph_standin import route


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
            status, answer, reply = route(method, target, body)
            if reply is not None:
                recipient, _, in_reply_to = reply
                sys.stdout.write(f"{in_reply_to} {recipient} {time.monotonic()}\n")
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
