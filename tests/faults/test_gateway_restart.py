"""The gateway stopped (SIGTERM, or SIGKILL) and started again on its port in
the middle of a burst of signed webhooks from many users.

The sender behaves like Messenger: a delivery that fails (connection refused
or reset, no answer, a 5xx) is sent again until it gets a 200, and a user's
next message goes out only after that. Dedupe on ``mid`` makes the retries
safe: every message is answered once, in order.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from services.gateway.messenger.signature import sign
from tests.dialogue.conftest import Replicas
from tests.faults.load import Load, Outgoing, wait_for
from tests.faults.system import (
    APP_SECRET,
    TENANT,
    FaultRedis,
    GatewayProcess,
    GraphApi,
    RecordingChatlog,
    SwitchableNlu,
)
from tests.faults.tally import check, report, tally

pytestmark = [pytest.mark.faults, pytest.mark.slow]

PAGE = "page-1"
RESTARTS = 2


@pytest.fixture
def gateway(
    replicas: Replicas,
    fault_redis: FaultRedis,
    nlu: SwitchableNlu,
    recording_chatlog: RecordingChatlog,
    tmp_path: Path,
) -> Iterator[GatewayProcess]:
    replicas.start(2)
    env = {
        "TENANT_ID": TENANT,
        "MESSENGER_APP_SECRET": APP_SECRET,
        "DIALOGUE_ADDRESS": f"127.0.0.1:{replicas.processes[0].port}",
        "CHATLOG_ADDRESS": recording_chatlog.address,
        "NLU_ADDRESS": nlu.address,
        "REDIS_URL": fault_redis.url,
        "GATEWAY_SUBMIT_TIMEOUT": "3",
        "GATEWAY_USER_RATE_LIMIT": "100000",
        "GATEWAY_TENANT_RATE_LIMIT": "1000000",
        "METRICS_PORT": "0",
        "LOG_LEVEL": "INFO",
    }
    process = GatewayProcess(tmp_path, env)
    yield process
    process.stop()


class Messenger:
    """Signed webhook deliveries, each retried until the gateway answers 200."""

    def __init__(self, url: str) -> None:
        self.url = f"{url}/webhooks/messenger"
        self.retries = 0
        self.redelivered = 0  # retries the dialogue had already accepted: deduplicated
        self.failures: dict[str, int] = {}
        self._local = threading.local()
        self._lock = threading.Lock()
        self._clients: list[httpx.Client] = []

    def deliver(self, out: Outgoing) -> None:
        now = int(time.time() * 1000)
        body = json.dumps(
            {
                "object": "page",
                "entry": [
                    {
                        "id": PAGE,
                        "time": now,
                        "messaging": [
                            {
                                "sender": {"id": out.user},
                                "recipient": {"id": PAGE},
                                "timestamp": now,
                                "message": {"mid": out.mid, "text": out.text},
                            }
                        ],
                    }
                ],
            }
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Hub-Signature-256": sign(APP_SECRET, body),
        }
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = httpx.Client(timeout=5)
            with self._lock:
                self._clients.append(client)
        deadline = time.monotonic() + 60
        while True:
            try:
                response = client.post(self.url, content=body, headers=headers)
                if response.status_code == 200:
                    if response.json().get("duplicates"):
                        with self._lock:
                            self.redelivered += 1
                    return
                why = str(response.status_code)
            except httpx.TransportError as exc:
                why = type(exc).__name__
            with self._lock:
                self.retries += 1
                self.failures[why] = self.failures.get(why, 0) + 1
            if time.monotonic() > deadline:
                raise AssertionError(f"{out.mid} never got a 200 (last: {why})")
            time.sleep(0.05)

    def close(self) -> None:
        for client in self._clients:
            client.close()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_gateway_restarted_mid_burst(
    gateway: GatewayProcess,
    graph_api: GraphApi,
    sig: signal.Signals,
    record_property: Callable[[str, object], None],
) -> None:
    messenger = Messenger(gateway.url)
    load = Load(60, 12, messenger.deliver, span_s=12, clients=12).start()
    at_fault: list[tuple[int, int]] = []
    down: list[float] = []
    codes: list[int] = []
    for number in range(RESTARTS):
        load.sleep_until(3.0 + 4.0 * number)
        at_fault.append(load.snapshot(graph_api.replies_by_user()))
        stopped = time.monotonic()
        codes.append(gateway.signal(sig))
        gateway.start()
        down.append(round(time.monotonic() - stopped, 1))
    try:
        load.join()
    finally:
        messenger.close()
    load.during(at_fault)
    # uvicorn ends a graceful stop by re-raising the signal: -15 is a clean exit there.
    clean = (0, -signal.SIGTERM) if sig == signal.SIGTERM else (-signal.SIGKILL,)
    assert all(code in clean for code in codes), (codes, gateway.tail())
    assert messenger.retries > 0, "no delivery ever failed: the restarts missed the burst"

    def answered() -> bool:
        return tally(load.expected, graph_api.replies_by_user()).complete

    drained = wait_for(answered, timeout=60, interval=0.25)
    time.sleep(1.0)
    result = tally(load.expected, graph_api.replies_by_user())
    # The dialogue never crashes here: retried deliveries are deduplicated, no repeat allowed.
    report(
        f"gateway {sig.name} x{RESTARTS} mid-burst",
        result,
        0,
        record_property,
        retried_deliveries=messenger.retries,
        deduplicated=messenger.redelivered,
        failures=dict(sorted(messenger.failures.items())),
        down_s=down,
        drained_after_s=round(drained, 1),
    )
    check(result, 0, per_user=0)
