from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Depends, Path, Query, Response, status
from pydantic import AfterValidator, StringConstraints

from plantpulse.auth.dependencies import Principal, require
from plantpulse.auth.permissions import Permission
from plantpulse.db import DbSession
from plantpulse.errors import error_responses
from plantpulse.machines import service
from plantpulse.machines.models import Machine, MachineGroup, MachineStatus
from plantpulse.machines.schemas import (
    MAX_TAGS,
    ApiKeyIssued,
    GroupCreate,
    GroupDetail,
    GroupMembersAdd,
    GroupRead,
    GroupUpdate,
    MachineCreate,
    MachineDetail,
    MachineRead,
    MachineSort,
    MachineStats,
    MachineStatusUpdate,
    MachineSummary,
    MachineUpdate,
    MetricDefinition,
    MetricName,
    MetricRead,
    MetricUpdate,
)
from plantpulse.realtime.events import machine_status_event
from plantpulse.realtime.hub import hub_of
from plantpulse.schemas import Page, storable
from plantpulse.state import AppResources, Resources

router = APIRouter(
    prefix="/api/v1/machines", tags=["machines"], responses=error_responses(401, 403)
)
groups_router = APIRouter(
    prefix="/api/v1/groups", tags=["groups"], responses=error_responses(401, 403)
)

ReadMachines = Annotated[Principal, Depends(require(Permission.machines_read))]
WriteMachines = Annotated[Principal, Depends(require(Permission.machines_write))]
DeleteMachines = Annotated[Principal, Depends(require(Permission.machines_delete))]

Limit = Annotated[int, Query(ge=1, le=1000)]
# Bounded so an absurd offset is a 422, not an integer overflow in the database driver.
Offset = Annotated[int, Query(ge=0, le=2**31 - 1)]


def _storable(value: str | None) -> str | None:
    return None if value is None else storable(value)


ExactFilter = Annotated[
    str | None, Query(max_length=128, description="Exact match"), AfterValidator(_storable)
]
TagFilter = Annotated[
    list[Annotated[str, StringConstraints(max_length=64), AfterValidator(storable)]] | None,
    Query(max_length=MAX_TAGS, description="Machines carrying all of these tags (repeatable)"),
]
Name = Annotated[MetricName, Path(max_length=64, description="Metric name")]


def _forget_after_commit(
    tasks: BackgroundTasks, resources: AppResources, machine_id: uuid.UUID
) -> None:
    # Background tasks run after the request's transaction committed: forgetting earlier
    # would let a concurrent ingest reload the old state into the catalog.
    tasks.add_task(resources.catalog.forget, machine_id)


def _status_after_commit(
    tasks: BackgroundTasks, resources: Resources, machine: Machine, previous: MachineStatus
) -> None:
    # Live clients hear of a status change only once it is committed (a coroutine, so it runs
    # on the event loop, not in Starlette's thread pool).
    if machine.status == previous:
        return
    event = machine_status_event(
        machine.id,
        status=machine.status,
        connectivity=machine.connectivity,
        last_seen_at=machine.last_seen_at,
    )

    async def publish() -> None:
        hub_of(resources).publish([event])

    tasks.add_task(publish)


def _group_read(group: MachineGroup) -> GroupDetail:
    return GroupDetail(
        id=group.id,
        name=group.name,
        description=group.description,
        machine_count=len(group.machines),
        created_at=group.created_at,
        updated_at=group.updated_at,
        machines=[MachineSummary.model_validate(m) for m in group.machines],
    )


# --- machines -------------------------------------------------------------------------------


@router.post("", status_code=status.HTTP_201_CREATED, responses=error_responses(409, 422))
async def create_machine(
    data: MachineCreate,
    _: WriteMachines,
    session: DbSession,
    resources: AppResources,
    tasks: BackgroundTasks,
    response: Response,
) -> MachineDetail:
    """Register a machine."""
    machine = await service.create_machine(session, data=data)
    # A device may have sent readings under this id before it was registered.
    _forget_after_commit(tasks, resources, machine.id)
    response.headers["Location"] = f"{router.prefix}/{machine.id}"
    return MachineDetail.model_validate(machine)


@router.get("", responses=error_responses(422))
async def list_machines(
    _: ReadMachines,
    session: DbSession,
    location: ExactFilter = None,
    status: Annotated[
        list[MachineStatus] | None, Query(description="Any of these statuses (repeatable)")
    ] = None,
    sensor_type: ExactFilter = None,
    group: Annotated[
        str | None, Query(max_length=128, description="Group id or name"), AfterValidator(_storable)
    ] = None,
    q: Annotated[
        str | None,
        Query(max_length=128, description="Case-insensitive substring of the name"),
        AfterValidator(_storable),
    ] = None,
    tag: TagFilter = None,
    sort: Annotated[
        MachineSort, Query(description="Field, `-` for descending; never-seen machines last")
    ] = "name",
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[MachineRead]:
    """List machines, filtered and sorted, with the total count."""
    machines, total = await service.list_machines(
        session,
        location=location,
        statuses=status or (),
        sensor_type=sensor_type,
        group=group,
        q=q,
        tags=tag or (),
        sort=sort,
        limit=limit,
        offset=offset,
    )
    return Page(
        items=[MachineRead.model_validate(m) for m in machines],
        total=total,
        limit=limit,
        offset=offset,
    )


@router.get("/stats")
async def machine_stats(_: ReadMachines, session: DbSession) -> MachineStats:
    """Fleet counts: by status and location, recently seen machines, recent readings."""
    return await service.machine_stats(session)


@router.get("/{machine_id}", responses=error_responses(404, 422))
async def get_machine(machine_id: uuid.UUID, _: ReadMachines, session: DbSession) -> MachineDetail:
    """One machine, with its groups and connectivity."""
    return MachineDetail.model_validate(await service.get_machine_detail(session, machine_id))


@router.patch("/{machine_id}", responses=error_responses(404, 409, 422))
async def update_machine(
    machine_id: uuid.UUID,
    data: MachineUpdate,
    _: WriteMachines,
    session: DbSession,
    resources: AppResources,
    tasks: BackgroundTasks,
) -> MachineDetail:
    """Change any of a machine's fields; omitted fields stay as they are."""
    previous = (await service.get_machine(session, machine_id)).status
    machine = await service.update_machine(session, machine_id=machine_id, data=data)
    _status_after_commit(tasks, resources, machine, previous)
    return MachineDetail.model_validate(machine)


@router.patch("/{machine_id}/status", responses=error_responses(404, 422))
async def set_machine_status(
    machine_id: uuid.UUID,
    data: MachineStatusUpdate,
    _: WriteMachines,
    session: DbSession,
    resources: AppResources,
    tasks: BackgroundTasks,
) -> MachineDetail:
    """Set a machine's status (active, inactive, maintenance, error)."""
    previous = (await service.get_machine(session, machine_id)).status
    machine = await service.set_status(session, machine_id=machine_id, status=data.status)
    _status_after_commit(tasks, resources, machine, previous)
    return MachineDetail.model_validate(machine)


@router.delete(
    "/{machine_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404, 422),
)
async def delete_machine(
    machine_id: uuid.UUID,
    _: DeleteMachines,
    session: DbSession,
    resources: AppResources,
    tasks: BackgroundTasks,
) -> None:
    """Delete a machine with its metrics, group memberships and all its readings."""
    await service.delete_machine(session, machine_id=machine_id)
    _forget_after_commit(tasks, resources, machine_id)


@router.post(
    "/{machine_id}/api-key",
    status_code=status.HTTP_201_CREATED,
    responses=error_responses(404, 422),
)
async def issue_api_key(
    machine_id: uuid.UUID, _: WriteMachines, session: DbSession
) -> ApiKeyIssued:
    """Issue or rotate the machine's API key (shown once); the previous key stops working."""
    key = await service.issue_api_key(session, machine_id=machine_id)
    machine = await service.get_machine(session, machine_id)
    assert machine.api_key_created_at is not None  # noqa: S101 - just set
    return ApiKeyIssued(machine_id=machine_id, api_key=key, created_at=machine.api_key_created_at)


@router.get("/{machine_id}/metrics", responses=error_responses(404, 422))
async def list_metrics(
    machine_id: uuid.UUID, _: ReadMachines, session: DbSession
) -> list[MetricRead]:
    """The machine's metric catalogue, by name."""
    metrics = await service.list_metrics(session, machine_id=machine_id)
    return [MetricRead.model_validate(m) for m in metrics]


@router.patch("/{machine_id}/metrics/{name}", responses=error_responses(404, 422))
async def update_metric(
    machine_id: uuid.UUID,
    name: Name,
    data: MetricUpdate,
    _: WriteMachines,
    session: DbSession,
    resources: AppResources,
    tasks: BackgroundTasks,
) -> MetricRead:
    """Change a metric's unit, description or plausible range; applies to new readings."""
    metric = await service.update_metric(session, machine_id=machine_id, name=name, data=data)
    _forget_after_commit(tasks, resources, machine_id)
    return MetricRead.model_validate(metric)


@router.put(
    "/{machine_id}/metrics/{name}",
    responses={
        201: {"model": MetricRead, "description": "Created"},
        **error_responses(404, 422),
    },
)
async def put_metric(
    machine_id: uuid.UUID,
    name: Name,
    data: MetricDefinition,
    _: WriteMachines,
    session: DbSession,
    resources: AppResources,
    tasks: BackgroundTasks,
    response: Response,
) -> MetricRead:
    """Create or replace a metric definition, e.g. its range before the first reading."""
    metric, created = await service.put_metric(session, machine_id=machine_id, name=name, data=data)
    if created:
        response.status_code = status.HTTP_201_CREATED
    _forget_after_commit(tasks, resources, machine_id)
    return MetricRead.model_validate(metric)


# --- groups ---------------------------------------------------------------------------------


@groups_router.post(
    "", status_code=status.HTTP_201_CREATED, responses=error_responses(404, 409, 422)
)
async def create_group(
    data: GroupCreate, _: WriteMachines, session: DbSession, response: Response
) -> GroupDetail:
    """Create a group, optionally with its first members."""
    group = await service.create_group(session, data=data)
    response.headers["Location"] = f"{groups_router.prefix}/{group.id}"
    return _group_read(group)


@groups_router.get("", responses=error_responses(422))
async def list_groups(
    _: ReadMachines,
    session: DbSession,
    q: Annotated[
        str | None,
        Query(max_length=128, description="Case-insensitive substring of the name"),
        AfterValidator(_storable),
    ] = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[GroupRead]:
    """List groups by name, with member counts."""
    groups, total = await service.list_groups(session, q=q, limit=limit, offset=offset)
    return Page(
        items=[
            GroupRead(
                id=g.group.id,
                name=g.group.name,
                description=g.group.description,
                machine_count=g.machine_count,
                created_at=g.group.created_at,
                updated_at=g.group.updated_at,
            )
            for g in groups
        ],
        total=total,
        limit=limit,
        offset=offset,
    )


@groups_router.get("/{group_id}", responses=error_responses(404, 422))
async def get_group(group_id: uuid.UUID, _: ReadMachines, session: DbSession) -> GroupDetail:
    """One group with its members."""
    return _group_read(await service.get_group(session, group_id))


@groups_router.patch("/{group_id}", responses=error_responses(404, 409, 422))
async def update_group(
    group_id: uuid.UUID, data: GroupUpdate, _: WriteMachines, session: DbSession
) -> GroupDetail:
    """Rename a group or change its description."""
    return _group_read(await service.update_group(session, group_id=group_id, data=data))


@groups_router.delete(
    "/{group_id}", status_code=status.HTTP_204_NO_CONTENT, responses=error_responses(404, 422)
)
async def delete_group(group_id: uuid.UUID, _: WriteMachines, session: DbSession) -> None:
    """Delete a group; its machines stay."""
    await service.delete_group(session, group_id=group_id)


@groups_router.post("/{group_id}/machines", responses=error_responses(404, 422))
async def add_group_members(
    group_id: uuid.UUID, data: GroupMembersAdd, _: WriteMachines, session: DbSession
) -> GroupDetail:
    """Add machines to a group (machines already in it are fine); all must exist."""
    group = await service.add_group_members(
        session, group_id=group_id, machine_ids=data.machine_ids
    )
    return _group_read(group)


@groups_router.delete(
    "/{group_id}/machines/{machine_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404, 422),
)
async def remove_group_member(
    group_id: uuid.UUID, machine_id: uuid.UUID, _: WriteMachines, session: DbSession
) -> None:
    """Take a machine out of a group (a machine not in it is not an error)."""
    await service.remove_group_member(session, group_id=group_id, machine_id=machine_id)
