"""Long-running background tasks that never die silently.

A task the lifespan starts (the realtime hub, a Redis subscription, the alert evaluator, a
periodic job...) is a coroutine that loops until it is cancelled. Given to a `Supervisor`, it
runs inside a small loop that, when the coroutine raises:

- logs the exception with its traceback (logger `plantpulse.supervisor`, level ERROR),
- remembers it (`/ready` lists every task with its state, restart count and last error),
- starts the coroutine again after an exponential backoff with jitter (`initial_backoff`,
  doubling up to `max_backoff`; reset after a run of `healthy_after` seconds).

A coroutine that *returns* is treated like one that raised: a loop that quietly ended is the
silent stall this module exists to prevent. To end a task, `stop()` it (or the supervisor).

Restart rather than exit: these tasks serve features beside the request path (live events,
alerts, retention, settings sync). A bug in one of them should not take the API and ingest of
the whole process down with it, and an orchestrator restarting the process would only replay
the same crash with everything else interrupted; the traceback in the log and `error` in
`/ready` make it visible, and the backoff keeps a crash loop cheap.

    supervisor = Supervisor()
    hub_task = supervisor.spawn("realtime-hub", hub.run)   # factory: called again per restart
    ...
    await hub_task.stop()        # one task, e.g. to stop components in order
    await supervisor.stop()      # everything still running, newest first
    supervisor.statuses()        # [TaskStatus(name, state, healthy, restarts, last_error, ...)]
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[object]]
State = Literal["running", "restarting", "stopped"]


class TaskReturned(RuntimeError):
    """A supervised coroutine returned although it should run until stopped."""


@dataclass(frozen=True, slots=True)
class TaskStatus:
    name: str
    state: State
    # Running, and either never crashed or running for `healthy_after` since the last restart.
    healthy: bool
    restarts: int
    # "ExceptionType: message" of the last crash, and when it happened.
    last_error: str | None
    last_error_at: datetime | None


class Backoff:
    """Exponential delays with jitter: attempt n waits a random time in [d/2, d],
    d = min(initial * 2**n, maximum), so processes that failed together do not retry together."""

    def __init__(self, *, initial: float, maximum: float) -> None:
        self.initial = initial
        self.maximum = maximum
        self.attempt = 0

    def next(self) -> float:
        delay = min(self.initial * 2**self.attempt, self.maximum)
        self.attempt += 1
        return random.uniform(delay / 2, delay)  # noqa: S311 - jitter, not cryptography

    def reset(self) -> None:
        self.attempt = 0


def describe(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}"[:500] if text else type(exc).__name__


class Supervised:
    """One supervised task: its state for `/ready`, and `stop()`."""

    def __init__(self, supervisor: Supervisor, name: str, job: Job) -> None:
        self.name = name
        self._supervisor = supervisor
        self._job = job
        self._backoff = Backoff(initial=supervisor.initial_backoff, maximum=supervisor.max_backoff)
        self.state: State = "running"
        self.restarts = 0
        self.last_error: BaseException | None = None
        self.last_error_at: datetime | None = None
        self._started = asyncio.get_running_loop().time()
        self._task = asyncio.create_task(self._run(), name=name)
        self._task.add_done_callback(self._ended)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        while True:
            self.state = "running"
            self._started = loop.time()
            try:
                await self._job()
            except asyncio.CancelledError:
                if task is not None and task.cancelling():
                    raise  # stop(): we are being cancelled
                # A CancelledError we did not ask for (a cancelled inner future): a crash.
                error: BaseException = RuntimeError("cancelled from inside the task")
            except Exception as exc:
                error = exc
            else:
                error = TaskReturned(f"task {self.name} returned; it should run until stopped")
            if loop.time() - self._started >= self._supervisor.healthy_after:
                self._backoff.reset()
            delay = self._backoff.next()
            self.state = "restarting"
            self.restarts += 1
            self.last_error = error
            self.last_error_at = datetime.now(UTC)
            log.error(
                "background task %s crashed (%s); restart #%d in %.1f s",
                self.name,
                describe(error),
                self.restarts,
                delay,
                exc_info=error,
            )
            await asyncio.sleep(delay)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self.state = "stopped"
        if not task.cancelled() and task.exception() is not None:
            # Only a BaseException the loop does not catch (SystemExit, KeyboardInterrupt...).
            log.critical("supervision of %s ended", self.name, exc_info=task.exception())

    @property
    def healthy(self) -> bool:
        if self.state != "running":
            return False
        if self.restarts == 0:
            return True
        return asyncio.get_running_loop().time() - self._started >= self._supervisor.healthy_after

    def status(self) -> TaskStatus:
        return TaskStatus(
            name=self.name,
            state=self.state,
            healthy=self.healthy,
            restarts=self.restarts,
            last_error=describe(self.last_error) if self.last_error is not None else None,
            last_error_at=self.last_error_at,
        )

    async def stop(self) -> None:
        """Cancel the task and wait for it to end (idempotent)."""
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._supervisor._forget(self)


class Supervisor:
    """Starts, restarts, reports and stops a set of long-running tasks."""

    def __init__(
        self,
        *,
        initial_backoff: float = 0.5,
        max_backoff: float = 60.0,
        healthy_after: float = 60.0,
    ) -> None:
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.healthy_after = healthy_after
        self._tasks: list[Supervised] = []

    def spawn(self, name: str, job: Job) -> Supervised:
        """Run `job()` now, and again after each crash, until stopped. `job` is a factory (a
        coroutine function or a bound method), called once per run."""
        supervised = Supervised(self, name, job)
        self._tasks.append(supervised)
        return supervised

    @property
    def tasks(self) -> list[Supervised]:
        return list(self._tasks)

    def statuses(self) -> list[TaskStatus]:
        return [task.status() for task in self._tasks]

    def _forget(self, task: Supervised) -> None:
        with contextlib.suppress(ValueError):
            self._tasks.remove(task)

    async def stop(self) -> None:
        """Stop every task, newest first (the reverse of start-up, as an exit stack would)."""
        for task in reversed(list(self._tasks)):
            await task.stop()

    async def __aenter__(self) -> Supervisor:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()
