"""`machine_status` events: from the machines API (after its commit) and from MQTT status
messages (after ingest committed them), against a real server, broker and Redis."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiomqtt
import httpx
import pytest

from plantpulse.auth.permissions import Role
from plantpulse.config import RealtimeSettings, RedisSettings
from tests import support
from tests.conftest import MachineFactory, UserFactory
from tests.ingest.conftest import mqtt_settings, subscribed
from tests.live import LiveApp, live_app, receive, receive_until


@pytest.fixture(scope="module")
async def live(database_url: str, broker: support.Broker) -> AsyncIterator[LiveApp]:
    settings = mqtt_settings(database_url, broker).model_copy(
        update={
            "redis": RedisSettings(
                url=support.REDIS_URL, key_prefix=f"pptest:{support.RUN_ID}:status:"
            ),
            "realtime": RealtimeSettings(auth_recheck_seconds=5.0),
        }
    )
    async with live_app(settings) as app:
        await subscribed(app.resources)
        yield app


async def watching(live: LiveApp, token: str, machine: uuid.UUID) -> Any:
    ws = await live.connect(token)
    assert (await receive(ws))["type"] == "welcome"
    await ws.send(json.dumps({"action": "subscribe", "machine_ids": [str(machine)]}))
    assert (await receive(ws))["type"] == "subscribed"
    return ws


async def nothing_waiting(ws: Any) -> None:
    """The next message is the reply to a ping: no event was queued in front of it."""
    await ws.send(json.dumps({"action": "ping", "ref": "check"}))
    assert await receive(ws) == {"type": "pong", "ref": "check"}


def is_status(message: dict[str, object]) -> bool:
    return message["type"] == "machine_status"


async def patch(live: LiveApp, token: str, path: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=live.base_url, timeout=10) as http:
        return await http.patch(path, json=body, headers={"Authorization": f"Bearer {token}"})


class TestStatusChangedThroughTheApi:
    async def test_status_route_publishes_to_subscribers_of_the_machine_only(
        self, live: LiveApp, committed_user: UserFactory, committed_machine: MachineFactory
    ) -> None:
        supervisor = live.token(await committed_user(Role.supervisor))
        viewer = live.token(await committed_user(Role.operator))
        machine, other = await committed_machine(), await committed_machine()
        async with (
            await watching(live, viewer, machine) as ws,
            await watching(live, viewer, other) as elsewhere,
        ):
            response = await patch(
                live,
                supervisor,
                f"/api/v1/machines/{machine}/status",
                {"status": "maintenance"},
            )
            assert response.status_code == 200, response.text
            event = await receive(ws)
            await nothing_waiting(elsewhere)
        assert event == {
            "type": "machine_status",
            "machine_id": str(machine),
            "status": "maintenance",
            "connectivity": "unknown",
            "last_seen_at": None,
        }

    async def test_patching_the_status_field_publishes_and_other_fields_do_not(
        self, live: LiveApp, committed_user: UserFactory, committed_machine: MachineFactory
    ) -> None:
        supervisor = live.token(await committed_user(Role.supervisor))
        machine = await committed_machine()
        path = f"/api/v1/machines/{machine}"
        async with await watching(live, supervisor, machine) as ws:
            assert (await patch(live, supervisor, path, {"description": "x"})).status_code == 200
            # Unchanged status: no event either.
            assert (await patch(live, supervisor, path, {"status": "active"})).status_code == 200
            await nothing_waiting(ws)
            assert (await patch(live, supervisor, path, {"status": "error"})).status_code == 200
            event = await receive(ws)
        assert (event["type"], event["status"]) == ("machine_status", "error")

    async def test_a_refused_change_publishes_nothing(
        self, live: LiveApp, committed_user: UserFactory, committed_machine: MachineFactory
    ) -> None:
        supervisor = live.token(await committed_user(Role.supervisor))
        taken = await committed_machine()
        machine = await committed_machine()
        names = await live.resources.pg.fetchval("SELECT name FROM machines WHERE id = $1", taken)
        async with await watching(live, supervisor, machine) as ws:
            # The status would change, but the name clash rolls the whole request back.
            response = await patch(
                live, supervisor, f"/api/v1/machines/{machine}", {"status": "error", "name": names}
            )
            assert response.status_code == 409, response.text
            await nothing_waiting(ws)


class TestConnectivityFromMqtt:
    async def test_status_messages_reach_subscribers_of_the_machine_only(
        self,
        live: LiveApp,
        broker: support.Broker,
        committed_user: UserFactory,
        committed_machine: MachineFactory,
    ) -> None:
        viewer = live.token(await committed_user(Role.operator))
        machine, other = await committed_machine(), await committed_machine()
        prefix = live.resources.settings.mqtt.topic_prefix
        async with (
            await watching(live, viewer, machine) as ws,
            await watching(live, viewer, other) as elsewhere,
        ):
            async with aiomqtt.Client(broker.host, broker.port) as device:
                topic = f"{prefix}/machines/{machine}/status"
                await device.publish(topic, '{"status": "online"}', qos=1)
                online = await receive_until(ws, is_status, seconds=10)
                await device.publish(topic, '{"status": "offline"}', qos=1)
                offline = await receive_until(ws, is_status, seconds=10)
            await nothing_waiting(elsewhere)
        assert online["machine_id"] == str(machine)
        assert (online["connectivity"], online["status"]) == ("online", "active")
        assert online["last_seen_at"] is not None
        assert offline["connectivity"] == "offline"
        # Going offline keeps the time the machine was last heard from.
        assert offline["last_seen_at"] == online["last_seen_at"]
