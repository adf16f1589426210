"""The load: users sending messages through Messenger-like deliveries.

Each user types its messages one after another with a short think time,
without waiting for replies. Each message is one delivery (a signed webhook
for this stack, a REST call for Rasa). Two ways to deliver them:

- ``messenger`` (the default): as Messenger does, a conversation's next
  delivery starts only after the previous one was answered 200 (with
  ``per_page``, the same rule for the whole page: one delivery in flight);
- ``overlapping``: every message is delivered as soon as it is typed, so one
  user's deliveries overlap and may reach the server in any order.

In both, a delivery that gets no 200 within the time-out, or an error, is
delivered again (the first attempt is not called off), and some messages are
delivered a second time, a little after their first delivery started and
outside the one-at-a-time rule, as Messenger's duplicates are. What counts
for a user is the reply: when it came, how many times, and in which order.

With ``receipts`` (on in the ``messenger`` load unless turned off), each
user's phone answers every reply as Messenger does: a ``delivery`` receipt
shortly after the reply came, a ``read`` receipt later, each its own signed
webhook with the reply's time as its watermark, delivered by the same rules
as the conversation's messages (in turn, retried without a 200). Receipts
are counted apart: they get no reply, so they are in no latency, order or
duplicate count, only in the work the system did.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any


@dataclass(frozen=True)
class Message:
    user: str
    seq: int
    mid: str
    text: str


DELIVERY = "delivery"
READ = "read"


@dataclass(frozen=True)
class Receipt:
    """A ``delivery`` or ``read`` receipt for the reply to message ``mid``.

    ``mid`` only names the receipt in the driver; the webhook carries no mid
    (Messenger's ``mids`` are optional), only the watermark.
    """

    user: str
    mid: str
    kind: str
    watermark_ms: int
    # When the phone sent it: a redelivery is the same event.
    at_ms: int


@dataclass(frozen=True)
class Delivery:
    """One HTTP attempt's outcome."""

    status: int


@dataclass
class Record:
    """Everything the driver saw, in ``time.monotonic()`` seconds."""

    messages: list[Message] = field(default_factory=list)
    sent_at: dict[str, float] = field(default_factory=dict)
    acks: list[float] = field(default_factory=list)
    # Per message id, when its first delivery was acknowledged.
    acked_at: dict[str, float] = field(default_factory=dict)
    deliveries: int = 0
    redeliveries: int = 0
    # Per message id, the time of every reply to it.
    replies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    # Receipts apart from messages: sent, acknowledged (200), HTTP attempts.
    receipts_sent: list[Receipt] = field(default_factory=list)
    receipts_acked: set[Receipt] = field(default_factory=set)
    receipt_deliveries: int = 0
    receipt_redeliveries: int = 0

    def reply(self, mid: str, at: float) -> None:
        self.replies[mid].append(at)


@dataclass(frozen=True)
class ReceiptCount:
    sent: int
    acknowledged: int


@dataclass(frozen=True)
class Outcome:
    messages: int
    answered: int
    missing: int
    duplicated: int
    out_of_order: int
    seconds: float
    ack_ms: tuple[float, float]
    e2e_ms: tuple[float, float]
    deliveries: int
    redeliveries: int
    # By kind (delivery, read): receipts sent and acknowledged; not messages.
    receipts: dict[str, ReceiptCount] = field(default_factory=dict)
    receipt_deliveries: int = 0
    receipt_redeliveries: int = 0
    # For each reply that came late: (message, the later message answered first), in ms
    # since the first message was sent: sent, acknowledged, answered for both.
    reordered: list[dict[str, object]] = field(default_factory=list)

    @property
    def per_second(self) -> float:
        return self.answered / self.seconds if self.seconds else 0.0


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest rank: the smallest value with at least ``q`` of the values at or below it.

    ``inf`` stands for a message never answered, so a p99 is ``inf`` as soon as
    more than 1 % went unanswered.
    """
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def percentiles(values: Sequence[float]) -> tuple[float, float]:
    """p50 and p99 of seconds, in milliseconds."""
    return (percentile(values, 0.5) * 1000, percentile(values, 0.99) * 1000)


def outcome(record: Record) -> Outcome:
    first = {mid: min(times) for mid, times in record.replies.items() if times}
    answered = [m for m in record.messages if m.mid in first]
    duplicated = sum(len(record.replies[m.mid]) - 1 for m in answered)
    # A reply is out of order when a later message of the same user was answered before it.
    by_user: dict[str, list[Message]] = defaultdict(list)
    for message in answered:
        by_user[message.user].append(message)
    start = min(record.sent_at.values(), default=0.0)

    def timeline(message: Message) -> dict[str, object]:
        acked = record.acked_at.get(message.mid)
        return {
            "mid": message.mid,
            "sent_ms": round((record.sent_at[message.mid] - start) * 1000),
            "acked_ms": None if acked is None else round((acked - start) * 1000),
            "answered_ms": round((first[message.mid] - start) * 1000),
        }

    reordered: list[dict[str, object]] = []
    for messages in by_user.values():
        latest: Message | None = None
        for message in sorted(messages, key=lambda m: first[m.mid]):
            if latest is not None and message.seq < latest.seq:
                reordered.append({"late": timeline(message), "overtaken_by": timeline(latest)})
            elif latest is None or message.seq > latest.seq:
                latest = message
    end = max(first.values(), default=start)
    return Outcome(
        messages=len(record.messages),
        answered=len(answered),
        missing=len(record.messages) - len(answered),
        duplicated=duplicated,
        out_of_order=len(reordered),
        seconds=end - start,
        ack_ms=percentiles(record.acks),
        e2e_ms=percentiles([first[m.mid] - record.sent_at[m.mid] for m in answered]),
        deliveries=record.deliveries,
        redeliveries=record.redeliveries,
        receipts={
            kind: ReceiptCount(
                sum(1 for r in record.receipts_sent if r.kind == kind),
                sum(1 for r in record.receipts_acked if r.kind == kind),
            )
            for kind in (DELIVERY, READ)
        },
        receipt_deliveries=record.receipt_deliveries,
        receipt_redeliveries=record.receipt_redeliveries,
        reordered=reordered,
    )


class HttpPool:
    """Keep-alive HTTP/1.1 connections to one server, opened as needed.

    Plain streams rather than a client library: with hundreds of requests in
    flight the driver must stay light, or it measures itself.
    """

    def __init__(self, port: int) -> None:
        self._port = port
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        while self._idle:
            reader, writer = self._idle.pop()
            try:
                return await self._exchange(reader, writer, path, body, headers)
            except (ConnectionError, asyncio.IncompleteReadError):
                # The server closed it while idle (keep-alive time-out): any
                # HTTP client tries again on a fresh connection.
                continue
        reader, writer = await asyncio.open_connection("127.0.0.1", self._port)
        return await self._exchange(reader, writer, path, body, headers)

    async def _exchange(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        path: str,
        body: bytes,
        headers: dict[str, str],
    ) -> tuple[int, bytes]:
        try:
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            writer.write(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
                f"Content-Type: application/json\r\n{head}\r\n".encode()
                + body
            )
            raw = await reader.readuntil(b"\r\n\r\n")
            status = int(raw[9:12])
            length = 0
            keep = True
            for line in raw.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
                elif name.lower() == b"connection" and value.strip().lower() == b"close":
                    keep = False
            payload = await reader.readexactly(length) if length else b""
        except BaseException:
            writer.close()
            raise
        if keep:
            self._idle.append((reader, writer))
        else:
            writer.close()
        return status, payload

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


# Sends one delivery of a message; returns the HTTP outcome.
Deliver = Callable[[Message], Awaitable[Delivery]]
# Sends one delivery of a receipt; returns the HTTP outcome.
SendReceipt = Callable[[Receipt], Awaitable[Delivery]]
# When a message was first answered (``time.monotonic()``), once it is; None if never.
Replied = Callable[[str], Awaitable[float | None]]


MESSENGER = "messenger"
OVERLAPPING = "overlapping"


@dataclass(frozen=True)
class LoadShape:
    users: int
    messages: int
    mode: str = MESSENGER
    per_page: bool = False
    think_s: tuple[float, float] = (0.1, 0.5)
    duplicate_rate: float = 0.1
    # A duplicate delivery starts this long after the message's first delivery started.
    duplicate_delay_s: tuple[float, float] = (0.0, 1.0)
    timeout_s: float = 20.0  # Messenger gives up on a webhook after this and delivers again
    attempts: int = 5
    seed: int = 7
    receipts: bool = True
    # Seconds after a reply came that the phone sends each receipt.
    delivery_receipt_s: tuple[float, float] = (0.05, 0.3)
    read_receipt_s: tuple[float, float] = (0.5, 3.0)


def plan(shape: LoadShape, texts: Sequence[str], run: str) -> list[list[Message]]:
    rng = random.Random(shape.seed)
    return [
        [
            Message(f"u-{run}-{u}", i, f"m-{run}-{u}-{i}", rng.choice(texts))
            for i in range(shape.messages)
        ]
        for u in range(shape.users)
    ]


async def play(
    shape: LoadShape,
    users: list[list[Message]],
    deliver: Deliver,
    record: Record,
    answered: Callable[[], int],
    settle_s: float,
    progress: Callable[[str], None],
    replied: Replied | None = None,
    send_receipt: SendReceipt | None = None,
) -> None:
    """Plays every user's messages, then waits until all are answered (or ``settle_s``).

    With ``shape.receipts``, ``replied`` and ``send_receipt`` are required:
    each reply is followed by its receipts, and the receipts due are waited for.
    """
    if shape.receipts and (replied is None or send_receipt is None):
        raise ValueError("receipts need replied and send_receipt")
    rng = random.Random(shape.seed + 1)
    pending: set[asyncio.Task[Any]] = set()
    receipts_due: set[asyncio.Task[Any]] = set()
    # asyncio.Lock hands itself over in the order it was asked for: a
    # conversation's deliveries go in the order they were made.
    gates: dict[str, asyncio.Lock] = {}
    # Replies are timed on the monotonic clock; watermarks are wall-clock milliseconds.
    wall_offset = time.time() - time.monotonic()

    async def attempt(
        send: Callable[[], Awaitable[Delivery]], acked: Callable[[float], None]
    ) -> bool:
        started = time.monotonic()
        try:
            result = await send()
        except (OSError, asyncio.IncompleteReadError):
            return False
        if result.status != 200:
            return False
        acked(started)
        return True

    def track(task: asyncio.Task[Any]) -> None:
        pending.add(task)
        task.add_done_callback(pending.discard)

    async def until_acked(
        send: Callable[[], Awaitable[Delivery]],
        acked: Callable[[float], None],
        counted: Callable[[int], None],
    ) -> None:
        for number in range(shape.attempts):
            counted(number)
            task = asyncio.create_task(attempt(send, acked))
            track(task)
            done, _ = await asyncio.wait({task}, timeout=shape.timeout_s)
            if not done:
                # Timed out: delivered again at once; the server is not told to
                # give up on the first attempt, exactly as with Messenger.
                continue
            if task.result():
                return
            await asyncio.sleep(0.5 * (number + 1))

    async def delivery(message: Message) -> None:
        def acked(started: float) -> None:
            now = time.monotonic()
            record.acks.append(now - started)
            record.acked_at.setdefault(message.mid, now)

        def counted(number: int) -> None:
            record.deliveries += 1
            if number:
                record.redeliveries += 1

        await until_acked(lambda: deliver(message), acked, counted)

    async def first_and_duplicate(message: Message, duplicate_after: float | None) -> None:
        if duplicate_after is not None:
            track(asyncio.create_task(_later(duplicate_after, delivery(message))))
        await delivery(message)

    async def in_turn(user: str, run: Callable[[], Awaitable[None]]) -> None:
        if shape.mode != MESSENGER:
            await run()
            return
        key = "page" if shape.per_page else user
        async with gates.setdefault(key, asyncio.Lock()):
            await run()

    async def receipt(message: Message, kind: str, due: float, watermark_ms: int) -> None:
        assert send_receipt is not None
        await asyncio.sleep(max(0.0, due - time.monotonic()))
        sent = Receipt(message.user, message.mid, kind, watermark_ms, int(time.time() * 1000))
        record.receipts_sent.append(sent)

        def counted(number: int) -> None:
            record.receipt_deliveries += 1
            if number:
                record.receipt_redeliveries += 1

        await in_turn(
            message.user,
            lambda: until_acked(
                lambda: send_receipt(sent), lambda _: record.receipts_acked.add(sent), counted
            ),
        )

    async def receipts(message: Message) -> None:
        assert replied is not None
        at = await replied(message.mid)
        if at is None:
            return
        # Seeded per message, so that when replies come does not change the draws.
        draw = random.Random(f"{shape.seed}-{message.mid}")
        watermark_ms = math.ceil((at + wall_offset) * 1000)
        for kind, delay in ((DELIVERY, shape.delivery_receipt_s), (READ, shape.read_receipt_s)):
            task = asyncio.create_task(
                receipt(message, kind, at + draw.uniform(*delay), watermark_ms)
            )
            track(task)
            receipts_due.add(task)

    async def user(messages: list[Message]) -> None:
        await asyncio.sleep(rng.uniform(0, shape.think_s[1]))
        for message in messages:
            record.messages.append(message)
            record.sent_at[message.mid] = time.monotonic()
            duplicate = rng.random() < shape.duplicate_rate
            after = rng.uniform(*shape.duplicate_delay_s) if duplicate else None
            track(
                asyncio.create_task(
                    in_turn(message.user, partial(first_and_duplicate, message, after))
                )
            )
            if shape.receipts:
                track(asyncio.create_task(receipts(message)))
            await asyncio.sleep(rng.uniform(*shape.think_s))

    total = sum(len(m) for m in users)
    await asyncio.gather(*(user(m) for m in users))
    progress(f"all {total} messages sent; waiting for the replies")
    deadline = time.monotonic() + settle_s
    last_report = 0.0
    while time.monotonic() < deadline and answered() < total:
        await asyncio.sleep(0.1)
        if time.monotonic() - last_report > 5:
            last_report = time.monotonic()
            progress(f"{answered()}/{total} answered")
    if receipts_due:
        # The last replies' receipts are still to come.
        await asyncio.wait(receipts_due, timeout=shape.read_receipt_s[1] + shape.timeout_s)
    # Late duplicates show up now, and in-flight retries finish.
    await asyncio.sleep(2.0)
    for task in list(pending):
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


async def _later(delay: float, run: Awaitable[None]) -> None:
    await asyncio.sleep(delay)
    await run


def messenger_body(page_id: str, message: Message, at_ms: int) -> bytes:
    return json.dumps(
        {
            "object": "page",
            "entry": [
                {
                    "id": page_id,
                    "time": at_ms,
                    "messaging": [
                        {
                            "sender": {"id": message.user},
                            "recipient": {"id": page_id},
                            "timestamp": at_ms,
                            "message": {"mid": message.mid, "text": message.text},
                        }
                    ],
                }
            ],
        }
    ).encode()


def receipt_body(page_id: str, receipt: Receipt) -> bytes:
    return json.dumps(
        {
            "object": "page",
            "entry": [
                {
                    "id": page_id,
                    "time": receipt.at_ms,
                    "messaging": [
                        {
                            "sender": {"id": receipt.user},
                            "recipient": {"id": page_id},
                            "timestamp": receipt.at_ms,
                            receipt.kind: {"watermark": receipt.watermark_ms},
                        }
                    ],
                }
            ],
        }
    ).encode()
