"""Traffic from many users, paced over a time span so a fault lands in the middle of it.

Each user sends its messages in order: a message goes out only once the one
before it was accepted, as Messenger does for one conversation. Clients are
threads, each owning a share of the users and cycling through them, so at any
moment many users have messages in flight.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Each answered by the keyword NLU and the default domain with exactly one reply.
TEXTS = ["hello", "thanks", "help", "bye", "what are your hours", "order 12345", "hmm"]


@dataclass(frozen=True)
class Outgoing:
    user: str
    mid: str
    text: str
    index: int


def wait_for(condition: Callable[[], bool], timeout: float, interval: float = 0.1) -> float:
    """Polls until ``condition()``; returns the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)
    return time.monotonic() - started


@dataclass
class Load:
    """``users`` users sending ``messages`` each, spread over ``span_s`` seconds.

    ``deliver`` must not return before the message is accepted (it retries
    like Messenger does); an exception from it fails the load.
    """

    users: int
    messages: int
    deliver: Callable[[Outgoing], None]
    span_s: float = 10.0
    clients: int = 8
    prefix: str = "u"
    expected: dict[str, list[str]] = field(init=False)
    errors: list[BaseException] = field(default_factory=list)
    sent_at: dict[str, float] = field(default_factory=dict)
    _threads: list[threading.Thread] = field(default_factory=list)
    _started: float = 0.0

    def __post_init__(self) -> None:
        self.expected = {
            f"{self.prefix}{u}": [f"m_{self.prefix}{u}_{i}" for i in range(self.messages)]
            for u in range(self.users)
        }

    @property
    def total(self) -> int:
        return self.users * self.messages

    def start(self) -> Load:
        self._started = time.monotonic()
        names = list(self.expected)
        for index in range(self.clients):
            thread = threading.Thread(
                target=self._client, args=(names[index :: self.clients],), daemon=True
            )
            self._threads.append(thread)
            thread.start()
        return self

    def _client(self, users: list[str]) -> None:
        gap = self.span_s / self.messages
        try:
            for i in range(self.messages):
                for user in users:
                    mid = self.expected[user][i]
                    text = TEXTS[(i + len(user)) % len(TEXTS)]
                    self.deliver(Outgoing(user, mid, text, i))
                    self.sent_at[mid] = time.monotonic()
                pause = self._started + (i + 1) * gap - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
        except BaseException as exc:  # surfaced by join()
            self.errors.append(exc)

    def sleep_until(self, offset_s: float) -> None:
        """Sleeps until ``offset_s`` seconds after the load started (a fault's schedule)."""
        pause = self._started + offset_s - time.monotonic()
        if pause > 0:
            time.sleep(pause)

    def snapshot(self, answered: dict[str, list[str]]) -> tuple[int, int]:
        """(messages accepted so far, of which not answered yet), taken at a fault."""
        accepted = len(self.sent_at)
        return accepted, self.unanswered(answered)

    def during(self, snapshots: list[tuple[int, int]]) -> None:
        """Asserts every fault fell while the load was still being sent."""
        assert all(0 < accepted < self.total for accepted, _ in snapshots), snapshots

    def unanswered(self, answered: dict[str, list[str]]) -> int:
        """Messages accepted but not answered yet: what a fault now could hit."""
        replied = {mid for mids in answered.values() for mid in mids}
        return sum(1 for mid in list(self.sent_at) if mid not in replied)

    def join(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "the load did not finish in time"
        assert not self.errors, self.errors
