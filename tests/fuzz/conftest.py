"""Real servers for the fuzzing properties.

- ``fuzz_chatlog``: the chatlog server (``ChatlogApp``) on SQLite, in a thread.
- ``fuzz_dialogue``: ``python -m services.dialogue serve`` as its own process,
  on a Redis of its own (the queues it leaves are checked after each run),
  with the keyword NLU stand-in, the chatlog above and a Send API recorder.
- the NLU properties use the session's real NLU server (``nlu_server``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.redis_servers import RedisServer
from harness.standins import GraphApi, KeywordNlu
from harness.support import REPO, ServiceProcess, free_port
from services.chatlog.settings import ChatlogSettings
from tests.chatlog.harness import TOKEN_SECRET, Harness
from tests.fuzz.dialogue_checks import SERVING, DialogueUnderFuzz

TENANT = "default"


@pytest.fixture(scope="session")
def fuzz_chatlog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    path: Path = tmp_path_factory.mktemp("fuzz-chatlog") / "chatlog.sqlite3"
    harness = Harness(
        ChatlogSettings(
            host="127.0.0.1",
            port=0,
            metrics_port=0,
            backend="sqlite",
            sqlite_path=path,
            page_token_secret=TOKEN_SECRET,
            health_interval=0.5,
            grace=1.0,
        )
    )
    try:
        harness.wait_serving()
        yield harness
    finally:
        harness.stop()


@pytest.fixture(scope="session")
def fuzz_dialogue(
    tmp_path_factory: pytest.TempPathFactory, fuzz_chatlog: Harness
) -> Iterator[DialogueUnderFuzz]:
    workdir = tmp_path_factory.mktemp("fuzz-dialogue")
    redis_server = RedisServer(workdir)
    graph, nlu = GraphApi().start(), KeywordNlu()
    port = free_port()
    env = {
        "REDIS_URL": redis_server.url,
        "NLU_ADDRESS": nlu.address,
        "CHATLOG_ADDRESS": fuzz_chatlog.address,
        "MESSENGER_GRAPH_API_URL": graph.url,
        "MESSENGER_PAGE_ACCESS_TOKEN": "page-token-for-tests",
        "ORDER_API_URL": graph.url,
        "WEATHER_API_URL": graph.url,
        "TENANT_ID": TENANT,
        "DIALOGUE_PAGE_TOKEN_SECRET": "dialogue-tests-page-tokens",
        "DIALOGUE_RETRY_BACKOFF_MS": "50",
        "DIALOGUE_STALL_GRACE_SECONDS": "1",
        "DIALOGUE_SWEEP_SECONDS": "0.5",
        "DIALOGUE_PORT": str(port),
        "METRICS_PORT": "0",
        "PYTHONPATH": f"{REPO}:{REPO / 'build' / 'gen' / 'py'}",
        # Long runs would write a log line per request at INFO.
        "LOG_LEVEL": "WARNING",
    }
    process = ServiceProcess(
        [sys.executable, "-m", "services.dialogue", "serve"], env, workdir / "dialogue.log", port
    )
    try:
        process.wait_for_status(SERVING, timeout=60)
        dialogue = DialogueUnderFuzz(process, redis_server, TENANT)
        yield dialogue
        dialogue.close()
    finally:
        process.stop()
        nlu.stop()
        graph.stop()
        redis_server.stop()
