"""Alert evaluation on the ingest path: readings go through the real writer, the evaluator
task judges them and persists alerts, events come out of the hub."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from plantpulse.alerts.evaluator import Evaluator, evaluator_of
from plantpulse.realtime.hub import Subscriber, hub_of
from plantpulse.state import Resources
from plantpulse.telemetry.writer import CommittedBatch
from tests.alerts.conftest import RuleFactory
from tests.conftest import MachineFactory
from tests.live import eventually


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


async def feed(
    resources: Resources,
    machine: uuid.UUID,
    series: list[float],
    *,
    start: datetime,
    metric: str = "temp",
) -> None:
    """One batch per value, one second apart in event time, then wait for the evaluator."""
    await resources.catalog.known([machine])
    for i, value in enumerate(series):
        await resources.writer.write(
            [(start + timedelta(seconds=i), machine, metric, value)], source="test"
        )
    await evaluator_of(resources).drained()


async def alerts_of(pool: asyncpg.Pool, machine: uuid.UUID) -> list[asyncpg.Record]:
    return await pool.fetch(
        "SELECT * FROM alerts WHERE machine_id = $1 ORDER BY raised_at", machine
    )


@pytest.fixture
async def listener(resources: Resources) -> AsyncIterator[Subscriber]:
    sub = hub_of(resources).subscriber(include_invalid=True, include_alerts=True)
    sub.subscribe_all()
    yield sub
    sub.close()


def alert_events(sub: Subscriber) -> list[dict[str, Any]]:
    events = []
    while not sub.queue.empty():
        kind, text = sub.queue.get_nowait()
        if kind == "alert":
            events.append(json.loads(text))
    return events


class TestRaiseAndClear:
    async def test_scripted_series_raises_once_and_clears_past_the_deadband(
        self,
        resources: Resources,
        pg_pool: asyncpg.Pool,
        committed_machine: MachineFactory,
        committed_rule: RuleFactory,
        listener: Subscriber,
    ) -> None:
        machine = await committed_machine()
        rule = await committed_rule(scope="machine", machine_id=machine, hysteresis=5)
        await evaluator_of(resources).reload()
        start = now() - timedelta(seconds=30)
        await feed(resources, machine, [80, 86, 84, 85.5, 81, 80, 79], start=start)
        [alert] = await alerts_of(pg_pool, machine)
        assert alert["rule_id"] == rule.id
        assert (alert["value"], alert["raised_at"]) == (86, start + timedelta(seconds=1))
        assert (alert["clear_value"], alert["cleared_at"]) == (80, start + timedelta(seconds=5))
        assert alert["message"] == "temp = 86 > 85"
        events = alert_events(listener)
        assert [(e["action"], e["alert"]["id"]) for e in events] == [
            ("raised", str(alert["id"])),
            ("cleared", str(alert["id"])),
        ]
        assert events[0]["alert"]["active"] is True
        assert events[1]["machine_id"] == str(machine)

    async def test_invalid_readings_fire_nothing(
        self,
        resources: Resources,
        pg_pool: asyncpg.Pool,
        committed_machine: MachineFactory,
        committed_rule: RuleFactory,
    ) -> None:
        machine = await committed_machine()
        await pg_pool.execute(
            "INSERT INTO machine_metrics (machine_id, name, min_value, max_value) "
            "VALUES ($1, 'temp', 0, 150)",
            machine,
        )
        await committed_rule(scope="machine", machine_id=machine)
        await evaluator_of(resources).reload()
        await feed(resources, machine, [900], start=now())
        assert await alerts_of(pg_pool, machine) == []


class TestBackfill:
    async def test_readings_older_than_the_window_are_stored_but_fire_nothing(
        self,
        resources: Resources,
        pg_pool: asyncpg.Pool,
        committed_machine: MachineFactory,
        committed_rule: RuleFactory,
    ) -> None:
        machine = await committed_machine()
        await committed_rule(scope="machine", machine_id=machine)
        await evaluator_of(resources).reload()
        window = resources.live.backfill_window_seconds
        old = now() - timedelta(seconds=window + 60)
        await feed(resources, machine, [99, 99], start=old)
        assert await alerts_of(pg_pool, machine) == []
        stored = "SELECT count(*) FROM readings WHERE machine_id = $1"
        assert await pg_pool.fetchval(stored, machine) == 2
        await feed(resources, machine, [99], start=now())
        assert len(await alerts_of(pg_pool, machine)) == 1


class TestDurationAndRestart:
    async def test_duration_countdown_and_open_alerts_survive_a_restart(
        self,
        resources: Resources,
        pg_pool: asyncpg.Pool,
        committed_machine: MachineFactory,
        committed_rule: RuleFactory,
    ) -> None:
        machine = await committed_machine()
        rule = await committed_rule(scope="machine", machine_id=machine, duration_seconds=30)
        await evaluator_of(resources).reload()
        start = now() - timedelta(minutes=5)
        # 20 s above the threshold: pending, not raised.
        await feed(resources, machine, [90] * 21, start=start)
        assert await alerts_of(pg_pool, machine) == []
        pending = await pg_pool.fetchval(
            "SELECT pending_since FROM alert_states WHERE rule_id = $1 AND machine_id = $2",
            rule.id,
            machine,
        )
        assert pending == start

        # A new evaluator (as after a restart) resumes the countdown from the database.
        def batch(seconds: int, value: float) -> CommittedBatch:
            t = start + timedelta(seconds=seconds)
            return CommittedBatch(rows=[(t, machine, "temp", value, True)], source="test")

        restarted = Evaluator(resources, hub_of(resources))
        await restarted.reload()
        await restarted.process(batch(30, 91))
        [alert] = await alerts_of(pg_pool, machine)
        assert alert["raised_at"] == start + timedelta(seconds=30)
        assert (
            await pg_pool.fetchval("SELECT count(*) FROM alert_states WHERE rule_id = $1", rule.id)
            == 0
        )

        # And once more: the open alert is known after a restart, so it can clear.
        again = Evaluator(resources, hub_of(resources))
        await again.reload()
        await again.process(batch(31, 10))
        [alert] = await alerts_of(pg_pool, machine)
        assert alert["cleared_at"] == start + timedelta(seconds=31)


class TestGroupRules:
    async def test_group_rules_apply_to_members_only(
        self,
        resources: Resources,
        pg_pool: asyncpg.Pool,
        committed_machine: MachineFactory,
        committed_rule: RuleFactory,
    ) -> None:
        member, outsider = await committed_machine(), await committed_machine()
        group = uuid.uuid4()
        await pg_pool.execute(
            "INSERT INTO machine_groups (id, name) VALUES ($1, $2)", group, f"g-{group.hex[:8]}"
        )
        try:
            await pg_pool.execute(
                "INSERT INTO machine_group_members (group_id, machine_id) VALUES ($1, $2)",
                group,
                member,
            )
            await committed_rule(scope="group", group_id=group, metric="pressure", threshold=5)
            await evaluator_of(resources).reload()
            for machine in (member, outsider):
                await feed(resources, machine, [7], start=now(), metric="pressure")
            assert len(await alerts_of(pg_pool, member)) == 1
            assert await alerts_of(pg_pool, outsider) == []
        finally:
            await pg_pool.execute("DELETE FROM machine_groups WHERE id = $1", group)


class TestNoData:
    async def test_a_silent_machine_raises_and_clears_when_heard_again(
        self,
        resources: Resources,
        pg_pool: asyncpg.Pool,
        committed_machine: MachineFactory,
        committed_rule: RuleFactory,
        listener: Subscriber,
    ) -> None:
        machine = await committed_machine()
        await committed_rule(
            name="silent",
            kind="no_data",
            scope="machine",
            machine_id=machine,
            metric=None,
            condition=None,
            threshold=None,
            no_data_seconds=1,
        )
        evaluator = evaluator_of(resources)
        await evaluator.reload()
        await feed(resources, machine, [1], start=now())
        await evaluator.check_no_data()
        assert await alerts_of(pg_pool, machine) == []

        async def raised() -> bool:
            await evaluator.check_no_data()
            return len(await alerts_of(pg_pool, machine)) == 1

        await eventually(raised, seconds=5)
        [alert] = await alerts_of(pg_pool, machine)
        assert (alert["kind"], alert["message"]) == ("no_data", "no data for more than 1 s")
        assert alert["cleared_at"] is None
        await feed(resources, machine, [2], start=now())
        [alert] = await alerts_of(pg_pool, machine)
        assert alert["cleared_at"] is not None
        # Heard again: the next check does not raise it again.
        await evaluator.check_no_data()
        assert len(await alerts_of(pg_pool, machine)) == 1
        actions = [e["action"] for e in alert_events(listener) if e["machine_id"] == str(machine)]
        assert actions == ["raised", "cleared"]
