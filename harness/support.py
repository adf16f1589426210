"""Free ports, service processes and their health, metrics scraped: for tests and benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def health_status(port: int, service: str = "", timeout: float = 2.0) -> int | None:
    """The health status of ``service`` on ``port``, or None when nothing answers."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return None
        return int(reply.status)


class ServiceProcess:
    """A service started as its own process, stopped with SIGTERM."""

    def __init__(self, argv: list[str], env: Mapping[str, str], log_path: Path, port: int) -> None:
        self.port = port
        self.metrics_port = 0
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            argv, cwd=REPO, env={**os.environ, **env}, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_for_status(self, status: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.tail()}")
            if health_status(self.port) == status:
                return
            time.sleep(0.5)
        raise TimeoutError(
            f"service not in health status {status} after {timeout}s:\n{self.tail()}"
        )

    def tail(self, lines: int = 40) -> str:
        self._log.flush()
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to clean up."""
        self.proc.kill()
        self.proc.wait()
        self._log.close()

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self._log.closed:
            self._log.close()
        return self.proc.returncode


def scrape(port: int) -> dict[str, float]:
    """A Prometheus endpoint's samples, keyed by name and labels as exposed."""
    import httpx

    samples: dict[str, float] = {}
    for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            samples[key] = float(value)
    return samples


def wait_for_samples(
    port: int, expected: Mapping[str, float], timeout: float = 30.0, interval: float = 0.1
) -> dict[str, float]:
    """Scrapes until one scrape has every ``expected`` sample at its value; returns it.

    Counters and sampled gauges move at their own moments: the condition is met
    by one scrape as a whole, never checked piece by piece at different instants.
    """
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        wrong = {k: samples.get(k) for k, v in expected.items() if samples.get(k) != v}
        if not wrong:
            return samples
        if time.monotonic() > deadline:
            raise AssertionError(
                f"after {timeout}s, these samples differ from {dict(expected)}: {wrong}"
            )
        time.sleep(interval)
