"""Evaluates alert rules on committed readings, off the ingest path.

The writer's listener only puts the batch on a bounded queue (`on_commit`); this task takes
batches from it, judges every reading against the rules that apply to its machine and metric
(state per rule and machine, in memory), persists raises and clears in its own transaction and
then publishes `alert` events through the hub. A full queue drops the batch *for alerting*
(counted in `dropped_batches`, logged): storage is never affected and ingest never waits.

Not judged: readings older than `live.backfill_window_seconds` when they arrive (backfill),
invalid readings (outside the metric's plausible range: a sensor fault, not a process value)
and readings older than the last one judged for the same rule and machine.

State survives restarts: open alerts and the countdowns of duration rules (`alert_states`) are
read back at start-up, and again every `alerts.refresh_seconds` together with the rules and
group membership, so changes made by other processes are picked up. Several processes may
judge the same machine (MQTT shared subscriptions split messages, not machines); the unique
index on open alerts keeps one open alert per rule and machine, whoever raises it.

`no_data` rules are checked every `alerts.no_data_check_seconds` against the machines' last
report (the newer of `machines.last_seen_at` and what this process saw arrive).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from plantpulse import db_errors
from plantpulse.alerts import service
from plantpulse.alerts.models import Alert, RuleKind, RuleScope
from plantpulse.alerts.rules import RuleSpec, RuleState, Step, step
from plantpulse.alerts.schemas import AlertRead
from plantpulse.machines import service as machines
from plantpulse.realtime.broadcast import Broadcast
from plantpulse.realtime.events import Event, alert_event
from plantpulse.realtime.hub import Hub, hub_of
from plantpulse.state import Resources
from plantpulse.supervisor import Supervised
from plantpulse.telemetry.writer import CommittedBatch

log = logging.getLogger(__name__)

EXTRA = "alerts"
Key = tuple[uuid.UUID, uuid.UUID]


@dataclass(slots=True)
class _Change:
    rule: RuleSpec
    machine_id: uuid.UUID
    step: Step
    at: datetime
    value: float | None
    since: datetime | None = None


def alert_events(action: str, alerts: list[Alert]) -> list[Event]:
    return [
        alert_event(action, AlertRead.model_validate(a).model_dump(mode="json")) for a in alerts
    ]


class Evaluator:
    def __init__(self, resources: Resources, hub: Hub) -> None:
        self._resources = resources
        self._hub = hub
        settings = resources.settings.alerts
        self._settings = settings
        self._queue: asyncio.Queue[CommittedBatch] = asyncio.Queue(maxsize=settings.queue_batches)
        self._lock = asyncio.Lock()
        self._by_metric: dict[str, list[RuleSpec]] = {}
        self._no_data: list[RuleSpec] = []
        self._groups: dict[uuid.UUID, set[uuid.UUID]] = {}
        self._state: dict[Key, RuleState] = defaultdict(RuleState)
        self._arrived: dict[uuid.UUID, datetime] = {}
        self._tasks: list[Supervised] = []
        self._reloads: set[asyncio.Task[None]] = set()
        self._broadcast: Broadcast | None = None
        # Batches queued but not yet judged and persisted; `drained()` waits for zero.
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.dropped_batches = 0
        self.processed_batches = 0

    @property
    def loaded_rules(self) -> int:
        return sum(len(r) for r in self._by_metric.values()) + len(self._no_data)

    # --- the writer side: never blocks ---

    def on_commit(self, batch: CommittedBatch) -> None:
        try:
            self._queue.put_nowait(batch)
            self._in_flight += 1
            self._idle.clear()
        except asyncio.QueueFull:
            self.dropped_batches += 1
            if self.dropped_batches == 1 or self.dropped_batches % 100 == 0:
                log.warning(
                    "alert evaluation falling behind ingest: %d batches not evaluated",
                    self.dropped_batches,
                )

    # --- rules, membership and state from the database ---

    async def reload(self) -> None:
        """Re-read rules, group membership, open alerts and pending countdowns."""
        async with self._lock:
            await self._reload()

    async def _reload(self) -> None:
        async with self._resources.sessionmaker() as session:
            rules = [RuleSpec.of(r) for r in await service.enabled_rules(session)]
            groups = await machines.group_membership(session)
            open_ = set(await service.open_alerts(session))
            pending = {(r, m): t for r, m, t in await service.pending_states(session)}
        by_metric: dict[str, list[RuleSpec]] = defaultdict(list)
        for rule in rules:
            if rule.kind is RuleKind.threshold and rule.metric:
                by_metric[rule.metric].append(rule)
        self._by_metric = dict(by_metric)
        self._no_data = [r for r in rules if r.kind is RuleKind.no_data]
        self._groups = groups
        ids = {r.id for r in rules}
        state: dict[Key, RuleState] = defaultdict(RuleState)
        for key in open_ | set(pending) | set(self._state):
            if key[0] not in ids:
                continue
            old = self._state.get(key)
            state[key] = RuleState(
                active=key in open_,
                pending_since=pending.get(key),
                last_time=old.last_time if old is not None else None,
            )
        self._state = state

    def rules_changed(self) -> None:
        """A rule was created/changed/deleted here (committed): reload here and elsewhere."""
        self._reload_soon()
        if self._broadcast is not None:
            self._broadcast.publish("rules")

    def _reload_soon(self) -> None:
        task = asyncio.create_task(self.reload())
        self._reloads.add(task)
        task.add_done_callback(self._reloads.discard)

    # --- judging ---

    def _applies(self, rule: RuleSpec, machine_id: uuid.UUID) -> bool:
        if rule.scope is RuleScope.fleet:
            return True
        if rule.scope is RuleScope.machine:
            return rule.machine_id == machine_id
        return machine_id in self._groups.get(rule.group_id, ())  # type: ignore[arg-type]

    def _judge(self, batch: CommittedBatch) -> list[_Change]:
        now = datetime.now(UTC)
        live_after = now - timedelta(seconds=self._resources.live.backfill_window_seconds)
        changes: list[_Change] = []
        by_metric = self._by_metric
        rows = sorted(batch.rows, key=lambda r: r[0]) if by_metric else ()
        for machine_id in {r[1] for r in batch.rows}:
            self._arrived[machine_id] = now
        for t, machine_id, metric, value, valid in rows:
            rules = by_metric.get(metric)
            if not rules or not valid or t < live_after:
                continue
            for rule in rules:
                if not self._applies(rule, machine_id):
                    continue
                state = self._state[(rule.id, machine_id)]
                result = step(rule, state, t, value)
                if result is not None:
                    changes.append(
                        _Change(rule, machine_id, result, t, value, since=state.pending_since)
                    )
        # A machine that reports again ends its no-data alerts at once.
        for rule in self._no_data:
            for machine_id in {r[1] for r in batch.rows}:
                silent = self._state.get((rule.id, machine_id))
                if silent is not None and silent.active and self._applies(rule, machine_id):
                    silent.active = False
                    changes.append(_Change(rule, machine_id, Step.clear, now, None))
        return changes

    async def _persist(self, changes: list[_Change]) -> list[Event]:
        raised: list[Alert] = []
        cleared: list[Alert] = []
        async with self._resources.sessionmaker() as session, session.begin():
            for change in changes:
                await self._apply(session, change, raised, cleared)
        return alert_events("raised", raised) + alert_events("cleared", cleared)

    async def _apply(
        self, session: AsyncSession, change: _Change, raised: list[Alert], cleared: list[Alert]
    ) -> None:
        rule, machine_id = change.rule, change.machine_id
        if change.step is Step.raise_:
            alert = await service.raise_alert(
                session,
                rule=rule,
                machine_id=machine_id,
                value=change.value,
                at=change.at,
                message=rule.describe(change.value),
            )
            if alert is not None:
                raised.append(alert)
        elif change.step is Step.clear:
            alert = await service.clear_alert(
                session, rule_id=rule.id, machine_id=machine_id, value=change.value, at=change.at
            )
            if alert is not None:
                cleared.append(alert)
        elif change.step is Step.pending and change.since is not None:
            await service.set_pending(
                session, rule_id=rule.id, machine_id=machine_id, since=change.since
            )
        else:
            await service.drop_pending(session, rule_id=rule.id, machine_id=machine_id)

    async def process(self, batch: CommittedBatch) -> None:
        async with self._lock:
            changes = self._judge(batch)
            self.processed_batches += 1
            if not changes:
                return
            try:
                events = await self._persist(changes)
            except (SQLAlchemyError, OSError) as exc:
                # Memory ran ahead of the database: re-read the truth so the next reading
                # decides again.
                log.warning("could not persist %d alert changes (%s)", len(changes), exc)
                with contextlib.suppress(SQLAlchemyError, OSError):
                    await self._reload()
                return
        self._hub.publish(events)

    async def check_no_data(self) -> None:
        """Raise no_data alerts for silent machines, clear them for machines heard again."""
        if not self._no_data:
            return
        async with self._lock:
            now = datetime.now(UTC)
            async with self._resources.sessionmaker() as session:
                seen = await machines.active_machines_last_seen(session)
            for machine_id, at in self._arrived.items():
                if machine_id in seen and at > seen[machine_id]:
                    seen[machine_id] = at
            changes: list[_Change] = []
            for rule in self._no_data:
                limit = timedelta(seconds=rule.no_data_seconds or 0)
                for machine_id, last in seen.items():
                    if not self._applies(rule, machine_id):
                        continue
                    state = self._state[(rule.id, machine_id)]
                    silent = now - last > limit
                    if silent and not state.active:
                        state.active = True
                        changes.append(_Change(rule, machine_id, Step.raise_, now, None))
                    elif not silent and state.active:
                        state.active = False
                        changes.append(_Change(rule, machine_id, Step.clear, now, None))
            if not changes:
                return
            events = await self._persist(changes)
        self._hub.publish(events)

    # --- tasks ---

    async def _consume(self) -> None:
        while True:
            batch = await self._queue.get()
            try:
                await self.process(batch)
            except Exception:  # one bad batch must not end alerting
                log.exception("alert evaluation failed for a batch")
            finally:
                self._in_flight -= 1
                if self._in_flight == 0:
                    self._idle.set()

    async def _every(self, seconds: float, job: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await job()
            except Exception as exc:
                # An outage is waited out here; anything else is a bug for the supervisor to
                # log with its traceback (and /ready to show) before it restarts the loop.
                if not db_errors.is_transient(exc):
                    raise
                log.warning("%s failed (%s); retrying", getattr(job, "__name__", job), exc)

    async def _check_no_data_every(self) -> None:
        await self._every(self._settings.no_data_check_seconds, self.check_no_data)

    async def _reload_every(self) -> None:
        await self._every(self._settings.refresh_seconds, self.reload)

    def _remote(self, _: Any) -> None:
        self._reload_soon()

    async def start(self) -> None:
        try:
            await self.reload()
        except (SQLAlchemyError, OSError) as exc:
            log.warning("could not load alert rules at start-up (%s); retrying later", exc)
        redis = self._resources.redis
        if redis is not None:
            channel = f"{self._resources.settings.redis.key_prefix}alert-rules"
            self._broadcast = Broadcast(
                redis,
                channel,
                on_message=self._remote,
                supervisor=self._resources.supervisor,
            )
            await self._broadcast.start()
        supervisor = self._resources.supervisor
        self._tasks += [
            supervisor.spawn("alerts-evaluator", self._consume),
            supervisor.spawn("alerts-no-data", self._check_no_data_every),
            supervisor.spawn("alerts-refresh", self._reload_every),
        ]

    async def stop(self) -> None:
        if self._broadcast is not None:
            await self._broadcast.stop()
        for task in self._tasks:
            await task.stop()
        self._tasks = []
        for reload in self._reloads:
            reload.cancel()
        for reload in list(self._reloads):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reload

    async def drained(self) -> None:
        """Wait until every batch queued so far was judged and persisted (tests, benchmarks)."""
        await self._idle.wait()


async def start_alerts(resources: Resources, stack: AsyncExitStack) -> Evaluator:
    evaluator = Evaluator(resources, hub_of(resources))
    await evaluator.start()
    stack.push_async_callback(evaluator.stop)
    resources.writer.listeners.append(evaluator.on_commit)
    stack.callback(resources.writer.listeners.remove, evaluator.on_commit)
    resources.extras[EXTRA] = evaluator
    return evaluator


def evaluator_of(resources: Resources) -> Evaluator:
    evaluator: Evaluator = resources.extras[EXTRA]
    return evaluator
