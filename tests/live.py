"""A real PlantPulse server for tests that need sockets (WebSocket, SSE) or several processes:
create_app + lifespan + uvicorn on a free port, in this event loop."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import uvicorn
from asgi_lifespan import LifespanManager
from jose import jwt
from websockets.asyncio.client import ClientConnection, connect

from plantpulse.app import create_app
from plantpulse.auth import service as auth
from plantpulse.auth.models import User
from plantpulse.config import Settings
from plantpulse.state import Resources
from tests import support


@dataclass
class LiveApp:
    resources: Resources
    base_url: str
    ws_url: str

    def token(self, user: User) -> str:
        return auth.issue_tokens(self.resources.settings.auth, user=user).access_token

    def expired_token(self, user: User) -> str:
        settings = self.resources.settings.auth
        past = datetime.now(UTC) - timedelta(minutes=5)
        payload = {
            "sub": str(user.id),
            "type": "access",
            "jti": uuid.uuid4().hex,
            "iat": int((past - timedelta(minutes=30)).timestamp()),
            "exp": int(past.timestamp()),
            "ver": user.token_version,
        }
        return jwt.encode(
            payload, settings.jwt_secret.get_secret_value(), algorithm=settings.jwt_algorithm
        )

    def connect(self, token: str | None = None, **kwargs: Any) -> Any:
        url = self.ws_url if token is None else f"{self.ws_url}?token={token}"
        return connect(url, open_timeout=5, **kwargs)


@asynccontextmanager
async def live_app(settings: Settings) -> AsyncIterator[LiveApp]:
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=30) as manager:
        port = support.free_port()
        config = uvicorn.Config(
            manager.app,
            host="127.0.0.1",
            port=port,
            lifespan="off",
            log_level="warning",
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve())
        await eventually(lambda: server.started, seconds=10)
        try:
            yield LiveApp(
                resources=manager._state["resources"],
                base_url=f"http://127.0.0.1:{port}",
                ws_url=f"ws://127.0.0.1:{port}/api/v1/ws",
            )
        finally:
            server.should_exit = True
            await task


async def receive(ws: ClientConnection, seconds: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(seconds):
        raw = await ws.recv()
    message: dict[str, Any] = json.loads(raw)
    return message


async def receive_until(
    ws: ClientConnection, match: Callable[[dict[str, Any]], bool], seconds: float = 5.0
) -> dict[str, Any]:
    """The first message that matches, skipping others; fails after `seconds`."""
    async with asyncio.timeout(seconds):
        while True:
            message = await receive(ws, seconds)
            if match(message):
                return message


async def eventually(check: Callable[[], Any], seconds: float = 5.0) -> Any:
    """Poll an async or sync check until it returns something truthy (bounded)."""
    async with asyncio.timeout(seconds):
        while True:
            result = check()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return result
            await asyncio.sleep(0.02)
