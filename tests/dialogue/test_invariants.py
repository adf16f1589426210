"""The invariants of ARCHITECTURE.md, against real Redis and several replicas.

Order, once, no loss under kill -9, fencing under SIGSTOP, fairness, and the
same on a Redis Cluster of three masters.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Callable

import grpc
import pytest
from chatbot.common.v1 import event_pb2
from chatbot.dialogue.v1 import dialogue_service_pb2 as pb

from harness.redis_servers import RedisServer
from harness.standins import GraphApi, KeywordNlu, RecordingChatlog
from harness.support import free_port, wait_for_samples
from tests.dialogue.conftest import TENANT, Replicas, message_event, settled, submit, wait_for

pytestmark = pytest.mark.slow

TEXTS = ["hello", "thanks", "help", "bye", "what are your hours", "order 12345", "hmm"]


def play(
    replicas: Replicas,
    users: int,
    messages: int,
    *,
    clients: int = 8,
    during: Callable[[int], None] | None = None,
) -> dict[str, list[str]]:
    """Each user sends ``messages`` in order; every event is submitted 1-3 times,
    from concurrent clients, to random replicas. Returns the expected mids per user."""
    expected = {f"user{u}": [f"m_{u}_{i}" for i in range(messages)] for u in range(users)}
    names = list(expected)
    rng = random.Random(7)
    errors: list[BaseException] = []

    def deliver(local: random.Random, event: event_pb2.ChatEvent) -> None:
        # Like Messenger: a delivery that fails (a replica just died) is retried.
        for _ in range(50):
            process = local.choice(list(replicas.processes))
            try:
                submit(replicas.stub_for(process), event)
                return
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                time.sleep(0.1)
        raise AssertionError(f"{event.event_id} never accepted")

    def client(index: int) -> None:
        local = random.Random(index)
        try:
            for name in names[index::clients]:
                for i, mid in enumerate(expected[name]):
                    event = message_event(name, mid, TEXTS[(i + len(name)) % len(TEXTS)])
                    for _ in range(local.randint(1, 3)):
                        deliver(local, event)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    if during is not None:
        during(rng.randint(0, 1000))
    for thread in threads:
        thread.join()
    assert not errors, errors
    return expected


def collapse(mids: list[str]) -> tuple[list[str], int]:
    """Removes immediate repeats; returns the sequence and how many were removed."""
    out: list[str] = []
    for mid in mids:
        if not out or out[-1] != mid:
            out.append(mid)
    return out, len(mids) - len(out)


def test_every_message_is_answered_once_and_in_order(
    replicas: Replicas, graph_api: GraphApi, recording_chatlog: RecordingChatlog
) -> None:
    replicas.start(3)
    expected = play(replicas, users=200, messages=20)
    total = sum(len(m) for m in expected.values())
    wait_for(lambda: len(graph_api.sent) >= total, timeout=300, interval=0.5)
    wait_for(lambda: settled(replicas, expected), timeout=60, interval=0.5)
    replies = graph_api.replies_by_user()  # nothing more can come now
    assert len(graph_api.sent) == total
    for user, mids in expected.items():
        assert replies[user] == mids, user
    inbound = {
        m.message_id
        for m in recording_chatlog.messages.values()
        if m.user.user_id.startswith("user")
    }
    assert inbound >= {mid for mids in expected.values() for mid in mids}


def test_redis_cluster_keeps_order_and_once(
    cluster_replicas: Replicas, graph_api: GraphApi
) -> None:
    cluster_replicas.start(3)
    expected = play(cluster_replicas, users=60, messages=10)
    total = sum(len(m) for m in expected.values())
    wait_for(lambda: len(graph_api.sent) >= total, timeout=300, interval=0.5)
    wait_for(lambda: settled(cluster_replicas, expected), timeout=60, interval=0.5)
    replies = graph_api.replies_by_user()
    assert len(graph_api.sent) == total
    for user, mids in expected.items():
        assert replies[user] == mids, user


def test_kill_9_loses_nothing_and_never_reorders(replicas: Replicas, graph_api: GraphApi) -> None:
    graph_api.delay_s = 0.03
    workers = 8
    settings = {"DIALOGUE_LEASE_MS": "1500", "DIALOGUE_WORKERS": str(workers)}
    replicas.start(3, **settings)
    kills: list[int] = []

    def kill_some(_: int) -> None:
        for _ in range(3):
            time.sleep(1.5)
            victim = replicas.processes[0]
            replicas.kill(victim)
            kills.append(victim.proc.pid)
            replicas.start(1, **settings)

    expected = play(replicas, users=40, messages=15, clients=4, during=kill_some)
    assert len(kills) == 3
    total = sum(len(m) for m in expected.values())
    replies = graph_api.replies_by_user
    wait_for(
        lambda: all(collapse(replies()[u])[0] == m for u, m in expected.items()),
        timeout=300,
        interval=0.5,
    )
    wait_for(lambda: settled(replicas, expected), timeout=60, interval=0.5)
    repeated = 0
    for user, mids in expected.items():
        sequence, repeats = collapse(replies()[user])
        assert sequence == mids, user  # nothing lost, nothing reordered
        assert repeats <= len(kills), user  # at most one repeat per crash for a user
        repeated += repeats
    # Only users in flight on a killed replica can see a repeat.
    assert repeated <= len(kills) * workers
    assert len(graph_api.sent) == total + repeated


def test_a_paused_worker_cannot_send_or_log_after_its_lease_passed(
    replicas: Replicas,
    graph_api: GraphApi,
    keyword_nlu: KeywordNlu,
    recording_chatlog: RecordingChatlog,
) -> None:
    keyword_nlu.delay_s = 2.0
    metrics_ports = {}
    for _ in range(2):
        port = free_port()
        (started,) = replicas.start(
            1, DIALOGUE_LEASE_MS="1000", NLU_TIMEOUT_MS="8000", METRICS_PORT=str(port)
        )
        metrics_ports[started.proc.pid] = port
    stub = replicas.stub(1)
    submit(stub, message_event("paused", "m_p1", "hello"))
    wait_for(lambda: keyword_nlu.calls.count("hello") == 1)
    user = event_pb2.UserRef(
        tenant_id=TENANT, channel=event_pb2.CHANNEL_MESSENGER, user_id="paused"
    )
    state = stub.GetConversationState(pb.GetConversationStateRequest(user=user)).state
    first_token = state.fencing_token
    pid = int(state.lease_holder.split(":")[1])
    holder = next(p for p in replicas.processes if p.proc.pid == pid)
    other = next(p for p in replicas.processes if p is not holder)
    holder.proc.send_signal(signal.SIGSTOP)
    try:
        # The lease expires; the other replica takes the user and answers.
        wait_for(lambda: len(graph_api.sent) == 1, timeout=30)
    finally:
        holder.proc.send_signal(signal.SIGCONT)
    # The paused worker wakes up, gets its NLU answer and tries to go on: wait
    # until its turn is over (it holds no lease any more, having been refused).
    holder_metrics = wait_for_samples(metrics_ports[pid], {"dialogue_active_leases": 0}, timeout=60)
    assert holder_metrics.get("dialogue_fencing_rejections_total", 0) >= 1
    wait_for(lambda: settled(replicas, ["paused"]))
    assert [m.in_reply_to for m in graph_api.sent] == ["m_p1"]
    # The other replica's records reach the chatlog through its outbox.
    wait_for(lambda: (TENANT, "m_p1:r0") in recording_chatlog.messages)
    tokens = {m.fencing_token for m in recording_chatlog.attempts if m.user.user_id == "paused"}
    assert first_token not in tokens
    assert tokens and min(tokens) > first_token
    assert holder.proc.poll() is None and other.proc.poll() is None
    assert "lease" in holder.tail(80)


def test_a_chatty_user_does_not_starve_a_quiet_one(replicas: Replicas, graph_api: GraphApi) -> None:
    replicas.start(1, DIALOGUE_WORKERS="1")
    stub = replicas.stub()
    events = [message_event("chatty", f"m_c{i}", "hello") for i in range(1000)]
    for start in range(0, len(events), 500):
        submit(stub, *events[start : start + 500])
    wait_for(lambda: len(graph_api.sent) >= 20, timeout=60)
    submit(stub, message_event("quiet", "m_q", "hello"))
    submitted_at = len(graph_api.sent)
    wait_for(lambda: any(m.recipient == "quiet" for m in graph_api.sent), timeout=60)
    recipients = [m.recipient for m in graph_api.sent]
    waited_behind = recipients.index("quiet") - submitted_at
    assert waited_behind <= 1, f"the quiet user waited behind {waited_behind} messages"


def test_redis_restart_with_append_only_file_loses_nothing(
    replicas: Replicas, graph_api: GraphApi, redis_server: RedisServer
) -> None:
    graph_api.delay_s = 0.02
    replicas.start(2, DIALOGUE_LEASE_MS="1500")
    restarted: list[bool] = []

    def restart_redis(_: int) -> None:
        time.sleep(1.0)
        redis_server.restart(down_s=2.0)
        restarted.append(True)

    expected = play(replicas, users=30, messages=10, clients=4, during=restart_redis)
    assert restarted
    replies = graph_api.replies_by_user
    wait_for(
        lambda: all(collapse(replies()[u])[0] == m for u, m in expected.items()),
        timeout=300,
        interval=0.5,
    )
    wait_for(lambda: settled(replicas, expected), timeout=60, interval=0.5)
    for user, mids in expected.items():
        sequence, repeats = collapse(replies()[user])
        assert sequence == mids, user
        assert repeats <= 1, user  # a reply sent while Redis went away may go out again
