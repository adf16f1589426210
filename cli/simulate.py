"""Plays Messenger against a running stack.

Users send signed webhooks (sometimes two messages in one delivery, sometimes
the same delivery again, as Messenger does); a local Graph API stand-in
receives the bot's replies and prints them as a chat; a summary says whether
every message was answered, once, and in order.
"""

from __future__ import annotations

import json
import random
import statistics
import threading
import time
from collections import defaultdict
from dataclasses import dataclass

import httpx

from cli.graph_standin import GraphStandIn, Sent
from services.gateway.messenger.signature import sign

SCRIPT = [
    "hello",
    "what can you do?",
    "where is my order 12345",
    "what's the weather in Paris",
    "when are you open on saturday?",
    "are you a bot?",
    "thanks a lot",
    "bye",
]


@dataclass
class Summary:
    messages: int
    deliveries: int
    answered: int
    missing: list[str]
    duplicate_replies: int
    out_of_order_users: list[str]
    latencies: list[float]

    @property
    def ok(self) -> bool:
        return not self.missing and not self.duplicate_replies and not self.out_of_order_users


def _event(page_id: str, user: str, mid: str, text: str, at_ms: int) -> dict[str, object]:
    return {
        "sender": {"id": user},
        "recipient": {"id": page_id},
        "timestamp": at_ms,
        "message": {"mid": mid, "text": text},
    }


def simulate(
    gateway: str,
    app_secret: str,
    page_id: str,
    users: int,
    messages: int,
    graph_port: int,
    duplicate_rate: float,
    timeout_s: float,
    show: bool,
    seed: int = 1,
) -> Summary:
    rng = random.Random(seed)
    run = f"{int(time.time())}"
    print_lock = threading.Lock()
    names = {f"sim-{run}-{u}": f"user {u + 1}" for u in range(users)}

    def shown(sent: Sent) -> None:
        if show and sent.recipient in names:
            with print_lock:
                print(f"  bot -> {names[sent.recipient]}: {sent.text}", flush=True)

    graph = GraphStandIn(port=graph_port, on_send=shown).start()
    posted: dict[str, float] = {}
    expected: dict[str, list[str]] = defaultdict(list)
    deliveries = 0
    try:
        with httpx.Client(timeout=10) as client:
            plan = []
            for u, user in enumerate(names):
                for i in range(messages):
                    plan.append((user, f"m_{run}_{u}_{i}", SCRIPT[(u + i) % len(SCRIPT)]))
            # Users interleave; each user's own messages stay in order.
            rng.shuffle(plan)
            plan.sort(key=lambda item: int(item[1].rsplit("_", 1)[1]))
            index = 0
            while index < len(plan):
                batch = [plan[index]]
                if rng.random() < 0.2 and index + 1 < len(plan):
                    batch.append(plan[index + 1])  # two events in one delivery
                index += len(batch)
                now = int(time.time() * 1000)
                body = json.dumps(
                    {
                        "object": "page",
                        "entry": [
                            {
                                "id": page_id,
                                "time": now,
                                "messaging": [
                                    _event(page_id, user, mid, text, now + k)
                                    for k, (user, mid, text) in enumerate(batch)
                                ],
                            }
                        ],
                    }
                ).encode()
                for user, mid, text in batch:
                    expected[user].append(mid)
                    posted[mid] = time.monotonic()
                    if show:
                        with print_lock:
                            print(f"  {names[user]} -> bot: {text}", flush=True)
                copies = 2 if rng.random() < duplicate_rate else 1
                for _ in range(copies):
                    deliveries += 1
                    for attempt in range(5):  # Messenger retries until it gets a 200
                        response = client.post(
                            f"{gateway}/webhooks/messenger",
                            content=body,
                            headers={
                                "Content-Type": "application/json",
                                "X-Hub-Signature-256": sign(app_secret, body),
                            },
                        )
                        if response.status_code == 200:
                            break
                        time.sleep(0.5 * (attempt + 1))
                    else:
                        raise RuntimeError(f"the webhook kept answering {response.status_code}")
        total = sum(len(m) for m in expected.values())
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with graph.lock:
                answered = {s.in_reply_to for s in graph.sent}
            if all(mid in answered for mids in expected.values() for mid in mids):
                break
            time.sleep(0.2)
        time.sleep(1.0)  # late duplicates would show now
    finally:
        graph.stop()

    with graph.lock:
        sent = [s for s in graph.sent if s.recipient in names]
    first: dict[str, float] = {}
    per_user: dict[str, list[str]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    for reply in sent:
        counts[reply.in_reply_to] += 1
        if reply.in_reply_to not in first:
            first[reply.in_reply_to] = reply.time
            per_user[reply.recipient].append(reply.in_reply_to)
    missing = [mid for mids in expected.values() for mid in mids if mid not in first]
    return Summary(
        messages=total,
        deliveries=deliveries,
        answered=total - len(missing),
        missing=missing,
        duplicate_replies=sum(c - 1 for c in counts.values() if c > 1),
        out_of_order_users=[
            u for u, mids in expected.items() if per_user[u] != mids[: len(per_user[u])]
        ],
        latencies=[first[m] - posted[m] for m in first if m in posted],
    )


def print_summary(summary: Summary) -> None:
    lat = sorted(summary.latencies) or [0.0]
    print()
    print(f"messages sent        {summary.messages} (in {summary.deliveries} webhook deliveries)")
    print(f"answered             {summary.answered}")
    print(f"missing              {len(summary.missing)}")
    print(f"duplicate replies    {summary.duplicate_replies}")
    print(f"users out of order   {len(summary.out_of_order_users)}")
    print(
        f"latency webhook->reply  p50 {lat[len(lat) // 2] * 1000:.0f} ms, "
        f"p99 {lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000:.0f} ms, "
        f"mean {statistics.mean(lat) * 1000:.0f} ms"
    )
    print("OK: every message answered once, in order" if summary.ok else "PROBLEMS: see above")
