"""Revoked token ids, kept until the token would have expired anyway.

Redis when configured (shared by every process); otherwise an in-process store that keeps a
single instance correct and says so in `/ready`.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from plantpulse.errors import ServiceUnavailable


class RevocationStore(Protocol):
    kind: str

    async def revoke(self, jti: str, expires_at: datetime) -> None: ...

    async def is_revoked(self, jti: str) -> bool: ...

    async def revoke_once(self, jti: str, expires_at: datetime) -> bool:
        """Revoke and report whether this call did it: two concurrent refreshes can't both win."""
        ...


def _ttl_seconds(expires_at: datetime) -> int:
    return max(1, int((expires_at - datetime.now(UTC)).total_seconds()) + 1)


class RedisRevocationStore:
    kind = "redis"

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = f"{prefix}revoked:"

    async def revoke(self, jti: str, expires_at: datetime) -> None:
        await self.revoke_once(jti, expires_at)

    async def revoke_once(self, jti: str, expires_at: datetime) -> bool:
        try:
            created = await self._redis.set(
                self._prefix + jti, b"1", ex=_ttl_seconds(expires_at), nx=True
            )
        except RedisError as exc:
            raise _unavailable(exc) from exc
        return bool(created)

    async def is_revoked(self, jti: str) -> bool:
        # Failing closed: if we cannot tell whether a token was revoked, we do not accept it.
        try:
            return bool(await self._redis.exists(self._prefix + jti))
        except RedisError as exc:
            raise _unavailable(exc) from exc


def _unavailable(exc: RedisError) -> ServiceUnavailable:
    return ServiceUnavailable(f"token revocation store (Redis) is unavailable: {exc}")


class MemoryRevocationStore:
    kind = "memory"

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}

    def _purge(self) -> None:
        now = time.time()
        for jti in [j for j, exp in self._expiry.items() if exp <= now]:
            del self._expiry[jti]

    async def revoke(self, jti: str, expires_at: datetime) -> None:
        self._purge()
        self._expiry[jti] = expires_at.timestamp()

    async def revoke_once(self, jti: str, expires_at: datetime) -> bool:
        if await self.is_revoked(jti):
            return False
        await self.revoke(jti, expires_at)
        return True

    async def is_revoked(self, jti: str) -> bool:
        exp = self._expiry.get(jti)
        return exp is not None and exp > time.time()
