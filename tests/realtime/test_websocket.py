"""The WebSocket stream against a real uvicorn server, fed through the real writer.

Readings are written with `resources.writer.write` (the path HTTP and MQTT ingest share);
readings published over MQTT: test_mqtt_stream.py.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from plantpulse.auth.permissions import ROLE_PERMISSIONS, Role
from plantpulse.auth.security import decode_token
from plantpulse.config import RealtimeSettings, RedisSettings, Settings
from plantpulse.realtime.hub import hub_of
from tests import support
from tests.conftest import MachineFactory, UserFactory, make_settings
from tests.live import LiveApp, eventually, live_app, receive, receive_until

T0 = datetime.now(UTC).replace(microsecond=0)


def live_settings(database_url: str, settings: Settings, prefix: str, **realtime: Any) -> Settings:
    return make_settings(
        database_url,
        auth=settings.auth,
        redis=RedisSettings(url=support.REDIS_URL, key_prefix=prefix),
        realtime=RealtimeSettings(auth_recheck_seconds=0.3, auth_timeout_seconds=1.0, **realtime),
    )


@pytest.fixture(scope="module")
async def live(database_url: str, settings: Settings) -> AsyncIterator[LiveApp]:
    prefix = f"pptest:{support.RUN_ID}:ws:"
    async with live_app(live_settings(database_url, settings, prefix)) as app:
        yield app


async def write(live: LiveApp, rows: list[tuple[datetime, uuid.UUID, str, float]]) -> None:
    await live.resources.catalog.known({r[1] for r in rows})
    await live.resources.writer.write(rows, source="test")


async def closed_with(ws: Any) -> tuple[int | None, str | None]:
    """Read until the server closes; the close code and reason it sent."""

    async def drain() -> None:
        while True:
            await ws.recv()

    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(drain(), 15)
    return ws.close_code, ws.close_reason


async def welcomed(ws: Any) -> dict[str, Any]:
    message = await receive(ws)
    assert message["type"] == "welcome", message
    return message


class TestAuthentication:
    async def test_token_in_query_is_welcomed(
        self, live: LiveApp, committed_user: UserFactory
    ) -> None:
        user = await committed_user(Role.operator)
        async with live.connect(live.token(user)) as ws:
            welcome = await welcomed(ws)
        assert welcome["user"] == user.username
        assert welcome["include_invalid"] is False

    async def test_token_as_first_message(self, live: LiveApp, committed_user: UserFactory) -> None:
        user = await committed_user(Role.management)
        async with live.connect() as ws:
            await ws.send(json.dumps({"action": "auth", "token": live.token(user)}))
            welcome = await welcomed(ws)
        assert welcome["include_invalid"] is True

    async def test_expired_token_closes_4401(
        self, live: LiveApp, committed_user: UserFactory
    ) -> None:
        user = await committed_user()
        async with live.connect(live.expired_token(user)) as ws:
            code, reason = await closed_with(ws)
        assert (code, reason) == (4401, "token has expired")

    async def test_garbage_token_closes_4401(self, live: LiveApp) -> None:
        async with live.connect("not-a-jwt") as ws:
            assert await closed_with(ws) == (4401, "invalid token")

    async def test_no_token_in_time_closes_4401(self, live: LiveApp) -> None:
        async with live.connect() as ws:
            code, reason = await closed_with(ws)
        assert code == 4401
        assert "token" in str(reason)

    async def test_first_message_other_than_auth_closes_4401(self, live: LiveApp) -> None:
        async with live.connect() as ws:
            await ws.send(json.dumps({"action": "subscribe_all"}))
            code, _ = await closed_with(ws)
        assert code == 4401

    async def test_revoked_token_is_refused(
        self, live: LiveApp, committed_user: UserFactory
    ) -> None:
        user = await committed_user()
        token = live.token(user)
        claims = decode_token(live.resources.settings.auth, token, expected_type="access")
        await live.resources.revocations.revoke(claims.jti, claims.expires_at)
        async with live.connect(token) as ws:
            assert await closed_with(ws) == (4401, "token has been revoked")

    async def test_token_revoked_while_connected_closes_the_socket(
        self, live: LiveApp, committed_user: UserFactory
    ) -> None:
        user = await committed_user()
        token = live.token(user)
        async with live.connect(token) as ws:
            await welcomed(ws)
            claims = decode_token(live.resources.settings.auth, token, expected_type="access")
            await live.resources.revocations.revoke(claims.jti, claims.expires_at)
            # auth_recheck_seconds is 0.3 here (30 s by default).
            assert await closed_with(ws) == (4401, "token has been revoked")

    async def test_role_without_telemetry_read_closes_4403(
        self, live: LiveApp, committed_user: UserFactory, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Every shipped role may read telemetry; take it away from operators for this test.
        user = await committed_user(Role.operator)
        monkeypatch.setitem(ROLE_PERMISSIONS, Role.operator, frozenset())
        async with live.connect(live.token(user)) as ws:
            code, reason = await closed_with(ws)
        assert code == 4403
        assert "telemetry:read" in str(reason)


class TestSubscriptions:
    async def test_only_subscribed_machines_arrive(
        self, live: LiveApp, committed_user: UserFactory, committed_machine: MachineFactory
    ) -> None:
        user = await committed_user()
        wanted, other = await committed_machine(), await committed_machine()
        async with live.connect(live.token(user)) as ws:
            await welcomed(ws)
            await ws.send(json.dumps({"action": "subscribe", "machine_ids": [str(wanted)]}))
            assert await receive(ws) == {
                "type": "subscribed",
                "all": False,
                "machine_ids": [str(wanted)],
            }
            # The other machine's reading is committed first: if it were delivered, it would
            # arrive before the wanted one.
            await write(live, [(T0, other, "temp", 1.0)])
            await write(live, [(T0, wanted, "temp", 2.0), (T0, wanted, "rpm", 3.0)])
            message = await receive(ws)
        assert message == {
            "type": "reading",
            "machine_id": str(wanted),
            "timestamp": T0.isoformat().replace("+00:00", "Z"),
            "metrics": {"temp": 2.0, "rpm": 3.0},
            "valid": {"temp": True, "rpm": True},
        }

    async def test_subscribe_all_then_unsubscribe(
        self, live: LiveApp, committed_user: UserFactory, committed_machine: MachineFactory
    ) -> None:
        user = await committed_user()
        a, b = await committed_machine(), await committed_machine()
        async with live.connect(live.token(user)) as ws:
            await welcomed(ws)
            await ws.send(json.dumps({"action": "subscribe_all", "ref": 7}))
            assert (await receive(ws))["ref"] == 7
            await write(live, [(T0, a, "temp", 1.0), (T0, b, "temp", 2.0)])
            got = {(await receive(ws))["machine_id"] for _ in range(2)}
            assert got == {str(a), str(b)}
            await ws.send(json.dumps({"action": "unsubscribe"}))
            assert (await receive(ws))["all"] is False
            await write(live, [(T0 + timedelta(seconds=1), a, "temp", 1.0)])
            await ws.send(json.dumps({"action": "ping", "ref": "p"}))
            # Ordered after the write's events, had any been queued.
            assert await receive(ws) == {"type": "pong", "ref": "p"}

    async def test_subscribe_all_to_some_event_types_skips_the_others(
        self, live: LiveApp, committed_user: UserFactory, committed_machine: MachineFactory
    ) -> None:
        """An alerts screen follows every machine's alerts, not every machine's readings."""
        user = await committed_user()
        machine = await committed_machine()
        async with live.connect(live.token(user)) as ws:
            await welcomed(ws)
            await ws.send(json.dumps({"action": "subscribe_all", "types": ["alert"]}))
            reply = await receive(ws)
            assert (reply["all"], reply["types"]) == (True, ["alert"])
            await write(live, [(T0, machine, "temp", 1.0)])
            await ws.send(json.dumps({"action": "ping", "ref": "p"}))
            # Ordered after the write's event, had it been queued.
            assert await receive(ws) == {"type": "pong", "ref": "p"}

    async def test_bad_messages_get_an_error_event_not_a_disconnect(
        self, live: LiveApp, committed_user: UserFactory
    ) -> None:
        user = await committed_user()
        async with live.connect(live.token(user)) as ws:
            await welcomed(ws)
            for bad in ("not json", '{"action": "dance"}', '{"action": "subscribe"}'):
                await ws.send(bad)
                error = await receive(ws)
                assert (error["type"], error["code"]) == ("error", "invalid_message"), error
            await ws.send(json.dumps({"action": "subscribe", "machine_ids": [str(uuid.uuid4())]}))
            assert (await receive(ws))["code"] == "unknown_machines"
            await ws.send(json.dumps({"action": "ping"}))
            assert (await receive_until(ws, lambda m: m["type"] == "pong"))["type"] == "pong"


class TestInvalidReadings:
    async def test_operator_sees_only_valid_metrics_management_sees_all(
        self, live: LiveApp, committed_user: UserFactory, committed_machine: MachineFactory
    ) -> None:
        machine = await committed_machine()
        await live.resources.pg.execute(
            "INSERT INTO machine_metrics (machine_id, name, min_value, max_value) "
            "VALUES ($1, 'temp', 0, 100)",
            machine,
        )
        operator, manager = (
            await committed_user(Role.operator),
            await committed_user(Role.management),
        )
        subscribe = json.dumps({"action": "subscribe", "machine_ids": [str(machine)]})
        async with (
            live.connect(live.token(operator)) as op,
            live.connect(live.token(manager)) as mg,
        ):
            for ws in (op, mg):
                await welcomed(ws)
                await ws.send(subscribe)
                await receive(ws)
            live.resources.catalog.forget(machine)
            # Only an invalid metric at T0: operators get nothing for it.
            await write(live, [(T0, machine, "temp", 500.0)])
            t1 = T0 + timedelta(seconds=1)
            await write(live, [(t1, machine, "temp", 900.0), (t1, machine, "rpm", 5.0)])
            op_first = await receive(op)
            mg_first, mg_second = await receive(mg), await receive(mg)
        assert op_first["metrics"] == {"rpm": 5.0}
        assert op_first["valid"] == {"rpm": True}
        assert mg_first["metrics"] == {"temp": 500.0}
        assert mg_first["valid"] == {"temp": False}
        assert mg_second["valid"] == {"temp": False, "rpm": True}


class TestSlowClients:
    async def test_a_slow_client_is_closed_4408_and_does_not_hold_up_a_fast_one(
        self,
        database_url: str,
        settings: Settings,
        committed_user: UserFactory,
        committed_machine: MachineFactory,
    ) -> None:
        prefix = f"pptest:{support.RUN_ID}:slow:"
        config = live_settings(database_url, settings, prefix, client_buffer_events=200)
        user = await committed_user()
        machine = await committed_machine()
        subscribe = json.dumps({"action": "subscribe", "machine_ids": [str(machine)]})
        # The slow client's kernel buffer is tiny, it never reads and it does not compress (our
        # repetitive events deflate very well), so the server's writes to it stall and its
        # 200-event buffer overflows.
        slow_sock = socket.socket()
        slow_sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        async with live_app(config) as live:
            port = int(live.base_url.rsplit(":", 1)[1])
            slow_sock.setblocking(False)
            await asyncio.get_running_loop().sock_connect(slow_sock, ("127.0.0.1", port))
            token = live.token(user)
            async with (
                live.connect(token) as fast,
                live.connect(token, sock=slow_sock, max_queue=1, compression=None) as slow,
            ):
                for ws in (fast, slow):
                    await welcomed(ws)
                    await ws.send(subscribe)
                    await receive(ws)
                # ~3 KB events (20 long metric names), ~6 MB in all: more than the kernel and
                # transport buffers between the server and a client that does not read.
                metrics = [f"metric_{i:02d}_{'x' * 50}" for i in range(20)]
                received = 0
                batches, per_batch = 40, 50
                for b in range(batches):
                    t = T0 + timedelta(minutes=b)
                    rows = [
                        (t + timedelta(milliseconds=i), machine, metric, float(i))
                        for i in range(per_batch)
                        for metric in metrics
                    ]
                    await write(live, rows)
                    # The fast client keeps up while the slow one is not read at all.
                    async with asyncio.timeout(5):
                        while received < (b + 1) * per_batch:
                            await fast.recv()
                            received += 1
                assert received == batches * per_batch
                hub = hub_of(live.resources)
                assert hub.dropped_batches == 0
                code, reason = await closed_with(slow)
        assert code == 4408
        assert "too slow" in str(reason)


class TestSeveralProcesses:
    async def test_every_instance_delivers_each_event_once(
        self,
        database_url: str,
        settings: Settings,
        committed_user: UserFactory,
        committed_machine: MachineFactory,
    ) -> None:
        prefix = f"pptest:{support.RUN_ID}:pair:{uuid.uuid4().hex[:6]}:"
        config = live_settings(database_url, settings, prefix)
        user = await committed_user()
        machine = await committed_machine()
        subscribe = json.dumps({"action": "subscribe", "machine_ids": [str(machine)]})
        async with live_app(config) as first, live_app(config) as second:
            assert hub_of(first.resources).fanout == "redis"
            async with (
                first.connect(first.token(user)) as a,
                second.connect(second.token(user)) as b,
            ):
                for ws in (a, b):
                    await welcomed(ws)
                    await ws.send(subscribe)
                    await receive(ws)
                # Written in the first process only.
                await write(first, [(T0, machine, "temp", 1.0)])
                await write(first, [(T0 + timedelta(seconds=1), machine, "temp", 2.0)])
                for ws in (a, b):
                    values = [(await receive(ws))["metrics"]["temp"] for _ in range(2)]
                    assert values == [1.0, 2.0]
                    await ws.send(json.dumps({"action": "ping"}))
                    # No duplicate is waiting in front of the pong.
                    assert (await receive(ws))["type"] == "pong"


class TestServerSentEvents:
    async def test_stream_delivers_readings(
        self, live: LiveApp, committed_user: UserFactory, committed_machine: MachineFactory
    ) -> None:
        user = await committed_user()
        machine = await committed_machine()
        headers = {"Authorization": f"Bearer {live.token(user)}"}
        params = {"machine_ids": str(machine)}
        async with (
            httpx.AsyncClient(base_url=live.base_url, timeout=5) as http,
            http.stream("GET", "/api/v1/stream", headers=headers, params=params) as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = response.aiter_lines()
            assert await anext(lines) == "retry: 3000"
            await eventually(lambda: hub_of(live.resources).connections > 0)
            await write(live, [(T0, machine, "temp", 4.0)])
            async with asyncio.timeout(5):
                event = [line async for line in _until_blank(lines)]
        assert event[0] == "event: reading"
        body = json.loads(event[1].removeprefix("data: "))
        assert (body["machine_id"], body["metrics"]) == (str(machine), {"temp": 4.0})

    async def test_stream_refuses_a_bad_token_with_the_envelope(self, live: LiveApp) -> None:
        async with httpx.AsyncClient(base_url=live.base_url, timeout=5) as http:
            response = await http.get("/api/v1/stream", params={"token": "nope"})
        assert response.status_code == 401
        assert response.json()["error"] == "NotAuthenticated"


async def _until_blank(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    """The lines of the next SSE event (skipping keep-alive comments and blank lines)."""
    started = False
    async for line in lines:
        if line.startswith(":") or (line == "" and not started):
            continue
        if line == "":
            return
        started = True
        yield line
