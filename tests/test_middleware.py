from __future__ import annotations

from collections.abc import AsyncIterator

from httpx import AsyncClient

from plantpulse.config import Settings


class TestBodySizeLimit:
    async def test_a_declared_oversized_body_is_413_on_any_route(
        self, client: AsyncClient, settings: Settings
    ) -> None:
        limit = settings.ingest.max_payload_bytes
        body = b'{"username": "' + b"x" * limit + b'", "password": "y"}'
        response = await client.post(
            "/api/v1/auth/login", content=body, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 413
        assert response.json() == {
            "error": "PayloadTooLarge",
            "detail": f"the body is {len(body)} bytes; the limit is {limit}",
            "status": 413,
        }

    async def test_an_oversized_chunked_body_is_413(
        self, client: AsyncClient, settings: Settings
    ) -> None:
        limit = settings.ingest.max_payload_bytes

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(limit // 65536 + 2):
                yield b" " * 65536

        response = await client.post(
            "/api/v1/auth/register",
            content=chunks(),
            headers={"Content-Type": "application/json"},
        )
        assert response.status_code == 413
        assert response.json()["detail"] == f"the body exceeds the limit of {limit} bytes"

    async def test_a_body_within_the_limit_goes_through(self, client: AsyncClient) -> None:
        response = await client.post(
            "/api/v1/auth/login", json={"username": "nobody", "password": "whatever1"}
        )
        assert response.status_code == 401
