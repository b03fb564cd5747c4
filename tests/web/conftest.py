"""Browser tests: Debian's chromium, driven by Playwright for Python (launched through
`executable_path`; Playwright's own browser downloads are never used), against a real PlantPulse
served by uvicorn on a free port with MQTT ingest from a private Mosquitto, Redis and a per-run
PostgreSQL + TimescaleDB database.

Every page a test opens is checked for console errors and Content-Security-Policy violations
when the test ends. On failure the screenshot and the console log are saved in
`.test-artifacts/web/` (or $PLANTPULSE_TEST_ARTIFACTS)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    ViewportSize,
    async_playwright,
)

from plantpulse.auth.models import User
from plantpulse.auth.permissions import Role
from plantpulse.config import RedisSettings
from tests import support
from tests.conftest import PASSWORD, UserFactory
from tests.ingest.conftest import mqtt_settings, subscribed
from tests.live import LiveApp, live_app

ARTIFACTS = Path(
    os.environ.get("PLANTPULSE_TEST_ARTIFACTS", support.ROOT / ".test-artifacts" / "web")
)
BENCHMARKS = ARTIFACTS / "benchmarks.json"
VIEWPORT: ViewportSize = {"width": 1280, "height": 900}
CSP_PROBE = """
document.addEventListener("securitypolicyviolation", (e) => {
  console.error(`CSP violation: ${e.violatedDirective} blocked ${e.blockedURI || "inline"}`);
});
"""


def chromium_path() -> str:
    path = os.environ.get("PLANTPULSE_CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.fail("Debian's chromium is not installed: run scripts/setup.sh")
    return path


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path(),
            # Containers and CI machines have a small /dev/shm.
            args=["--disable-dev-shm-usage"],
        )
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Dashboard:
    live: LiveApp
    topic_prefix: str
    broker: support.Broker

    @property
    def url(self) -> str:
        return self.live.base_url

    def api(self, user: User) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.url,
            headers={"Authorization": f"Bearer {self.live.token(user)}"},
            timeout=30,
        )

    def topic(self, machine_id: uuid.UUID) -> str:
        return f"{self.topic_prefix}/machines/{machine_id}/telemetry"


@pytest.fixture(scope="module")
async def dashboard(database_url: str, broker: support.Broker) -> AsyncIterator[Dashboard]:
    """A running PlantPulse with MQTT ingest, Redis fan-out and alerts, as `plantpulse serve`."""
    settings = mqtt_settings(database_url, broker)
    settings = settings.model_copy(
        update={
            "redis": RedisSettings(
                url=support.REDIS_URL,
                key_prefix=f"pptest:{support.RUN_ID}:web:{uuid.uuid4().hex[:6]}:",
            )
        }
    )
    async with live_app(settings) as live:
        await subscribed(live.resources)
        yield Dashboard(live=live, topic_prefix=settings.mqtt.topic_prefix, broker=broker)


@dataclass
class PageLog:
    """What the browser said while a test ran: console messages, page errors."""

    lines: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def console(self, message: ConsoleMessage) -> None:
        line = f"[{message.type}] {message.text}"
        location = message.location
        if location.get("url"):
            line += f"  ({location['url']}:{location.get('lineNumber')})"
        self.lines.append(line)
        if message.type == "error":
            self.errors.append(message.text)

    def page_error(self, error: Exception) -> None:
        self.lines.append(f"[pageerror] {error}")
        self.errors.append(f"uncaught: {error}")


@dataclass
class Browsing:
    context: BrowserContext
    page: Page
    log: PageLog
    # Console errors a test expects (e.g. the 401 of a wrong password), as regexes.
    allowed: list[str] = field(default_factory=list)

    def allow(self, pattern: str) -> None:
        self.allowed.append(pattern)

    def unexpected_errors(self) -> list[str]:
        return [e for e in self.log.errors if not any(re.search(p, e) for p in self.allowed)]


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _write_log(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def _slug(nodeid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", nodeid.split("::", 1)[-1])[:120]


BrowsingFactory = Callable[..., Awaitable[Browsing]]


@pytest.fixture
async def browsing(
    browser: Browser, request: pytest.FixtureRequest
) -> AsyncIterator[BrowsingFactory]:
    """New browser contexts (fresh storage, like a new tab) with their console watched."""
    opened: list[Browsing] = []

    async def open_context(**options: Any) -> Browsing:
        context = await browser.new_context(
            viewport=VIEWPORT, accept_downloads=True, **{"color_scheme": "light", **options}
        )
        await context.add_init_script(CSP_PROBE)
        page = await context.new_page()
        page.set_default_timeout(15_000)
        log = PageLog()
        page.on("console", log.console)
        page.on("pageerror", log.page_error)
        browsing = Browsing(context=context, page=page, log=log)
        opened.append(browsing)
        return browsing

    yield open_context
    failed = any(
        getattr(request.node, f"report_{when}", None) is not None
        and getattr(request.node, f"report_{when}").failed
        for when in ("setup", "call")
    )
    unexpected: list[str] = []
    for i, item in enumerate(opened):
        unexpected += item.unexpected_errors()
        if failed or item.unexpected_errors():
            stem = ARTIFACTS / f"{_slug(request.node.nodeid)}-{i}"
            try:
                await item.page.screenshot(path=f"{stem}.png", full_page=True)
            except Exception as exc:  # a crashed page still gets its log saved
                item.log.lines.append(f"[screenshot failed] {exc}")
            await asyncio.to_thread(_write_log, Path(f"{stem}.console.log"), item.log.lines)
            print(f"\nbrowser artifacts: {stem}.png, {stem}.console.log")
        await item.context.close()
    if unexpected and not failed:
        pytest.fail(f"console errors or CSP violations: {unexpected}")


@pytest.fixture
async def browse(browsing: BrowsingFactory) -> Browsing:
    """One browser context for the test."""
    return await browsing()


async def sign_in(page: Page, dashboard: Dashboard, user: User, *, start: str = "/app/") -> None:
    await page.goto(dashboard.url + start)
    await page.wait_for_url("**/app/login**")
    await page.get_by_label("Username or email").fill(user.username)
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_url(lambda url: "/app/login" not in url)


@pytest.fixture
async def people(committed_user: UserFactory) -> dict[Role, User]:
    return {role: await committed_user(role) for role in Role}


def record_benchmark(name: str, figures: dict[str, Any]) -> None:
    """Benchmarks, not assertions: kept in .test-artifacts/web/benchmarks.json (and printed);
    docs/benchmarks.md quotes a run."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    data = json.loads(BENCHMARKS.read_text()) if BENCHMARKS.exists() else {}
    data[name] = {**figures, "measured_at": datetime.now(UTC).isoformat(timespec="seconds")}
    BENCHMARKS.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nbenchmark {name}: {figures}")
