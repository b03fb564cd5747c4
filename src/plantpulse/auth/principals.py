"""Verified callers, remembered for a few seconds and forgotten in every process at once.

Checking a bearer token costs a JWT decode, a Redis round trip (is it revoked?) and a user
row; that was most of an authenticated read (docs/benchmarks.md, P4). This cache keeps what
those checks concluded, per access token, so a client polling with the same token pays for
them once per `auth.principal_cache_seconds`.

What is cached: for an access token string that passed every check, the `Principal` built
from it: the token's claims and an immutable snapshot of the user row (id, names, role,
factory, department, active flag, token version, timestamps). Nothing else. Refresh tokens,
API keys and failed checks are never cached.

Why it stays correct:
- Every change that can end or alter a token's rights drops the entries it affects in this
  process synchronously and in every other process through one Redis pub/sub channel: a
  logout by `jti` (after the revocation is stored), any change to a user made through the
  service (role, activation, deletion, password change, profile fields) by user id. User
  changes are announced before the transaction commits (a failed announcement fails the
  request, so nothing changes unannounced) and again after it commits (a process that
  re-read the old row between the two drops it). A login only moves `last_login_at` (shown by
  /me): it is announced after its commit, best effort, so logging in never needs Redis.
- Messages are read by a bare RESP connection and acted on in the callback that reads them,
  before any request read in the same event-loop turn (see `_Subscription`).
- A load that overlaps an invalidation is not stored (`generation`), so a stale read that
  was in flight when the message arrived never lands in the cache.
- Fail closed: entries are served only while this process's subscription is confirmed and
  a PING sent through it came back within `STALE_AFTER_SECONDS`. When the subscription is
  lost the cache is emptied and bypassed, so every request goes back to Redis and the
  database (which answer 503 while Redis is down, as before); after re-subscribing it starts
  empty, because messages sent in the gap are lost.
- Token expiry is checked on every hit; an entry never outlives `principal_cache_seconds`.
- Without Redis there is no cross-process channel, so there is no cache at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, cast

from redis.asyncio import Redis
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from plantpulse.auth.models import User
from plantpulse.auth.permissions import Role
from plantpulse.errors import ServiceUnavailable

if TYPE_CHECKING:
    from plantpulse.auth.dependencies import Principal

log = logging.getLogger(__name__)

# Pings go through the subscription this often; without an answer for STALE_AFTER_SECONDS
# the cache stops serving (a silently dead connection cannot hide an invalidation for longer).
# 2 s proved too tight: a process saturated by ingest answered late now and then and emptied
# its cache for nothing (docs/benchmarks.md); a closed connection is noticed at once anyway.
PING_SECONDS = 1.0
STALE_AFTER_SECONDS = 5.0
RECONNECT_MAX_SECONDS = 5.0


@dataclass(frozen=True, slots=True)
class AuthUser:
    """The caller's user row as it was when the token was checked: immutable, so a cached
    principal can be shared by concurrent requests (and it reads like `UserRead`)."""

    id: uuid.UUID
    username: str
    email: str
    role: Role
    factory_id: str | None
    department: str | None
    is_active: bool
    token_version: int
    created_at: datetime
    updated_at: datetime
    last_login_at: datetime | None

    @classmethod
    def of(cls, user: User) -> AuthUser:
        return cls(
            id=user.id,
            username=user.username,
            email=user.email,
            role=user.role,
            factory_id=user.factory_id,
            department=user.department,
            is_active=user.is_active,
            token_version=user.token_version,
            created_at=user.created_at,
            updated_at=user.updated_at,
            last_login_at=user.last_login_at,
        )


@dataclass(frozen=True, slots=True)
class _Entry:
    principal: Principal
    until: float  # time.monotonic() deadline
    expires: float  # the token's own expiry, epoch seconds


class PrincipalCache:
    def __init__(
        self, redis_url: str | None, prefix: str, *, seconds: float, max_entries: int = 10_000
    ) -> None:
        self._url = redis_url or ""
        # Announcements go out on a client of their own (no retries: a failure must surface
        # at once, as a 503, rather than after redis-py's reconnect backoff).
        self._redis = (
            Redis.from_url(redis_url, retry=Retry(NoBackoff(), retries=0)) if redis_url else None
        )
        self.channel = f"{prefix}auth:invalidate"
        self._seconds = seconds if self._redis is not None else 0.0
        self._max = max_entries
        self._entries: dict[str, _Entry] = {}
        # Bumped by every invalidation seen here; a load that started before one is not stored.
        self.generation = 0
        self._subscribed = False
        self._heard = 0.0  # monotonic time of the last message or pong on the subscription
        self._task: asyncio.Task[None] | None = None
        self._first_subscription = asyncio.Event()

    @property
    def enabled(self) -> bool:
        return self._seconds > 0

    @property
    def serving(self) -> bool:
        """True while invalidations are known to reach this process."""
        return self._subscribed and time.monotonic() - self._heard < STALE_AFTER_SECONDS

    # --- the request path ---

    def get(self, token: str) -> Principal | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        if not self.serving or time.monotonic() >= entry.until or time.time() >= entry.expires:
            self._entries.pop(token, None)
            return None
        return entry.principal

    def put(self, token: str, principal: Principal, *, generation: int) -> None:
        """Remember a principal whose checks started at `generation` (see `generation`)."""
        if not self.enabled or generation != self.generation or not self.serving:
            return
        if len(self._entries) >= self._max:
            # Oldest first: dicts keep insertion order.
            self._entries.pop(next(iter(self._entries)))
        self._entries[token] = _Entry(
            principal,
            until=time.monotonic() + self._seconds,
            expires=principal.claims.expires_at.timestamp(),
        )

    # --- invalidation ---

    def _drop(self, message: str) -> None:
        self.generation += 1
        if message == "*":
            self._entries.clear()
            return
        kind, _, value = message.partition(":")
        if kind == "t":
            doomed = [t for t, e in self._entries.items() if e.principal.claims.jti == value]
        elif kind == "u":
            doomed = [t for t, e in self._entries.items() if str(e.principal.user.id) == value]
        else:
            log.warning("unknown auth invalidation %r; dropping every cached principal", message)
            self._entries.clear()
            return
        for token in doomed:
            self._entries.pop(token, None)

    async def _announce(self, message: str) -> None:
        self._drop(message)
        if self._redis is None:
            return
        try:
            await self._redis.publish(self.channel, message)
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable(
                f"could not tell the other processes about an authorisation change (Redis): {exc}"
            ) from exc

    async def token_revoked(self, jti: str) -> None:
        """Forget a revoked token everywhere; call after the revocation is stored."""
        await self._announce(f"t:{jti}")

    async def user_changed(self, user_id: uuid.UUID) -> None:
        """Forget every token of a user everywhere (before and after the change commits)."""
        await self._announce(f"u:{user_id}")

    async def user_changed_after_commit(self, user_id: uuid.UUID) -> None:
        # The change is committed: a failure here cannot undo it, so it is logged. Entries
        # re-read between the first announcement and the commit then live at most
        # `principal_cache_seconds`, and only if this publish failed while Redis answered.
        try:
            await self.user_changed(user_id)
        except ServiceUnavailable as exc:
            log.warning("%s", exc.detail)

    # --- the subscription ---

    async def start(self) -> None:
        if not self.enabled:
            return
        self._task = asyncio.create_task(self._listen(), name="auth-invalidations")
        # Serve from the cache only once subscribed; do not hold up start-up for it.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2):
                await self._first_subscription.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._redis is not None:
            await self._redis.aclose()

    def _subscribed_now(self) -> None:
        # Anything cached before this point may have missed a message.
        self._entries.clear()
        self.generation += 1
        self._subscribed = True
        self._heard = time.monotonic()
        self._first_subscription.set()

    def _lost(self) -> None:
        self._subscribed = False
        self.generation += 1
        self._entries.clear()

    def _on_push(self, kind: bytes, data: bytes) -> None:
        if kind == b"lost":
            self._lost()
            return
        self._heard = time.monotonic()
        if kind == b"message":
            self._drop(data.decode(errors="replace"))
        elif kind == b"subscribe":
            self._subscribed_now()

    async def _listen(self) -> None:
        delay = 0.2
        while True:
            link: _Subscription | None = None
            try:
                link = await _Subscription.open(self._url, self.channel, self._on_push)
                while not link.closed.is_set():
                    link.ping()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(PING_SECONDS):
                            await link.closed.wait()
                    if self._subscribed and time.monotonic() - self._heard > STALE_AFTER_SECONDS:
                        raise TimeoutError("no answer to PING on the subscription")
                raise ConnectionError(link.reason or "connection closed")
            except (OSError, TimeoutError, RedisError, _ProtocolError) as exc:
                if self._subscribed:
                    delay = 0.2
                self._lost()
                log.warning("auth invalidation channel lost (%s); cache off until back", exc)
            finally:
                if link is not None:
                    link.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)


class _ProtocolError(Exception):
    pass


class _Subscription(asyncio.Protocol):
    """A bare RESP connection subscribed to one channel.

    Not redis-py's PubSub: its messages reach us a task switch after they arrive and its
    reconnect logic runs inside the failing call, both windows in which a request could be
    answered from the cache after an invalidation (or the connection) was already in our
    socket. Here the invalidation, and the loss of the connection, are handled in the very
    callback that reads them, before any request read in the same event-loop turn runs."""

    def __init__(self, on_push: Callable[[bytes, bytes], None]) -> None:
        self._on_push = on_push
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self.closed = asyncio.Event()
        self.reason = ""

    @classmethod
    async def open(
        cls, url: str, channel: str, on_push: Callable[[bytes, bytes], None]
    ) -> _Subscription:
        options = parse_url(url)
        loop = asyncio.get_running_loop()
        link = cls(on_push)
        ssl_context = None
        if options.get("connection_class") is SSLConnection:
            ssl_context = ssl.create_default_context()
        async with asyncio.timeout(5):
            if "path" in options:
                await loop.create_unix_connection(lambda: link, options["path"])
            else:
                await loop.create_connection(
                    lambda: link, options.get("host", "localhost"), options.get("port", 6379),
                    ssl=ssl_context,
                )  # fmt: skip
        password, username = options.get("password"), options.get("username")
        if password:
            words = [b"AUTH", *([username.encode()] if username else []), password.encode()]
            link._send(*words)
        link._send(b"SUBSCRIBE", channel.encode())
        return link

    def _send(self, *words: bytes) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        parts = [b"*%d\r\n" % len(words)]
        for word in words:
            parts.append(b"$%d\r\n%s\r\n" % (len(word), word))
        self._transport.write(b"".join(parts))

    def ping(self) -> None:
        self._send(b"PING")

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, hence the cast.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.reason = str(exc) if exc else "closed by the server"
        self._on_push(b"lost", b"")
        self.closed.set()

    def eof_received(self) -> bool | None:
        self.reason = "closed by the server"
        self._on_push(b"lost", b"")
        self.closed.set()
        return None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        try:
            while True:
                parsed = _parse(self._buffer, 0)
                if parsed is None:
                    return
                value, end = parsed
                del self._buffer[:end]
                self._reply(value)
        except _ProtocolError as exc:
            self.reason = f"protocol error: {exc}"
            self._on_push(b"lost", b"")
            self.close()

    def _reply(self, value: object) -> None:
        if isinstance(value, _ProtocolError):
            # An error reply (wrong password, ...): nothing we can serve from.
            raise value
        if isinstance(value, list) and value and isinstance(value[0], bytes):
            kind = value[0].lower()
            if kind == b"message" and len(value) == 3 and isinstance(value[2], bytes):
                self._on_push(b"message", value[2])
            elif kind in (b"subscribe", b"pong"):
                self._on_push(kind, b"")


def _parse(buffer: bytearray, start: int) -> tuple[object, int] | None:
    """One RESP2 value from `buffer[start:]`: (value, end) or None if incomplete."""
    line_end = buffer.find(b"\r\n", start)
    if line_end < 0:
        return None
    marker, line = bytes(buffer[start : start + 1]), bytes(buffer[start + 1 : line_end])
    after = line_end + 2
    if marker in (b"+", b":"):
        return line, after
    if marker == b"-":
        return _ProtocolError(line.decode(errors="replace")), after
    if marker == b"$":
        size = int(line)
        if size < 0:
            return None, after
        if len(buffer) < after + size + 2:
            return None
        return bytes(buffer[after : after + size]), after + size + 2
    if marker == b"*":
        items: list[object] = []
        for _ in range(max(int(line), 0)):
            parsed = _parse(buffer, after)
            if parsed is None:
                return None
            item, after = parsed
            items.append(item)
        return items, after
    raise _ProtocolError(f"unexpected reply {marker!r}")
