"""python -m bench.chatlog: the chatlog's appends per second and read latencies, per backend.

For each backend it starts the real server as its own process (and, for
Cassandra, a real temporary node unless --cassandra-port names a running one),
loads conversations through AppendMessages the way the dialogue service
writes them (a user's message with its intent and latency, then the bot's
reply, under a fencing token), then times the admin console's reads one call
at a time: a transcript's first page (ListMessages), the conversation list's
first page (ListConversations, unfiltered and only those with a fallback) and a day of
search. Prints one table.

    python -m bench.chatlog                      # 1 000 000 messages, 10 000 conversations
    python -m bench.chatlog --messages 100000 --backends cassandra
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from chatbot.chatlog.v1 import chatlog_service_pb2 as pb
from chatbot.chatlog.v1 import chatlog_service_pb2_grpc
from chatbot.common.v1 import event_pb2, nlu_result_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from harness.cassandra import CassandraNode

if TYPE_CHECKING:  # the async stub's type exists only in the generated .pyi file
    from chatbot.chatlog.v1.chatlog_service_pb2_grpc import ChatlogServiceAsyncStub
from harness.support import REPO, free_port

TENANT = "bench"
START = 1_767_225_600  # 2026-01-01T00:00:00Z
# About 1 turn in 100 falls back, so some 40 % of conversations have a fallback.
INTENTS = ["greet", "order_status", "weather", "thanks", "bye", "nlu_fallback"]
INTENT_WEIGHTS = [30, 30, 20, 10, 9, 1]
WORDS = ["where", "is", "my", "order", "parcel", "delivery", "weather", "paris", "london"]


@dataclass
class Result:
    backend: str
    messages: int
    conversations: int
    load_seconds: float
    reads: dict[str, list[float]] = field(default_factory=dict)

    @property
    def appends_per_second(self) -> float:
        return self.messages / self.load_seconds

    def pct(self, name: str, q: float) -> float:
        ordered = sorted(self.reads[name])
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def log(message: str) -> None:
    print(f"[bench] {message}", flush=True)


# ------------------------------------------------------------------ the data


def timestamp(seconds: float) -> Timestamp:
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


Turn = tuple[int, int, float, random.Random]  # conversation, turn, time, random source


def turns(conversations: int, per_conversation: int, days: int, seed: int) -> Iterator[Turn]:
    """Messages in the order a busy bot appends them: turn 1 of many conversations, then 2..."""
    rng = random.Random(seed)
    starts = [START + rng.uniform(0, days * 86_400 * 0.6) for _ in range(conversations)]
    gaps = [rng.uniform(30, days * 86_400 * 0.4 / max(1, per_conversation // 2)) for _ in starts]
    for turn in range(per_conversation // 2):
        for c in range(conversations):
            at = starts[c] + turn * gaps[c]
            yield c, turn, at, rng


def turn_messages(c: int, turn: int, at: float, rng: random.Random) -> list[pb.ChatMessage]:
    user = event_pb2.UserRef(
        tenant_id=TENANT, channel=event_pb2.CHANNEL_MESSENGER, user_id=f"user-{c:05d}"
    )
    intent = rng.choices(INTENTS, INTENT_WEIGHTS)[0]
    confidence = rng.uniform(0.3, 0.99)
    text = " ".join(rng.choices(WORDS, k=rng.randint(2, 8)))
    inbound = pb.ChatMessage(
        user=user,
        conversation_id=f"conv-{c:05d}",
        message_id=f"m-{c:05d}-{turn:04d}",
        direction=pb.DIRECTION_INBOUND,
        text=text,
        create_time=timestamp(at),
        received_time=timestamp(at + 0.05),
        respond_time=timestamp(at + 0.3),
        intent=nlu_result_pb2.Intent(name=intent, confidence=confidence),
        intent_ranking=[nlu_result_pb2.Intent(name=intent, confidence=confidence)],
        is_fallback=intent == "nlu_fallback",
        model_version="bench-model",
        reply_ids=[f"r-{c:05d}-{turn:04d}"],
        fencing_token=1,
    )
    inbound.processing_duration.FromMilliseconds(int(rng.lognormvariate(5, 0.6)))
    reply = pb.ChatMessage(
        user=user,
        conversation_id=f"conv-{c:05d}",
        message_id=f"r-{c:05d}-{turn:04d}",
        direction=pb.DIRECTION_OUTBOUND,
        text=f"Here is what I found about {text}.",
        create_time=timestamp(at + 0.3),
        in_reply_to=inbound.message_id,
        fencing_token=1,
    )
    return [inbound, reply]


# ------------------------------------------------------------------ processes


class Server:
    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self._log = log_path.open("wb")
        self.log_path = log_path
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.chatlog", "serve"],
            cwd=REPO,
            env={
                **os.environ,
                "PYTHONPATH": f"{REPO}:{REPO / 'build' / 'gen' / 'py'}",
                "CHATLOG_PORT": str(self.port),
                "METRICS_PORT": "0",
                "TENANT_ID": TENANT,
                "CHATLOG_PAGE_TOKEN_SECRET": secrets.token_hex(16),
                "LOG_LEVEL": "WARNING",
                **env,
            },
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_serving(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited: see {self.log_path}")
                try:
                    reply = health.Check(health_pb2.HealthCheckRequest(), timeout=2)
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                time.sleep(0.5)
        raise TimeoutError(f"server not serving after {timeout}s: see {self.log_path}")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self._log.close()


# ------------------------------------------------------------------ the run


async def load(port: int, args: argparse.Namespace) -> float:
    per_conversation = args.messages // args.conversations
    total = per_conversation * args.conversations
    batches: asyncio.Queue[list[pb.ChatMessage] | None] = asyncio.Queue(args.concurrency * 2)
    done = 0
    started = time.monotonic()

    async def produce() -> None:
        batch: list[pb.ChatMessage] = []
        for c, turn, at, rng in turns(args.conversations, per_conversation, args.days, 7):
            batch += turn_messages(c, turn, at, rng)
            if len(batch) >= args.batch:
                await batches.put(batch)
                batch = []
        if batch:
            await batches.put(batch)
        for _ in range(args.concurrency):
            await batches.put(None)

    async def consume(stub: ChatlogServiceAsyncStub) -> None:
        nonlocal done
        while (batch := await batches.get()) is not None:
            for attempt in range(5):
                try:
                    await stub.AppendMessages(pb.AppendMessagesRequest(messages=batch), timeout=120)
                    break
                except grpc.aio.AioRpcError as exc:
                    if exc.code() != grpc.StatusCode.UNAVAILABLE or attempt == 4:
                        raise
                    await asyncio.sleep(1)  # retrying a batch is safe: appends are idempotent
            done += len(batch)

    async def progress() -> None:
        while True:
            await asyncio.sleep(args.progress)
            elapsed = time.monotonic() - started
            rate = done / elapsed if elapsed else 0
            left = (total - done) / rate if rate else float("inf")
            log(f"loaded {done:,}/{total:,} messages, {rate:,.0f}/s, about {left:,.0f}s to go")

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = chatlog_service_pb2_grpc.ChatlogServiceStub(channel)
        reporter = asyncio.create_task(progress())
        await asyncio.gather(produce(), *(consume(stub) for _ in range(args.concurrency)))
        reporter.cancel()
    return time.monotonic() - started


async def reads(port: int, args: argparse.Namespace) -> dict[str, list[float]]:
    rng = random.Random(11)
    timings: dict[str, list[float]] = {}
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = chatlog_service_pb2_grpc.ChatlogServiceStub(channel)

        def transcript() -> pb.ListMessagesRequest:
            c = rng.randrange(args.conversations)
            return pb.ListMessagesRequest(
                tenant_id=TENANT, conversation_id=f"conv-{c:05d}", page_size=50
            )

        def day_search() -> pb.SearchMessagesRequest:
            day = START + 86_400 * rng.randrange(args.days)
            return pb.SearchMessagesRequest(
                tenant_id=TENANT,
                query=rng.choice(WORDS),
                start_time=timestamp(day),
                end_time=timestamp(day + 86_400),
                page_size=50,
            )

        calls: dict[str, tuple[Callable[..., Awaitable[Any]], Callable[[], Any]]] = {
            "ListMessages": (stub.ListMessages, transcript),
            "ListConversations": (
                stub.ListConversations,
                lambda: pb.ListConversationsRequest(tenant_id=TENANT, page_size=50),
            ),
            "ListConversations (has_fallback)": (
                stub.ListConversations,
                lambda: pb.ListConversationsRequest(
                    tenant_id=TENANT, page_size=50, has_fallback=True
                ),
            ),
            "SearchMessages (1 day)": (stub.SearchMessages, day_search),
        }
        for name, (call, make) in calls.items():
            for _ in range(5):  # warm-up: connections, prepared statements, caches
                await call(make(), timeout=60)
            samples = []
            for _ in range(args.queries):
                request = make()
                started = time.perf_counter()
                await call(request, timeout=60)
                samples.append(time.perf_counter() - started)
            timings[name] = samples
            log(f"{name}: {args.queries} calls done")
    return timings


def run_backend(backend: str, args: argparse.Namespace, work: Path) -> Result:
    node: CassandraNode | None = None
    env = {"CHATLOG_BACKEND": backend}
    if backend == "sqlite":
        env["CHATLOG_SQLITE_PATH"] = str(work / "chatlog.sqlite3")
    else:
        port = args.cassandra_port
        if port is None:
            node = CassandraNode(work / "cassandra", args.cassandra_heap)
            log(f"starting a Cassandra node in {node.data_dir}")
            node.start()
            port = node.port
        env.update(
            CASSANDRA_PORT=str(port),
            CASSANDRA_KEYSPACE=f"bench_{secrets.token_hex(4)}",
            CASSANDRA_CONSISTENCY=args.consistency,
            CASSANDRA_REQUEST_TIMEOUT_SECONDS="20",
        )
    server = Server(env, work / f"chatlog-{backend}.log")
    try:
        server.wait_serving()
        log(f"{backend}: loading {args.messages:,} messages, {args.conversations:,} conversations")
        seconds = asyncio.run(load(server.port, args))
        result = Result(backend, args.messages, args.conversations, seconds)
        log(f"{backend}: loaded in {seconds:,.0f}s ({result.appends_per_second:,.0f}/s); reading")
        result.reads = asyncio.run(reads(server.port, args))
        return result
    finally:
        server.stop()
        if node is not None:
            node.stop()


def table(results: list[Result]) -> str:
    names = list(results[0].reads)
    header = ["backend", "messages", "conversations", "load (s)", "appends/s"]
    for name in names:
        header += [f"{name} p50 ms", "p99 ms"]
    rows = [header]
    for r in results:
        row = [
            r.backend,
            f"{r.messages:,}",
            f"{r.conversations:,}",
            f"{r.load_seconds:,.0f}",
            f"{r.appends_per_second:,.0f}",
        ]
        for name in names:
            row += [f"{r.pct(name, 0.50):.1f}", f"{r.pct(name, 0.99):.1f}"]
        rows.append(row)
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("---" for _ in header) + "|")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chatlog",
        description="Benchmark the chatlog service on SQLite and Cassandra: appends per "
        "second while loading, then ListMessages, ListConversations and SearchMessages "
        "latencies (one call at a time). Each backend runs the real server as a process.",
    )
    parser.add_argument("--messages", type=int, default=1_000_000, help="default: 1000000")
    parser.add_argument("--conversations", type=int, default=10_000, help="default: 10000")
    parser.add_argument("--days", type=int, default=30, help="days the traffic spans (30)")
    parser.add_argument(
        "--backends", default="sqlite,cassandra", help="comma-separated (sqlite,cassandra)"
    )
    parser.add_argument("--batch", type=int, default=100, help="messages per AppendMessages")
    parser.add_argument("--concurrency", type=int, default=8, help="appends in flight (8)")
    parser.add_argument("--queries", type=int, default=300, help="timed calls per read (300)")
    parser.add_argument("--progress", type=float, default=10.0, help="seconds between reports")
    parser.add_argument(
        "--cassandra-port", type=int, help="use the node on this CQL port instead of starting one"
    )
    parser.add_argument("--cassandra-heap", default="1g", help="heap of the started node (1g)")
    parser.add_argument(
        "--consistency", default="LOCAL_ONE", help="CASSANDRA_CONSISTENCY (LOCAL_ONE)"
    )
    parser.add_argument("--work-dir", type=Path, help="keep files here (default: a temp dir)")
    args = parser.parse_args(argv)
    if args.messages < 2 * args.conversations:
        parser.error("--messages must be at least twice --conversations (a turn is 2 messages)")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="bench-chatlog-"))
    work.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for backend in args.backends.split(","):
            results.append(run_backend(backend.strip(), args, work))
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print()
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
