"""Runs the whole stack on one machine under one supervisor.

Redis (unless one already answers), NLU, chatlog (SQLite), the dialogue
service's intake and worker processes and the gateway start in order, each
waited for until healthy; their output is prefixed with their name; Ctrl-C
stops them all, last started first.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field

import grpc
import httpx
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cli import REPO

COLORS = ["\033[36m", "\033[35m", "\033[33m", "\033[32m", "\033[34m"]
RESET = "\033[0m"


@dataclass
class Service:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    grpc_port: int = 0
    http_health: str = ""
    ready_timeout_s: float = 60.0
    process: asyncio.subprocess.Process | None = None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.3)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _grpc_serving(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


class Stack:
    def __init__(self, env: dict[str, str], nlu_python: str, color: bool) -> None:
        self.env = env
        self.nlu_python = nlu_python
        self.color = color
        self.services: list[Service] = []

    def plan(self) -> list[Service]:
        py = sys.executable
        gen_py = f"{REPO}:{REPO / 'build' / 'gen' / 'py'}"
        gen_nlu = f"{REPO}:{REPO / 'build' / 'gen' / 'nlu'}"
        e = self.env
        services: list[Service] = []
        redis_port = int(e["REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
        if not _port_open(redis_port):
            data = REPO / ".data" / "redis"
            data.mkdir(parents=True, exist_ok=True)
            redis = shutil.which("redis-server") or "redis-server"
            services.append(
                Service("redis", [redis, "--port", str(redis_port), "--bind", "127.0.0.1",
                                  "--dir", str(data), "--appendonly", "yes"], grpc_port=0)
            )  # fmt: skip
        services += [
            Service(
                "nlu",
                [self.nlu_python, "-m", "services.nlu", "serve"],
                {"PYTHONPATH": gen_nlu, "METRICS_PORT": e.get("NLU_METRICS_PORT", "9052")},
                grpc_port=int(e["NLU_PORT"]),
                ready_timeout_s=240,
            ),
            Service(
                "chatlog",
                [py, "-m", "services.chatlog", "serve"],
                {"PYTHONPATH": gen_py, "METRICS_PORT": e.get("CHATLOG_METRICS_PORT", "9053")},
                grpc_port=int(e["CHATLOG_PORT"]),
            ),
            # Two processes of the one service, as in Kubernetes: acknowledging
            # a webhook never waits behind a turn on a shared event loop.
            Service(
                "dialogue",
                [py, "-m", "services.dialogue", "serve"],
                {
                    "PYTHONPATH": gen_py,
                    "DIALOGUE_ROLE": "intake",
                    # A caller that moved the dialogue's metrics port gets no
                    # second fixed port it did not ask for.
                    "METRICS_PORT": e.get(
                        "DIALOGUE_INTAKE_METRICS_PORT",
                        "0" if "DIALOGUE_METRICS_PORT" in e else "9054",
                    ),
                },
                grpc_port=int(e["DIALOGUE_PORT"]),
            ),
            Service(
                "dialogue-worker",
                [py, "-m", "services.dialogue", "serve"],
                {
                    "PYTHONPATH": gen_py,
                    "DIALOGUE_ROLE": "worker",
                    "DIALOGUE_PORT": e["DIALOGUE_WORKER_PORT"],
                    "METRICS_PORT": e.get("DIALOGUE_METRICS_PORT", "9051"),
                },
                grpc_port=int(e["DIALOGUE_WORKER_PORT"]),
            ),
            Service(
                "gateway",
                [py, "-m", "services.gateway", "serve"],
                {"PYTHONPATH": gen_py},
                http_health=f"http://127.0.0.1:{e['GATEWAY_PORT']}/healthz",
            ),
        ]
        return services

    async def _pump(self, service: Service, index: int) -> None:
        assert service.process is not None and service.process.stdout is not None
        prefix = f"{service.name:<8} | "
        if self.color:
            prefix = f"{COLORS[index % len(COLORS)]}{prefix}{RESET}"
        async for line in service.process.stdout:
            sys.stdout.write(prefix + line.decode(errors="replace"))
            sys.stdout.flush()

    async def _ready(self, service: Service) -> None:
        deadline = time.monotonic() + service.ready_timeout_s
        redis_port = int(self.env["REDIS_URL"].rsplit(":", 1)[1].split("/")[0])
        while time.monotonic() < deadline:
            assert service.process is not None
            if service.process.returncode is not None:
                raise RuntimeError(f"{service.name} exited with {service.process.returncode}")
            if service.name == "redis":
                ok = _port_open(redis_port)
            elif service.grpc_port:
                ok = await asyncio.to_thread(_grpc_serving, service.grpc_port)
            else:
                ok = await asyncio.to_thread(_http_ok, service.http_health)
            if ok:
                return
            await asyncio.sleep(0.5)
        raise RuntimeError(f"{service.name} was not healthy after {service.ready_timeout_s:.0f}s")

    async def run(self, on_ready: str) -> int:
        pumps = []
        try:
            for index, service in enumerate(self.plan()):
                print(f"==> starting {service.name}", flush=True)
                service.process = await asyncio.create_subprocess_exec(
                    *service.argv,
                    cwd=REPO,
                    env={**os.environ, **self.env, **service.env},
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                )
                self.services.append(service)
                pumps.append(asyncio.create_task(self._pump(service, index)))
                if service.name == "nlu":
                    print("    (loading the model takes 30-60 s)", flush=True)
                await self._ready(service)
                print(f"==> {service.name} is ready", flush=True)
            print(on_ready, flush=True)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(signum, stop.set)
            watchers = [asyncio.create_task(s.process.wait()) for s in self.services if s.process]
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({stopper, *watchers}, return_when=asyncio.FIRST_COMPLETED)
            if stopper not in done:
                dead = [
                    s.name for s in self.services if s.process and s.process.returncode is not None
                ]
                print(f"==> {', '.join(dead)} stopped unexpectedly: stopping the stack", flush=True)
                return 1
            return 0
        except (RuntimeError, KeyboardInterrupt, asyncio.CancelledError) as exc:
            print(f"==> {exc}", flush=True)
            return 1
        finally:
            await self.stop()
            for pump in pumps:
                pump.cancel()

    async def stop(self) -> None:
        for service in reversed(self.services):
            process = service.process
            if process is None or process.returncode is not None:
                continue
            print(f"==> stopping {service.name}", flush=True)
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), timeout=15)
            except TimeoutError:
                process.kill()
                await process.wait()


def local_env() -> tuple[dict[str, str], list[str]]:
    """The environment for a local stack, and notes on what was defaulted."""
    env = dict(os.environ)
    notes: list[str] = []
    defaults = {
        "GATEWAY_PORT": "8080",
        "DIALOGUE_PORT": "50051",
        "NLU_PORT": "50052",
        "CHATLOG_PORT": "50053",
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "CHATLOG_BACKEND": "sqlite",
    }
    for key, value in defaults.items():
        env.setdefault(key, value)
    # Beside a moved DIALOGUE_PORT (tests, benchmarks) the worker takes a free port.
    env.setdefault(
        "DIALOGUE_WORKER_PORT", "50054" if env["DIALOGUE_PORT"] == "50051" else str(_free_port())
    )
    env.setdefault("DIALOGUE_ADDRESS", f"127.0.0.1:{env['DIALOGUE_PORT']}")
    env.setdefault("NLU_ADDRESS", f"127.0.0.1:{env['NLU_PORT']}")
    env.setdefault("CHATLOG_ADDRESS", f"127.0.0.1:{env['CHATLOG_PORT']}")
    if not env.get("MESSENGER_APP_SECRET") and not env.get("TENANTS_FILE"):
        # No Facebook page configured: a local page that `chatbot simulate` plays.
        env["MESSENGER_APP_SECRET"] = "local-app-secret"
        env["MESSENGER_VERIFY_TOKEN"] = "local-verify-token"
        env["MESSENGER_PAGE_ACCESS_TOKEN"] = "local-page-token"
        env.setdefault("PAGE_ID", "local-page")
        env.setdefault("MESSENGER_GRAPH_API_URL", "http://127.0.0.1:8091/v21.0")
        notes.append(
            "local page: app secret 'local-app-secret', verify token 'local-verify-token'; "
            f"replies go to {env['MESSENGER_GRAPH_API_URL']} (`chatbot simulate` shows them)"
        )
    if not env.get("ADMIN_USERNAME"):
        env["ADMIN_USERNAME"] = "admin"
        env["ADMIN_PASSWORD"] = env.get("ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        notes.append(
            f"admin login: {env['ADMIN_USERNAME']} / {env['ADMIN_PASSWORD']} "
            "(set ADMIN_USERNAME and ADMIN_PASSWORD to choose)"
        )
    env.setdefault("DIALOGUE_PAGE_TOKEN_SECRET", "local-stack-page-tokens")
    env.setdefault("CHATLOG_PAGE_TOKEN_SECRET", "local-stack-page-tokens")
    env.setdefault("RASA_TELEMETRY_ENABLED", "false")
    return env, notes


def run_stack(nlu_python: str) -> int:
    env, notes = local_env()
    gateway = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
    lines = [
        "",
        "The stack is up.",
        f"  webhook:       {gateway}/webhooks/messenger",
        f"  admin console: {gateway}/admin",
        f"  JSON channel:  {gateway}/api/v1/messages",
        *[f"  {note}" for note in notes],
        "  Ctrl-C stops everything.",
        "",
    ]
    stack = Stack(env, nlu_python, color=sys.stdout.isatty())
    return asyncio.run(stack.run("\n".join(lines)))
