"""python -m bench.gateway: acknowledged Messenger webhooks per second, and ack latency.

Starts the test dialogue service (answering at once, dedupe in memory) and the
real gateway (``python -m services.gateway serve``) as their own processes,
then drives signed webhook POSTs from ``--concurrency`` simulated senders, each
with one keep-alive connection: a bare asyncio one (``raw``, the light load
generator wrk or hey would be) and then one small ``httpx.AsyncClient`` each
(``httpx``, which on a two-CPU machine takes a good share of the CPU the
gateway needs, so its rows say as much about the client as about the gateway):

- paced runs at each ``--rates`` target, spread evenly over the senders; the
  latency of a request counts from when it was due, so a gateway that falls
  behind shows it (no coordinated omission);
- one closed-loop run: every sender posts again as soon as it is answered,
  for the most acknowledgements per second.

Every body is distinct (its own mid) and signed with the app secret, so the
gateway checks a signature, parses, and calls SubmitEvents for each. Prints
one table. Goal: p99 under 25 ms at 500 requests per second.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from services.gateway.messenger.signature import sign

REPO = Path(__file__).resolve().parents[2]
SECRET = "bench-app-secret"
PAGE = "1500"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Run:
    mode: str
    target: float | None
    client: str = "raw"
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    @property
    def acked_per_second(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0


def _body(sender: int, seq: int, run: str) -> tuple[bytes, dict[str, str]]:
    millis = int(time.time() * 1000)
    event = {
        "sender": {"id": f"{7000 + sender}"},
        "recipient": {"id": PAGE},
        "timestamp": millis,
        "message": {"mid": f"m_{run}_{sender}_{seq}", "text": f"hello n\u00b0{seq}"},
    }
    body = json.dumps(
        {"object": "page", "entry": [{"id": PAGE, "time": millis, "messaging": [event]}]},
        separators=(",", ":"),
    ).encode()
    return body, {
        "Content-Type": "application/json",
        "X-Hub-Signature-256": sign(SECRET, body),
    }


class RawClient:
    """One keep-alive HTTP/1.1 connection, as little client as a POST needs.

    On a small machine the load generator shares the CPUs with the gateway;
    this one costs a fraction of httpx's time per request, so the numbers say
    more about the gateway and less about the client.
    """

    def __init__(self, host: str, port: int) -> None:
        self._host, self._port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        if self._writer is None or self._reader is None:
            self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self._writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self._host}\r\nContent-Length: {len(body)}\r\n"
            f"{head}\r\n".encode()
            + body
        )
        raw = await self._reader.readuntil(b"\r\n\r\n")
        status = int(raw[9:12])
        length = 0
        for line in raw.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self._reader.readexactly(length)
        return status

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.close()
            await self._writer.wait_closed()


class HttpxClient:
    def __init__(self, url: str) -> None:
        limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
        self._client = httpx.AsyncClient(base_url=url, limits=limits, timeout=10)

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> int:
        return (await self._client.post(path, content=body, headers=headers)).status_code

    async def aclose(self) -> None:
        await self._client.aclose()


async def _sender(
    client: RawClient | HttpxClient,
    sender: int,
    run: Run,
    interval: float,
    start: float,
    stop: float,
) -> None:
    tag = f"{run.client}{run.mode}{run.target or 'max'}".replace(" ", "")
    seq = 0
    while True:
        due = start + seq * interval if interval else time.perf_counter()
        if due >= stop:
            return
        wait = due - time.perf_counter()
        if wait > 0:
            await asyncio.sleep(wait)
        body, headers = _body(sender, seq, tag)
        try:
            ok = await client.post("/webhooks/messenger", body, headers) == 200
        except (httpx.HTTPError, OSError, asyncio.IncompleteReadError, ValueError):
            ok = False
        done = time.perf_counter()
        if ok:
            run.latencies.append(done - due)
        else:
            run.errors += 1
        seq += 1


async def _drive(
    url: str, port: int, client: str, concurrency: int, duration: float, runs: list[Run]
) -> list[Run]:
    # The clients (and their connections) exist before any run starts: building
    # an httpx client loads a TLS context, tens of milliseconds that would
    # otherwise count against the first requests.
    clients = [
        RawClient("127.0.0.1", port) if client == "raw" else HttpxClient(url)
        for _ in range(concurrency)
    ]
    try:
        warm = _body(0, 0, "connect")
        await asyncio.gather(*(c.post("/webhooks/messenger", *warm) for c in clients))
        for run in runs:
            start = time.perf_counter() + 0.2
            stop = start + duration
            interval = concurrency / run.target if run.target else 0.0
            await asyncio.gather(
                *(
                    _sender(client, i, run, interval, start + i * interval / concurrency, stop)
                    for i, client in enumerate(clients)
                )
            )
            run.seconds = time.perf_counter() - start
    finally:
        for each in clients:
            await each.aclose()
    return runs


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        argv,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'build' / 'gen' / 'py'}", **env},
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the gateway did not become ready:\n{log.read_text()[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gateway",
        description="Acknowledged Messenger webhooks per second and ack p50/p99 of the "
        "gateway alone (the dialogue service answering at once), signatures checked.",
    )
    parser.add_argument("--concurrency", type=int, default=50, help="simulated senders (50)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run (10)")
    parser.add_argument(
        "--rates", default="250,500", help="paced target rates in requests/s (250,500)"
    )
    parser.add_argument("--no-max", action="store_true", help="skip the closed-loop run")
    parser.add_argument(
        "--log-level", default="INFO", help="the gateway's LOG_LEVEL (INFO, as in production)"
    )
    parser.add_argument(
        "--client",
        default="raw,httpx",
        help="load generators to run, in order (raw,httpx): raw is a bare keep-alive "
        "connection per sender, which leaves the CPUs to the gateway; httpx is one small "
        "AsyncClient per sender, which on a small machine takes CPU from the gateway",
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench-gateway"))
    args = parser.parse_args(argv)
    unknown = set(args.client.split(",")) - {"raw", "httpx", ""}
    if unknown:
        parser.error(f"unknown --client {', '.join(sorted(unknown))}: raw or httpx")
    args.workdir.mkdir(parents=True, exist_ok=True)

    dialogue_port, gateway_port = _free_port(), _free_port()
    dialogue_address = f"127.0.0.1:{dialogue_port}"
    dialogue = _start(
        [sys.executable, "-m", "harness.dialogue_server", "--port", str(dialogue_port)],
        {},
        args.workdir / "dialogue.log",
    )
    gateway_log = args.workdir / "gateway.log"
    gateway = _start(
        [sys.executable, "-m", "services.gateway", "serve"],
        {
            "GATEWAY_PORT": str(gateway_port),
            "TENANTS_FILE": "",
            "PAGE_ID": PAGE,
            "MESSENGER_APP_SECRET": SECRET,
            "DIALOGUE_ADDRESS": dialogue_address,
            "CHATLOG_ADDRESS": dialogue_address,
            "NLU_ADDRESS": dialogue_address,
            "LOG_LEVEL": args.log_level,
        },
        gateway_log,
    )
    url = f"http://127.0.0.1:{gateway_port}"
    load_before = os.getloadavg()[0]
    clients = [c.strip() for c in args.client.split(",") if c.strip()]
    runs: list[Run] = []
    try:
        _wait_http(url, gateway, gateway_log)
        for client in clients:
            mine = [Run("paced", float(r), client) for r in args.rates.split(",") if r.strip()]
            if not args.no_max:
                mine.append(Run("closed loop", None, client))
            drive = (url, gateway_port, client, args.concurrency)
            asyncio.run(_drive(*drive, 2.0, [Run("warm-up", 200.0, client)]))
            asyncio.run(_drive(*drive, args.duration, mine))
            runs += mine
    finally:
        _stop(gateway)
        _stop(dialogue)

    fast = [m for m in ("httptools", "uvloop") if importlib.util.find_spec(m) is not None]
    print(
        f"\ngateway alone: signed webhooks, 1 event each, concurrency {args.concurrency}, "
        f"{args.duration:.0f} s per run, gateway LOG_LEVEL={args.log_level}, uvicorn on "
        f"{' and '.join(fast) if fast else 'h11 and asyncio'}, {os.cpu_count()} CPUs, "
        f"load average {load_before:.2f} before"
    )
    header = (
        f"{'client':<7} {'run':<12} {'target/s':>9} {'acked/s':>9} {'acked':>7} {'errors':>7} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}"
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        target = f"{run.target:.0f}" if run.target else "max"
        print(
            f"{run.client:<7} {run.mode:<12} {target:>9} {run.acked_per_second:>9.0f} "
            f"{len(run.latencies):>7} {run.errors:>7} {run.pct(0.5):>8.2f} "
            f"{run.pct(0.99):>8.2f} {max(run.latencies, default=0) * 1000:>8.2f}"
        )
    for client in clients:
        paced = [r for r in runs if r.client == client and r.target and r.target >= 500]
        if paced:
            met = all(r.pct(0.99) < 25 and r.errors == 0 for r in paced)
            print(
                f"goal p99 < 25 ms at 500/s with the {client} client: {'met' if met else 'NOT met'}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
