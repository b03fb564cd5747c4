"""Readings published over MQTT reach WebSocket clients: through the real broker, ingest,
writer and hub of a live server; and through Redis when another process ingested them."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import aiomqtt

from plantpulse.config import RedisSettings, Settings
from plantpulse.realtime.hub import hub_of
from tests import support
from tests.conftest import MachineFactory, UserFactory
from tests.ingest.conftest import ingest_of, mosquitto_pub, mqtt_settings, subscribed
from tests.live import LiveApp, live_app, receive

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)


def _iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def with_redis(settings: Settings, prefix: str) -> Settings:
    redis = RedisSettings(url=support.REDIS_URL, key_prefix=prefix)
    return settings.model_copy(update={"redis": redis})


async def watching(live: LiveApp, token: str, machine: uuid.UUID) -> Any:
    ws = await live.connect(token)
    assert (await receive(ws))["type"] == "welcome"
    await ws.send(json.dumps({"action": "subscribe", "machine_ids": [str(machine)]}))
    assert (await receive(ws))["type"] == "subscribed"
    return ws


class TestMqttReadingOnSocket:
    async def test_a_published_reading_arrives_as_a_reading_event(
        self,
        database_url: str,
        broker: support.Broker,
        committed_user: UserFactory,
        committed_machine: MachineFactory,
    ) -> None:
        machine = await committed_machine()
        user = await committed_user()
        settings = with_redis(
            mqtt_settings(database_url, broker), f"pptest:{support.RUN_ID}:mqttws:"
        )
        async with live_app(settings) as live:
            await subscribed(live.resources)
            async with await watching(live, live.token(user), machine) as ws:
                topic = f"{settings.mqtt.topic_prefix}/machines/{machine}/telemetry"
                body = {"timestamp": _iso(T0), "temperature": 71.5, "pressure": 2}
                async with aiomqtt.Client(broker.host, broker.port) as device:
                    await device.publish(topic, json.dumps(body), qos=1)
                event = await receive(ws, seconds=10)
        assert event == {
            "type": "reading",
            "machine_id": str(machine),
            "timestamp": _iso(T0),
            "metrics": {"temperature": 71.5, "pressure": 2.0},
            "valid": {"temperature": True, "pressure": True},
        }


class TestTwoProcessesSharingRedis:
    async def test_both_deliver_what_only_one_of_them_ingested(
        self,
        database_url: str,
        broker: support.Broker,
        committed_user: UserFactory,
        committed_machine: MachineFactory,
    ) -> None:
        machine = await committed_machine()
        user = await committed_user()
        topic_prefix = f"pptest/{uuid.uuid4().hex[:12]}"
        redis_prefix = f"pptest:{support.RUN_ID}:mqttpair:{uuid.uuid4().hex[:6]}:"
        # A shared subscription: the broker hands each message to one of the two processes.
        group = {"shared_group": f"g{uuid.uuid4().hex[:8]}"}
        one, two = (
            with_redis(
                mqtt_settings(database_url, broker, prefix=topic_prefix, mqtt=group), redis_prefix
            )
            for _ in range(2)
        )
        messages = 20
        lines = [
            json.dumps({"timestamp": _iso(T0 + timedelta(seconds=i)), "temperature": float(i)})
            for i in range(messages)
        ]
        async with live_app(one) as first, live_app(two) as second:
            assert hub_of(first.resources).fanout == "redis"
            await subscribed(first.resources)
            await subscribed(second.resources)
            async with (
                await watching(first, first.token(user), machine) as a,
                await watching(second, second.token(user), machine) as b,
            ):
                await mosquitto_pub(broker, f"{topic_prefix}/machines/{machine}/telemetry", lines)
                seen = {}
                for name, ws in (("a", a), ("b", b)):
                    events = [await receive(ws, seconds=10) for _ in range(messages)]
                    seen[name] = sorted(e["metrics"]["temperature"] for e in events)
                    await ws.send(json.dumps({"action": "ping"}))
                    # Each reading once: no duplicate waits in front of the pong.
                    assert (await receive(ws))["type"] == "pong"
            ingested = (
                ingest_of(first.resources).state.counters.received,
                ingest_of(second.resources).state.counters.received,
            )
        assert seen["a"] == seen["b"] == [float(i) for i in range(messages)]
        assert sum(ingested) == messages
        # Each process delivered readings the other one ingested.
        assert min(ingested) > 0
