"""The principal cache across processes: two real `plantpulse serve` processes share the
database and a Redis of their own. Each test first makes process B remember a token (two
requests), changes something through process A, and expects B's very next request to see it.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import asyncpg
import httpx
import pytest

from plantpulse.auth.dependencies import Principal
from plantpulse.auth.permissions import Role
from plantpulse.auth.principals import AuthUser
from plantpulse.auth.security import create_token
from plantpulse.state import Resources
from tests.conftest import PASSWORD, UserFactory
from tests.processes import PrivateRedis, Server, server_env, token_for

ME = "/api/v1/auth/me"


@dataclass
class Pair:
    a: Server
    b: Server
    redis: PrivateRedis
    env: dict[str, str]


@pytest.fixture(scope="module")
async def pair(database_url: str) -> AsyncIterator[Pair]:
    redis = PrivateRedis()
    await redis.start()
    env = server_env(database_url, redis.url)
    a, b = Server(env), Server(env)
    try:
        await asyncio.gather(a.start(), b.start())
        yield Pair(a, b, redis, env)
    finally:
        await asyncio.gather(a.stop(), b.stop())
        await redis.stop()
        redis.remove()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def remembered(client: httpx.AsyncClient, server: Server, token: str) -> httpx.Response:
    """Two successful requests: the first checks the token in full, the second is answered
    from the cache."""
    for _ in range(2):
        response = await client.get(f"{server.base_url}{ME}", headers=bearer(token))
        assert response.status_code == 200, response.text
    return response


class TestChangesInOneProcessReachTheOther:
    async def test_logout(self, pair: Pair, committed_user: UserFactory) -> None:
        token = token_for(pair.env, await committed_user(Role.operator))
        async with httpx.AsyncClient() as client:
            await remembered(client, pair.b, token)
            logout = await client.post(
                f"{pair.a.base_url}/api/v1/auth/logout", headers=bearer(token)
            )
            assert logout.status_code == 204, logout.text
            after = await client.get(f"{pair.b.base_url}{ME}", headers=bearer(token))
        assert after.status_code == 401
        assert after.json()["detail"] == "token has been revoked"

    async def test_deactivation(self, pair: Pair, committed_user: UserFactory) -> None:
        admin = token_for(pair.env, await committed_user(Role.management))
        user = await committed_user(Role.operator)
        token = token_for(pair.env, user)
        async with httpx.AsyncClient() as client:
            await remembered(client, pair.b, token)
            done = await client.post(
                f"{pair.a.base_url}/api/v1/users/{user.id}/deactivate", headers=bearer(admin)
            )
            assert done.status_code == 200, done.text
            after = await client.get(f"{pair.b.base_url}{ME}", headers=bearer(token))
        assert after.status_code == 401
        assert after.json()["detail"] == "this account is deactivated"

    async def test_deletion(self, pair: Pair, committed_user: UserFactory) -> None:
        admin = token_for(pair.env, await committed_user(Role.management))
        user = await committed_user(Role.operator)
        token = token_for(pair.env, user)
        async with httpx.AsyncClient() as client:
            await remembered(client, pair.b, token)
            done = await client.delete(
                f"{pair.a.base_url}/api/v1/users/{user.id}", headers=bearer(admin)
            )
            assert done.status_code == 204, done.text
            after = await client.get(f"{pair.b.base_url}{ME}", headers=bearer(token))
        assert after.status_code == 401
        assert after.json()["detail"] == "the user of this token no longer exists"

    async def test_role_change(self, pair: Pair, committed_user: UserFactory) -> None:
        admin = token_for(pair.env, await committed_user(Role.management))
        user = await committed_user(Role.supervisor)
        token = token_for(pair.env, user)
        config = "/api/v1/config"
        async with httpx.AsyncClient() as client:
            assert (await remembered(client, pair.b, token)).json()["role"] == "supervisor"
            allowed = await client.get(f"{pair.b.base_url}{config}", headers=bearer(token))
            assert allowed.status_code == 200, allowed.text
            done = await client.patch(
                f"{pair.a.base_url}/api/v1/users/{user.id}",
                json={"role": "operator"},
                headers=bearer(admin),
            )
            assert done.status_code == 200, done.text
            denied = await client.get(f"{pair.b.base_url}{config}", headers=bearer(token))
            me = await client.get(f"{pair.b.base_url}{ME}", headers=bearer(token))
        assert denied.status_code == 403
        assert me.json()["role"] == "operator"
        assert "config:read" not in me.json()["permissions"]

    async def test_password_change(self, pair: Pair, committed_user: UserFactory) -> None:
        token = token_for(pair.env, await committed_user(Role.operator))
        async with httpx.AsyncClient() as client:
            await remembered(client, pair.b, token)
            done = await client.post(
                f"{pair.a.base_url}/api/v1/auth/change-password",
                json={"current_password": PASSWORD, "new_password": "another horse battery"},
                headers=bearer(token),
            )
            assert done.status_code == 200, done.text
            old = await client.get(f"{pair.b.base_url}{ME}", headers=bearer(token))
            new = await client.get(
                f"{pair.b.base_url}{ME}", headers=bearer(done.json()["access_token"])
            )
        assert old.status_code == 401
        assert old.json()["detail"] == "token has been revoked"
        assert new.status_code == 200


class TestRedisUnavailable:
    async def test_cached_tokens_are_refused_while_redis_is_down(
        self, pair: Pair, committed_user: UserFactory
    ) -> None:
        token = token_for(pair.env, await committed_user(Role.operator))
        async with httpx.AsyncClient() as client:
            await remembered(client, pair.b, token)
            await pair.redis.stop()
            try:
                # Fail closed: no answer from the cache while invalidations cannot arrive.
                down = await client.get(f"{pair.b.base_url}{ME}", headers=bearer(token))
                assert down.status_code == 503, down.text
                assert down.json()["error"] == "ServiceUnavailable"
            finally:
                await pair.redis.start()
            async with asyncio.timeout(30):
                while True:
                    back = await client.get(f"{pair.b.base_url}{ME}", headers=bearer(token))
                    if back.status_code == 200:
                        break
                    await asyncio.sleep(0.2)


class TestInProcess:
    async def test_a_check_that_overlaps_an_invalidation_is_not_remembered(
        self, resources: Resources, make_user: UserFactory
    ) -> None:
        cache = resources.principals
        user = await make_user(Role.operator)
        token, claims = create_token(
            resources.settings.auth, subject=user.id, token_type="access", version=0
        )
        principal = Principal(user=AuthUser.of(user), claims=claims)
        started = cache.generation
        # The user changes while the check (which read the old row) is still running.
        await cache.user_changed(user.id)
        cache.put(token, principal, generation=started)
        assert cache.get(token) is None
        cache.put(token, principal, generation=cache.generation)
        assert cache.get(token) is principal
        await cache.user_changed(user.id)
        assert cache.get(token) is None


class TestTheCacheIsInUse:
    async def test_a_change_behind_the_services_back_is_seen_only_where_nothing_was_cached(
        self, pair: Pair, committed_user: UserFactory, pg_pool: asyncpg.Pool
    ) -> None:
        # Without this, the tests above would pass with no cache at all. A change made in
        # SQL (not through the service) is not announced: B, which remembers the token,
        # still accepts it for up to `auth.principal_cache_seconds`; A checks in full.
        user = await committed_user(Role.operator)
        token = token_for(pair.env, user)
        async with httpx.AsyncClient() as client:
            await remembered(client, pair.b, token)
            await pg_pool.execute("UPDATE users SET is_active = false WHERE id = $1", user.id)
            cached = await client.get(f"{pair.b.base_url}{ME}", headers=bearer(token))
            checked = await client.get(f"{pair.a.base_url}{ME}", headers=bearer(token))
        assert (cached.status_code, checked.status_code) == (200, 401)
