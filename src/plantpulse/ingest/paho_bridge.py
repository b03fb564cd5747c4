"""Every private paho/aiomqtt name PlantPulse uses, in one place: read this file when upgrading.

Written for aiomqtt 2.5 and paho-mqtt 2.2 (pinned in pyproject.toml). aiomqtt owns the
connection (connect, subscribe, keepalive, socket <-> event loop); four things are done
underneath it, on its paho client, because aiomqtt has no API for them:

- manual acknowledgement (`manual_ack_set(True)` + `ack(mid, 1)` after the commit), so a
  `kill -9` at any moment loses nothing: the broker redelivers whatever we never acknowledged;
- our own `on_message` instead of aiomqtt's queue and `client.messages` iterator, which cost an
  asyncio task and a queue hop per message and, if bounded, silently drop on overflow;
- a read-buffered socket (paho reads each packet with 3+ `recv` calls of 1-2 bytes) and a
  reader callback that drains every buffered packet, and that stops reading while the
  pipeline's queue is full (backpressure: TCP and the broker hold the rest, nothing is dropped);
- our own handler for the PUBLISH packets we get (QoS 0/1 without MQTT 5 properties), which
  skips paho's per-message `Properties` and `MQTTMessage` objects; the rest goes to paho's;
- a PINGREQ/PINGRESP round trip on demand (`round_trip()`): the broker handles a connection's
  packets in order, so its answer proves it has processed every PUBACK we sent before
  (redelivery.py retires its records with it). paho's own keepalive pings are counted too, so
  an answer is matched to the right request.

`check_compatible()` runs at start-up and names what is missing if another version is installed.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from importlib import metadata
from typing import Any, Protocol

import aiomqtt
import paho.mqtt.client as paho_mqtt
from paho.mqtt.enums import MQTTErrorCode

WRITTEN_FOR = "aiomqtt 2.5.*, paho-mqtt 2.2.*"
SOCKET_READ_BYTES = 65536
# Packets handled per reader callback before yielding to the event loop: a full 64 KiB buffer
# is hundreds of messages (tens of ms), which the writer's database round trips and the
# WebSocket sends would otherwise wait behind.
READ_SLICE_PACKETS = 64

# The private attributes we read or replace: (object, attribute).
_PAHO_CLIENT_ATTRIBUTES = (
    "_handle_publish",
    "_handle_pingresp",
    "_send_pingreq",
    "_send_simple_command",
    "_sock",
    "_in_packet",
    "_protocol",
)
_AIOMQTT_CLIENT_ATTRIBUTES = ("_client", "_disconnected")


class IncompatibleLibrary(RuntimeError):
    pass


def check_compatible() -> None:
    """Fail at start-up, with the versions, if a private name we rely on is gone."""
    client = aiomqtt.Client("127.0.0.1")
    missing = [f"aiomqtt.Client.{a}" for a in _AIOMQTT_CLIENT_ATTRIBUTES if not hasattr(client, a)]
    paho = getattr(client, "_client", None)
    if paho is not None:
        missing += [
            f"paho.mqtt.client.Client.{a}" for a in _PAHO_CLIENT_ATTRIBUTES if not hasattr(paho, a)
        ]
    if missing:
        installed = ", ".join(
            f"{name} {metadata.version(name)}" for name in ("aiomqtt", "paho-mqtt")
        )
        raise IncompatibleLibrary(
            f"MQTT ingest was written for {WRITTEN_FOR} and relies on {', '.join(missing)}, "
            f"which the installed {installed} lack; install the pinned versions"
        )


class Publish:
    """What the pipeline reads of a PUBLISH (paho's MQTTMessage also creates a lock each)."""

    __slots__ = ("dup", "mid", "payload", "qos", "raw_topic")

    def __init__(self, mid: int, qos: int, dup: bool, topic: bytes, payload: bytes) -> None:
        self.mid = mid
        self.qos = qos
        self.dup = dup
        self.raw_topic = topic
        self.payload = payload

    @property
    def topic(self) -> str:
        return self.raw_topic.decode("utf-8")


def from_paho(message: paho_mqtt.MQTTMessage) -> Publish:
    """A message paho parsed itself (one with properties, or QoS 2) in our shape."""
    return Publish(
        message.mid, message.qos, bool(message.dup), message._topic, bytes(message.payload)
    )


class Sink(Protocol):
    """The pipeline, as the bridge sees it."""

    @property
    def paused(self) -> bool: ...

    def on_publish(self, message: Publish) -> None: ...


class _BufferedSocket:
    """Serves paho's small reads (1 byte of packet type, 1-4 of length, then the rest) from a
    64 KiB buffer: one `recv` per many messages instead of three or more per message."""

    __slots__ = ("_buf", "_pos", "_sock")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, size: int) -> bytes:
        if self._pos >= len(self._buf):
            data = self._sock.recv(SOCKET_READ_BYTES)
            if not data:
                return data
            self._buf, self._pos = data, 0
        chunk = self._buf[self._pos : self._pos + size]
        self._pos += len(chunk)
        return chunk

    def pending(self) -> int:
        return len(self._buf) - self._pos

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class Link:
    """One aiomqtt client with our message path underneath (see the module docstring)."""

    def __init__(self, client: aiomqtt.Client, sink: Sink) -> None:
        self.client = client
        self.paho: paho_mqtt.Client = client._client
        self._sink = sink
        self._loop = asyncio.get_running_loop()
        self._fd: int | None = None
        self._buffer: _BufferedSocket | None = None
        self.paho.manual_ack_set(True)
        self.paho.on_message = self._on_paho_message
        self._paho_handle_publish: Callable[[], MQTTErrorCode] = self.paho._handle_publish
        self.paho._handle_publish = self._handle_publish  # type: ignore[method-assign]
        self._aiomqtt_socket_open = self.paho.on_socket_open
        self.paho.on_socket_open = self._on_socket_open
        # PINGREQs sent (ours and paho's keepalive) and PINGRESPs received on this connection;
        # the broker answers them in order.
        self._pings_sent = 0
        self._pings_answered = 0
        self._ping_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._paho_send_pingreq: Callable[[], MQTTErrorCode] = self.paho._send_pingreq
        self.paho._send_pingreq = self._send_pingreq  # type: ignore[method-assign]
        self._paho_handle_pingresp: Callable[[], MQTTErrorCode] = self.paho._handle_pingresp
        self.paho._handle_pingresp = self._handle_pingresp  # type: ignore[method-assign]

    def _on_paho_message(self, client: Any, userdata: Any, message: Any) -> None:
        self._sink.on_publish(from_paho(message))

    def _on_socket_open(self, client: paho_mqtt.Client, userdata: Any, sock: Any) -> None:
        # Runs in aiomqtt's connect thread, before CONNECT is sent.
        if self._aiomqtt_socket_open is not None:
            self._aiomqtt_socket_open(client, userdata, sock)
        if isinstance(sock, socket.socket):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._buffer = _BufferedSocket(sock)
            client._sock = self._buffer
        self._fd = sock.fileno()
        # After aiomqtt's own add_reader (scheduled just before), so ours replaces it.
        self._loop.call_soon_threadsafe(self._install_reader)

    def _install_reader(self) -> None:
        if self._sink.paused:
            self.pause()
        else:
            self.resume()

    def _on_readable(self) -> None:
        if self._sink.paused or self.paho.socket() is None:
            return
        try:
            for _ in range(READ_SLICE_PACKETS):
                self.paho.loop_read()
                if self._sink.paused or self._buffer is None or not self._buffer.pending():
                    return
            # Packets already buffered would not make the socket readable again.
            self._loop.call_soon(self._on_readable)
        except Exception as exc:
            # As aiomqtt does: a read failure means the connection is gone.
            disconnected = self.client._disconnected
            if not disconnected.done():
                disconnected.set_exception(exc)

    def pause(self) -> None:
        if self._fd is not None:
            self._loop.remove_reader(self._fd)

    def resume(self) -> None:
        if self._fd is None or self.paho.socket() is None or self._sink.paused:
            return
        self._loop.add_reader(self._fd, self._on_readable)
        if self._buffer is not None and self._buffer.pending():
            # Packets already buffered would not make the socket readable again.
            self._loop.call_soon(self._on_readable)

    def ack(self, mid: int, qos: int) -> None:
        self.paho.ack(mid, qos)

    async def round_trip(self) -> None:
        """Return once the broker has answered a PINGREQ sent now, i.e. has processed every
        packet we sent before it (in particular our PUBACKs). Raises MqttError if the ping
        cannot be sent; never returns if the connection is lost (cancel it with the
        connection). Sent without paho's keepalive bookkeeping (`_ping_t`), so paho's
        ping-timeout rule stays what it was: a slow answer (behind a backlog we are not
        reading yet) does not drop the connection."""
        rc = self.paho._send_simple_command(paho_mqtt.PINGREQ)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttError(f"could not send PINGREQ: {rc.name}")
        self._pings_sent += 1
        future: asyncio.Future[None] = self._loop.create_future()
        self._ping_waiters.append((self._pings_sent, future))
        await future

    def _send_pingreq(self) -> MQTTErrorCode:
        rc = self._paho_send_pingreq()
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._pings_sent += 1
        return rc

    def _handle_pingresp(self) -> MQTTErrorCode:
        rc = self._paho_handle_pingresp()
        if rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._pings_answered += 1
            waiting = []
            for target, future in self._ping_waiters:
                if target <= self._pings_answered:
                    if not future.done():
                        future.set_result(None)
                else:
                    waiting.append((target, future))
            self._ping_waiters = waiting
        return rc

    def _handle_publish(self) -> MQTTErrorCode:
        """paho's PUBLISH handling for the packets we get (QoS 0/1, no MQTT 5 properties),
        without what we never use: for MQTT 5, paho builds and parses a `Properties` object
        per message, ~20 % of our message path (docs/ingest.md). Anything else goes to paho."""
        packet = self.paho._in_packet
        header: int = packet["command"]
        body: bytes | bytearray = packet["packet"]
        qos = (header & 0x06) >> 1
        topic_end = 2 + (body[0] << 8 | body[1]) if len(body) >= 2 else 0
        mid_end = topic_end + 2 if qos else topic_end
        # MQTT 5 puts the properties' length (a variable byte integer) before the payload.
        properties = 1 if self.paho._protocol == paho_mqtt.MQTTv5 else 0
        if (
            qos > 1
            or topic_end <= 2
            or mid_end + properties > len(body)
            or (properties and body[mid_end] != 0)
        ):
            return self._paho_handle_publish()
        message = Publish(
            body[mid_end - 2] << 8 | body[mid_end - 1] if qos else 0,
            qos,
            bool(header & 0x08),
            bytes(body[2:topic_end]),
            bytes(body[mid_end + properties :]),
        )
        self._sink.on_publish(message)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    async def until_disconnected(self) -> None:
        # Nothing enters aiomqtt's queue (our on_message replaced its callback), so this
        # public iterator only ends by raising MqttError when the connection is lost.
        async for _ in self.client.messages:
            pass
