"""The end-to-end benchmark: its arithmetic, its delivery rules, Rasa's project, and one
small real run of every mode."""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from bench.e2e.load import (
    DELIVERY,
    MESSENGER,
    OVERLAPPING,
    READ,
    Delivery,
    HttpPool,
    LoadShape,
    Message,
    Receipt,
    ReceiptCount,
    Record,
    outcome,
    percentile,
    percentiles,
    plan,
    play,
    receipt_body,
)
from bench.e2e.order import attribute, late
from bench.e2e.rasa_baseline import project_files
from bench.e2e.redis_cost import Counters, per_message
from bench.e2e.sweep import Step, StepRecord, knee, measure
from harness.support import REPO
from tests.nlu_process import nlu_python


def _record(replies: dict[str, list[float]], users: dict[str, int]) -> Record:
    record = Record()
    for user, count in users.items():
        for seq in range(count):
            mid = f"{user}-{seq}"
            record.messages.append(Message(user, seq, mid, "hi"))
            record.sent_at[mid] = float(seq)
    for mid, times in replies.items():
        for at in times:
            record.reply(mid, at)
    return record


def test_outcome_counts_missing_duplicated_and_reordered_replies() -> None:
    record = _record(
        {
            "a-0": [1.0, 5.0],  # answered twice
            "a-1": [3.0],
            "a-2": [2.5],  # before a-1: a-1 is out of order
            "b-0": [1.0],
            # b-1 never answered
        },
        {"a": 3, "b": 2},
    )
    result = outcome(record)
    assert (result.messages, result.answered, result.missing) == (5, 4, 1)
    assert result.duplicated == 1
    assert result.out_of_order == 1
    # From the first message sent (t=0) to the last first reply (t=3).
    assert result.seconds == pytest.approx(3.0)
    assert result.per_second == pytest.approx(4 / 3)


def test_a_late_duplicate_is_not_a_reordering() -> None:
    result = outcome(_record({"a-0": [1.0, 9.0], "a-1": [2.0]}, {"a": 2}))
    assert result.out_of_order == 0
    assert result.duplicated == 1


def test_percentiles_are_nearest_rank() -> None:
    p50, p99 = percentiles([i / 1000 for i in range(1, 101)])
    assert p50 == pytest.approx(50)
    assert p99 == pytest.approx(99)
    assert percentile([3.0], 0.99) == 3.0
    assert math.isnan(percentile([], 0.5))


def test_an_unanswered_message_makes_p99_infinite_past_one_percent() -> None:
    answered = [0.1] * 99
    assert percentile([*answered, math.inf], 0.99) == pytest.approx(0.1)
    assert math.isinf(percentile([*answered[:-1], math.inf, math.inf], 0.99))


def _step(offered: float, p99_ms: float) -> Step:
    return Step(
        offered=offered, sent_per_s=offered, answered_per_s=offered, messages=1, answered=1,
        reply_p50_ms=1.0, reply_p99_ms=p99_ms, ack_p50_ms=1.0, ack_p99_ms=1.0, drained=True,
    )  # fmt: skip


def test_the_knee_is_the_highest_offered_load_under_the_limit() -> None:
    steps = [_step(10, 300), _step(20, 1999), _step(40, 2000), _step(80, math.inf)]
    assert knee(steps, 2000) == 20
    assert knee(steps, 100) is None
    assert knee([], 2000) is None


def test_a_step_is_measured_after_its_warm_up_and_until_its_end() -> None:
    # A 10 s step from t=100, the first 2 s left out: messages a and b are in the window.
    record = StepRecord(rate=1.0, started=100.0, step_s=10.0, warm_s=2.0)
    record.sent_at = {"warm": 101.0, "a": 103.0, "b": 105.0, "late": 109.0}
    record.acked_in = {"warm": 0.01, "a": 0.02, "b": 0.03}
    replies = {"warm": 101.5, "a": 103.5, "b": 111.0}  # b after the step; "late" never
    step = measure(record, replies.get)
    assert (step.messages, step.answered) == (4, 3)
    # Three messages sent in the window (102-110 s); one reply inside it (a's).
    assert step.sent_per_s == pytest.approx(3 / 8)
    assert step.answered_per_s == pytest.approx(1 / 8)
    # a: 0.5 s, b: 6 s, late: never answered.
    assert step.reply_p50_ms == pytest.approx(6000)
    assert math.isinf(step.reply_p99_ms)
    assert step.ack_p50_ms == pytest.approx(30)
    assert math.isinf(step.ack_p99_ms)


def test_redis_cost_per_message_leaves_out_the_info_that_read_it() -> None:
    before = Counters(commands=100, scripts=10, reads=50)
    after = Counters(commands=141, scripts=20, reads=91)
    cost = per_message(before, after, 10)
    assert cost is not None
    assert (cost.commands, cost.scripts, cost.round_trips) == (4.0, 1.0, 4.0)
    assert per_message(before, after, 0) is None


def test_late_sequence_numbers() -> None:
    assert late([0, 1, 2]) == set()
    assert late([1, 0, 2]) == {0}
    assert late([2, 0, 1, 3]) == {0, 1}


def test_a_late_reply_is_put_down_to_the_way_in_or_to_the_server() -> None:
    result = attribute(
        {
            # Received 1 before 0 and answered so: late on the way in.
            "arrival": [1, 0, 2],
            # Received in order, answered 1 before 0: the server's doing.
            "server": [1, 0, 2],
            # In order throughout.
            "fine": [0, 1, 2],
            # The server has no record of 0.
            "unknown": [1, 0],
        },
        {
            "arrival": {0: 2.0, 1: 1.0, 2: 3.0},
            "server": {0: 1.0, 1: 2.0, 2: 3.0},
            "fine": {0: 1.0, 1: 2.0, 2: 3.0},
            "unknown": {1: 1.0},
        },
    )
    assert result.answered_late == 3
    assert (result.late_on_arrival, result.late_by_server, result.unknown) == (1, 1, 1)
    assert result.received_late == 1


def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    """One request per connection, then the server hangs up, as after a keep-alive time-out."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length")
        )  # fmt: skip
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()

    async def run() -> list[tuple[int, bytes]]:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = HttpPool(port)
        answers = []
        for _ in range(3):
            answers.append(await pool.post("/", b"{}", {}))
            await asyncio.sleep(0.05)  # the server's close arrives while the connection idles
        pool.close()
        server.close()
        await server.wait_closed()
        return answers

    assert asyncio.run(run()) == [(200, b"ok")] * 3
    assert connections == 3


class _Server:
    """A hand-written stand-in for a webhook: answers 200 after ``delay``, records overlap.

    Every message is answered as soon as its delivery is acknowledged; receipts are recorded.
    """

    def __init__(
        self,
        delay: float,
        fail_first: frozenset[str] = frozenset(),
        fail_first_receipt: frozenset[tuple[str, str]] = frozenset(),
    ) -> None:
        self.delay = delay
        self.fail_first = set(fail_first)
        self.fail_first_receipt = set(fail_first_receipt)
        self.in_flight: dict[str, int] = {}
        self.most_per_user = 0
        self.most_at_once = 0
        self.arrivals: list[str] = []
        self.receipts: list[Receipt] = []
        # When each message was answered (time.monotonic()), and how it would be in wall time.
        self.answered: dict[str, float] = {}
        self.answered_wall_ms: dict[str, float] = {}
        self._waiting: dict[str, asyncio.Event] = {}

    async def _turn(self, user: str) -> None:
        self.in_flight[user] = self.in_flight.get(user, 0) + 1
        self.most_per_user = max(self.most_per_user, self.in_flight[user])
        self.most_at_once = max(self.most_at_once, sum(self.in_flight.values()))
        try:
            await asyncio.sleep(self.delay)
        finally:
            self.in_flight[user] -= 1

    async def deliver(self, message: Message) -> Delivery:
        self.arrivals.append(message.mid)
        await self._turn(message.user)
        if message.mid in self.fail_first:
            self.fail_first.discard(message.mid)
            return Delivery(500)
        if message.mid not in self.answered:
            self.answered[message.mid] = time.monotonic()
            self.answered_wall_ms[message.mid] = time.time() * 1000
            self._event(message.mid).set()
        return Delivery(200)

    async def deliver_receipt(self, receipt: Receipt) -> Delivery:
        self.receipts.append(receipt)
        await self._turn(receipt.user)
        if (receipt.mid, receipt.kind) in self.fail_first_receipt:
            self.fail_first_receipt.discard((receipt.mid, receipt.kind))
            return Delivery(503)
        return Delivery(200)

    async def replied(self, mid: str) -> float | None:
        await self._event(mid).wait()
        return self.answered[mid]

    def _event(self, mid: str) -> asyncio.Event:
        return self._waiting.setdefault(mid, asyncio.Event())


def _play(shape: LoadShape, server: _Server) -> Record:
    users = plan(shape, ["hi"], "t")
    record = Record()
    total = shape.users * shape.messages
    asyncio.run(
        play(
            shape, users, server.deliver, record, lambda: total, 0.0, lambda _: None,
            replied=server.replied, send_receipt=server.deliver_receipt,
        )
    )  # fmt: skip
    return record


def _shape(mode: str, per_page: bool = False, receipts: bool = False) -> LoadShape:
    return LoadShape(
        users=3, messages=4, mode=mode, per_page=per_page, think_s=(0.0, 0.002),
        duplicate_rate=0.0, timeout_s=5.0, receipts=receipts,
        delivery_receipt_s=(0.0, 0.01), read_receipt_s=(0.02, 0.03),
    )  # fmt: skip


def test_messenger_load_delivers_a_conversation_one_at_a_time_in_order() -> None:
    server = _Server(delay=0.02)
    record = _play(_shape(MESSENGER), server)
    assert server.most_per_user == 1
    assert server.most_at_once > 1  # conversations still go side by side
    for user in {m.user for m in record.messages}:
        mine = [mid for mid in server.arrivals if f"-{user.rsplit('-', 1)[1]}-" in mid]
        assert mine == sorted(mine, key=lambda mid: int(mid.rsplit("-", 1)[1]))


def test_the_per_page_rule_allows_one_delivery_in_flight() -> None:
    server = _Server(delay=0.01)
    _play(_shape(MESSENGER, per_page=True), server)
    assert server.most_at_once == 1


def test_overlapping_load_does_not_wait_for_the_200() -> None:
    server = _Server(delay=0.05)
    _play(_shape(OVERLAPPING), server)
    assert server.most_per_user > 1


def test_a_delivery_without_a_200_is_delivered_again() -> None:
    server = _Server(delay=0.0, fail_first=frozenset({"m-t-0-1"}))
    record = _play(_shape(MESSENGER), server)
    assert record.redeliveries == 1
    assert server.arrivals.count("m-t-0-1") == 2
    assert len(record.acked_at) == 12


def test_duplicates_arrive_later_outside_the_one_at_a_time_rule() -> None:
    shape = LoadShape(
        users=1, messages=20, think_s=(0.0, 0.001), duplicate_rate=1.0,
        duplicate_delay_s=(0.0, 0.0), timeout_s=5.0, receipts=False,
    )  # fmt: skip
    server = _Server(delay=0.03)
    _play(shape, server)
    assert len(server.arrivals) == 40
    assert server.most_per_user > 1


def test_each_reply_is_followed_by_a_delivery_then_a_read_receipt_in_turn() -> None:
    server = _Server(delay=0.005)
    record = _play(_shape(MESSENGER, receipts=True), server)
    mids = [m.mid for m in record.messages]
    for kind in (DELIVERY, READ):
        assert sorted(r.mid for r in server.receipts if r.kind == kind) == sorted(mids)
    for mid in mids:
        kinds = [r.kind for r in server.receipts if r.mid == mid]
        assert kinds == [DELIVERY, READ]
        (mark,) = {r.watermark_ms for r in server.receipts if r.mid == mid}
        # The reply's time in wall-clock milliseconds (rounded up); sent after it.
        assert mark == pytest.approx(server.answered_wall_ms[mid], abs=5)
        assert all(r.at_ms >= mark - 5 for r in server.receipts if r.mid == mid)
    # Receipts share the conversation's one-at-a-time rule with its messages.
    assert server.most_per_user == 1


def test_receipts_are_counted_apart_from_the_messages() -> None:
    server = _Server(delay=0.0, fail_first_receipt=frozenset({("m-t-1-2", READ)}))
    record = _play(_shape(MESSENGER, receipts=True), server)
    result = outcome(record)
    assert result.receipts == {DELIVERY: ReceiptCount(12, 12), READ: ReceiptCount(12, 12)}
    # The refused read receipt was delivered again, like a message would be.
    assert (result.receipt_deliveries, result.receipt_redeliveries) == (25, 1)
    assert (result.deliveries, result.redeliveries) == (12, 0)
    assert len(record.acks) == 12


def test_no_receipts_without_the_option() -> None:
    server = _Server(delay=0.0)
    result = outcome(_play(_shape(MESSENGER), server))
    assert server.receipts == []
    assert result.receipts == {DELIVERY: ReceiptCount(0, 0), READ: ReceiptCount(0, 0)}


def test_a_receipt_is_a_messenger_event_with_a_watermark_and_no_message() -> None:
    receipt = Receipt("u-1", "m-1", READ, watermark_ms=1_700_000_000_123, at_ms=1_700_000_001_000)
    (event,) = json.loads(receipt_body("page-1", receipt))["entry"][0]["messaging"]
    assert event == {
        "sender": {"id": "u-1"},
        "recipient": {"id": "page-1"},
        "timestamp": 1_700_000_001_000,
        "read": {"watermark": 1_700_000_000_123},
    }


def test_rasa_project_has_a_rule_and_a_response_for_every_intent() -> None:
    files = project_files()
    domain = yaml.safe_load(files["domain.yml"])
    rules = yaml.safe_load(files["data/rules.yml"])["rules"]
    config = yaml.safe_load(files["config.yml"])
    nlu_config = yaml.safe_load((REPO / "services" / "nlu" / "config.yml").read_text())
    answered = {rule["steps"][0]["intent"]: rule["steps"][1]["action"] for rule in rules}
    assert set(domain["intents"]) | {"nlu_fallback"} == set(answered)
    assert all(action in domain["responses"] for action in answered.values())
    # The same NLU pipeline as this stack's NLU service; Rasa adds only its rule policy.
    assert config["pipeline"] == nlu_config["pipeline"]
    assert config["policies"] == [{"name": "RulePolicy"}]


@pytest.mark.slow
def test_a_tiny_run_of_every_mode_measures_both_systems(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    picture = tmp_path / "curves.svg"
    completed = subprocess.run(
        [
            sys.executable, "-m", "bench.e2e",
            "--users", "4", "--messages", "3", "--settle", "120",
            "--probe-messages", "5", "--bursts", "1",
            "--rates", "4,8", "--step-seconds", "4", "--drain-seconds", "60",
            "--rasa-workers", "1", "--no-bare",
            "--picture", str(picture), "--json", str(out),
        ],
        cwd=REPO,
        env={
            **os.environ,
            "NLU_PYTHON": nlu_python(),
            "PYTHONPATH": f"{REPO}:{REPO / 'build' / 'gen' / 'py'}",
        },
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    for line in ("| this stack |", "| rasa run (1 worker) |", "knee of this stack"):
        assert line in completed.stdout
    systems = json.loads(out.read_text())["systems"]
    assert set(systems) == {"this stack", "rasa run (1 worker)"}
    for name, result in systems.items():
        probe = result["latency"]["probe"]
        assert (probe["messages"], probe["missing"]) == (5, 0), name
        assert 0 < probe["p50_ms"] <= probe["p99_ms"], name
        ordering = result["ordering"]
        assert (ordering["outcome"]["messages"], ordering["outcome"]["answered"]) == (12, 12)
        # A delivery and a read receipt for every reply, each acknowledged.
        assert ordering["shape"]["receipts"], name
        assert ordering["outcome"]["receipts"] == {
            kind: {"sent": 12, "acknowledged": 12} for kind in ("delivery", "read")
        }, name
        # Every message is in the server's own record of what it received.
        assert ordering["order"]["unknown"] == 0, name
        assert ordering["redis_per_message"]["commands"] > 0, name
        steps = result["capacity"]
        assert [step["offered"] for step in steps] == [4, 8], name
        for step in steps:
            assert step["answered"] == step["messages"] > 0, name
            assert step["cpu_s_per_msg"] > 0 and step["peak_rss_mb"] > 100, name
            assert step["redis_round_trips_per_msg"] > 0, name
    ours = systems["this stack"]["ordering"]
    assert (ours["outcome"]["duplicated"], ours["order"]["answered_late"]) == (0, 0)
    assert set(ours["usage"]) >= {"gateway", "dialogue", "nlu", "chatlog", "redis"}
    assert picture.read_text().lstrip().startswith("<?xml")
