"""A worker frozen past its lease in the middle of a send, then resumed.

A process can stop for seconds at any point (CPU throttling, a long pause of
its node) and go on afterwards as if no time had passed. Here the replica
sending a reply is stopped with SIGSTOP inside the Send API call: the message
arrived, its answer waits in the socket, and the reply has a second part still
to send. The other replica takes the users over once the lease lapses and
answers their next messages. When the first one resumes, nothing it sends may
arrive after what the new holder sent: every attempt must fit the lease as
the process last knew it, whatever its clock says when it wakes up.
"""

from __future__ import annotations

import os
import signal
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from chatbot.common.v1 import event_pb2
from chatbot.dialogue.v1 import dialogue_service_pb2 as pb

from harness.standins import GraphApi, SentMessage
from harness.support import ServiceProcess
from tests.dialogue.conftest import TENANT, Replicas, message_event, submit, wait_for

pytestmark = pytest.mark.slow

USERS = ["stalled0", "stalled1", "stalled2", "stalled3"]
MESSAGES = 5
IN_FLIGHT = 1  # the message whose reply is being sent when the worker stops
# Every reply goes out as two Send API messages, a text and then an image, so
# a stopped send has something left to send when it resumes.
PARTS = 2
DOMAIN = """\
responses:
  fallback:
    - text: "Noted."
      image: "https://example.com/noted.png"
"""


def _stopped(pid: int) -> bool:
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        return stat.read().rpartition(")")[2].split()[0] == "T"


class _PauseSender:
    """A Send API hook: the first message answering a mid that ends in
    ``suffix`` stops the replica holding its user, before it is answered."""

    def __init__(self, replicas: Replicas, suffix: str) -> None:
        self._replicas = replicas
        self._suffix = suffix
        self._lock = threading.Lock()
        self.paused = threading.Event()
        self.process: ServiceProcess | None = None

    def __call__(self, message: SentMessage) -> None:
        with self._lock:
            if self.paused.is_set() or not message.in_reply_to.endswith(self._suffix):
                return
            user = event_pb2.UserRef(
                tenant_id=TENANT, channel=event_pb2.CHANNEL_MESSENGER, user_id=message.recipient
            )
            request = pb.GetConversationStateRequest(user=user)
            holder = self._replicas.stub().GetConversationState(request, timeout=10).state
            pid = int(holder.lease_holder.split(":")[1])
            self.process = next(p for p in self._replicas.processes if p.proc.pid == pid)
            os.kill(pid, signal.SIGSTOP)
            # Answered only once the sender cannot read the answer any more.
            wait_for(lambda: _stopped(pid), timeout=10, interval=0.005)
            self.paused.set()


def test_a_worker_resumed_after_its_lease_never_sends_after_the_next_holder(
    replicas: Replicas, graph_api: GraphApi, tmp_path: Path, record_property: Callable[..., None]
) -> None:
    domain = tmp_path / "domain.yml"
    domain.write_text(DOMAIN, encoding="utf-8")
    replicas.start(2, DIALOGUE_LEASE_MS="1500", DOMAIN_FILE=str(domain))
    mids = {user: [f"m_{user}_{i}" for i in range(MESSAGES)] for user in USERS}
    replies = graph_api.replies_by_user

    def answered(index: int) -> bool:
        received = replies()
        return all(received[user].count(mids[user][index]) >= PARTS for user in USERS)

    def send_all(process: ServiceProcess, index: int) -> None:
        events = [message_event(user, mids[user][index], "noted?") for user in USERS]
        submit(replicas.stub_for(process), *events)

    send_all(replicas.processes[0], 0)
    wait_for(lambda: answered(0))

    pause = _PauseSender(replicas, f"_{IN_FLIGHT}")
    graph_api.on_message = pause
    try:
        send_all(replicas.processes[0], IN_FLIGHT)
        wait_for(pause.paused.is_set)
        graph_api.on_message = None
        stalled = pause.process
        assert stalled is not None
        other = next(p for p in replicas.processes if p is not stalled)
        # The other replica takes the stalled one's users over once the lease
        # lapsed, and answers the message in flight and the next ones.
        for index in range(IN_FLIGHT + 1, MESSAGES - 1):
            send_all(other, index)
        wait_for(lambda: answered(MESSAGES - 2), timeout=60)
    finally:
        if pause.process is not None:
            pause.process.proc.send_signal(signal.SIGCONT)

    # The resumed worker finds out that its lease is gone ...
    wait_for(
        lambda: (
            "lease lost mid-turn" in stalled.tail(400)
            or "fenced: another worker" in stalled.tail(400)
        )
    )
    # ... and serves again: everything it did before this answer is recorded.
    send_all(stalled, MESSAGES - 1)
    wait_for(lambda: answered(MESSAGES - 1), timeout=60)

    repeated = 0
    for user in USERS:
        received = replies()[user]
        order = [mids[user].index(mid) for mid in received]
        # No reply to a message arrives after a reply to a later one.
        assert order == sorted(order), f"{user}: replies arrived as {received}"
        counts = Counter(received)
        for index, mid in enumerate(mids[user]):
            if index == IN_FLIGHT:
                # The reply in flight may go out again, whole, once.
                assert PARTS <= counts[mid] <= 2 * PARTS, (user, received)
            else:
                assert counts[mid] == PARTS, (user, received)  # answered, and once
        repeated += counts[mids[user][IN_FLIGHT]] - PARTS
    record_property("repeated_messages", repeated)
    print(f"Send API messages repeated for the reply in flight: {repeated}")
    assert stalled.proc.poll() is None and other.proc.poll() is None
