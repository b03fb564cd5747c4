"""Machines: registry, groups, metric catalogue, device credentials.

Plain async functions: session first, the rest keyword-only; they flush, the request commits.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, Select, delete, func, or_, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from plantpulse import db_errors
from plantpulse.db import utcnow
from plantpulse.errors import Conflict, InvalidInput, NotAuthenticated, NotFound
from plantpulse.machines import security
from plantpulse.machines.models import Machine, MachineGroup, MachineMetric, MachineStatus
from plantpulse.machines.models import group_members as members
from plantpulse.machines.schemas import (
    GroupCreate,
    GroupUpdate,
    LocationCount,
    MachineCreate,
    MachineSort,
    MachineStats,
    MachineUpdate,
    MetricDefinition,
    MetricUpdate,
)
from plantpulse.telemetry import rollups
from plantpulse.telemetry.models import readings, readings_1h, readings_1m


class MachineNotFound(NotFound):
    pass


class MachineExists(Conflict):
    pass


class MetricNotFound(NotFound):
    pass


class InvalidRange(InvalidInput):
    pass


class GroupNotFound(NotFound):
    pass


class GroupExists(Conflict):
    pass


class InvalidApiKey(NotAuthenticated):
    pass


# --- machines -------------------------------------------------------------------------------


async def get_machine(session: AsyncSession, machine_id: uuid.UUID) -> Machine:
    machine = await session.get(Machine, machine_id)
    if machine is None:
        raise MachineNotFound(f"machine {machine_id} does not exist")
    return machine


async def get_machine_detail(session: AsyncSession, machine_id: uuid.UUID) -> Machine:
    """A machine with its groups loaded."""
    machine = await session.scalar(
        select(Machine)
        .where(Machine.id == machine_id)
        .options(selectinload(Machine.groups))
        .execution_options(populate_existing=True)
    )
    if machine is None:
        raise MachineNotFound(f"machine {machine_id} does not exist")
    return machine


async def _check_machine_name_free(
    session: AsyncSession, name: str, *, other_than: uuid.UUID | None = None
) -> None:
    query = select(Machine.id).where(Machine.name == name)
    if other_than is not None:
        query = query.where(Machine.id != other_than)
    if await session.scalar(query) is not None:
        raise MachineExists(f"a machine named {name!r} already exists")


async def create_machine(session: AsyncSession, *, data: MachineCreate) -> Machine:
    if data.id is not None and await session.get(Machine, data.id) is not None:
        raise MachineExists(f"a machine with id {data.id} already exists")
    await _check_machine_name_free(session, data.name)
    machine = Machine(
        id=data.id or uuid.uuid4(),
        name=data.name,
        location=data.location,
        sensor_type=data.sensor_type,
        status=data.status,
        description=data.description,
        tags=data.tags,
        labels=data.labels,
    )
    try:
        # A savepoint, so a concurrent insert of the same name is a 409 and not a dead
        # transaction.
        async with session.begin_nested():
            session.add(machine)
    except IntegrityError as exc:
        if not db_errors.is_unique_violation(exc):
            raise  # another refusal (a CHECK, say) is not a name clash: errors.py answers it
        raise MachineExists(f"a machine named {data.name!r} or with this id exists") from exc
    return await get_machine_detail(session, machine.id)


def _machine_filters(
    *,
    location: str | None,
    statuses: Sequence[MachineStatus],
    sensor_type: str | None,
    group: str | None,
    q: str | None,
    tags: Sequence[str],
) -> list[ColumnElement[bool]]:
    where: list[ColumnElement[bool]] = []
    if location is not None:
        where.append(Machine.location == location)
    if statuses:
        where.append(Machine.status.in_(statuses))
    if sensor_type is not None:
        where.append(Machine.sensor_type == sensor_type)
    if group is not None:
        match: ColumnElement[bool] = MachineGroup.name == group
        try:
            match = or_(match, MachineGroup.id == uuid.UUID(group))
        except ValueError:
            pass
        where.append(
            Machine.id.in_(
                select(members.c.machine_id)
                .join(MachineGroup, MachineGroup.id == members.c.group_id)
                .where(match)
            )
        )
    if q:
        pattern = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append(Machine.name.ilike(f"%{pattern}%", escape="\\"))
    if tags:
        where.append(Machine.tags.contains(list(tags)))
    return where


def _machine_order(query: Select[Any], sort: MachineSort) -> Select[Any]:
    descending = sort.startswith("-")
    column = {
        "name": Machine.name,
        "created_at": Machine.created_at,
        "last_seen_at": Machine.last_seen_at,
        "status": Machine.status,
    }[sort.lstrip("-")]
    ordered = column.desc() if descending else column.asc()
    if column is Machine.last_seen_at:
        # Machines never seen go last in both directions.
        ordered = ordered.nulls_last()
    tie_breakers = [Machine.name, Machine.id] if column is not Machine.name else [Machine.id]
    return query.order_by(ordered, *tie_breakers)


async def list_machines(
    session: AsyncSession,
    *,
    location: str | None = None,
    statuses: Sequence[MachineStatus] = (),
    sensor_type: str | None = None,
    group: str | None = None,
    q: str | None = None,
    tags: Sequence[str] = (),
    sort: MachineSort = "name",
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[Machine], int]:
    """Machines matching every given filter, and how many match in all."""
    where = _machine_filters(
        location=location,
        statuses=statuses,
        sensor_type=sensor_type,
        group=group,
        q=q,
        tags=tags,
    )
    total = await session.scalar(select(func.count()).select_from(Machine).where(*where))
    query = _machine_order(select(Machine).where(*where), sort).limit(limit).offset(offset)
    return list(await session.scalars(query)), int(total or 0)


async def update_machine(
    session: AsyncSession, *, machine_id: uuid.UUID, data: MachineUpdate
) -> Machine:
    machine = await get_machine(session, machine_id)
    changes = data.model_dump(exclude_unset=True)
    if "name" in changes and changes["name"] != machine.name:
        await _check_machine_name_free(session, changes["name"], other_than=machine_id)
    try:
        async with session.begin_nested():
            for name, value in changes.items():
                setattr(machine, name, value)
    except IntegrityError as exc:
        if not db_errors.is_unique_violation(exc):
            raise
        raise MachineExists(f"a machine named {changes.get('name')!r} already exists") from exc
    return await get_machine_detail(session, machine_id)


async def set_status(
    session: AsyncSession, *, machine_id: uuid.UUID, status: MachineStatus
) -> Machine:
    return await update_machine(session, machine_id=machine_id, data=MachineUpdate(status=status))


async def delete_machine(session: AsyncSession, *, machine_id: uuid.UUID) -> int:
    """Delete the machine with its metrics, group memberships and readings; returns how many
    readings went. The caller forgets the machine in the ingest catalog after the commit."""
    # Deleting the machine row first locks it; memberships and metrics go by ON DELETE CASCADE.
    deleted = await session.scalar(
        delete(Machine).where(Machine.id == machine_id).returning(Machine.id)
    )
    if deleted is None:
        raise MachineNotFound(f"machine {machine_id} does not exist")
    # readings has no foreign key to machines (it would cost a lookup per ingested row), so
    # they are deleted explicitly, in the same transaction.
    result = await session.execute(delete(readings).where(readings.c.machine_id == machine_id))
    # Under the rollup lock: a refresh round running now cannot write rows back afterwards.
    await session.execute(select(func.pg_advisory_xact_lock(rollups.LOCK_ID)))
    for rollup in (readings_1m, readings_1h):
        await session.execute(delete(rollup).where(rollup.c.machine_id == machine_id))
    return int(getattr(result, "rowcount", 0) or 0)


async def machine_stats(session: AsyncSession) -> MachineStats:
    by_status = dict.fromkeys(MachineStatus, 0)
    for status, count in await session.execute(
        select(Machine.status, func.count()).group_by(Machine.status)
    ):
        by_status[status] = count
    locations = await session.execute(
        select(Machine.location, func.count().label("n"))
        .group_by(Machine.location)
        .order_by(text("n DESC"), Machine.location.asc().nulls_last())
    )
    seen = await session.scalar(
        select(func.count())
        .select_from(Machine)
        .where(Machine.last_seen_at > func.now() - text("interval '5 minutes'"))
    )
    # By event time, so the hypertable excludes all but the newest chunks.
    recent = await session.scalar(
        text("SELECT count(*) FROM readings WHERE time > now() - interval '1 hour'")
    )
    return MachineStats(
        total=sum(by_status.values()),
        by_status=by_status,
        by_location=[LocationCount(location=loc, count=n) for loc, n in locations],
        seen_last_5_minutes=int(seen or 0),
        readings_last_hour=int(recent or 0),
    )


# --- device credentials ---------------------------------------------------------------------


async def issue_api_key(session: AsyncSession, *, machine_id: uuid.UUID) -> str:
    """Issue (or rotate) the machine's API key; the previous key stops working."""
    machine = await get_machine(session, machine_id)
    for attempt in range(3):
        key, prefix, key_hash = security.new_api_key()
        try:
            # The lookup prefix is unique and random: on the rare collision, draw again.
            async with session.begin_nested():
                machine.api_key_prefix = prefix
                machine.api_key_hash = key_hash
                machine.api_key_created_at = utcnow()
        except IntegrityError:
            if attempt == 2:
                raise
            machine = await get_machine_detail(session, machine_id)
            continue
        return key
    raise AssertionError("unreachable")


async def machine_for_api_key(session: AsyncSession, key: str) -> Machine:
    prefix = security.prefix_of(key)
    machine = (
        await session.scalar(select(Machine).where(Machine.api_key_prefix == prefix))
        if prefix
        else None
    )
    if (
        machine is None
        or not machine.api_key_hash
        or not security.matches(key, machine.api_key_hash)
    ):
        raise InvalidApiKey("invalid API key")
    return machine


# --- metric catalogue -----------------------------------------------------------------------


async def list_metrics(session: AsyncSession, *, machine_id: uuid.UUID) -> list[MachineMetric]:
    await get_machine(session, machine_id)
    rows = await session.scalars(
        select(MachineMetric)
        .where(MachineMetric.machine_id == machine_id)
        .order_by(MachineMetric.name)
    )
    return list(rows)


async def update_metric(
    session: AsyncSession, *, machine_id: uuid.UUID, name: str, data: MetricUpdate
) -> MachineMetric:
    """Change a known metric's unit, description or plausible range (null = unbounded)."""
    await get_machine(session, machine_id)
    metric = await session.get(MachineMetric, (machine_id, name))
    if metric is None:
        raise MetricNotFound(f"machine {machine_id} has no metric {name!r}")
    changes = data.model_dump(exclude_unset=True)
    low = changes.get("min_value", metric.min_value)
    high = changes.get("max_value", metric.max_value)
    if low is not None and high is not None and low > high:
        raise InvalidRange(f"min_value ({low}) must not be greater than max_value ({high})")
    for field, value in changes.items():
        setattr(metric, field, value)
    await session.flush()
    return metric


async def put_metric(
    session: AsyncSession, *, machine_id: uuid.UUID, name: str, data: MetricDefinition
) -> tuple[MachineMetric, bool]:
    """Create or replace a metric definition (e.g. its range before the first reading arrives).
    Returns the metric and whether it was created."""
    await get_machine(session, machine_id)
    existed = await session.get(MachineMetric, (machine_id, name)) is not None
    values = data.model_dump()
    # An upsert: the ingest writer may register the same metric concurrently.
    statement = (
        insert(MachineMetric)
        .values(machine_id=machine_id, name=name, **values)
        .on_conflict_do_update(index_elements=["machine_id", "name"], set_=values)
        .returning(MachineMetric)
    )
    try:
        async with session.begin_nested():
            metric = await session.scalar(statement, execution_options={"populate_existing": True})
    except IntegrityError:
        if await session.scalar(select(Machine.id).where(Machine.id == machine_id)) is None:
            raise MachineNotFound(f"machine {machine_id} does not exist") from None
        raise
    assert metric is not None  # noqa: S101 - an upsert always returns its row
    return metric, not existed


# --- groups ---------------------------------------------------------------------------------


async def _check_group_name_free(
    session: AsyncSession, name: str, *, other_than: uuid.UUID | None = None
) -> None:
    query = select(MachineGroup.id).where(MachineGroup.name == name)
    if other_than is not None:
        query = query.where(MachineGroup.id != other_than)
    if await session.scalar(query) is not None:
        raise GroupExists(f"a group named {name!r} already exists")


async def _require_machines(session: AsyncSession, machine_ids: Sequence[uuid.UUID]) -> None:
    wanted = set(machine_ids)
    found = set(await session.scalars(select(Machine.id).where(Machine.id.in_(wanted))))
    missing = sorted(str(m) for m in wanted - found)
    if missing:
        more = f" (+{len(missing) - 20} more)" if len(missing) > 20 else ""
        which = (
            f"machine {missing[0]} does"
            if len(missing) == 1
            else (f"machines {', '.join(missing[:20])}{more} do")
        )
        raise MachineNotFound(f"{which} not exist")


async def get_group(session: AsyncSession, group_id: uuid.UUID) -> MachineGroup:
    """A group with its members loaded."""
    group = await session.scalar(
        select(MachineGroup)
        .where(MachineGroup.id == group_id)
        .options(selectinload(MachineGroup.machines))
        .execution_options(populate_existing=True)
    )
    if group is None:
        raise GroupNotFound(f"group {group_id} does not exist")
    return group


async def _add_members(
    session: AsyncSession, group_id: uuid.UUID, machine_ids: Sequence[uuid.UUID]
) -> None:
    if not machine_ids:
        return
    await _require_machines(session, machine_ids)
    statement = (
        insert(members)
        .values([{"group_id": group_id, "machine_id": m} for m in sorted(set(machine_ids))])
        .on_conflict_do_nothing()
    )
    try:
        async with session.begin_nested():
            await session.execute(statement)
    except IntegrityError:
        # A machine was deleted since the check: name it.
        await _require_machines(session, machine_ids)
        raise


async def create_group(session: AsyncSession, *, data: GroupCreate) -> MachineGroup:
    await _check_group_name_free(session, data.name)
    group = MachineGroup(name=data.name, description=data.description)
    try:
        async with session.begin_nested():
            session.add(group)
    except IntegrityError as exc:
        if not db_errors.is_unique_violation(exc):
            raise
        raise GroupExists(f"a group named {data.name!r} already exists") from exc
    await _add_members(session, group.id, data.machine_ids)
    return await get_group(session, group.id)


@dataclass(frozen=True, slots=True)
class GroupWithCount:
    group: MachineGroup
    machine_count: int


async def list_groups(
    session: AsyncSession, *, q: str | None = None, limit: int = 50, offset: int = 0
) -> tuple[list[GroupWithCount], int]:
    """Groups by name, with their member counts."""
    where: list[ColumnElement[bool]] = []
    if q:
        pattern = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        where.append(MachineGroup.name.ilike(f"%{pattern}%", escape="\\"))
    total = await session.scalar(select(func.count()).select_from(MachineGroup).where(*where))
    counts = (
        select(members.c.group_id, func.count().label("n")).group_by(members.c.group_id).subquery()
    )
    rows = await session.execute(
        select(MachineGroup, func.coalesce(counts.c.n, 0))
        .outerjoin(counts, counts.c.group_id == MachineGroup.id)
        .where(*where)
        .order_by(MachineGroup.name, MachineGroup.id)
        .limit(limit)
        .offset(offset)
    )
    return [GroupWithCount(group, int(n)) for group, n in rows], int(total or 0)


async def update_group(
    session: AsyncSession, *, group_id: uuid.UUID, data: GroupUpdate
) -> MachineGroup:
    group = await get_group(session, group_id)
    changes = data.model_dump(exclude_unset=True)
    if "name" in changes and changes["name"] != group.name:
        await _check_group_name_free(session, changes["name"], other_than=group_id)
    try:
        async with session.begin_nested():
            for name, value in changes.items():
                setattr(group, name, value)
    except IntegrityError as exc:
        if not db_errors.is_unique_violation(exc):
            raise
        raise GroupExists(f"a group named {changes.get('name')!r} already exists") from exc
    return await get_group(session, group_id)


async def delete_group(session: AsyncSession, *, group_id: uuid.UUID) -> None:
    """Delete the group; its machines stay."""
    deleted = await session.scalar(
        delete(MachineGroup).where(MachineGroup.id == group_id).returning(MachineGroup.id)
    )
    if deleted is None:
        raise GroupNotFound(f"group {group_id} does not exist")


async def add_group_members(
    session: AsyncSession, *, group_id: uuid.UUID, machine_ids: Sequence[uuid.UUID]
) -> MachineGroup:
    """Add machines to a group; ones already in it stay as they are. All must exist."""
    group = await get_group(session, group_id)
    await _add_members(session, group_id, machine_ids)
    group.updated_at = utcnow()
    await session.flush()
    return await get_group(session, group_id)


async def remove_group_member(
    session: AsyncSession, *, group_id: uuid.UUID, machine_id: uuid.UUID
) -> None:
    """Take a machine out of a group; a machine that is not in it is not an error."""
    group = await get_group(session, group_id)
    await get_machine(session, machine_id)
    result = await session.execute(
        delete(members).where(members.c.group_id == group_id, members.c.machine_id == machine_id)
    )
    if getattr(result, "rowcount", 0):
        group.updated_at = utcnow()
        await session.flush()


async def group_membership(session: AsyncSession) -> dict[uuid.UUID, set[uuid.UUID]]:
    """Every group id with the ids of its machines."""
    by_group: dict[uuid.UUID, set[uuid.UUID]] = defaultdict(set)
    for group_id, machine_id in await session.execute(
        select(members.c.group_id, members.c.machine_id)
    ):
        by_group[group_id].add(machine_id)
    return dict(by_group)


async def active_machines_last_seen(session: AsyncSession) -> dict[uuid.UUID, datetime]:
    """Machines that are in service and have reported at least once, with their last report."""
    rows = await session.execute(
        select(Machine.id, Machine.last_seen_at).where(
            Machine.last_seen_at.is_not(None), Machine.status == MachineStatus.active
        )
    )
    return {m: t for m, t in rows if t is not None}
