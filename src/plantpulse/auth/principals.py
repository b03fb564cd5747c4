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
  process synchronously and in every other process through one Redis pub/sub channel: logout
  and refresh-token rotation (by `jti`), and any change to a user made through the service
  (role, activation, deletion, password change, profile fields, login) by user id. User
  changes are announced before the transaction commits (a failed announcement fails the
  request, so nothing changes unannounced) and again after it commits (a process that
  re-read the old row between the two drops it).
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
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from plantpulse.auth.models import User
from plantpulse.auth.permissions import Role
from plantpulse.errors import ServiceUnavailable

if TYPE_CHECKING:
    from plantpulse.auth.dependencies import Principal

log = logging.getLogger(__name__)

# Pings go through the subscription this often; without an answer for STALE_AFTER_SECONDS
# the cache stops serving (a silently dead connection cannot hide an invalidation for longer).
PING_SECONDS = 0.5
STALE_AFTER_SECONDS = 2.0
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
        self, redis: Redis | None, prefix: str, *, seconds: float, max_entries: int = 10_000
    ) -> None:
        self._redis = redis
        self.channel = f"{prefix}auth:invalidate"
        self._seconds = seconds if redis is not None else 0.0
        self._max = max_entries
        self._entries: dict[str, _Entry] = {}
        # Bumped by every invalidation seen here; a load that started before one is not stored.
        self.generation = 0
        self._subscribed = False
        self._heard = 0.0  # monotonic time of the last message or pong on the subscription
        self._task: asyncio.Task[None] | None = None
        self._first_subscription = asyncio.Event()
        self.hits = 0
        self.misses = 0

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
            self.misses += 1
            return None
        if not self.serving or time.monotonic() >= entry.until or time.time() >= entry.expires:
            self._entries.pop(token, None)
            self.misses += 1
            return None
        self.hits += 1
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

    def _lost(self) -> None:
        self._subscribed = False
        self.generation += 1
        self._entries.clear()

    async def _listen(self) -> None:
        if self._redis is None:
            return
        delay = 0.2
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                await self._pump(pubsub)
            except (RedisError, OSError, TimeoutError) as exc:
                log.warning("auth invalidation channel lost (%s); cache off until back", exc)
            finally:
                if self._subscribed:
                    delay = 0.2
                self._lost()
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX_SECONDS)

    async def _pump(self, pubsub: Any) -> None:
        self._heard = next_ping = time.monotonic()
        while True:
            now = time.monotonic()
            if now - self._heard > STALE_AFTER_SECONDS:
                raise TimeoutError("no answer on the subscription")
            if now >= next_ping:
                await pubsub.ping()
                next_ping = now + PING_SECONDS
            message = await pubsub.get_message(timeout=PING_SECONDS)
            if message is None:
                continue
            kind = message.get("type")
            if kind == "subscribe":
                # Anything cached before this point may have missed a message.
                self._entries.clear()
                self.generation += 1
                self._subscribed = True
                self._first_subscription.set()
                self._heard = time.monotonic()
            elif kind == "pong":
                self._heard = time.monotonic()
            elif kind == "message":
                self._heard = time.monotonic()
                data = message["data"]
                self._drop(data.decode() if isinstance(data, bytes) else str(data))
