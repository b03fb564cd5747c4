from __future__ import annotations

import asyncio
import logging

import pytest

from plantpulse.supervisor import Backoff, Job, Supervisor, TaskReturned
from tests.live import eventually


def quick() -> Supervisor:
    return Supervisor(initial_backoff=0.01, max_backoff=0.05, healthy_after=0.2)


class TestRestart:
    async def test_a_crash_is_logged_with_its_traceback_and_the_task_restarted(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        runs = 0
        recovered = asyncio.Event()

        async def job() -> None:
            nonlocal runs
            runs += 1
            if runs <= 2:
                raise RuntimeError(f"boom {runs}")
            recovered.set()
            await asyncio.Event().wait()

        caplog.set_level(logging.ERROR, logger="plantpulse.supervisor")
        async with quick() as supervisor:
            task = supervisor.spawn("flaky", job)
            await asyncio.wait_for(recovered.wait(), 5)
            assert runs == 3
            assert task.restarts == 2
            assert task.state == "running"
            status = supervisor.statuses()[0]
            assert status.last_error == "RuntimeError: boom 2"
            assert status.last_error_at is not None
        crashes = [r for r in caplog.records if "background task flaky crashed" in r.message]
        assert len(crashes) == 2
        assert all(r.exc_info is not None for r in crashes)
        assert "boom 1" in caplog.text
        assert "Traceback" in caplog.text

    async def test_a_task_that_returns_is_a_crash_too(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        runs = 0

        async def job() -> None:
            nonlocal runs
            runs += 1
            if runs > 1:
                await asyncio.Event().wait()

        async with quick() as supervisor:
            task = supervisor.spawn("quitter", job)
            await eventually(lambda: runs == 2)
            assert isinstance(task.last_error, TaskReturned)
        assert "returned; it should run until stopped" in caplog.text

    async def test_a_stray_cancelled_error_is_a_crash_not_a_stop(self) -> None:
        runs = 0

        async def job() -> None:
            nonlocal runs
            runs += 1
            if runs == 1:
                inner = asyncio.get_running_loop().create_future()
                inner.cancel()
                await inner  # raises CancelledError, though nobody cancelled this task
            await asyncio.Event().wait()

        async with quick() as supervisor:
            task = supervisor.spawn("stray", job)
            await eventually(lambda: runs == 2)
            assert task.restarts == 1
            assert task.state == "running"

    async def test_state_is_restarting_during_the_backoff(self) -> None:
        async def job() -> None:
            raise ValueError("always")

        supervisor = Supervisor(initial_backoff=30, max_backoff=30)
        task = supervisor.spawn("broken", job)
        await eventually(lambda: task.state == "restarting")
        status = task.status()
        assert status.healthy is False
        assert status.last_error == "ValueError: always"
        await supervisor.stop()
        assert task.state == "stopped"
        assert supervisor.statuses() == []


class TestHealth:
    async def test_a_restarted_task_is_unhealthy_until_it_has_run_for_a_while(self) -> None:
        runs = 0

        async def job() -> None:
            nonlocal runs
            runs += 1
            if runs == 1:
                raise RuntimeError("once")
            await asyncio.Event().wait()

        async with quick() as supervisor:
            task = supervisor.spawn("once", job)
            await eventually(lambda: runs == 2)
            assert task.status().healthy is False
            await eventually(lambda: task.status().healthy, seconds=5)
            assert task.status().last_error == "RuntimeError: once"

    async def test_a_task_that_never_crashed_is_healthy(self) -> None:
        async with quick() as supervisor:
            task = supervisor.spawn("calm", asyncio.Event().wait)
            await asyncio.sleep(0)
            assert task.status().healthy is True
            assert task.status().restarts == 0


class TestStop:
    async def test_stop_cancels_every_task_newest_first(self) -> None:
        order: list[str] = []

        def job(name: str) -> Job:
            async def run() -> None:
                try:
                    await asyncio.Event().wait()
                finally:
                    order.append(name)

            return run

        supervisor = Supervisor()
        supervisor.spawn("first", job("first"))
        supervisor.spawn("second", job("second"))
        await asyncio.sleep(0)
        await supervisor.stop()
        assert order == ["second", "first"]
        assert supervisor.tasks == []


class TestBackoff:
    def test_delays_double_up_to_the_maximum_with_jitter(self) -> None:
        backoff = Backoff(initial=1.0, maximum=8.0)
        delays = [backoff.next() for _ in range(6)]
        for delay, ceiling in zip(delays, [1, 2, 4, 8, 8, 8], strict=True):
            assert ceiling / 2 <= delay <= ceiling
        backoff.reset()
        assert backoff.next() <= 1.0
