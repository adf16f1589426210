"""Network faults on every link of a real stack, one after another, while
Messenger-shaped users talk.

The stack is what ``make run`` starts: the gateway, one dialogue process, the
NLU on the trained Rasa model, the chatlog on SQLite, Redis, and a Graph API
stand-in speaking HTTP/1.1 keep-alive. toxiproxy sits on every link:
gateway → dialogue, dialogue → NLU, dialogue → chatlog, gateway → Redis,
dialogue → Redis, dialogue → Graph API; and the Graph API stand-in can answer
`Connection: close`, which across a slow link loses answers. Each fault lasts less than the
dead-letter bound (a message fails 5 times, 0.5 + 1 + 2 + 4 s apart, before
it is dead-lettered), with calm after it.

Afterwards: every message answered, in each user's order, no reply to an
older message after a newer one, every webhook answered 200 in the end,
nothing dead-lettered; a reply went out twice only where the Send API's
answer was lost (the dialogue logs it), and never more than twice. While the
Graph API accepts and never answers, no new reply starts into it.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from grpc_health.v1 import health_pb2
from prometheus_client.parser import text_string_to_metric_families

from harness.support import ServiceProcess, free_port
from services.dialogue.domain import DEFAULT_DOMAIN, load_domain
from tests.dialogue.conftest import Replicas
from tests.faults import tally
from tests.faults.load import wait_for
from tests.faults.messenger import MessengerUsers
from tests.faults.system import APP_SECRET, PYTHONPATH, TENANT, FaultRedis, GatewayProcess, GraphApi
from tests.faults.toxiproxy import Proxy, Toxiproxy

pytestmark = [pytest.mark.faults, pytest.mark.slow]

SERVING = health_pb2.HealthCheckResponse.SERVING
USERS = 20
WARM_S = 6.0
FAULT_S = 6.0
CALM_S = 4.0
# The dead-letter bound: five failed attempts, retried 0.5, 1, 2 and 4 s apart.
DEAD_LETTER_BOUND_S = 0.5 + 1 + 2 + 4
# The breaker sees a hang after 1 s without an answer; the rest is slack for a busy machine.
HANG_SEEN_S = 2.5


@dataclass
class Links:
    toxiproxy: Toxiproxy
    gateway_dialogue: Proxy
    dialogue_nlu: Proxy
    dialogue_chatlog: Proxy
    dialogue_redis: Proxy
    gateway_redis: Proxy
    dialogue_graph: Proxy

    @property
    def all(self) -> list[Proxy]:
        return list(self.toxiproxy.proxies.values())


@dataclass
class Stack:
    links: Links
    graph: GraphApi
    redis: FaultRedis
    gateway: GatewayProcess
    dialogue: ServiceProcess

    @property
    def metrics(self) -> list[str]:
        dialogue = f"http://127.0.0.1:{self.dialogue.metrics_port}/metrics"
        return [dialogue, f"{self.gateway.url}/metrics"]


@dataclass(frozen=True)
class Fault:
    name: str
    apply: Callable[[Links, GraphApi], None]
    graph_hang: bool = False


Pick = Callable[[Links], list[Proxy]]


def toxic(
    pick: Pick, kind: str, *streams: str, **attributes: int
) -> Callable[[Links, GraphApi], None]:
    def apply(links: Links, graph: GraphApi) -> None:
        for proxy in pick(links):
            for stream in streams or ("downstream",):
                proxy.toxic(kind, stream, **attributes)

    return apply


def down(pick: Pick) -> Callable[[Links, GraphApi], None]:
    def apply(links: Links, graph: GraphApi) -> None:
        for proxy in pick(links):
            proxy.enabled(False)

    return apply


def closing_answers(links: Links, graph: GraphApi) -> None:
    """The Graph API answering ``Connection: close``, across a slow link: answers get lost."""
    graph.close_connections = True
    links.dialogue_graph.toxic("latency", latency=40, jitter=10)


def nlu(links: Links) -> list[Proxy]:
    return [links.dialogue_nlu]


def chatlog(links: Links) -> list[Proxy]:
    return [links.dialogue_chatlog]


def graph_api(links: Links) -> list[Proxy]:
    return [links.dialogue_graph]


def redis(links: Links) -> list[Proxy]:
    return [links.dialogue_redis, links.gateway_redis]


def dialogue(links: Links) -> list[Proxy]:
    return [links.gateway_dialogue]


def every(links: Links) -> list[Proxy]:
    return links.all


FAULTS = [
    Fault("NLU +300 ms ±200", toxic(nlu, "latency", latency=300, jitter=200)),
    Fault("NLU link down", down(nlu)),
    Fault("chatlog link down", down(chatlog)),
    Fault("chatlog link at 1 KB/s", toxic(chatlog, "bandwidth", "upstream", "downstream", rate=1)),
    # Requests arrive; answers never come back.
    Fault(
        "Send API accepts, never answers",
        toxic(graph_api, "timeout", "downstream", timeout=0),
        graph_hang=True,
    ),
    Fault("Send API connections reset", toxic(graph_api, "reset_peer", "upstream", timeout=0)),
    Fault("Redis connections reset", toxic(redis, "reset_peer", "upstream", timeout=0)),
    Fault("Redis links down", down(redis)),
    Fault("Redis +150 ms", toxic(redis, "latency", latency=150)),
    Fault("gateway → dialogue down", down(dialogue)),
    Fault("+40 ms ±10 on every link", toxic(every, "latency", latency=40, jitter=10)),
    Fault("Send API closes connections", closing_answers),
]


@pytest.fixture
def stack(nlu_server: ServiceProcess, tmp_path: Path) -> Iterator[Stack]:
    parts: list[Callable[[], object]] = []
    try:
        (tmp_path / "redis").mkdir()
        redis = FaultRedis(tmp_path / "redis")
        parts.append(redis.stop)
        graph = GraphApi().start()
        graph.orders["12345"] = {"status": "shipped", "eta": "Monday"}
        # A sender that gave up mid-request leaves a broken pipe behind: expected here.
        graph._server.handle_error = lambda *args: None  # type: ignore[method-assign]
        parts.append(graph.stop)
        chatlog_port = free_port()
        chatlog = ServiceProcess(
            [sys.executable, "-m", "services.chatlog", "serve"],
            {
                "PYTHONPATH": PYTHONPATH,
                "CHATLOG_PORT": str(chatlog_port),
                "METRICS_PORT": "0",
                "TENANT_ID": TENANT,
                "CHATLOG_BACKEND": "sqlite",
                "CHATLOG_SQLITE_PATH": str(tmp_path / "chatlog.sqlite3"),
                "LOG_LEVEL": "INFO",
            },
            tmp_path / "chatlog.log",
            chatlog_port,
        )
        parts.append(chatlog.stop)
        chatlog.wait_for_status(SERVING, timeout=60)

        toxiproxy = Toxiproxy(tmp_path)
        parts.append(toxiproxy.stop)
        redis_address = f"127.0.0.1:{redis.port}"
        nlu = toxiproxy.proxy("dialogue_nlu", f"127.0.0.1:{nlu_server.port}")
        chatlog_link = toxiproxy.proxy("dialogue_chatlog", f"127.0.0.1:{chatlog_port}")
        dialogue_redis = toxiproxy.proxy("dialogue_redis", redis_address)
        gateway_redis = toxiproxy.proxy("gateway_redis", redis_address)
        graph_link = toxiproxy.proxy("dialogue_graph", f"127.0.0.1:{graph.port}")
        replicas = Replicas(
            tmp_path,
            {
                "REDIS_URL": f"redis://{dialogue_redis.address}/0",
                "NLU_ADDRESS": nlu.address,
                "CHATLOG_ADDRESS": chatlog_link.address,
                "MESSENGER_GRAPH_API_URL": f"http://{graph_link.address}",
                "MESSENGER_PAGE_ACCESS_TOKEN": "page-token-for-partitions",
                "ORDER_API_URL": graph.url,
                "WEATHER_API_URL": graph.url,
                "TENANT_ID": TENANT,
                "DIALOGUE_PAGE_TOKEN_SECRET": "partitions-page-tokens",
                "DIALOGUE_STALL_GRACE_SECONDS": "1",
                "DIALOGUE_SWEEP_SECONDS": "0.5",
                "LOG_LEVEL": "INFO",
            },
        )
        parts.append(replicas.stop_all)
        metrics_port = free_port()
        (dialogue,) = replicas.start(1, METRICS_PORT=str(metrics_port))
        dialogue.metrics_port = metrics_port
        links = Links(
            toxiproxy,
            gateway_dialogue=toxiproxy.proxy("gateway_dialogue", f"127.0.0.1:{dialogue.port}"),
            dialogue_nlu=nlu,
            dialogue_chatlog=chatlog_link,
            dialogue_redis=dialogue_redis,
            gateway_redis=gateway_redis,
            dialogue_graph=graph_link,
        )
        gateway = GatewayProcess(
            tmp_path,
            {
                "TENANT_ID": TENANT,
                "MESSENGER_APP_SECRET": APP_SECRET,
                "DIALOGUE_ADDRESS": links.gateway_dialogue.address,
                "CHATLOG_ADDRESS": f"127.0.0.1:{chatlog_port}",
                "NLU_ADDRESS": f"127.0.0.1:{nlu_server.port}",
                "REDIS_URL": f"redis://{links.gateway_redis.address}/0",
                "GATEWAY_SUBMIT_TIMEOUT": "3",
                "GATEWAY_USER_RATE_LIMIT": "100000",
                "GATEWAY_TENANT_RATE_LIMIT": "1000000",
                "METRICS_PORT": "0",
                "LOG_LEVEL": "INFO",
            },
        )
        parts.append(gateway.stop)
        yield Stack(links, graph, redis, gateway, dialogue)
    finally:
        for stop in reversed(parts):
            stop()


# ---- what an operator sees --------------------------------------------------

WATCHED = {
    ("dialogue_send_attempts_total", "outcome"): "send",
    ("dialogue_send_breaker_transitions_total", "state"): "breaker",
    ("dialogue_sends_held_total", "reason"): "held",
    ("dialogue_send_probes_total", "outcome"): "probe",
    ("dialogue_send_resent_after_lost_total", ""): "resent after lost",
    ("dialogue_events_submitted_total", "outcome"): "submitted",
    ("dialogue_attempts_failed_total", ""): "attempts failed",
    ("dialogue_dead_letters_total", ""): "dead letters",
    ("dialogue_fencing_rejections_total", ""): "fenced",
    ("dialogue_users_rescheduled_total", ""): "rescheduled",
    ("gateway_http_requests_total", "status"): "webhook",
}


def scrape(*urls: str) -> Counter[str]:
    """The watched counters of some processes, by a short name (``send ok``)."""
    values: Counter[str] = Counter()
    for url in urls:
        text = httpx.get(url, timeout=10).raise_for_status().text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                route = sample.labels.get("route", "messenger")
                if "messenger" not in route:
                    continue  # the gateway's answers to webhooks only
                if sample.name == "grpc_client_handling_seconds_count":
                    code = sample.labels.get("grpc_code", "")
                    if code != "OK":  # calls to the NLU and the chatlog that failed
                        values[f"rpc {sample.labels.get('grpc_method')} {code}"] += int(
                            sample.value
                        )
                for (name, label), short in WATCHED.items():
                    if sample.name == name:
                        key = f"{short} {sample.labels.get(label, '')}".strip()
                        values[key] += int(sample.value)
    return values


def lost_answers(log: Path) -> set[str]:
    """The mids whose reply the dialogue sent without seeing the answer."""
    mids = set()
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if "Send API answer lost" in line:
            try:
                mids.add(json.loads(line).get("in_reply_to", ""))
            except ValueError:
                continue
    return mids


# ---- the test -----------------------------------------------------------------


def test_network_faults_on_every_link(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    graph, links = stack.graph, stack.links
    users = MessengerUsers(stack.gateway.url, APP_SECRET, USERS).start()
    # Contiguous windows: each fault, its calm after it, up to the next fault.
    windows: list[tuple[str, float, float]] = []
    seen: list[Counter[str]] = [scrape(*stack.metrics)]
    time.sleep(WARM_S)
    mark = time.monotonic()
    windows.append(("none (warm-up)", -math.inf, mark))
    seen.append(scrape(*stack.metrics))
    hang: tuple[float, float] | None = None
    try:
        for fault in FAULTS:
            began = time.monotonic()
            fault.apply(links, graph)
            time.sleep(FAULT_S)
            links.toxiproxy.calm()
            graph.close_connections = False
            if fault.graph_hang:
                hang = (began, time.monotonic())
            time.sleep(CALM_S)
            windows.append((fault.name, mark, time.monotonic()))
            mark = windows[-1][2]
            seen.append(scrape(*stack.metrics))
    finally:
        links.toxiproxy.calm()
        users.stop()
    windows[-1] = (windows[-1][0], windows[-1][1], math.inf)
    users.join(timeout=180)

    def everything_answered() -> bool:
        return tally.tally(users.sent, graph.replies_by_user()).complete

    wait_for(everything_answered, timeout=120, interval=0.25)
    time.sleep(2.0)  # a late repeat would land now
    seen.append(scrape(*stack.metrics))

    with graph.lock:
        received = list(graph.sent)
    copies = Counter((m.in_reply_to, m.text) for m in received)
    first_at: dict[str, float] = {}
    for message in received:
        first_at.setdefault(message.in_reply_to, message.time)
    lost_seen = lost_answers(stack.dialogue.log_path)
    unavailable = load_domain(DEFAULT_DOMAIN).responses["nlu_unavailable"][0].text

    def window_of(at: float) -> str:
        return next(name for name, begin, end in windows if begin <= at < end)

    rows = []
    for index, (name, _, _) in enumerate(windows):
        mids = {d.mid for d in users.deliveries if not d.duplicate and window_of(d.started) == name}
        expected = {u: [m for m in sent if m in mids] for u, sent in users.sent.items()}
        answered = {
            u: [m for m in replies if m in mids] for u, replies in graph.replies_by_user().items()
        }
        result = tally.tally(expected, answered)
        # Refusals when they happened; a wait for a 200 where it began to fail.
        refused = [at for d in users.deliveries for at, _ in d.failures if window_of(at) == name]
        waits = [
            d.wait_s
            for d in users.deliveries
            if window_of(d.failures[0][0] if d.failures else d.started) == name
        ]
        # A repeat where the first copy went out.
        repeats = sum(n - 1 for (mid, _), n in copies.items() if window_of(first_at[mid]) == name)
        delta = seen[index + 1] - seen[index]
        # What users read while the NLU was out of reach.
        delta["replies nlu_unavailable"] = sum(
            1 for m in received if m.text == unavailable and window_of(m.time) == name
        )
        rows.append(
            (
                name,
                len(mids),
                len(refused),
                max(waits, default=0.0),
                repeats,
                result.lost,
                result.reordered,
                delta,
            )
        )
    started_into_hang = []
    if hang is not None:
        began, ended = hang
        started_into_hang = [
            mid for mid, at in first_at.items() if began + HANG_SEEN_S <= at < ended
        ]

    heading = f"fault ({FAULT_S:.0f} s, then {CALM_S:.0f} s calm)"
    table = [
        "",
        f"{heading:34} {'msgs':>5} {'non-200':>8} {'max to 200':>11} "
        f"{'repeats':>8} {'lost':>5} {'reordered':>9}",
    ]
    for name, count, non_200, longest, repeats, lost, reordered, _ in rows:
        table.append(
            f"{name:34} {count:>5} {non_200:>8} {longest:>10.1f}s {repeats:>8} {lost:>5} "
            f"{reordered:>9}"
        )
    total = tally.tally(users.sent, graph.replies_by_user())
    table.append(
        f"{'all':34} {total.messages:>5} {sum(r[2] for r in rows):>8} "
        f"{max(r[3] for r in rows):>10.1f}s {sum(r[4] for r in rows):>8} {total.lost:>5} "
        f"{total.reordered:>9}"
    )
    table += ["", "what the metrics said in each window (increase of the counters):"]
    for name, *_, delta in rows:
        shown = ", ".join(f"{k} {v}" for k, v in sorted(delta.items()) if v)
        table.append(f"  {name}: {shown or '-'}")
    table.append(f"replies started into the hung Send API: {len(started_into_hang)}")
    with capsys.disabled():
        print("\n".join(table))
    tally.REPORTED.extend(table)

    # Every webhook got its 200 (MessengerUsers raises otherwise), every message its answer.
    assert total.lost == 0, total.problems()
    assert total.unexpected == 0, total.problems()
    # In each user's order; never a reply to an older message after a newer one.
    disorder = {
        user: graph.replies_by_user()[user]
        for user, one in sorted(total.users.items())
        if one.reordered
    }
    assert total.reordered == 0, (total.problems(), disorder)
    # A repeat only where the answer was lost, and never twice.
    repeated = {mid for (mid, _), n in copies.items() if n > 1}
    assert all(n <= 2 for n in copies.values()), [k for k, n in copies.items() if n > 2]
    assert repeated <= lost_seen, [
        (mid, window_of(first_at[mid])) for mid in sorted(repeated - lost_seen)
    ]
    # Faults shorter than the dead-letter bound dead-letter nothing.
    assert FAULT_S < DEAD_LETTER_BOUND_S
    client = stack.redis.client()
    try:
        assert not list(client.scan_iter(match="dlq:*")), "events went to the dead letters"
    finally:
        client.close()
    assert not sum(delta["dead letters"] for *_, delta in rows)
    # No new reply started while the Send API hung.
    assert not started_into_hang, started_into_hang
    # The faults bit: webhooks refused, answers lost, the breaker opened.
    assert sum(r[2] for r in rows) > 0
    hung = next(delta for name, *_, delta in rows if name == "Send API accepts, never answers")
    assert hung["send lost"] > 0 and hung["breaker open"] > 0, hung
