"""python -m bench.e2e: the whole stack against Rasa's own server, under the same load.

Starts this stack as ``make run`` does, plays N users x M messages through
signed Messenger webhooks (with Messenger's duplicates and time-out retries)
to a local Graph API stand-in, then does the same against ``rasa run`` (REST
channel, Redis lock store) trained on the same NLU data and pipeline with one
rule per intent. Prints, for each: webhook acknowledgements, end-to-end
messages per second and latency (message sent -> reply out), missing,
duplicated and out-of-order replies, CPU and peak memory per service, and the
ratios against Rasa and against a bare in-process parse.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import redis
import yaml

from bench.e2e.load import (
    Delivery,
    HttpPool,
    LoadShape,
    Message,
    Outcome,
    Record,
    messenger_body,
    outcome,
    plan,
    play,
)
from bench.e2e.rasa_baseline import DOMAIN, ensure_model
from bench.e2e.systems import (
    APP_SECRET,
    PAGE_ID,
    GraphProcess,
    OurStack,
    RasaServer,
    Sampler,
    Usage,
)
from cli.simulate import sign
from mesh import cache_dir
from tests.redis_servers import RedisServer
from tests.support import REPO

GEN_NLU = REPO / "build" / "gen" / "nlu"


def say(line: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {line}", flush=True)


def heldout_texts() -> list[str]:
    """Texts neither model was trained on, entity annotations removed.

    Hand-off requests are left out: after one, a person answers that user,
    not the bot, so later replies would rightly never come.
    """
    handoff = yaml.safe_load(DOMAIN.read_text()).get("handoff_intent", "")
    data = yaml.safe_load((REPO / "services" / "nlu" / "eval" / "heldout.yml").read_text())
    texts = []
    for item in data["nlu"]:
        if item.get("intent") in (None, handoff):
            continue
        for line in item["examples"].splitlines():
            match = re.match(r"^\s*- (.+)$", line)
            if match:
                texts.append(re.sub(r"\[([^\]]+)\]\([^)]+\)", r"\1", match.group(1)))
    return texts


def nlu_python() -> str:
    explicit = os.environ.get("NLU_PYTHON")
    if explicit:
        return explicit
    found = sorted(cache_dir().glob("nlu-venv-*/bin/python"))
    if not found:
        sys.exit("the NLU environment is missing: run `make nlu-env` or set NLU_PYTHON")
    return str(found[-1])


def bare_parse(python: str, texts: list[str], count: int) -> tuple[float | None, list[str]]:
    """Bare parse throughput over ``count`` texts (none when 0) and each text's intent."""
    result = subprocess.run(
        [python, "-m", "bench.e2e.bare_parse", str(count)],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": f"{REPO}:{GEN_NLU}"},
        check=False,
    )
    if result.returncode != 0:
        sys.exit(f"the bare parse run failed:\n{result.stderr[-3000:]}")
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    return answer["texts_per_second"], answer["intents"]


class Replies:
    """The Graph API stand-in's sends, as replies to message ids."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: list[tuple[str, float]] = []
        self.answered: set[str] = set()

    def on_send(self, in_reply_to: str, recipient: str, at: float) -> None:
        with self.lock:
            self.sent.append((in_reply_to, at))
            self.answered.add(in_reply_to)


def run_load(
    shape: LoadShape,
    users: list[list[Message]],
    deliver: Callable[[Message], Any],
    record: Record,
    answered: Callable[[], int],
    sampler: Sampler,
    settle_s: float,
) -> dict[str, Usage]:
    sampler.start()
    try:
        asyncio.run(play(shape, users, deliver, record, answered, settle_s, say))
    finally:
        usage = sampler.stop()
    return usage


def bench_stack(
    shape: LoadShape,
    texts: list[str],
    workdir: Path,
    redis_server: RedisServer,
    python: str,
    settle_s: float,
) -> tuple[Outcome, dict[str, Usage]]:
    replies = Replies()
    graph = GraphProcess(replies.on_send)
    say("starting this stack (python -m cli.main run) ...")
    stack = OurStack(workdir, redis_server.url, graph.port, python)
    try:
        stack.wait_up()
        port = stack.ports["gateway"]
        run = f"s{int(time.time())}"
        bodies: dict[str, bytes] = {}
        pools: dict[str, HttpPool] = {}

        async def deliver(message: Message) -> Delivery:
            body = bodies.get(message.mid)
            if body is None:
                body = bodies[message.mid] = messenger_body(
                    PAGE_ID, message, int(time.time() * 1000)
                )
            pool = pools.setdefault(message.user, HttpPool(port))
            status, _ = await pool.post(
                "/webhooks/messenger", body, {"X-Hub-Signature-256": sign(body, APP_SECRET)}
            )
            return Delivery(status)

        warm_up(deliver, replies, run)
        stages = stack.stage_seconds()
        users = plan(shape, texts, run)
        record = Record()
        roots = {
            **stack.process_roots(),
            "redis": [redis_server.proc.pid],
            "load driver": [os.getpid()],
        }
        say(f"load: {shape.users} users x {shape.messages} messages ...")
        usage = run_load(
            shape,
            users,
            deliver,
            record,
            lambda: len(replies.answered),
            Sampler(roots, alone=frozenset({"load driver"})),
            settle_s,
        )
        before = stages
        after = stack.stage_seconds()
        say(
            "dialogue, mean ms per message and stage: "
            + ", ".join(
                f"{stage} {(total - before.get(stage, (0.0, 0))[0]) * 1000 / n:.0f}"
                for stage, (total, count) in after.items()
                if (n := count - before.get(stage, (0.0, 0))[1]) > 0
            )
        )
        known = {m.mid for m in record.messages}
        with replies.lock:
            for in_reply_to, at in replies.sent:
                if in_reply_to in known:
                    record.reply(in_reply_to, at)
        return outcome(record), usage
    except Exception:
        say("this stack's log ends with:\n" + stack.log_path.read_text(errors="replace")[-4000:])
        raise
    finally:
        say("stopping this stack ...")
        stack.stop()
        graph.stop()


def warm_up(deliver: Callable[[Message], Any], replies: Replies, run: str) -> None:
    message = Message(f"warm-{run}", 0, f"warm-{run}", "hello")
    asyncio.run(deliver(message))
    deadline = time.monotonic() + 60
    while message.mid not in replies.answered:
        if time.monotonic() > deadline:
            raise RuntimeError("this stack did not answer the warm-up message within 60 s")
        time.sleep(0.1)


def bench_rasa(
    shape: LoadShape,
    texts: list[str],
    workdir: Path,
    redis_server: RedisServer,
    python: str,
    model: Path,
    workers: int,
    settle_s: float,
) -> tuple[str, Outcome, dict[str, Usage]]:
    client = redis.Redis(port=redis_server.port)
    client.flushall()
    client.close()
    server = RasaServer(workdir, python, model, redis_server.port, workers)
    say(f"starting {server.name} ...")
    try:
        server.wait_up()
        run = f"r{workers}-{int(time.time())}"
        pools: dict[str, HttpPool] = {}
        record = Record()

        async def deliver(message: Message) -> Delivery:
            body = json.dumps({"sender": message.user, "message": message.text}).encode()
            pool = pools.setdefault(message.user, HttpPool(server.port))
            status, payload = await pool.post("/webhooks/rest/webhook", body, {})
            # The REST channel's response is the reply itself.
            replied = status == 200 and bool(json.loads(payload or b"[]"))
            return Delivery(status, replied=replied)

        users = plan(shape, texts, run)
        roots = {
            **server.process_roots(),
            "redis": [redis_server.proc.pid],
            "load driver": [os.getpid()],
        }
        say(f"load: {shape.users} users x {shape.messages} messages ...")
        sampler = Sampler(roots, alone=frozenset({"load driver"}))
        usage = run_load(
            shape, users, deliver, record, lambda: len(record.replies), sampler, settle_s
        )
        return server.name, outcome(record), usage
    finally:
        say(f"stopping {server.name} ...")
        server.stop()


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}"


def print_tables(
    shape: LoadShape,
    rows: list[tuple[str, Outcome, dict[str, Usage]]],
    bare: float | None,
) -> None:
    print()
    print(
        f"Load: {shape.users} users x {shape.messages} messages = {shape.users * shape.messages}, "
        f"think time {shape.think_s[0]}-{shape.think_s[1]} s, "
        f"{shape.duplicate_rate:.0%} of deliveries duplicated, "
        f"redelivery after {shape.timeout_s:.0f} s without a 200. "
        f"Machine: {os.cpu_count()} cores."
    )
    print()
    header = (
        "system", "acks p50 ms", "acks p99 ms", "msg/s", "e2e p50 ms", "e2e p99 ms",
        "missing", "duplicated", "out of order", "deliveries",
    )  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for name, result, _ in rows:
        print(
            f"| {name} | {_ms(result.ack_ms[0])} | {_ms(result.ack_ms[1])} | "
            f"{result.per_second:.1f} | {_ms(result.e2e_ms[0])} | {_ms(result.e2e_ms[1])} | "
            f"{result.missing} | {result.duplicated} | {result.out_of_order} | "
            f"{result.deliveries} ({result.redeliveries} redelivered) |"
        )
    print()
    print("CPU and memory while the load ran (from the first message to the last reply + 2 s):")
    print()
    print("| system | service | CPU s | mean cores | peak RSS MB |")
    print("|---|---|---|---|---|")
    for name, _, usage in rows:
        for service, used in usage.items():
            print(
                f"| {name} | {service} | {used.cpu_s:.1f} | {used.cores:.2f} | "
                f"{used.peak_rss / 2**20:,.0f} |"
            )
    print()
    ours = next((r for n, r, _ in rows if n == OurStack.name), None)
    rasa = next((r for n, r, _ in rows if n.startswith("rasa run (1 ")), None)
    if ours and rasa and rasa.per_second:
        ratio = ours.per_second / rasa.per_second
        print(
            f"throughput, this stack / rasa run (1 worker): {ratio:.2f}x "
            f"(goal >= 3x: {'met' if ratio >= 3 else 'NOT met'})"
        )
    if ours:
        clean = ours.duplicated == 0 and ours.out_of_order == 0 and ours.missing == 0
        print(
            f"this stack: {ours.missing} missing, {ours.duplicated} duplicated, "
            f"{ours.out_of_order} out of order (goal 0/0/0: {'met' if clean else 'NOT met'})"
        )
    if ours and bare:
        share = ours.per_second / bare
        print(
            f"end to end vs bare in-process parse ({bare:.1f} texts/s): {share:.0%} "
            f"(goal >= 80%: {'met' if share >= 0.8 else 'NOT met'})"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__)
    parser.add_argument("--users", type=int, default=100, help="users sending at once (100)")
    parser.add_argument("--messages", type=int, default=10, help="messages per user (10)")
    parser.add_argument(
        "--duplicate-rate", type=float, default=0.1, help="share of deliveries sent twice (0.1)"
    )
    parser.add_argument(
        "--timeout", type=float, default=20.0, help="seconds before a delivery is retried (20)"
    )
    parser.add_argument(
        "--rasa-workers",
        type=int,
        nargs="*",
        default=[1],
        help="Sanic worker counts to run Rasa with, one row each (1); none skips Rasa",
    )
    parser.add_argument("--no-stack", action="store_true", help="skip this stack's row")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare parse floor")
    parser.add_argument(
        "--settle", type=float, default=300.0, help="max seconds to wait for replies (300)"
    )
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)

    # Hundreds of requests can be in flight, each on its own connection.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    shape = LoadShape(
        users=args.users,
        messages=args.messages,
        duplicate_rate=args.duplicate_rate,
        timeout_s=args.timeout,
    )
    python = nlu_python()
    texts = heldout_texts()
    say("loading the NLU model" + ("" if args.no_bare else " and timing a bare parse") + " ...")
    bare, intents = bare_parse(python, texts, 0 if args.no_bare else 400)
    if bare:
        say(f"bare in-process parse: {bare:.1f} texts/s")
    # What the model would take for a hand-off request stays out of the load too.
    handoff = yaml.safe_load(DOMAIN.read_text()).get("handoff_intent", "")
    texts = [text for text, intent in zip(texts, intents, strict=True) if intent != handoff]
    rows: list[tuple[str, Outcome, dict[str, Usage]]] = []
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        workdir = Path(tmp)
        redis_server = RedisServer(workdir)
        try:
            if not args.no_stack:
                result, usage = bench_stack(
                    shape, texts, workdir, redis_server, python, args.settle
                )
                rows.append((OurStack.name, result, usage))
            if args.rasa_workers:
                _, model = ensure_model(python, say)
                for workers in args.rasa_workers:
                    rows.append(
                        bench_rasa(
                            shape,
                            texts,
                            workdir,
                            redis_server,
                            python,
                            model,
                            workers,
                            args.settle,
                        )
                    )
        finally:
            redis_server.stop()
    print_tables(shape, rows, bare)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "shape": asdict(shape),
                    "bare_parse_per_second": bare,
                    "rows": [
                        {
                            "system": name,
                            **asdict(result),
                            "per_second": result.per_second,
                            "usage": {k: asdict(v) for k, v in usage.items()},
                        }
                        for name, result, usage in rows
                    ],
                },
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
