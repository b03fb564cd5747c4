"""One Redis pub/sub channel shared by every PlantPulse process.

Each process publishes with its own origin id and skips its own messages when they come back,
so a publisher that already acted locally does not act twice. Publishing never waits for Redis:
messages go on a bounded queue that a task sends in pipelined rounds. Pub/sub is at most once:
subscribers are told (`on_connect`) each time they (re)subscribe so they can resynchronise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from plantpulse.supervisor import Supervised, Supervisor

log = logging.getLogger(__name__)

MAX_PER_ROUND = 200
RECONNECT_MAX_SECONDS = 10.0


def _loads(data: bytes) -> Any:
    # orjson is several times faster on a batch of events; the json module reads what orjson
    # refuses (NaN literals, integers beyond 64 bits), so results are the standard parser's.
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


class Broadcast:
    def __init__(
        self,
        redis: Redis,
        channel: str,
        *,
        on_message: Callable[[Any], None],
        on_connect: Callable[[], Awaitable[None]] | None = None,
        queue_size: int = 10_000,
        supervisor: Supervisor | None = None,
    ) -> None:
        self.channel = channel
        self.origin = uuid.uuid4().hex
        self._own = f'{{"o":"{self.origin}"'.encode()
        self.dropped = 0
        self._redis = redis
        self._on_message = on_message
        self._on_connect = on_connect
        self._outbox: asyncio.Queue[str] = asyncio.Queue(maxsize=queue_size)
        # The process's supervisor (so /ready lists these tasks), or one of our own.
        self._supervisor = supervisor or Supervisor()
        self._tasks: list[Supervised] = []
        self._attempted = asyncio.Event()

    async def start(self) -> None:
        self._tasks = [
            self._supervisor.spawn(f"redis-listen:{self.channel}", self._listen),
            self._supervisor.spawn(f"redis-publish:{self.channel}", self._send),
        ]
        # Wait for the first subscription attempt, so events published right after start-up
        # reach the siblings; a Redis that is down (or slow) does not hold up start-up.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await self._attempted.wait()

    async def stop(self) -> None:
        for task in self._tasks:
            await task.stop()
        self._tasks = []

    def publish(self, payload: Any) -> None:
        """Queue `payload` (JSON-serialisable) for every other process; never blocks."""
        self.publish_json(json.dumps(payload, separators=(",", ":")))

    def publish_json(self, payload: str) -> None:
        """`publish` for a payload that is already JSON text (saves encoding it twice)."""
        message = f'{{"o":"{self.origin}","p":{payload}}}'
        try:
            self._outbox.put_nowait(message)
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning(
                    "Redis broadcast on %s falling behind: %d dropped", self.channel, self.dropped
                )

    async def _send(self) -> None:
        while True:
            messages = [await self._outbox.get()]
            while len(messages) < MAX_PER_ROUND and not self._outbox.empty():
                messages.append(self._outbox.get_nowait())
            try:
                if len(messages) == 1:
                    await self._redis.publish(self.channel, messages[0])
                else:
                    async with self._redis.pipeline(transaction=False) as pipe:
                        for message in messages:
                            pipe.publish(self.channel, message)
                        await pipe.execute()
            except (RedisError, OSError) as exc:
                self.dropped += len(messages)
                log.warning(
                    "Redis publish on %s failed (%s); %d dropped", self.channel, exc, len(messages)
                )
                await asyncio.sleep(1.0)

    async def _listen(self) -> None:
        delay = 0.5
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self._attempted.set()
                delay = 0.5
                if self._on_connect is not None:
                    await self._on_connect()
                async for message in pubsub.listen():
                    self._dispatch(message)
            except (RedisError, OSError) as exc:
                self._attempted.set()
                log.warning("Redis subscription to %s lost (%s); retrying", self.channel, exc)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    def _dispatch(self, message: dict[str, Any]) -> None:
        if message.get("type") != "message":
            return
        data = message["data"]
        if isinstance(data, str):
            data = data.encode()
        # Our own messages come back too: recognise them without parsing the whole payload.
        if data.startswith(self._own):
            return
        try:
            self._on_message(_loads(data)["p"])
        except Exception:  # one bad message must not end the subscription
            log.exception("bad message on %s", self.channel)
