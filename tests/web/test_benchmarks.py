"""Dashboard figures D1-D2 measured in the browser with the Performance API (D3 is measured by
the live-reading test). Benchmarks, not assertions on time: the figures go to
.test-artifacts/web/benchmarks.json and docs/benchmarks.md; the tests only check that what
was measured really happened (cards drawn, points charted)."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from playwright.async_api import expect

from plantpulse.auth.models import User
from plantpulse.auth.permissions import Role
from tests.conftest import MachineFactory
from tests.web.conftest import Browsing, Dashboard, record_benchmark, sign_in
from tests.web.test_dashboard import following, ingest_minutes

FIRST_VIEW = """() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const resources = performance.getEntriesByType("resource");
  const fcp = performance.getEntriesByName("first-contentful-paint")[0];
  const rendered = performance.getEntriesByName("pp-fleet-rendered")[0];
  return {
    transfer: nav.transferSize + resources.reduce((s, r) => s + r.transferSize, 0),
    decoded: nav.decodedBodySize + resources.reduce((s, r) => s + r.decodedBodySize, 0),
    requests: 1 + resources.length,
    fcp: fcp ? fcp.startTime : null,
    rendered: rendered ? rendered.startTime : null,
    domContentLoaded: nav.domContentLoadedEventEnd,
  };
}"""


class TestFirstView:
    async def test_d1_fleet_overview_weight_and_first_meaningful_paint(
        self,
        dashboard: Dashboard,
        browse: Browsing,
        people: dict[Role, User],
        committed_machine: MachineFactory,
    ) -> None:
        machines = [
            await committed_machine(f"D1 {i:02d} {uuid.uuid4().hex[:4]}") for i in range(48)
        ]
        now = datetime.now(UTC).isoformat()
        async with dashboard.api(people[Role.management]) as api:
            answer = await api.post(
                "/api/v1/telemetry/ingest",
                json={
                    "batch": [
                        {
                            "machine_id": str(m),
                            "readings": [
                                {
                                    "timestamp": now,
                                    "temperature": 70.5,
                                    "pressure": 2.1,
                                    "rpm": 1450,
                                }
                            ],
                        }
                        for m in machines
                    ]
                },
            )
            assert answer.status_code == 200, answer.text
        page = browse.page
        # A fresh context (nothing cached): the sign-in page is the very first view.
        await page.goto(f"{dashboard.url}/app/login")
        await page.wait_for_load_state("networkidle")
        login: dict[str, Any] = await page.evaluate(FIRST_VIEW)
        await sign_in(page, dashboard, people[Role.operator])
        await expect(page.locator(".card dd").first).to_be_visible()
        await page.wait_for_function(
            "() => performance.getEntriesByName('pp-fleet-rendered').length"
        )
        await page.wait_for_load_state("networkidle")
        cold: dict[str, Any] = await page.evaluate(FIRST_VIEW)
        assert await page.locator(".card").count() == 48
        await page.reload()
        await page.wait_for_function(
            "() => performance.getEntriesByName('pp-fleet-rendered').length"
        )
        await page.wait_for_load_state("networkidle")
        warm: dict[str, Any] = await page.evaluate(FIRST_VIEW)
        record_benchmark(
            "D1 first view",
            {
                "sign-in page, empty cache: bytes transferred": login["transfer"],
                "sign-in page: requests": login["requests"],
                "sign-in page: first contentful paint ms": round(login["fcp"], 1),
                "fleet (48 cards) after sign-in: bytes transferred": cold["transfer"],
                "fleet: bytes decoded": cold["decoded"],
                "fleet: requests": cold["requests"],
                "fleet: first contentful paint ms": round(cold["fcp"], 1),
                "fleet: cards with latest values drawn ms": round(cold["rendered"], 1),
                "fleet reloaded: cards drawn ms": round(warm["rendered"], 1),
            },
        )


DRAW_FULL_RESOLUTION = """async (machineId) => {
  const token = JSON.parse(sessionStorage.getItem("plantpulse.session")).access;
  const rows = [];
  for (let offset = 0; ; offset += 10000) {
    const response = await fetch(
      `/api/v1/machines/${machineId}/telemetry?start_time=-30d&fields=temperature` +
      `&order=asc&limit=10000&offset=${offset}`,
      { headers: { Authorization: `Bearer ${token}` } });
    const page = await response.json();
    rows.push(...page.items);
    if (!page.has_more) break;
  }
  const { historyChart, historyData } = await import("/app/static/js/charts.js");
  // One-minute points drawn as they are: min = max = avg, through the page's own chart code.
  const buckets = rows.map((r) => ({
    timestamp: r.timestamp, temperature_avg: r.temperature,
    temperature_min: r.temperature, temperature_max: r.temperature }));
  const el = document.createElement("div");
  el.className = "chart";
  document.querySelector("main").append(el);
  const start = performance.now();
  const data = historyData(buckets, "temperature");
  historyChart(el, { metric: "temperature", width: 1200, data });
  await new Promise((resolve) => requestAnimationFrame(resolve));
  return { points: rows.length, ms: performance.now() - start };
}"""


class TestHistoryChart:
    async def test_d2_thirty_days_of_one_minute_points(
        self,
        dashboard: Dashboard,
        browse: Browsing,
        people: dict[Role, User],
        committed_machine: MachineFactory,
    ) -> None:
        machine = await committed_machine(f"D2 {uuid.uuid4().hex[:6]}")
        now = datetime.now(UTC).replace(second=0, microsecond=0)
        await ingest_minutes(dashboard, people[Role.management], machine, minutes=43_200, end=now)
        page = browse.page
        await sign_in(page, dashboard, people[Role.operator], start=f"/app/machines/{machine}")
        await expect(page.locator("#history-info")).to_contain_text("points of")
        await page.wait_for_load_state("networkidle")
        first_view: dict[str, Any] = await page.evaluate(
            """() => {
              const all = [performance.getEntriesByType("navigation")[0],
                           ...performance.getEntriesByType("resource")];
              const transfer = all.reduce((s, r) => s + r.transferSize, 0);
              return { transfer, requests: all.length };
            }"""
        )
        await page.get_by_role("button", name="30 d").click()
        await expect(page.locator("#history-info")).to_contain_text("points of 1h")
        await page.wait_for_function(
            """() => performance.getEntriesByName("pp-history-drawn")
                .some((m) => m.detail.interval === "1h")"""
        )
        page_path: dict[str, Any] = await page.evaluate(
            """() => {
              const data = performance.getEntriesByName("pp-history-data").at(-1);
              const drawn = performance.getEntriesByName("pp-history-drawn").at(-1);
              return { points: drawn.detail.points, ms: drawn.startTime - data.startTime };
            }"""
        )
        assert 700 <= page_path["points"] <= 721
        full: dict[str, Any] = await page.evaluate(DRAW_FULL_RESOLUTION, str(machine))
        assert full["points"] >= 43_000
        record_benchmark(
            "D2 30-day history chart, data arrived -> drawn (ms)",
            {
                "page (1-hour buckets with min/max band)": round(page_path["ms"], 1),
                "page points": page_path["points"],
                "every 1-minute point through the same chart code": round(full["ms"], 1),
                "points": full["points"],
                "machine page after sign-in: bytes transferred": first_view["transfer"],
                "machine page: requests": first_view["requests"],
            },
        )


class TestBigFleet:
    async def test_a_thousand_machines_and_a_burst_of_readings_stay_smooth(
        self,
        dashboard: Dashboard,
        browse: Browsing,
        people: dict[Role, User],
        committed_machine: MachineFactory,
    ) -> None:
        """1,000 machines: one page of cards; 10 readings a second for every visible machine
        for 3 s: the page coalesces them into a few DOM passes a second and ends up showing
        the last value of every card."""
        tag = uuid.uuid4().hex[:6]
        machines = [await committed_machine(f"Big {tag} {i:04d}") for i in range(1000)]
        page = browse.page
        await sign_in(page, dashboard, people[Role.operator])
        await page.get_by_label("Search").fill(f"Big {tag}")
        await expect(page.locator("#fleet-count")).to_have_text(
            re.compile(r"^1.48 of 1000 machines$")
        )
        await expect(page.locator("#fleet")).to_have_attribute("aria-busy", "false")
        visible = machines[:48]  # sorted by name
        await following(page, visible[-1])
        await page.evaluate(
            """() => {
              window.longTasks = [];
              new PerformanceObserver((list) => window.longTasks.push(
                ...list.getEntries().map((e) => e.duration))).observe({ type: "longtask" });
              performance.clearMarks("pp-live-shown");
              performance.clearMarks("pp-live-received");
            }"""
        )
        start = datetime.now(UTC).replace(microsecond=0)
        async with dashboard.api(people[Role.management]) as api:
            for step in range(30):
                stamp = (start + timedelta(milliseconds=100 * step)).isoformat()
                answer = await api.post(
                    "/api/v1/telemetry/ingest",
                    json={
                        "batch": [
                            {"machine_id": str(m), "readings": [{"timestamp": stamp, "rpm": step}]}
                            for m in visible
                        ]
                    },
                )
                assert answer.status_code == 200, answer.text
                await asyncio.sleep(0.1)
        last = page.locator("dd[data-metric=rpm]", has_text=re.compile("^29$"))
        await expect(last).to_have_count(48)
        figures: dict[str, Any] = await page.evaluate(
            """() => {
              const received = performance.getEntriesByName("pp-live-received");
              const shown = performance.getEntriesByName("pp-live-shown");
              const span = (shown.at(-1).startTime - received[0].startTime) / 1000;
              return { received: received.length, passes: shown.length, seconds: span,
                       longTasks: window.longTasks.length,
                       longest: Math.max(0, ...window.longTasks) };
            }"""
        )
        record_benchmark(
            "1,000 machines, 48 cards, 10 readings/s per card for 3 s",
            {
                "reading events received": figures["received"],
                "DOM passes": figures["passes"],
                "over seconds": round(figures["seconds"], 2),
                "long tasks (> 50 ms)": figures["longTasks"],
                "longest task ms": round(figures["longest"], 1),
            },
        )
