"""The lifespan's long-running tasks under the supervisor: listed in /ready, and a crash is
logged with its traceback, restarted with backoff and reported until the task is healthy."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient

from plantpulse.alerts.evaluator import Evaluator
from plantpulse.app import create_app
from plantpulse.config import AlertSettings, Settings
from plantpulse.state import Resources
from tests.conftest import make_settings
from tests.live import eventually


@asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[tuple[AsyncClient, Resources]]:
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = ASGITransport(app=manager.app, raise_app_exceptions=False)
        async with AsyncClient(transport=transport, base_url="http://test") as client:
            yield client, manager._state["resources"]


class TestReadyListsTasks:
    async def test_every_lifespan_task_is_listed_and_up(
        self, client: AsyncClient, settings: Settings
    ) -> None:
        body = (await client.get("/ready")).json()
        prefix = settings.redis.key_prefix
        expected = {
            "realtime-hub",
            "alerts-evaluator",
            "alerts-no-data",
            "alerts-refresh",
            "retention",
            f"redis-listen:{prefix}events",
            f"redis-publish:{prefix}events",
            f"redis-listen:{prefix}config",
            f"redis-publish:{prefix}config",
            f"redis-listen:{prefix}alert-rules",
            f"redis-publish:{prefix}alert-rules",
        }
        assert expected <= set(body["tasks"])
        assert {name: task["status"] for name, task in body["tasks"].items()} == dict.fromkeys(
            body["tasks"], "up"
        )
        assert body["status"] == "ready"

    async def test_tasks_stop_with_the_app(self, settings: Settings) -> None:
        async with running(settings) as (_, resources):
            tasks = resources.supervisor.tasks
            assert tasks
        assert resources.supervisor.tasks == []
        assert {task.state for task in tasks} == {"stopped"}


class TestCrashedTask:
    async def test_a_crash_is_logged_restarted_and_reported_in_ready(
        self,
        database_url: str,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        # The failure is injected into the real no-data job of the real lifespan: its first
        # two runs raise, the third works.
        calls = 0
        original = Evaluator.check_no_data

        async def failing_twice(self: Evaluator) -> None:
            nonlocal calls
            calls += 1
            if calls <= 2:
                raise RuntimeError(f"injected failure {calls}")
            await original(self)

        monkeypatch.setattr(Evaluator, "check_no_data", failing_twice)
        caplog.set_level(logging.ERROR, logger="plantpulse.supervisor")
        settings = make_settings(database_url, alerts=AlertSettings(no_data_check_seconds=0.05))
        async with running(settings) as (client, resources):
            await eventually(lambda: calls >= 1)
            ready = (await client.get("/ready")).json()
            task = ready["tasks"]["alerts-no-data"]
            assert ready["status"] == "degraded"
            assert task["status"] == "error"
            assert task["last_error"] == "RuntimeError: injected failure 1"
            assert task["last_error_at"] is not None

            # Restarted with backoff, twice; then it keeps running.
            await eventually(lambda: calls >= 4, seconds=10)
            [supervised] = [t for t in resources.supervisor.tasks if t.name == "alerts-no-data"]
            assert supervised.restarts == 2
            assert supervised.state == "running"

            # Healthy again once it has run for `healthy_after` since the last restart.
            resources.supervisor.healthy_after = 0.2

            async def ready_again() -> dict[str, Any] | None:
                body: dict[str, Any] = (await client.get("/ready")).json()
                return body if body["status"] == "ready" else None

            body = await eventually(ready_again, seconds=5)
            task = body["tasks"]["alerts-no-data"]
            assert task["status"] == "up"
            assert task["restarts"] == 2
            assert task["last_error"] == "RuntimeError: injected failure 2"

        crashes = [r for r in caplog.records if "alerts-no-data crashed" in r.getMessage()]
        assert len(crashes) == 2
        assert all(r.exc_info is not None for r in crashes)
        assert "injected failure 1" in caplog.text
        assert "Traceback" in caplog.text
        # Other tasks were not disturbed.
        assert "alerts-evaluator crashed" not in caplog.text
