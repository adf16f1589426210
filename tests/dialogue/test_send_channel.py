"""The Send API channel against a real local HTTP server: what each failure
risks, and the breaker that holds sends while the API fails or hangs.

A failure before the request was written is retried at once; one after it
may have arrived is retried only once the API answers again, so an answer
lost costs at most one repeat. While the API hangs no new send starts.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator

import pytest
from chatbot.common.v1 import event_pb2
from prometheus_client import REGISTRY

from harness.standins import GraphApi
from harness.support import free_port
from mesh.tenants import Tenant
from services.dialogue.breaker import BreakerState, SendBreaker
from services.dialogue.channels import MessengerChannel, SendError, SendHeld
from services.dialogue.http import HttpClient

TENANT = Tenant(id="default", page_access_token="page-token-for-channel-tests")


def counted(outcome: str) -> float:
    return REGISTRY.get_sample_value("dialogue_send_attempts_total", {"outcome": outcome}) or 0.0


def resent() -> float:
    return REGISTRY.get_sample_value("dialogue_send_resent_after_lost_total") or 0.0


def reply(text: str = "hello") -> event_pb2.Reply:
    return event_pb2.Reply(text=text)


async def until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    """Waits for ``condition`` without blocking the loop the channel runs on."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met")
        await asyncio.sleep(0.02)


@pytest.fixture
def api() -> Iterator[GraphApi]:
    server = GraphApi().start()
    yield server
    server.stop()


@pytest.fixture
async def client() -> AsyncIterator[HttpClient]:
    async with HttpClient() as http:
        yield http


def copies(api: GraphApi) -> Counter[str]:
    with api.lock:
        return Counter(m.in_reply_to for m in api.sent)


async def test_keep_alive_reuses_one_connection(api: GraphApi, client: HttpClient) -> None:
    channel = MessengerChannel(client, api.url)
    for number in range(5):
        await channel.send(TENANT, "u1", reply(), f"m_{number}")
    assert len(api.sent) == 5
    assert len(api.peers) == 1


async def test_connection_close_mode_answers_every_message(
    api: GraphApi, client: HttpClient
) -> None:
    api.close_connections = True
    lost = counted("lost")
    channel = MessengerChannel(client, api.url)
    for number in range(5):
        await channel.send(TENANT, "u1", reply(), f"m_{number}")
    assert copies(api) == {f"m_{n}": 1 for n in range(5)}
    assert len(api.peers) == 5  # a connection per message
    assert counted("lost") == lost


async def test_refused_connection_is_unreachable_and_retried(client: HttpClient) -> None:
    port = free_port()  # nothing listens there
    unreachable, lost = counted("unreachable"), counted("lost")
    channel = MessengerChannel(
        client,
        f"http://127.0.0.1:{port}",
        attempts=2,
        backoff_s=0.01,
        breaker=SendBreaker(failures_to_open=10),
    )
    with pytest.raises(SendError) as raised:
        await channel.send(TENANT, "u1", reply(), "m_1")
    assert not raised.value.permanent
    assert not isinstance(raised.value, SendHeld)
    assert counted("unreachable") == unreachable + 2
    assert counted("lost") == lost


async def test_breaker_holds_sends_while_the_api_is_unreachable_then_lets_them_go(
    client: HttpClient,
) -> None:
    port = free_port()
    breaker = SendBreaker(failures_to_open=2, cooldown_s=0.05, max_cooldown_s=0.2)
    channel = MessengerChannel(
        client, f"http://127.0.0.1:{port}", attempts=5, backoff_s=0.01, breaker=breaker
    )
    unreachable = counted("unreachable")
    # Two refusals open the breaker: the send is held, not failed, and stops trying.
    with pytest.raises(SendHeld):
        await channel.send(TENANT, "u1", reply(), "m_1", deadline=time.monotonic() + 1.5)
    assert breaker.state() is BreakerState.OPEN
    assert counted("unreachable") == unreachable + 2
    api = GraphApi(port=port).start()
    try:
        await channel.send(TENANT, "u1", reply(), "m_1", deadline=time.monotonic() + 10)
        assert api.probes >= 1
        assert copies(api) == {"m_1": 1}
        assert breaker.state() is BreakerState.CLOSED
    finally:
        api.stop()


async def test_lost_answer_is_resent_once_and_only_after_the_api_answers_again(
    api: GraphApi, client: HttpClient
) -> None:
    api.lose_answers = 1
    api.probe_status = 503  # the API does not answer properly yet
    lost = counted("lost")
    breaker = SendBreaker(cooldown_s=0.02, max_cooldown_s=0.05)
    channel = MessengerChannel(client, api.url, backoff_s=0.01, breaker=breaker)
    send = asyncio.create_task(channel.send(TENANT, "u1", reply(), "m_1"))
    await until(lambda: api.probes >= 3)
    # It arrived once; while probes fail it is not sent again.
    assert copies(api) == {"m_1": 1}
    assert not send.done()
    api.probe_status = 200
    await send
    assert copies(api) == {"m_1": 2}
    assert counted("lost") == lost + 1


async def test_a_held_send_called_again_still_knows_its_answer_was_lost(
    api: GraphApi, client: HttpClient
) -> None:
    api.lose_answers = 1
    api.probe_status = 503
    before = resent()
    breaker = SendBreaker(cooldown_s=0.02, max_cooldown_s=0.05)
    channel = MessengerChannel(client, api.url, backoff_s=0.01, breaker=breaker)
    with pytest.raises(SendHeld):
        await channel.send(TENANT, "u1", reply(), "m_1", deadline=time.monotonic() + 1.5)
    assert copies(api) == {"m_1": 1}
    api.probe_status = 200
    await channel.send(TENANT, "u1", reply(), "m_1", deadline=time.monotonic() + 10)
    assert copies(api) == {"m_1": 2}
    assert resent() == before + 1


async def test_read_timeout_is_a_lost_answer(api: GraphApi, client: HttpClient) -> None:
    api.answer_delay_s = 1.0
    lost, unreachable = counted("lost"), counted("unreachable")
    breaker = SendBreaker(cooldown_s=0.02, max_cooldown_s=0.1)
    channel = MessengerChannel(client, api.url, timeout_s=0.3, backoff_s=0.01, breaker=breaker)
    send = asyncio.create_task(channel.send(TENANT, "u1", reply(), "m_1"))
    await until(lambda: counted("lost") > lost)
    api.answer_delay_s = 0.0
    await send
    assert copies(api) == {"m_1": 2}
    assert counted("unreachable") == unreachable


async def test_no_send_starts_into_a_hanging_api(api: GraphApi, client: HttpClient) -> None:
    api.answer_delay_s = 3.0  # accepts, and answers late
    breaker = SendBreaker(hang_s=0.2, cooldown_s=0.05, max_cooldown_s=0.5)
    channel = MessengerChannel(client, api.url, timeout_s=10.0, backoff_s=0.01, breaker=breaker)
    first = asyncio.create_task(channel.send(TENANT, "u0", reply(), "m_0"))
    # Seen hanging while the first call is still in flight, long before its time-out.
    await until(lambda: breaker.state() is BreakerState.HANGING)
    others = [
        channel.send(TENANT, f"u{n}", reply(), f"m_{n}", deadline=time.monotonic() + 1.5)
        for n in range(1, 6)
    ]
    outcomes = await asyncio.gather(*others, return_exceptions=True)
    assert all(isinstance(o, SendHeld) for o in outcomes), outcomes
    assert copies(api) == {"m_0": 1}  # nothing new went into the hang
    assert not first.done()
    api.answer_delay_s = 0.0
    await first  # its answer ends the hang
    assert breaker.state() is BreakerState.CLOSED
    for n in range(1, 6):
        await channel.send(TENANT, f"u{n}", reply(), f"m_{n}", deadline=time.monotonic() + 10)
    assert copies(api) == {f"m_{n}": 1 for n in range(6)}


async def test_an_outage_costs_at_most_one_repeat_per_message_in_flight(
    api: GraphApi, client: HttpClient
) -> None:
    api.answer_delay_s = 2.0  # every answer later than the time-out, probes too
    breaker = SendBreaker(hang_s=0.2, cooldown_s=0.05, max_cooldown_s=0.3)
    channel = MessengerChannel(client, api.url, timeout_s=0.5, backoff_s=0.01, breaker=breaker)
    in_flight = [
        asyncio.create_task(channel.send(TENANT, f"u{n}", reply(), f"m_{n}")) for n in range(5)
    ]
    await until(lambda: len(api.sent) == 5)
    # Time-outs, then probes that time out too: none of the five is sent again.
    await until(lambda: api.probes >= 3)
    assert copies(api) == {f"m_{n}": 1 for n in range(5)}
    api.answer_delay_s = 0.0
    await asyncio.gather(*in_flight)
    assert copies(api) == {f"m_{n}": 2 for n in range(5)}


async def test_no_attempt_starts_without_time_for_it(api: GraphApi, client: HttpClient) -> None:
    channel = MessengerChannel(client, api.url)
    with pytest.raises(SendHeld):
        await channel.send(TENANT, "u1", reply(), "m_1", deadline=time.monotonic() + 0.5)
    assert not api.sent
    # With less left than the attempt's timeout, the attempt is shortened to fit.
    await channel.send(TENANT, "u1", reply(), "m_1", deadline=time.monotonic() + 2.0)
    assert copies(api) == {"m_1": 1}


async def test_server_errors_for_everyone_hold_sends_instead_of_failing_them(
    api: GraphApi, client: HttpClient
) -> None:
    api.rule = lambda body: (500, {"error": {"message": "down", "code": 2}})
    api.probe_status = 500
    breaker = SendBreaker(failures_to_open=3, cooldown_s=0.02, max_cooldown_s=0.05)
    channel = MessengerChannel(client, api.url, attempts=5, backoff_s=0.01, breaker=breaker)
    refused = counted("refused")
    with pytest.raises(SendHeld):
        await channel.send(TENANT, "u1", reply(), "m_1", deadline=time.monotonic() + 1.5)
    assert counted("refused") == refused + 3  # then the breaker opened: no more attempts
    api.rule = None
    api.probe_status = 200
    await channel.send(TENANT, "u1", reply(), "m_1", deadline=time.monotonic() + 10)
    assert copies(api) == {"m_1": 1}
