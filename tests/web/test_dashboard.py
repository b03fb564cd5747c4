"""The dashboard in a real browser, as its users would use it (see conftest.py)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiomqtt
import httpx
from playwright.async_api import Page, Request, expect

from plantpulse.auth.models import User
from plantpulse.auth.permissions import Role
from tests.conftest import MachineFactory
from tests.web.conftest import (
    Browsing,
    BrowsingFactory,
    Dashboard,
    record_benchmark,
    sign_in,
)


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


async def publish(dashboard: Dashboard, machine: uuid.UUID, **metrics: float) -> str:
    """A device's MQTT message; returns the reading's timestamp."""
    stamp = _iso(datetime.now(UTC).replace(microsecond=0))
    async with aiomqtt.Client(dashboard.broker.host, dashboard.broker.port) as device:
        await device.publish(
            dashboard.topic(machine), json.dumps({"timestamp": stamp, **metrics}), qos=1
        )
    return stamp


async def live_marks(page: Page, name: str) -> list[dict[str, Any]]:
    marks: list[dict[str, Any]] = await page.evaluate(
        """(name) => performance.getEntriesByName(name).map(
            (m) => ({time: m.startTime, detail: m.detail}))""",
        name,
    )
    return marks


async def following(page: Page, machine: uuid.UUID | None = None) -> None:
    """Until the page's socket is subscribed to the machine (None: to every machine)."""
    await page.wait_for_function(
        """(id) => performance.getEntriesByName("pp-live-subscribed").some(
            (m) => id === null ? m.detail.all : m.detail.machine_ids.includes(id))""",
        arg=None if machine is None else str(machine),
    )


async def ws_to_screen_ms(page: Page, stamp: str) -> float:
    """D3: from the reading's WebSocket event to the frame that shows it."""

    async def both() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        received = [
            m
            for m in await live_marks(page, "pp-live-received")
            if m["detail"]["timestamp"] == stamp
        ]
        shown = [
            m for m in await live_marks(page, "pp-live-shown") if stamp in m["detail"]["timestamps"]
        ]
        return received, shown

    for _ in range(100):
        received, shown = await both()
        if received and shown:
            return float(shown[0]["time"] - received[0]["time"])
        await asyncio.sleep(0.05)
    raise AssertionError(f"no live marks for the reading at {stamp}")


class TestSignIn:
    async def test_user_signs_in_lands_on_the_fleet_and_signs_out(
        self, dashboard: Dashboard, browse: Browsing, people: dict[Role, User]
    ) -> None:
        page = browse.page
        await sign_in(page, dashboard, people[Role.operator])
        await expect(page.get_by_role("heading", name="Fleet")).to_be_visible()
        await expect(
            page.get_by_text(f"{people[Role.operator].username} (operator)")
        ).to_be_visible()
        token = await page.evaluate(
            "JSON.parse(sessionStorage.getItem('plantpulse.session')).access"
        )
        assert token not in page.url

        await page.get_by_role("button", name="Sign out").click()
        await page.wait_for_url("**/app/login")
        assert await page.evaluate("sessionStorage.length") == 0
        # Signing out revoked the token on the server, not only in the tab.
        async with httpx.AsyncClient(base_url=dashboard.url) as client:
            me = await client.get("/api/v1/auth/me", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 401
        # And the dashboard sends a signed-out visitor back to the sign-in page.
        await page.goto(f"{dashboard.url}/app/alerts")
        await page.wait_for_url("**/app/login?next=%2Fapp%2Falerts")

    async def test_wrong_password_is_refused_with_a_message(
        self, dashboard: Dashboard, browse: Browsing, people: dict[Role, User]
    ) -> None:
        page = browse.page
        browse.allow(r"status of 401")  # the refused login request, logged by the browser
        await page.goto(f"{dashboard.url}/app/login")
        await page.get_by_label("Username or email").fill(people[Role.operator].username)
        await page.get_by_label("Password").fill("not the password")
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("alert")).to_have_text("Wrong username or password.")
        assert page.url.endswith("/app/login")
        assert await page.evaluate("sessionStorage.length") == 0

    async def test_a_browser_opening_the_root_gets_the_dashboard_and_programs_get_json(
        self, dashboard: Dashboard, browse: Browsing
    ) -> None:
        await browse.page.goto(f"{dashboard.url}/")
        await browse.page.wait_for_url("**/app/login?next=%2Fapp%2F")
        async with httpx.AsyncClient(base_url=dashboard.url) as client:
            root = await client.get("/")
        assert root.json()["name"] == "PlantPulse"


class TestLiveReadings:
    async def test_operator_sees_a_published_reading_on_the_fleet_card_and_the_live_chart(
        self,
        dashboard: Dashboard,
        browse: Browsing,
        people: dict[Role, User],
        committed_machine: MachineFactory,
    ) -> None:
        name = f"Press {uuid.uuid4().hex[:6]}"
        machine = await committed_machine(name, location="Hall A")
        page = browse.page
        await sign_in(page, dashboard, people[Role.operator])
        await page.get_by_label("Search").fill(name)
        card = page.get_by_role("listitem", name=name)
        await expect(card).to_be_visible()
        await expect(page.get_by_role("listitem")).to_have_count(1)
        # The card follows the machine once the socket is subscribed.
        await expect(page.locator("#fleet")).to_have_attribute("aria-busy", "false")
        await following(page, machine)

        stamp = await publish(dashboard, machine, temperature=71.25, pressure=2.5)
        await expect(card.locator("dd[data-metric=temperature]")).to_have_text("71.25")
        await expect(card.locator("dd[data-metric=pressure]")).to_have_text("2.5")
        fleet_ms = await ws_to_screen_ms(page, stamp)

        await card.get_by_role("link", name=name).click()
        await expect(page.get_by_role("heading", name=name)).to_be_visible()
        chart = page.get_by_role("img", name="temperature, live")
        await expect(chart.locator("canvas")).to_be_visible()
        await following(page, machine)
        stamp = await publish(dashboard, machine, temperature=73.5)
        await expect(page.locator("#latest dd[data-metric=temperature]")).to_have_text("73.5")
        machine_ms = await ws_to_screen_ms(page, stamp)
        record_benchmark(
            "D3 live reading, WebSocket event -> on screen (ms)",
            {"fleet card": round(fleet_ms, 1), "machine live chart": round(machine_ms, 1)},
        )


class TestAlerts:
    async def test_a_threshold_breach_shows_in_the_panel_and_is_acknowledged_with_a_comment(
        self,
        dashboard: Dashboard,
        browse: Browsing,
        people: dict[Role, User],
        committed_machine: MachineFactory,
    ) -> None:
        name = f"Oven {uuid.uuid4().hex[:6]}"
        machine = await committed_machine(name)
        async with dashboard.api(people[Role.management]) as api:
            rule = await api.post(
                "/api/v1/alert-rules",
                json={
                    "name": "Oven too hot",
                    "scope": "machine",
                    "machine_id": str(machine),
                    "metric": "temperature",
                    "condition": ">",
                    "threshold": 80,
                    "severity": "critical",
                },
            )
            assert rule.status_code == 201, rule.text
        page = browse.page
        await sign_in(page, dashboard, people[Role.operator], start="/app/alerts")
        await expect(page.get_by_role("heading", name="Active")).to_be_visible()
        await following(page)

        await publish(dashboard, machine, temperature=95.5)
        row = page.locator("#active-alerts tr").filter(has_text=name)
        await expect(row).to_be_visible()
        await expect(row.get_by_text("critical")).to_be_visible()
        await expect(row).to_contain_text("95.5")

        await row.get_by_role("button", name=re.compile("^Acknowledge")).click()
        dialog = page.get_by_role("dialog", name="Acknowledge alert")
        await dialog.get_by_label("Comment").fill("Door left open, closed it")
        await dialog.get_by_role("button", name="Acknowledge").click()
        await expect(dialog).to_be_hidden()
        await expect(row).to_contain_text("Door left open, closed it")
        await expect(row.get_by_role("button", name=re.compile("^Acknowledge"))).to_have_count(0)

        async with dashboard.api(people[Role.management]) as api:
            alerts = (await api.get(f"/api/v1/alerts?machine_id={machine}")).json()["items"]
            await api.delete(f"/api/v1/alert-rules/{rule.json()['id']}")
        assert [(a["ack_comment"], a["acknowledged_by"]) for a in alerts] == [
            ("Door left open, closed it", str(people[Role.operator].id))
        ]


async def ingest_minutes(
    dashboard: Dashboard, user: User, machine: uuid.UUID, *, minutes: int, end: datetime
) -> None:
    """One reading a minute for `minutes` up to `end`, through the HTTP ingest API."""
    async with dashboard.api(user) as api:
        for first in range(0, minutes, 10_000):
            readings = [
                {
                    "timestamp": _iso(end - timedelta(minutes=minutes - i)),
                    "temperature": 60 + 10 * ((i % 1440) / 1440) + (i % 7),
                }
                for i in range(first, min(first + 10_000, minutes))
            ]
            answer = await api.post(
                "/api/v1/telemetry/ingest",
                json={"batch": [{"machine_id": str(machine), "readings": readings}]},
            )
            assert answer.status_code == 200, answer.text


class TestHistory:
    async def test_range_change_asks_for_one_bucket_per_pixel_and_csv_exports_the_visible_range(
        self,
        dashboard: Dashboard,
        browse: Browsing,
        people: dict[Role, User],
        committed_machine: MachineFactory,
    ) -> None:
        machine = await committed_machine(f"Mill {uuid.uuid4().hex[:6]}")
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        await ingest_minutes(dashboard, people[Role.management], machine, minutes=8 * 1440, end=now)
        page = browse.page
        queries: list[Request] = []
        page.on(
            "request",
            lambda r: queries.append(r) if "interval=" in r.url and str(machine) in r.url else None,
        )
        await sign_in(page, dashboard, people[Role.operator], start=f"/app/machines/{machine}")
        await expect(page.locator("#history-info")).to_contain_text("points of")

        queries.clear()
        await page.get_by_role("button", name="7 d").click()
        await expect(page.locator("#history-info")).to_contain_text("points of 10m")
        assert len(queries) == 1
        asked = parse_qs(urlsplit(queries[0].url).query)
        start = datetime.fromisoformat(asked["start_time"][0])
        end = datetime.fromisoformat(asked["end_time"][0])
        assert (asked["interval"], asked["agg"], asked["fields"]) == (
            ["10m"],
            ["avg,min,max"],
            ["temperature"],
        )
        width = await page.locator("#history-chart canvas").evaluate("c => c.clientWidth")
        assert (end - start) / timedelta(minutes=10) <= width
        answer = await (await queries[0].response()).json()  # type: ignore[union-attr]
        assert 0 < len(answer["items"]) <= width

        async with page.expect_download() as download_info:
            await page.get_by_role("button", name="Export CSV (visible range)").click()
        download = await download_info.value
        path = await download.path()
        rows = list(csv.reader(io.StringIO(path.read_text())))
        assert rows[0] == ["timestamp", "temperature"]
        stamps = [datetime.fromisoformat(r[0].replace("Z", "+00:00")) for r in rows[1:]]
        assert all(start <= t < end for t in stamps)
        # Every stored reading of the range, one a minute.
        expected = sum(
            1 for i in range(8 * 1440) if start <= now - timedelta(minutes=8 * 1440 - i) < end
        )
        assert len(stamps) == expected


class TestRoles:
    async def test_operator_does_not_see_settings_and_a_forged_settings_request_is_refused(
        self, dashboard: Dashboard, browse: Browsing, people: dict[Role, User]
    ) -> None:
        page = browse.page
        browse.allow(r"status of 403")  # the forged requests below
        await sign_in(page, dashboard, people[Role.operator])
        await expect(page.get_by_role("link", name="Alerts")).to_be_visible()
        await expect(page.get_by_role("link", name="Settings")).to_be_hidden()
        await expect(page.get_by_role("link", name="Machines", exact=True)).to_be_hidden()

        await page.goto(f"{dashboard.url}/app/settings")
        await expect(page.get_by_text("Settings are for management accounts.")).to_be_visible()
        await expect(page.get_by_role("heading", name="Alert rules")).to_be_hidden()
        statuses = await page.evaluate(
            """async () => {
              const token = JSON.parse(sessionStorage.getItem("plantpulse.session")).access;
              const headers = {
                Authorization: `Bearer ${token}`, "Content-Type": "application/json"};
              const put = await fetch("/api/v1/config/retention_days",
                {method: "PUT", headers, body: JSON.stringify({value: 1})});
              const rule = await fetch("/api/v1/alert-rules", {method: "POST", headers,
                body: JSON.stringify(
                  {name: "x", scope: "fleet", kind: "no_data", no_data_seconds: 60})});
              return [put.status, rule.status];
            }"""
        )
        assert statuses == [403, 403]

    async def test_manager_writes_a_rule_with_a_preview_and_sees_errors_next_to_fields(
        self, dashboard: Dashboard, browse: Browsing, people: dict[Role, User]
    ) -> None:
        page = browse.page
        browse.allow(r"status of 422")  # the invalid rule below
        await sign_in(page, dashboard, people[Role.management])
        await page.get_by_role("link", name="Settings").click()
        form = page.locator("#rule-form")
        name = f"Line {uuid.uuid4().hex[:6]} pressure"
        await form.get_by_label("Name").fill(name)
        await form.get_by_label("Scope").select_option("fleet")
        await form.get_by_label("Metric").fill("pressure")
        await form.get_by_label("Condition").select_option("outside")
        await form.get_by_label("Low").fill("5")
        await form.get_by_label("High").fill("2")
        await form.get_by_label("Severity").select_option("critical")
        await expect(page.locator("#rule-preview")).to_have_text(
            "Raise a critical alert when pressure on any machine is outside 5 … 2."
        )
        await page.get_by_role("button", name="Create rule").click()
        await expect(form.get_by_role("alert")).to_contain_text("threshold_low < threshold_high")

        await form.get_by_label("Low").fill("1")
        await form.get_by_label("High").fill("6")
        await form.get_by_label("For at least (s)").fill("30")
        await page.get_by_role("button", name="Create rule").click()
        row = page.locator("#rule-rows tr").filter(has_text=name)
        await expect(row).to_contain_text(
            "Raise a critical alert when pressure on any machine is outside 1 … 6 "
            "for at least 30 s."
        )
        await row.get_by_role("button", name=f"Disable {name}").click()
        await expect(row).to_contain_text("(disabled)")
        async with dashboard.api(people[Role.management]) as api:
            rules = (await api.get("/api/v1/alert-rules?limit=1000")).json()["items"]
            mine = [r for r in rules if r["name"] == name]
            for r in mine:
                await api.delete(f"/api/v1/alert-rules/{r['id']}")
        assert [(r["threshold_low"], r["threshold_high"], r["enabled"]) for r in mine] == [
            (1.0, 6.0, False)
        ]

    async def test_supervisor_adds_a_machine_and_gets_its_key_once_but_cannot_delete(
        self, dashboard: Dashboard, browsing: BrowsingFactory, people: dict[Role, User]
    ) -> None:
        browse = await browsing()
        page = browse.page
        await sign_in(page, dashboard, people[Role.supervisor])
        await expect(page.get_by_role("link", name="Settings")).to_be_hidden()
        await page.get_by_role("link", name="Machines", exact=True).click()
        name = f"Lathe {uuid.uuid4().hex[:6]}"
        add = page.locator("#add-machine")
        await add.get_by_label("Name").fill(name)
        await add.get_by_label("Location").fill("Hall C")
        await add.get_by_role("button", name="Add machine").click()
        await page.get_by_label("Search").fill(name)
        row = page.locator("#manage-rows tr").filter(has_text=name)
        await expect(row).to_have_count(1)
        await expect(row.get_by_role("button", name=f"Delete {name}")).to_have_count(0)

        await row.get_by_role("button", name=f"Issue API key of {name}").click()
        dialog = page.get_by_role("dialog", name="API key")
        key = (await dialog.locator("#key-value").text_content() or "").strip()
        assert len(key) > 20
        await dialog.get_by_role("button", name="Done").click()
        await expect(dialog).to_be_hidden()
        # The dialog's close event (queued after it hides) wipes the key from the page.
        await expect(page.locator("#key-value")).to_have_text("")
        assert key not in await page.content()  # shown once
        machine_id = await row.get_attribute("data-machine-id")
        async with httpx.AsyncClient(base_url=dashboard.url) as device:
            sent = await device.post(
                f"/api/v1/machines/{machine_id}/telemetry",
                headers={"X-API-Key": key},
                json={"data": {"temperature": 20.5}},
            )
        assert sent.status_code == 200, sent.text

        # A manager may delete it, after typing its name.
        manager = await browsing()
        await sign_in(manager.page, dashboard, people[Role.management], start="/app/manage")
        await manager.page.get_by_label("Search").fill(name)
        await manager.page.get_by_role("button", name=f"Delete {name}").click()
        dialog = manager.page.get_by_role("dialog", name="Delete machine")
        await expect(dialog.get_by_role("button", name="Delete")).to_be_disabled()
        await dialog.get_by_label("Type the machine's name to confirm").fill(name)
        await dialog.get_by_role("button", name="Delete").click()
        await expect(manager.page.locator("#manage-rows tr").filter(has_text=name)).to_have_count(0)


class TestLookAndFeel:
    async def test_dark_mode_follows_the_system_and_the_toggle_is_remembered(
        self, dashboard: Dashboard, browsing: BrowsingFactory, people: dict[Role, User]
    ) -> None:
        light = await browsing(color_scheme="light")
        page = light.page
        await sign_in(page, dashboard, people[Role.operator])
        html = page.locator("html")
        await expect(html).to_have_attribute("data-theme", "light")
        before = await page.evaluate("getComputedStyle(document.body).backgroundColor")
        toggle = page.get_by_role("button", name="Dark mode")
        await toggle.click()
        await expect(html).to_have_attribute("data-theme", "dark")
        await expect(toggle).to_have_attribute("aria-pressed", "true")
        assert await page.evaluate("getComputedStyle(document.body).backgroundColor") != before
        await page.reload()
        await expect(html).to_have_attribute("data-theme", "dark")
        await toggle.click()
        await expect(html).to_have_attribute("data-theme", "light")

        dark = await browsing(color_scheme="dark")
        await dark.page.goto(f"{dashboard.url}/app/login")
        await expect(dark.page.locator("html")).to_have_attribute("data-theme", "dark")

    async def test_every_page_loads_without_console_errors_or_csp_violations(
        self,
        dashboard: Dashboard,
        browse: Browsing,
        people: dict[Role, User],
        committed_machine: MachineFactory,
    ) -> None:
        machine = await committed_machine(f"Pump {uuid.uuid4().hex[:6]}")
        await publish(dashboard, machine, flow=12.5)
        page = browse.page
        await sign_in(page, dashboard, people[Role.management])
        for path, ready in [
            ("/app/", "#fleet[aria-busy=false]"),
            (f"/app/machines/{machine}", "#history-chart canvas"),
            ("/app/alerts", "#active-count:not(:empty)"),
            ("/app/manage", "#manage-rows tr"),
            ("/app/settings", "#config-list .card"),
        ]:
            response = await page.goto(dashboard.url + path)
            assert response is not None
            csp = response.headers["content-security-policy"]
            assert "script-src 'self'" in csp
            assert "unsafe-inline" not in csp
            await page.wait_for_selector(ready)
            await page.wait_for_load_state("networkidle")
        # The stylesheet and scripts are files: no inline <script> or style attribute at all.
        assert (
            await page.evaluate("document.querySelectorAll('script:not([src]), [style]').length")
            == 0
        )
