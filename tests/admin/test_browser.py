"""The console in a real browser: Debian's Chromium driven by Playwright.

The gateway runs as a process with the console mounted, in front of the real
dialogue and chatlog services. A conversation comes in through the signed
Messenger webhook; an administrator signs in with the keyboard, sees the
picture and the intent, takes the conversation over and answers (the Graph API
stand-in receives it), the transcript follows new messages live, and a viewer
of another tenant cannot see it. Every page is saved as a screenshot under the
test's directory and copied to build/screenshots/.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from harness.support import REPO, free_port
from services.gateway.messenger.signature import sign
from tests.admin.conftest import PREFIX, ROOT, USERS
from tests.admin.stack import ACME_SECRET, PYTHONPATH, Stack, wait_for, webhook_body

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

CHROMIUM = Path(shutil.which("chromium") or "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = REPO / "build" / "screenshots"

pytestmark = pytest.mark.slow


def _missing(what: str) -> None:
    # CI must run the browser tests: there, a missing browser is a failure.
    if os.environ.get("CI"):
        pytest.fail(what)
    pytest.skip(what)


class GatewayProcess:
    def __init__(self, stack: Stack, workdir: Path) -> None:
        import subprocess

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "gateway.log"
        self._log = self.log_path.open("wb")
        env = {
            **os.environ,
            "PYTHONPATH": PYTHONPATH,
            "TENANTS_FILE": str(stack.tenants_file),
            "GATEWAY_HOST": "127.0.0.1",
            "GATEWAY_PORT": str(self.port),
            "DIALOGUE_ADDRESS": stack.dialogue_address,
            "CHATLOG_ADDRESS": stack.chatlog_address,
            "NLU_ADDRESS": stack.nlu.address,
            "REDIS_URL": stack.redis_url,
            "ADMIN_USERNAME": ROOT[0],
            "ADMIN_PASSWORD": ROOT[1],
            "ADMIN_COOKIE_SECURE": "false",
            "ADMIN_IMG_SRC": "http://127.0.0.1:*",
            "ADMIN_REDIS_PREFIX": PREFIX,
            "ADMIN_LIVE_POLL_SECONDS": "0.3",
            # No Graph API here: the console shows customers by id.
            "ADMIN_PROFILES": "false",
            "LOG_LEVEL": "INFO",
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.gateway", "serve"],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not start:\n{self.log_path.read_text()}")
            time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except Exception:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture(scope="module")
def gateway(
    stack: Stack, users: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    process = GatewayProcess(stack, tmp_path_factory.mktemp("browser-gateway"))
    yield process
    process.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        _missing("Debian's chromium is not installed: apt-get install chromium chromium-driver")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("Playwright for Python is not installed: pip install playwright")
    with sync_playwright() as playwright:
        found = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield found
        found.close()


class Shots:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.taken: list[Path] = []

    def take(self, page: Page, name: str) -> None:
        path = self.directory / f"{len(self.taken) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)

    def publish(self) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        for path in self.taken:
            shutil.copy2(path, ARTIFACTS / path.name)


def _post_webhook(gateway: GatewayProcess, user_id: str, messages: list[dict[str, Any]]) -> None:
    _deliver(gateway, webhook_body("9001", user_id, messages))


def _deliver(gateway: GatewayProcess, body: bytes) -> None:
    answer = httpx.post(
        f"{gateway.url}/webhooks/messenger",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-Hub-Signature-256": sign(ACME_SECRET, body),
        },
        timeout=10,
    )
    assert answer.status_code == 200, answer.text


def _post_receipt(gateway: GatewayProcess, user_id: str, kind: str, watermark_ms: int) -> None:
    now = int(time.time() * 1000)
    item = {
        "sender": {"id": user_id},
        "recipient": {"id": "9001"},
        "timestamp": now,
        kind: {"watermark": watermark_ms},
    }
    raw = {"object": "page", "entry": [{"id": "9001", "time": now, "messaging": [item]}]}
    _deliver(gateway, json.dumps(raw).encode())


def _focused(page: Page) -> str:
    script = "() => { const e = document.activeElement; return e ? e.id || e.tagName : ''; }"
    return str(page.evaluate(script))


def _sign_in_with_the_keyboard(page: Page, name: str, password: str) -> None:
    page.keyboard.press("Tab")
    assert _focused(page) == "skip-link"  # the first stop: skip to the content
    for _ in range(5):
        page.keyboard.press("Tab")
        if _focused(page) == "username":
            break
    assert _focused(page) == "username"
    outline = page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle")
    assert outline not in ("", "none")  # a visible focus
    page.keyboard.type(name)
    page.keyboard.press("Tab")
    assert _focused(page) == "password"
    page.keyboard.type(password)
    page.keyboard.press("Enter")
    page.wait_for_load_state()
    problem = page.locator(".problem")
    assert problem.count() == 0, problem.inner_text()


def test_an_admin_reads_takes_over_and_answers(
    browser: Browser, gateway: GatewayProcess, stack: Stack, tmp_path: Path
) -> None:
    shots = Shots(tmp_path / "screenshots")
    user_id = f"4{uuid.uuid4().int % 10**12:012d}"
    conversation = f"1:{user_id}"
    _post_webhook(
        gateway,
        user_id,
        [
            {"mid": f"m_{user_id}_1", "text": "hello, I need help with my order"},
            {
                "mid": f"m_{user_id}_2",
                "attachments": [{"type": "image", "payload": {"url": stack.images.url}}],
            },
        ],
    )
    wait_for(lambda: len(stack.transcript("acme", conversation)) >= 4, what="the chatlog")

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    try:
        page.goto(f"{gateway.url}/admin/t/acme/conversation?id={conversation}")
        assert "/admin/login" in page.url
        shots.take(page, "login")
        _sign_in_with_the_keyboard(page, *ROOT)
        page.wait_for_url(f"**/admin/t/acme/conversation?id={conversation}")

        # The picture and the intent.
        image = page.get_by_alt_text("Image sent by the user")
        image.wait_for()
        assert page.evaluate(
            "() => { const i = document.querySelector('img[alt=\"Image sent by the user\"]');"
            " return i.complete && i.naturalWidth > 0; }"
        )
        assert page.locator(".intent").first.inner_text() == "order_status"
        assert page.get_by_text("keyword-1").count() >= 1
        shots.take(page, "transcript")

        # Take over, answer as an agent: the user receives it through the Graph API.
        page.get_by_role("button", name="Take over").click()
        page.get_by_text("You have this conversation now").wait_for()
        page.get_by_label("Answer as root").fill("Hi, this is a person. Let me check.")
        page.get_by_role("button", name="Send").click()
        page.get_by_text("Sent.", exact=True).wait_for()
        wait_for(
            lambda: any(
                m.recipient == user_id and m.text == "Hi, this is a person. Let me check."
                for m in stack.graph.sent
            ),
            what="the agent's message at the Graph API",
        )
        page.locator(".bubble.author-agent", has_text="Let me check").wait_for()

        # The open transcript follows the user's next message; the bot stays silent.
        _post_webhook(gateway, user_id, [{"mid": f"m_{user_id}_3", "text": "thank you!"}])
        page.locator(".bubble.in", has_text="thank you!").wait_for(timeout=15_000)
        assert not any(m.in_reply_to == f"m_{user_id}_3" for m in stack.graph.sent)
        # Messenger's read receipt: the open transcript redraws the replies as read.
        _post_receipt(gateway, user_id, "read", int(time.time() * 1000) + 1000)
        agent_badge = page.locator(".bubble.author-agent .badge.delivery")
        agent_badge.filter(has_text="Read").wait_for(timeout=15_000)
        shots.take(page, "handed-off-with-agent-reply")

        page.get_by_role("button", name="Hand back to the bot").click()
        page.get_by_text("The bot answers this conversation again.").wait_for()

        # The other pages.
        page.get_by_role("link", name="Conversations").click()
        page.get_by_label("Intent").fill("order_status")
        page.get_by_label("Intent").press("Enter")
        page.get_by_role("link", name=user_id).wait_for()
        shots.take(page, "conversations")
        page.get_by_role("link", name="Stats").click()
        page.locator("#chart-messages").wait_for()
        shots.take(page, "stats")
        page.get_by_role("link", name="Dead letters").click()
        page.get_by_role("heading", name="Dead letters").wait_for()
        shots.take(page, "dead-letters")
        page.get_by_role("link", name="Hand-off").click()
        page.get_by_role("heading", name="Handed off to people").wait_for()
        shots.take(page, "handoffs")
        page.get_by_role("link", name="Training data").click()
        page.get_by_text("hello, I need help with my order").first.wait_for()
        shots.take(page, "training-data")
        page.get_by_role("button", name="Sign out").click()
        page.get_by_text("You are signed out.").wait_for()
    finally:
        context.close()

    # A viewer of another tenant sees nothing of it.
    viewer = browser.new_context(viewport={"width": 1280, "height": 900})
    page = viewer.new_page()
    try:
        page.goto(f"{gateway.url}/admin/")
        page.get_by_label("User name").fill("gus")
        page.get_by_label("Password").fill(USERS["gus"][2])
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/admin/t/globex/conversations")
        assert user_id not in page.content()
        assert page.locator("#tenant-switch option").all_inner_texts() == ["globex"]
        shots.take(page, "viewer-of-globex")
        answer = page.goto(f"{gateway.url}/admin/t/acme/conversation?id={conversation}")
        assert answer is not None and answer.status == 404
        assert user_id not in page.content()
        shots.take(page, "viewer-cannot-see-acme")
        api = page.request.get(f"{gateway.url}/api/admin/tenants/acme/conversations")
        assert api.status == 404
    finally:
        viewer.close()
        shots.publish()
    assert len(shots.taken) == 10
