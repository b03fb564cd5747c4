"""`plantpulse simulate`: machines publishing realistic telemetry to any MQTT broker.

Temperature, pressure and speed drift slowly with noise and an occasional spike, per machine.
Machines are registered in the database (or reused by name) unless --no-register is given.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import threading
import time
import uuid
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from plantpulse.config import Settings


@dataclass
class _Machine:
    id: uuid.UUID
    temperature: float
    pressure: float
    speed: float

    def step(self, rng: random.Random) -> dict[str, float]:
        self.temperature += rng.gauss(0, 0.05) + (65 - self.temperature) * 0.001
        self.pressure += rng.gauss(0, 0.01) + (3 - self.pressure) * 0.001
        self.speed += rng.gauss(0, 2) + (1500 - self.speed) * 0.001
        spike = 15.0 if rng.random() < 0.001 else 0.0
        return {
            "temperature": round(self.temperature + spike, 3),
            "pressure": round(self.pressure, 4),
            "speed": round(self.speed, 1),
        }


async def register(settings: Settings, count: int) -> list[uuid.UUID]:
    """Machines `sim-0000`... created if missing; their ids."""
    import asyncpg

    conn = await asyncpg.connect(settings.database.asyncpg_dsn)
    try:
        names = [f"sim-{i:04d}" for i in range(count)]
        await conn.executemany(
            "INSERT INTO machines (id, name, sensor_type) VALUES ($1, $2, 'simulated') "
            "ON CONFLICT (name) DO NOTHING",
            [(uuid.uuid4(), name) for name in names],
        )
        rows = await conn.fetch("SELECT id, name FROM machines WHERE name = ANY($1)", names)
    finally:
        await conn.close()
    by_name = {r["name"]: r["id"] for r in rows}
    return [by_name[name] for name in names]


def publish(
    *,
    host: str,
    port: int,
    prefix: str,
    machine_ids: list[uuid.UUID],
    rate: float,
    duration: float,
    batch: int,
    qos: int,
    seed: int = 1,
) -> tuple[int, float]:
    """Publish at `rate` messages/s for `duration` s; returns (messages, seconds taken)."""
    rng = random.Random(seed)  # noqa: S311 - simulation, not cryptography
    machines = [
        _Machine(m, rng.uniform(55, 75), rng.uniform(2.5, 3.5), rng.uniform(1400, 1600))
        for m in machine_ids
    ]
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.connect(host, port)
    client.loop_start()
    if not connected.wait(10):
        raise RuntimeError(f"cannot connect to the broker at {host}:{port}")
    sent = 0
    started = time.monotonic()
    last_report = started
    index = 0
    try:
        while (elapsed := time.monotonic() - started) < duration:
            due = int(elapsed * rate) + 1
            while sent < due:
                now = time.time()
                if batch > 1:
                    entries = []
                    for _ in range(batch):
                        machine = machines[index % len(machines)]
                        index += 1
                        entries.append(
                            {"machine_id": str(machine.id), "readings": [machine.step(rng)]}
                        )
                    body = {"gateway_id": "sim", "timestamp": now, "batch": entries}
                    topic = f"{prefix}/gateways/sim/batch"
                else:
                    machine = machines[index % len(machines)]
                    index += 1
                    body = {"timestamp": now, **machine.step(rng)}
                    topic = f"{prefix}/machines/{machine.id}/telemetry"
                client.publish(topic, json.dumps(body), qos=qos)
                sent += 1
            if time.monotonic() - last_report >= 1:
                last_report = time.monotonic()
                rate_now = sent / max(last_report - started, 1e-9)
                print(
                    f"\r  {sent:>9} messages  {rate_now:>8.0f} msg/s  "
                    f"{int(last_report - started):>4}/{int(duration)} s",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(min(0.005, max(0.0, (sent + 1) / rate - (time.monotonic() - started))))
        seconds = time.monotonic() - started
    finally:
        client.loop_stop()
        client.disconnect()
    print(file=sys.stderr)
    return sent, seconds


def run(args: argparse.Namespace) -> int:
    if args.serve_source:
        from plantpulse.sources import demo

        return demo.serve(args.serve_source)
    settings = Settings()
    host, port = settings.mqtt.host, settings.mqtt.port
    if args.broker:
        host, _, raw = args.broker.partition(":")
        port = int(raw or 1883)
    prefix = args.prefix or settings.mqtt.topic_prefix
    if args.no_register:
        machine_ids = [uuid.uuid5(uuid.NAMESPACE_URL, f"sim-{i}") for i in range(args.machines)]
    else:
        machine_ids = asyncio.run(register(settings, args.machines))
    print(
        f"==> {args.machines} machines -> {host}:{port} {prefix}/..., {args.rate:g} msg/s "
        f"for {args.duration:g} s, batch {args.batch}, QoS {args.qos}",
        file=sys.stderr,
    )
    sent, seconds = publish(
        host=host,
        port=port,
        prefix=prefix,
        machine_ids=machine_ids,
        rate=args.rate,
        duration=args.duration,
        batch=args.batch,
        qos=args.qos,
    )
    readings = sent * 3 * max(args.batch, 1)
    print(f"==> published {sent} messages ({readings} readings) in {seconds:.1f} s "
          f"= {sent / seconds:.0f} msg/s")  # fmt: skip
    if sent < args.rate * args.duration * 0.95:
        print("    (below the requested rate: this publisher is the limit)", file=sys.stderr)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--machines", type=int, default=500)
    parser.add_argument("--rate", type=float, default=2000, help="messages per second")
    parser.add_argument("--duration", type=float, default=60, help="seconds")
    parser.add_argument(
        "--batch", type=int, default=1, help="machines per message (>1: gateway batch topic)"
    )
    parser.add_argument("--qos", type=int, choices=[0, 1], default=1)
    parser.add_argument("--broker", help="host:port (default: PLANTPULSE_MQTT__HOST/PORT)")
    parser.add_argument("--prefix", help="topic prefix (default: PLANTPULSE_MQTT__TOPIC_PREFIX)")
    parser.add_argument(
        "--no-register", action="store_true", help="do not touch the database (fixed ids)"
    )
    parser.add_argument(
        "--serve-source",
        metavar="[HOST:]PORT",
        help="instead of publishing, serve an HTTP endpoint for /api/v1/sources to pull "
        "(float32 byte points at /points, JSON rows at /json)",
    )
