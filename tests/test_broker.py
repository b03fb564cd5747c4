from __future__ import annotations

import asyncio

import aiomqtt

from tests import support


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
                    received.add(bytes(message.payload).decode())  # type: ignore[arg-type]
                    if len(received) == 2000:
                        break
        assert len(received) == 2000
