"""The two systems under load, started as their users start them, and what they cost.

This stack runs exactly as ``make run`` starts it (``python -m cli.main run``),
on its own Redis and a SQLite chatlog. Rasa runs as ``rasa run`` with the REST
channel (messages), its Messenger channel (receipts) and a Redis lock store. A
sampler follows every process of each service (children included) for CPU time
and peak resident memory.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from bench.e2e.rasa_baseline import write_run_files
from harness.support import REPO, free_port

APP_SECRET = "bench-app-secret"
PAGE_ID = "bench-page"
STACK_SERVICES = ("gateway", "dialogue", "nlu", "chatlog")


@dataclass
class Usage:
    cpu_s: float = 0.0
    peak_rss: int = 0
    wall_s: float = 0.0

    @property
    def cores(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s else 0.0


@dataclass
class Sampler:
    """Samples named process trees every ``interval`` seconds.

    Names in ``alone`` are sampled without their children (the driver, which
    started everything else).
    """

    roots: dict[str, list[int]]
    alone: frozenset[str] = frozenset()
    interval: float = 0.25
    usage: dict[str, Usage] = field(default_factory=dict)
    _cpu_start: dict[str, float] = field(default_factory=dict)
    _cpu_last: dict[str, float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _started: float = 0.0

    def _tree(self, name: str) -> list[psutil.Process]:
        processes = []
        for pid in self.roots[name]:
            try:
                root = psutil.Process(pid)
                processes.append(root)
                if name not in self.alone:
                    processes += root.children(recursive=True)
            except psutil.NoSuchProcess:
                continue
        return processes

    def _sample(self) -> None:
        for name in self.roots:
            cpu, rss = 0.0, 0
            for process in self._tree(name):
                try:
                    times = process.cpu_times()
                    cpu += times.user + times.system
                    rss += process.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
            usage = self.usage.setdefault(name, Usage())
            usage.peak_rss = max(usage.peak_rss, rss)
            self._cpu_start.setdefault(name, cpu)
            self._cpu_last[name] = max(cpu, self._cpu_last.get(name, 0.0))
            usage.cpu_s = self._cpu_last[name] - self._cpu_start[name]
            usage.wall_s = time.monotonic() - self._started

    def start(self) -> Sampler:
        self._started = time.monotonic()
        self._sample()

        def loop() -> None:
            while not self._stop.wait(self.interval):
                self._sample()

        threading.Thread(target=loop, daemon=True).start()
        return self

    def stop(self) -> dict[str, Usage]:
        self._stop.set()
        self._sample()
        return self.usage


def _wait(
    check: Callable[[], bool], proc: subprocess.Popen[bytes], log: Path, timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        if check():
            return
        time.sleep(0.5)
    raise TimeoutError(f"not up after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes] | subprocess.Popen[str], sig: int = signal.SIGINT) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class OurStack:
    """``chatbot run`` (``python -m cli.main run``) on free ports."""

    name = "this stack"

    def __init__(self, workdir: Path, redis_url: str, graph_port: int, nlu_python: str) -> None:
        self.ports = {name: free_port() for name in STACK_SERVICES}
        self.dialogue_metrics_port = free_port()
        graph = f"http://127.0.0.1:{graph_port}"
        self.env = {
            **os.environ,
            "NLU_PYTHON": nlu_python,
            "GATEWAY_PORT": str(self.ports["gateway"]),
            "DIALOGUE_PORT": str(self.ports["dialogue"]),
            "NLU_PORT": str(self.ports["nlu"]),
            "CHATLOG_PORT": str(self.ports["chatlog"]),
            "NLU_METRICS_PORT": "0",
            "CHATLOG_METRICS_PORT": "0",
            "DIALOGUE_METRICS_PORT": str(self.dialogue_metrics_port),
            "REDIS_URL": redis_url,
            "CHATLOG_SQLITE_PATH": str(workdir / "chatlog.sqlite3"),
            "MESSENGER_APP_SECRET": APP_SECRET,
            "PAGE_ID": PAGE_ID,
            "MESSENGER_PAGE_ACCESS_TOKEN": "bench-page-token",
            "MESSENGER_VERIFY_TOKEN": "bench-verify-token",
            "MESSENGER_GRAPH_API_URL": f"{graph}/v21.0",
            "ORDER_API_URL": graph,
            "WEATHER_API_URL": graph,
            "LOG_LEVEL": "WARNING",
            "NO_COLOR": "1",
        }
        self.env.pop("TENANTS_FILE", None)
        self.env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
        self.log_path = workdir / "stack.log"
        self._log = self.log_path.open("wb")
        # The installed ``chatbot`` command when there is one (what ``make run`` calls).
        script = Path(sys.executable).with_name("chatbot")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "cli.main"]
        self.proc = subprocess.Popen(
            [*command, "run"],
            cwd=REPO,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_up(self) -> None:
        _wait(
            lambda: "The stack is up." in self.log_path.read_text(errors="replace"),
            self.proc,
            self.log_path,
            timeout=300,
        )

    def process_roots(self) -> dict[str, list[int]]:
        roots: dict[str, list[int]] = {name: [] for name in STACK_SERVICES}
        for child in psutil.Process(self.proc.pid).children(recursive=True):
            try:
                line = " ".join(child.cmdline())
            except psutil.NoSuchProcess:
                continue
            for name in STACK_SERVICES:
                if f"services.{name}" in line:
                    roots[name].append(child.pid)
        return roots

    def stage_seconds(self) -> dict[str, tuple[float, int]]:
        """The dialogue's time per stage of a message so far: (seconds, count)."""
        text = httpx.get(f"http://127.0.0.1:{self.dialogue_metrics_port}/metrics", timeout=5).text
        stages: dict[str, list[float]] = {}
        for line in text.splitlines():
            match = re.match(r'dialogue_stage_seconds_(sum|count)\{stage="(\w+)"\} (\S+)', line)
            if match:
                kind, stage, value = match.groups()
                stages.setdefault(stage, [0.0, 0.0])[kind == "count"] = float(value)
            match = re.match(r"dialogue_item_processing_seconds_(sum|count) (\S+)", line)
            if match:
                stages.setdefault("whole item", [0.0, 0.0])[match[1] == "count"] = float(match[2])
        return {stage: (total, int(count)) for stage, (total, count) in stages.items()}

    def stop(self) -> None:
        _stop(self.proc)
        self._log.close()


class RasaServer:
    """``rasa run`` with the REST and Messenger channels, a Redis lock store and its HTTP API."""

    def __init__(
        self,
        workdir: Path,
        nlu_python: str,
        model: Path,
        redis_port: int,
        workers: int,
    ) -> None:
        self.workers = workers
        self.name = f"rasa run ({workers} worker{'s' if workers > 1 else ''})"
        self.port = free_port()
        credentials, endpoints = write_run_files(workdir, redis_port, workers, APP_SECRET)
        self.log_path = workdir / f"rasa-{workers}.log"
        self._log = self.log_path.open("wb")
        env = {
            **os.environ,
            "RASA_TELEMETRY_ENABLED": "false",
            "SANIC_WORKERS": str(workers),
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
        self.proc = subprocess.Popen(
            [
                nlu_python, "-m", "rasa", "run",
                "--model", str(model),
                "--credentials", str(credentials),
                "--endpoints", str(endpoints),
                "--interface", "127.0.0.1",
                "--port", str(self.port),
                # For GET /conversations/<id>/tracker: the order Rasa took messages up.
                "--enable-api",
            ],
            cwd=workdir,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    def _answers(self) -> bool:
        try:
            response = httpx.post(
                f"http://127.0.0.1:{self.port}/webhooks/rest/webhook",
                json={"sender": "bench-warmup", "message": "hello"},
                timeout=30,
            )
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and bool(response.json())

    def wait_up(self) -> None:
        _wait(self._answers, self.proc, self.log_path, timeout=300)

    def process_roots(self) -> dict[str, list[int]]:
        return {"rasa": [self.proc.pid]}

    def stop(self) -> None:
        _stop(self.proc, signal.SIGTERM)
        self._log.close()


class GraphProcess:
    """The Graph API stand-in (``bench.e2e.graph_process``) in its own process.

    ``on_send(in_reply_to, recipient, at)`` is called for every reply sent.
    """

    def __init__(self, on_send: Callable[[str, str, float], None]) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.e2e.graph_process", str(self.port)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the Graph API stand-in did not start")
        self._on_send = on_send
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            in_reply_to, recipient, at = line.split()
            self._on_send(in_reply_to, recipient, float(at))

    def stop(self) -> None:
        _stop(self.proc, signal.SIGTERM)
        self._reader.join(5)
