"""Real Redis servers on free ports: one standalone, or a cluster of three masters."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from harness.support import free_port


def _auth(username: str | None, password: str | None) -> list[str]:
    if password is None:
        return []
    return [*(["--user", username] if username else []), "--pass", password, "--no-auth-warning"]


def _wait_for_ping(
    port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0, auth: Sequence[str] = ()
) -> bool:
    """True once the server answers; False if it exited (its port was taken)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        ping = subprocess.run(
            ["redis-cli", "-p", str(port), *auth, "ping"],
            capture_output=True,
            text=True,
            check=False,
        )
        if ping.stdout.strip() == "PONG":
            return True
        time.sleep(0.1)
    raise TimeoutError(f"redis on port {port} did not answer")


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class RedisServer:
    """``redis-server`` on a free port, append-only, in its own directory.

    With ``password``, clients must authenticate: as the ACL user ``username``
    (the default user is then disabled), or with ``requirepass`` without one.
    ``args`` are more ``redis-server`` options (a TLS port, say).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        cluster: bool = False,
        port: int | None = None,
        username: str | None = None,
        password: str | None = None,
        args: Sequence[str] = (),
    ) -> None:
        self.username, self.password, self._args = username, password, list(args)
        self.auth = _auth(username, password)
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (make test installs it)")
        for _ in range(10):  # another process may take a free port before we bind it
            self.port = port or free_port()
            # A cluster node also listens on port + 10000 (its bus).
            if (
                cluster
                and not port
                and (self.port + 10000 > 65535 or not _is_free(self.port + 10000))
            ):
                continue
            if self._start(workdir, cluster):
                return
        raise RuntimeError(f"redis-server did not start: see {self.dir / 'redis.log'}")

    def _start(self, workdir: Path, cluster: bool) -> bool:
        self._cluster = cluster
        self.dir = workdir / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        argv = [
            "redis-server",
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--save", "",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        if cluster:
            argv += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        if self.password is not None and self.username:
            # One word per argument: redis-server quotes each one whole.
            argv += ["--user", self.username, "on", f">{self.password}", "~*", "&*", "+@all"]
            argv += ["--user", "default", "off"]
        elif self.password is not None:
            argv += ["--requirepass", self.password]
        argv += self._args
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return _wait_for_ping(self.port, self.proc, auth=self.auth)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def restart(self, down_s: float = 0.0, sig: signal.Signals = signal.SIGTERM) -> float:
        """Stops with ``sig`` (SIGTERM: the append-only file is flushed), stays
        down ``down_s`` and starts on the same port; returns how long nothing answered."""
        started = time.monotonic()
        self.stop(sig)
        time.sleep(down_s)
        if not self._start(self.dir.parent, self._cluster):
            raise RuntimeError(f"redis-server did not restart on {self.port}")
        return time.monotonic() - started

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class RedisCluster:
    """Three masters, slots spread by ``redis-cli --cluster create``."""

    def __init__(self, workdir: Path, masters: int = 3, *, password: str | None = None) -> None:
        self.nodes = [RedisServer(workdir, cluster=True, password=password) for _ in range(masters)]
        auth = _auth(None, password)
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            ["redis-cli", *auth, "--cluster", "create", *addresses, "--cluster-yes"],
            capture_output=True,
            text=True,
            check=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            info = subprocess.run(
                ["redis-cli", "-p", str(self.nodes[0].port), *auth, "cluster", "info"],
                capture_output=True,
                text=True,
                check=False,
            ).stdout
            if "cluster_state:ok" in info:
                return
            time.sleep(0.2)
        raise TimeoutError("the Redis cluster did not reach cluster_state:ok")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
