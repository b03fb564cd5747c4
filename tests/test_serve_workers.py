"""`plantpulse serve --workers 2`: two real worker processes behind one port, one broker,
one database and Redis. Which worker holds a connection is read from /proc (the server side
of each TCP connection belongs to exactly one worker)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiomqtt
import asyncpg
import pytest
from websockets.asyncio.client import ClientConnection, connect

from plantpulse.auth.permissions import Role
from tests import support
from tests.conftest import MachineFactory, UserFactory
from tests.live import eventually, receive, receive_until
from tests.processes import Server, server_env, token_for

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")


def _workers(server: Server) -> list[int]:
    assert server.process is not None
    pid = server.process.pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(c) for c in children]


def _inode_of(server_port: int, client_port: int) -> str | None:
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, inode = fields[1], fields[2], fields[9]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == (
            client_port
        ):
            return inode
    return None


def worker_of(server: Server, client_port: int) -> int | None:
    """The worker process that holds the server side of our connection from `client_port`."""
    inode = _inode_of(server.port, client_port)
    if inode is None:
        return None
    for pid in _workers(server):
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) == f"socket:[{inode}]":
                    return pid
            except OSError:
                continue
    return None


class RawHttp:
    """One keep-alive HTTP/1.1 connection, so we know which worker answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.port: int = writer.get_extra_info("sockname")[1]

    @classmethod
    async def open(cls, port: int) -> RawHttp:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        return cls(reader, writer)

    async def request(self, method: str, path: str, token: str) -> tuple[int, Any]:
        self.writer.write(
            f"{method} {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n"
            "Content-Length: 0\r\n\r\n".encode()
        )
        async with asyncio.timeout(10):
            head = await self.reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await self.reader.readexactly(length)
        return int(head.split()[1]), json.loads(body) if body else None

    def close(self) -> None:
        self.writer.close()


async def one_per_worker(server: Server, opener: Any, port_of: Any) -> dict[int, Any]:
    """Open connections until each worker holds one; close the extra ones."""
    found: dict[int, Any] = {}
    extra: list[Any] = []
    async with asyncio.timeout(30):
        while len(found) < 2:
            conn = await opener()
            await asyncio.sleep(0.05)
            pid = worker_of(server, port_of(conn))
            if pid is not None and pid not in found:
                found[pid] = conn
            else:
                extra.append(conn)
    for conn in extra:
        result = conn.close()
        if asyncio.iscoroutine(result):
            await result
    return found


@pytest.fixture(scope="module")
async def workers(
    database_url: str, broker: support.Broker, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[Server, dict[str, str]]]:
    env = server_env(
        database_url,
        support.REDIS_URL,
        PLANTPULSE_MQTT__ENABLED="true",
        PLANTPULSE_MQTT__HOST=broker.host,
        PLANTPULSE_MQTT__PORT=str(broker.port),
        PLANTPULSE_MQTT__CLIENT_ID=f"pptest-{uuid.uuid4().hex[:10]}",
        PLANTPULSE_MQTT__TOPIC_PREFIX=f"pptest/{uuid.uuid4().hex[:10]}",
        TMPDIR=str(tmp_path_factory.mktemp("worker-slots")),
    )
    server = Server(env, "--workers", "2")
    await server.start()
    try:
        await eventually(lambda: len(_workers(server)) >= 2, seconds=60)
        yield server, env
    finally:
        await server.stop()


class TestRefusedWithoutRedis:
    def test_two_workers_without_redis_is_a_clear_error(self) -> None:
        env = server_env("postgresql+asyncpg://nobody@127.0.0.1:1/none", None)
        result = subprocess.run(
            [sys.executable, "-m", "plantpulse.cli", "serve", "--workers", "2"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 2
        assert "--workers 2 needs Redis" in result.stderr


class TestTwoWorkers:
    async def test_a_reading_is_stored_once_and_seen_once_on_either_worker(
        self,
        workers: tuple[Server, dict[str, str]],
        broker: support.Broker,
        committed_machine: MachineFactory,
        committed_user: UserFactory,
        pg_pool: asyncpg.Pool,
    ) -> None:
        server, env = workers
        machine = await committed_machine()
        token = token_for(env, await committed_user(Role.operator))
        url = f"ws://127.0.0.1:{server.port}/api/v1/ws?token={token}"

        async def open_ws() -> ClientConnection:
            ws = await connect(url, open_timeout=10)
            assert (await receive(ws))["type"] == "welcome"
            await ws.send(json.dumps({"action": "subscribe", "machine_ids": [str(machine)]}))
            assert (await receive(ws))["type"] == "subscribed"
            return ws

        sockets = await one_per_worker(
            server, open_ws, lambda ws: ws.transport.get_extra_info("sockname")[1]
        )
        assert len(sockets) == 2
        topic = f"{env['PLANTPULSE_MQTT__TOPIC_PREFIX']}/machines/{machine}/telemetry"
        t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
        stamps = [t0 + timedelta(seconds=i) for i in range(20)]
        async with aiomqtt.Client(broker.host, broker.port) as device:
            for at in stamps:
                body = {"timestamp": at.isoformat().replace("+00:00", "Z"), "temperature": 1.5}
                await device.publish(topic, json.dumps(body), qos=1)
        expected = {at.isoformat().replace("+00:00", "Z") for at in stamps}
        try:
            for ws in sockets.values():
                seen: list[str] = []
                while set(seen) != expected:
                    event = await receive_until(ws, lambda m: m["type"] == "reading", seconds=15)
                    seen.append(event["timestamp"])
                # Nothing arrives twice: a last look for stragglers.
                with pytest.raises(TimeoutError):
                    await receive_until(ws, lambda m: m["type"] == "reading", seconds=1.0)
                assert sorted(seen) == sorted(expected)
        finally:
            for ws in sockets.values():
                await ws.close()
        rows = await pg_pool.fetch(
            "SELECT time, count(*) AS n FROM readings WHERE machine_id = $1 GROUP BY time",
            machine,
        )
        assert len(rows) == 20
        assert all(row["n"] == 1 for row in rows)

    async def test_a_logout_in_one_worker_is_honoured_by_the_other(
        self, workers: tuple[Server, dict[str, str]], committed_user: UserFactory
    ) -> None:
        server, env = workers
        token = token_for(env, await committed_user(Role.operator))
        conns = await one_per_worker(server, lambda: RawHttp.open(server.port), lambda c: c.port)
        here, there = conns.values()
        try:
            for _ in range(2):  # the second answer comes from `there`'s principal cache
                assert (await there.request("GET", "/api/v1/auth/me", token))[0] == 200
            assert (await here.request("POST", "/api/v1/auth/logout", token))[0] == 204
            status, body = await there.request("GET", "/api/v1/auth/me", token)
        finally:
            here.close()
            there.close()
        assert (status, body["detail"]) == (401, "token has been revoked")
