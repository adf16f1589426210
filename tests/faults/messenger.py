"""Users talking through Messenger's webhook the way Meta delivers it.

Each user sends its next message only after the previous one got its 200. A
delivery that does not get a 200 (an error status, a refused or reset
connection, no answer in time) is sent again with a growing back-off, until
it does. One message in ten is delivered once more a few seconds later, as
Meta does now and then even when everything is healthy.
"""

from __future__ import annotations

import heapq
import json
import random
import threading
import time
from dataclasses import dataclass, field

import httpx

from services.gateway.messenger.signature import sign

PAGE = "page-1"
# Each answered with one reply by the trained model and the default domain.
TEXTS = [
    "hello",
    "thanks a lot",
    "what are your opening hours",
    "what's the weather in Berlin",
    "where is my order 12345",
    "bye",
]


@dataclass
class Delivery:
    """One webhook delivery, sent until it got a 200."""

    user: str
    mid: str
    started: float
    duplicate: bool = False
    ok_at: float = 0.0
    failures: list[tuple[float, str]] = field(default_factory=list)  # (when, why)

    @property
    def wait_s(self) -> float:
        return self.ok_at - self.started


class MessengerUsers:
    def __init__(
        self,
        url: str,
        app_secret: str,
        users: int,
        *,
        think_s: tuple[float, float] = (0.5, 1.5),
        duplicates: float = 0.1,
        give_up_s: float = 120.0,
        seed: int = 22,
    ) -> None:
        self.url = f"{url}/webhooks/messenger"
        self.secret = app_secret
        self.names = [f"pu{n:02d}" for n in range(users)]
        self.think_s = think_s
        self.duplicates = duplicates
        self.give_up_s = give_up_s
        self.sent: dict[str, list[str]] = {name: [] for name in self.names}
        self.deliveries: list[Delivery] = []
        self.errors: list[BaseException] = []
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._later: list[tuple[float, int, str, str, bytes]] = []
        self._threads: list[threading.Thread] = []

    def start(self) -> MessengerUsers:
        for name in self.names:
            seed = self._rng.random()
            thread = threading.Thread(target=self._user, args=(name, seed), daemon=True)
            self._threads.append(thread)
        self._threads.append(threading.Thread(target=self._redeliver, daemon=True))
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        """No new messages; what is in flight, duplicates included, is still delivered."""
        self._stop.set()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not [t for t in self._threads if t.is_alive()], "deliveries still running"
        assert not self.errors, self.errors

    def _body(self, user: str, mid: str, text: str) -> bytes:
        now = int(time.time() * 1000)
        event = {
            "sender": {"id": user},
            "recipient": {"id": PAGE},
            "timestamp": now,
            "message": {"mid": mid, "text": text},
        }
        return json.dumps(
            {"object": "page", "entry": [{"id": PAGE, "time": now, "messaging": [event]}]}
        ).encode()

    def _deliver(self, client: httpx.Client, delivery: Delivery, body: bytes) -> None:
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": sign(self.secret, body),
        }
        pause = 0.2
        while True:
            try:
                response = client.post(self.url, content=body, headers=headers)
                if response.status_code == 200:
                    delivery.ok_at = time.monotonic()
                    return
                why = str(response.status_code)
            except httpx.TransportError as exc:
                why = type(exc).__name__
            delivery.failures.append((time.monotonic(), why))
            if time.monotonic() - delivery.started > self.give_up_s:
                raise AssertionError(f"{delivery.mid} never got a 200 ({delivery.failures})")
            time.sleep(pause)
            pause = min(pause * 2, 3.2)

    def _user(self, user: str, seed: float) -> None:
        rng = random.Random(seed)
        try:
            with httpx.Client(timeout=10) as client:
                number = 0
                while not self._stop.is_set():
                    mid = f"m_{user}_{number}"
                    body = self._body(user, mid, TEXTS[rng.randrange(len(TEXTS))])
                    delivery = Delivery(user, mid, time.monotonic())
                    with self._lock:
                        self.sent[user].append(mid)
                        self.deliveries.append(delivery)
                    self._deliver(client, delivery, body)
                    if rng.random() < self.duplicates:
                        with self._lock:
                            at = time.monotonic() + rng.uniform(1.0, 4.0)
                            heapq.heappush(self._later, (at, number, user, mid, body))
                    number += 1
                    time.sleep(rng.uniform(*self.think_s))
        except BaseException as exc:
            self.errors.append(exc)

    def _redeliver(self) -> None:
        try:
            with httpx.Client(timeout=10) as client:
                while True:
                    now = time.monotonic()
                    with self._lock:
                        due = self._later[0] if self._later else None
                        if due is not None and due[0] <= now:
                            heapq.heappop(self._later)
                    if due is None:
                        users = self._threads[:-1]
                        if self._stop.is_set() and not any(t.is_alive() for t in users):
                            return
                        time.sleep(0.1)
                        continue
                    if due[0] > now:
                        time.sleep(min(0.1, due[0] - now))
                        continue
                    _, _, user, mid, body = due
                    delivery = Delivery(user, mid, time.monotonic(), duplicate=True)
                    with self._lock:
                        self.deliveries.append(delivery)
                    self._deliver(client, delivery, body)
        except BaseException as exc:
            self.errors.append(exc)
