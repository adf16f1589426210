"""Shopify's toxiproxy in front of every link of a real stack.

The server binary is built once by ``scripts/toxiproxy.sh`` into the shared
cache (``make toxiproxy``; ``make test`` passes its path as
``TOXIPROXY_SERVER``). Each link gets a proxy on a free port; a fault is a
toxic on it (latency, a trickle, resets, silence) or the proxy disabled
(connections refused, open ones closed). ``calm()`` lifts every fault.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from harness.support import REPO, free_port

VERSION = "v2.5.0"


def server_binary() -> Path:
    named = os.environ.get("TOXIPROXY_SERVER")
    cache = Path(
        os.environ.get("CHATBOT_CACHE")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "chatbot"
    )
    path = Path(named) if named else cache / f"toxiproxy-{VERSION}" / "toxiproxy-server"
    if not path.exists():
        pytest.fail(
            f"no toxiproxy server at {path}: run `make toxiproxy` "
            f"(or {REPO / 'scripts' / 'toxiproxy.sh'}), or the whole suite with `make test`"
        )
    return path


class Proxy:
    def __init__(self, api: httpx.Client, name: str, port: int) -> None:
        self._api = api
        self.name = name
        self.port = port
        self._toxics = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def toxic(self, kind: str, stream: str = "downstream", **attributes: int) -> None:
        """Adds a toxic: ``downstream`` acts on answers, ``upstream`` on requests."""
        self._toxics += 1
        response = self._api.post(
            f"/proxies/{self.name}/toxics",
            json={
                "name": f"{kind}_{stream}_{self._toxics}",
                "type": kind,
                "stream": stream,
                "toxicity": 1.0,
                "attributes": attributes,
            },
        )
        response.raise_for_status()

    def enabled(self, on: bool) -> None:
        """Disabled: new connections refused, open ones closed."""
        self._api.post(f"/proxies/{self.name}", json={"enabled": on}).raise_for_status()


class Toxiproxy:
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self._log = (workdir / "toxiproxy.log").open("wb")
        self.proc = subprocess.Popen(
            [str(server_binary()), "-host", "127.0.0.1", "-port", str(self.port)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        self._api = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)
        self.proxies: dict[str, Proxy] = {}
        deadline = time.monotonic() + 20
        while True:
            try:
                if self._api.get("/version").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"toxiproxy did not start on {self.port}")
            time.sleep(0.05)

    def proxy(self, name: str, upstream: str) -> Proxy:
        port = free_port()
        response = self._api.post(
            "/proxies",
            json={"name": name, "listen": f"127.0.0.1:{port}", "upstream": upstream},
        )
        response.raise_for_status()
        proxy = self.proxies[name] = Proxy(self._api, name, port)
        return proxy

    def calm(self) -> None:
        """Every proxy enabled, every toxic removed."""
        self._api.post("/reset").raise_for_status()

    def stop(self) -> None:
        self._api.close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
