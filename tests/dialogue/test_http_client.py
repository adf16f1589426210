"""The worker's HTTP client against a real server: what a late request risks."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from services.dialogue.http import HttpClient, NotSent


@pytest.fixture
def server() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            seen.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    httpd.shutdown()
    httpd.server_close()


def test_a_request_whose_connection_comes_after_its_last_moment_is_not_written(
    server: tuple[str, list[str]],
) -> None:
    url, seen = server

    async def run() -> None:
        async with HttpClient() as client:
            # On time, over a new connection, then over the kept-alive one.
            for path in ("/new", "/reused"):
                answer = await client.request(
                    "POST", url + path, timeout=5, json_body={}, write_by=time.monotonic() + 5
                )
                assert answer.status == 200
            # Too late, over the kept-alive connection: nothing reaches the server.
            with pytest.raises(NotSent, match="too late"):
                await client.request(
                    "POST", url + "/late", timeout=5, json_body={}, write_by=time.monotonic() - 1
                )
        async with HttpClient() as client:  # and over a new one
            with pytest.raises(NotSent, match="too late"):
                await client.request(
                    "POST",
                    url + "/late-new",
                    timeout=5,
                    json_body={},
                    write_by=time.monotonic() - 1,
                )

    asyncio.run(run())
    assert seen == ["/new", "/reused"]
