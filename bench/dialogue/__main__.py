"""python -m bench.dialogue: dialogue throughput with one, two and three replicas.

Starts a Redis server, a Graph API stand-in, a recording chatlog and an NLU
(a trivial keyword model, then the real Rasa model when NLU_PYTHON names the
NLU environment), then for each replica count submits every user's messages
at once and times until every reply reached the Graph API. Prints messages
per second, end-to-end latency and Redis commands per message.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import redis
from chatbot.dialogue.v1 import dialogue_service_pb2 as pb
from chatbot.dialogue.v1 import dialogue_service_pb2_grpc

from harness.events import message_event
from harness.redis_servers import RedisServer
from harness.standins import GraphApi, KeywordNlu, RecordingChatlog
from harness.support import REPO, ServiceProcess, free_port

TEXTS = ["hello", "thanks a lot", "what are your opening hours", "bye", "help me please"]


@dataclass
class Row:
    nlu: str
    replicas: int
    workers: int
    messages: int
    seconds: float
    latencies: list[float]
    redis_commands: int
    script_calls: int

    def line(self) -> str:
        ordered = sorted(self.latencies)
        p50 = ordered[len(ordered) // 2] * 1000
        p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
        return (
            f"| {self.nlu:<8} | {self.replicas:>8} | {self.workers:>7} | {self.messages:>8} | "
            f"{self.messages / self.seconds:>9.1f} | {p50:>8.0f} | {p99:>8.0f} | "
            f"{self.redis_commands / self.messages:>9.1f} | "
            f"{self.script_calls / self.messages:>7.1f} |"
        )


def redis_calls(port: int) -> tuple[int, int]:
    """Commands executed (those inside Lua scripts included) and script calls."""
    client = redis.Redis(port=port)
    stats = client.info("commandstats")
    client.close()
    total = sum(int(v["calls"]) for v in stats.values())
    return total, int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def run_row(
    nlu_name: str,
    nlu_address: str,
    replicas: int,
    workers: int,
    users: int,
    per_user: int,
    redis_server: RedisServer,
    graph: GraphApi,
    chatlog: RecordingChatlog,
    workdir: Path,
) -> Row:
    client = redis.Redis(port=redis_server.port)
    client.flushall()
    client.close()
    graph.clear()
    env = {
        "REDIS_URL": redis_server.url,
        "NLU_ADDRESS": nlu_address,
        "CHATLOG_ADDRESS": chatlog.address,
        "MESSENGER_GRAPH_API_URL": graph.url,
        "MESSENGER_PAGE_ACCESS_TOKEN": "bench",
        "DIALOGUE_WORKERS": str(workers),
        "METRICS_PORT": "0",
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": f"{REPO}:{REPO / 'build' / 'gen' / 'py'}",
    }
    processes = []
    for _ in range(replicas):
        port = free_port()
        processes.append(
            ServiceProcess(
                [sys.executable, "-m", "services.dialogue", "serve"],
                {**env, "DIALOGUE_PORT": str(port)},
                workdir / f"dialogue-{port}.log",
                port,
            )
        )
    try:
        for process in processes:
            process.wait_for_status(1, timeout=60)
        stub = dialogue_service_pb2_grpc.DialogueServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{processes[0].port}")
        )
        events = [
            message_event(f"u{u}", f"m_{u}_{i}", TEXTS[(u + i) % len(TEXTS)])
            for i in range(per_user)
            for u in range(users)
        ]
        total = len(events)
        before = redis_calls(redis_server.port)
        started = time.monotonic()
        submitted: dict[str, float] = {}
        for start in range(0, total, 500):
            chunk = events[start : start + 500]
            now = time.monotonic()
            for event in chunk:
                submitted[event.event_id] = now
            stub.SubmitEvents(pb.SubmitEventsRequest(events=chunk), timeout=30)
        deadline = time.monotonic() + 600
        while len(graph.sent) < total and time.monotonic() < deadline:
            time.sleep(0.05)
        seconds = time.monotonic() - started
        with graph.lock:
            latencies = [m.time - submitted[m.in_reply_to] for m in graph.sent]
        after = redis_calls(redis_server.port)
        if len(latencies) < total:
            print(f"  only {len(latencies)} of {total} replies arrived", flush=True)
        return Row(
            nlu_name, replicas, workers, total, seconds, latencies,
            after[0] - before[0], after[1] - before[1],
        )  # fmt: skip
    finally:
        for process in processes:
            process.stop()


def start_rasa_nlu(python: str, workdir: Path) -> ServiceProcess:
    port = free_port()
    process = ServiceProcess(
        [python, "-m", "services.nlu", "serve"],
        {
            "NLU_PORT": str(port),
            "METRICS_PORT": "0",
            "RASA_TELEMETRY_ENABLED": "false",
            "PYTHONPATH": f"{REPO}:{REPO / 'build' / 'gen' / 'nlu'}",
        },
        workdir / "nlu.log",
        port,
    )
    process.wait_for_status(1, timeout=300)
    return process


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dialogue", description=__doc__)
    parser.add_argument("--users", type=int, default=200, help="users (200)")
    parser.add_argument("--messages", type=int, default=10, help="messages per user (10)")
    parser.add_argument("--rasa-users", type=int, default=100, help="users with Rasa (100)")
    parser.add_argument(
        "--rasa-messages", type=int, default=5, help="messages per user with Rasa (5)"
    )
    parser.add_argument("--workers", type=int, default=32, help="concurrent turns per replica (32)")
    parser.add_argument("--no-rasa", action="store_true", help="only the keyword NLU rows")
    args = parser.parse_args()

    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        redis_server = RedisServer(workdir)
        graph = GraphApi().start()
        chatlog = RecordingChatlog()
        keyword = KeywordNlu()
        try:
            for replicas in (1, 2, 3):
                print(f"keyword NLU, {replicas} replica(s) ...", flush=True)
                rows.append(
                    run_row("keyword", keyword.address, replicas, args.workers, args.users,
                            args.messages, redis_server, graph, chatlog, workdir)
                )  # fmt: skip
            python = None if args.no_rasa else os.environ.get("NLU_PYTHON")
            if python:
                print("starting the Rasa NLU service ...", flush=True)
                rasa = start_rasa_nlu(python, workdir)
                try:
                    for replicas, workers in (
                        (1, 1),
                        (1, args.workers),
                        (2, args.workers),
                        (3, args.workers),
                    ):
                        print(f"Rasa NLU, {replicas} replica(s), {workers} workers ...", flush=True)
                        rows.append(
                            run_row("rasa", f"127.0.0.1:{rasa.port}", replicas, workers,
                                    args.rasa_users, args.rasa_messages, redis_server, graph,
                                    chatlog, workdir)
                        )  # fmt: skip
                finally:
                    rasa.stop()
            else:
                print("NLU_PYTHON not set: skipping the Rasa rows (make bench-dialogue sets it)")
        finally:
            keyword.stop()
            chatlog.stop()
            graph.stop()
            redis_server.stop()

    print()
    print(
        "| NLU      | replicas | workers | messages | msg/s     | p50 ms   | p99 ms   | redis/msg |"
    )
    print(
        "|----------|----------|---------|----------|-----------|----------|----------|-----------|"
    )
    for row in rows:
        print(row.line())
    rasa_rows = [r for r in rows if r.nlu == "rasa"]
    if len(rasa_rows) >= 2:
        one, many = rasa_rows[0], rasa_rows[1]
        gain = (many.messages / many.seconds) / (one.messages / one.seconds)
        print(
            f"\nWith Rasa, {many.workers} concurrent turns against 1: x{gain:.2f} "
            "(the NLU service runs concurrent parses as one batch)."
        )
    print(
        "redis/msg counts every command Redis executed, those inside the Lua scripts "
        "included;\nscripts is the script calls per message (each one round trip, atomic). "
        f"Rows average {statistics.mean(r.messages for r in rows):.0f} messages."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
