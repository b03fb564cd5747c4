from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import aiomqtt

from tests import support
from tests.ingest.conftest import mosquitto_pub

MESSAGES = 2000


class TestPrivateBroker:
    async def test_keeps_queued_qos1_messages_across_a_restart(
        self, broker: support.Broker
    ) -> None:
        """The shipped tuning: a persistent session's QoS 1 backlog survives a broker restart."""
        topic = f"pptest/{support.RUN_ID}/broker"
        client_id = f"pptest-{support.RUN_ID}-sub"
        async with aiomqtt.Client(
            broker.host, broker.port, identifier=client_id, clean_session=False
        ) as sub:
            await sub.subscribe(topic, qos=1)
        async with aiomqtt.Client(broker.host, broker.port) as pub:
            for i in range(2000):
                await pub.publish(topic, str(i), qos=1)
        await broker.restart()
        received: set[str] = set()
        async with aiomqtt.Client(
            broker.host, broker.port, identifier=client_id, clean_session=False
        ) as sub:
            async with asyncio.timeout(20):
                async for message in sub.messages:
                    received.add(bytes(message.payload).decode())
                    if len(received) == 2000:
                        break
        assert len(received) == 2000


def _file_version(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


async def _saves_after(database: Path, count: int, within: float) -> int:
    """How many times the broker rewrote its database file within `within` seconds, stopping at
    `count` (a save replaces the file: new inode, new mtime)."""
    seen = {_file_version(database)}
    deadline = time.monotonic() + within
    while len(seen) <= count and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        seen.add(_file_version(database))
    return len(seen) - 1


class TestBrokerCrash:
    async def test_a_kill_9_keeps_the_acknowledged_queue_of_an_offline_session(
        self, tmp_path: Path
    ) -> None:
        """Issue 8, item 7: with persistence on but the default autosave (every 30 minutes), a
        `kill -9` lost every queued QoS 1 message the broker had acknowledged since it started.

        Mosquitto writes its whole database every `autosave_interval`; what it acknowledged
        before a save survives a crash. Two saves after the last acknowledgement (the first
        may have begun before it) and the queue must come back whole."""
        broker = support.Broker(tmp_path)
        await broker.start()
        topic = f"pptest/{support.RUN_ID}/crash"
        client_id = f"pptest-{support.RUN_ID}-crash"
        try:
            async with aiomqtt.Client(
                broker.host, broker.port, identifier=client_id, clean_session=False
            ) as sub:
                await sub.subscribe(topic, qos=1)
            await mosquitto_pub(broker, topic, [str(i) for i in range(MESSAGES)])
            saves = await _saves_after(tmp_path / "mosquitto.db", 2, within=20)
            await broker.kill()
            await broker.start()
            received: set[str] = set()
            async with aiomqtt.Client(
                broker.host, broker.port, identifier=client_id, clean_session=False
            ) as sub:
                await sub.subscribe(topic, qos=1)  # the session may be gone: count, don't hang
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(10):
                        async for message in sub.messages:
                            received.add(bytes(message.payload).decode())
                            if len(received) == MESSAGES:
                                break
        finally:
            await broker.stop()
        assert len(received) == MESSAGES, (
            f"{len(received)} of {MESSAGES} queued messages survived the crash "
            f"({saves} autosaves in the 20 s before it)"
        )
