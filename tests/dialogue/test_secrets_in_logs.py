"""No secret and no user's words in a log line, whatever logger writes it.

The page access token once went out in the Send API's query string, and httpx
logs every request URL at INFO. The sends below run in a child process under
the services' real logging set-up (``configure_logging``), at DEBUG so that
every logger speaks, and its stderr is searched for the token and for the text
the user typed into an action's URL.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from harness.standins import GraphApi
from harness.support import REPO
from mesh.logging import redact

TOKEN = "EAAGpagetokenSECRET0123456789"
CITY = "Privateville-4711"

_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from chatbot.common.v1 import event_pb2
    from mesh import configure_logging
    from mesh.tenants import Tenant
    from services.dialogue.actions import ActionRunner
    from services.dialogue.channels import MessengerChannel, SendError
    from services.dialogue.domain import ActionSpec
    from services.dialogue.http import HttpClient

    async def main(url: str, down_url: str, token: str, city: str) -> None:
        configure_logging("dialogue", "DEBUG")
        tenant = Tenant(id="t", page_access_token=token)
        async with HttpClient() as client:
            channel = MessengerChannel(client, url, attempts=2, backoff_s=0.01)
            await channel.typing(tenant, "psid-1")
            await channel.send(tenant, "psid-1", event_pb2.Reply(text="hello"), "m_in_1")
            try:  # a refusal is logged as a warning
                await channel.send(tenant, "psid-1", event_pb2.Reply(text="refuse me"), "m_in_2")
            except SendError as exc:
                print("send failed:", exc, file=sys.stderr)
            actions = ActionRunner(client, attempts=2, backoff_s=0.01)
            spec = ActionSpec("weather", "weather", url, ("city",), {})
            outcome = await actions.run(spec, {"city": city})
            print("weather:", outcome.response, file=sys.stderr)
            broken = ActionSpec("weather", "weather", down_url, ("city",), {})
            outcome = await actions.run(broken, {"city": city})
            print("broken weather:", outcome.response, file=sys.stderr)

    asyncio.run(main(*sys.argv[1:]))
    """
)


@pytest.fixture
def weather_down() -> Iterator[GraphApi]:
    api = GraphApi(weather_status=503).start()
    yield api
    api.stop()


@pytest.fixture
def graph() -> Iterator[GraphApi]:
    api = GraphApi().start()

    def refuse(body: dict[str, object]) -> tuple[int, dict[str, object]] | None:
        message = body.get("message")
        if isinstance(message, dict) and message.get("text") == "refuse me":
            return 400, {"error": {"message": "bad parameter", "code": 100}}
        return None

    api.rule = refuse
    yield api
    api.stop()


def test_a_send_and_an_action_log_neither_token_nor_user_text(
    graph: GraphApi, weather_down: GraphApi
) -> None:
    env = {**os.environ, "PYTHONPATH": f"{REPO}:{REPO / 'build/gen/py'}"}
    env.pop("LOG_LEVEL", None)
    result = subprocess.run(
        [sys.executable, "-c", _CHILD, graph.url, weather_down.url, TOKEN, CITY],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # The sends happened, with the token where it belongs, and were logged.
    assert [m.text for m in graph.sent] == ["hello"]
    assert graph.tokens == {TOKEN}
    assert "send failed:" in output and "weather: success" in output
    assert "broken weather: error" in output
    assert '"message": "Send API refused a message"' in output
    assert '"message": "action failed"' in output
    assert len(weather_down.actions) == 2  # tried twice, then gave up
    assert TOKEN not in output
    assert CITY not in output


@pytest.mark.parametrize(
    ("line", "secret"),
    [
        ("HTTP Request: POST https://g/v21.0/me/messages?access_token=EAAB1x%2F2 ok", "EAAB1x"),
        ("GET /webhooks/messenger?hub.mode=subscribe&hub.verify_token=vt-42&x=1", "vt-42"),
        ('{"headers": {"authorization": "Bearer abc.def-ghi"}}', "abc.def-ghi"),
        ("url?appsecret_proof=deadbeef&access_token=tok", "deadbeef"),
    ],
)
def test_redact_masks_credentials(line: str, secret: str) -> None:
    masked = redact(line)
    assert secret not in masked
    assert "[redacted]" in masked


def test_redacted_lines_stay_json() -> None:
    line = json.dumps({"message": 'x?access_token=a"b&y=1', "auth": "Bearer q\\w"})
    assert "access_token=[redacted]" in json.loads(redact(line))["message"]
