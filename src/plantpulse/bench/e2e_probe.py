"""The probe side of `plantpulse bench e2e`, its own process: publishes one probe reading every
`1/HZ` s over MQTT (QoS 1) whose `sent_at` metric is the wall-clock time of publishing, and
receives the same probes with a bare paho subscriber on the same broker: the same-run reference
for the MQTT hop alone. Prints "ready" once subscribed, then one JSON object at the end.

    python -m plantpulse.bench.e2e_probe HOST PORT TOPIC HZ SECONDS
"""

from __future__ import annotations

import json
import socket
import sys
import threading
import time
import uuid
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

DRAIN_SECONDS = 1.0


def _client(host: str, port: int, role: str) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"e2e-{role}-{uuid.uuid4().hex[:8]}"
    )
    client.connect(host, port)
    sock = client.socket()
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


def run(host: str, port: int, topic: str, hz: float, seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    subscribed = threading.Event()

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        received = time.time()
        latencies.append((received - json.loads(message.payload)["sent_at"]) * 1000)

    reference = _client(host, port, "reference")
    reference.on_message = on_message
    reference.on_subscribe = lambda *args: subscribed.set()
    reference.subscribe(topic, qos=1)
    reference.loop_start()
    publisher = _client(host, port, "probe")
    publisher.loop_start()
    if not subscribed.wait(10):
        raise RuntimeError("the reference subscriber was not subscribed in time")
    print("ready", flush=True)
    sent = 0
    every = 1.0 / hz
    next_at = time.monotonic()
    deadline = next_at + seconds
    while next_at < deadline:
        now = time.time()
        publisher.publish(topic, json.dumps({"timestamp": now, "sent_at": now}), qos=1)
        sent += 1
        next_at += every
        time.sleep(max(0.0, next_at - time.monotonic()))
    time.sleep(DRAIN_SECONDS)
    publisher.loop_stop()
    reference.loop_stop()
    publisher.disconnect()
    reference.disconnect()
    return {"sent": sent, "reference_ms": latencies}


def main() -> None:
    host, port, topic, hz, seconds = sys.argv[1:6]
    result = run(host, int(port), topic, float(hz), float(seconds))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
