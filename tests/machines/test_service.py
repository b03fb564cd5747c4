from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from plantpulse.machines import security, service
from plantpulse.machines.schemas import MachineCreate, MachineUpdate
from tests.machines.conftest import MachineMaker, add_readings, count_readings

NOW = datetime.now(UTC)


class TestDeleteMachine:
    async def test_returns_how_many_readings_went(
        self, db: AsyncSession, make_machine: MachineMaker
    ) -> None:
        machine = await make_machine()
        await add_readings(db, machine.id, [NOW - timedelta(seconds=i) for i in range(7)])
        await add_readings(db, machine.id, [NOW], metric="rpm")
        assert await service.delete_machine(db, machine_id=machine.id) == 8
        assert await count_readings(db, machine.id) == 0

    async def test_the_session_does_not_keep_a_deleted_machine(
        self, db: AsyncSession, make_machine: MachineMaker
    ) -> None:
        machine = await make_machine()
        await service.get_machine(db, machine.id)
        await service.delete_machine(db, machine_id=machine.id)
        with pytest.raises(service.MachineNotFound):
            await service.get_machine(db, machine.id)
        with pytest.raises(service.MachineNotFound):
            await service.delete_machine(db, machine_id=machine.id)


class TestUniqueNames:
    """The name check runs first for a clear message; the savepoint catches the race where
    another transaction takes the name between check and insert."""

    async def test_a_lost_race_is_a_conflict_and_the_session_lives_on(
        self, db: AsyncSession, make_machine: MachineMaker, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        await make_machine("taken")
        other_id = (await make_machine("other")).id

        async def no_check(*_: object, **__: object) -> None:
            return None

        monkeypatch.setattr(service, "_check_machine_name_free", no_check)
        with pytest.raises(service.MachineExists):
            await service.create_machine(db, data=MachineCreate(name="taken"))
        with pytest.raises(service.MachineExists):
            await service.update_machine(db, machine_id=other_id, data=MachineUpdate(name="taken"))
        # The transaction is still usable and the failed rename left no trace.
        assert (await service.get_machine_detail(db, other_id)).name == "other"
        machines, total = await service.list_machines(db, q="taken")
        assert (total, [m.name for m in machines]) == (1, ["taken"])


class TestApiKeyPrefixCollision:
    async def test_a_colliding_prefix_is_drawn_again(
        self, db: AsyncSession, make_machine: MachineMaker, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        first = await make_machine()
        second_id = (await make_machine()).id
        taken = await service.issue_api_key(db, machine_id=first.id)
        taken_prefix = security.prefix_of(taken)
        real_new_api_key = security.new_api_key
        draws: list[str] = []

        def colliding_first() -> tuple[str, str, str]:
            key, prefix, key_hash = real_new_api_key()
            if not draws:
                assert taken_prefix is not None
                key = key.replace(prefix, taken_prefix, 1)
                prefix, key_hash = taken_prefix, security.hash_api_key(key)
            draws.append(prefix)
            return key, prefix, key_hash

        monkeypatch.setattr(security, "new_api_key", colliding_first)
        key = await service.issue_api_key(db, machine_id=second_id)
        assert len(draws) == 2
        assert (await service.machine_for_api_key(db, key)).id == second_id
        assert (await service.machine_for_api_key(db, taken)).id == first.id
