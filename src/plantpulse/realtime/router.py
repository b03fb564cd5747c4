"""Live streams: `WS /api/v1/ws` and the same events as Server-Sent Events (`/api/v1/stream`).

Close codes: 4401 token missing/invalid/expired/revoked, 4403 lacking telemetry:read,
4408 the client could not keep up, 1013 the database or the revocation store is unavailable
(retry later).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, WebSocket
from fastapi.responses import StreamingResponse
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect

from plantpulse.auth import service as auth
from plantpulse.auth.dependencies import Principal, authenticate_token, bearer
from plantpulse.auth.permissions import Permission
from plantpulse.auth.principals import AuthUser
from plantpulse.auth.security import decode_token
from plantpulse.db import DbSession
from plantpulse.errors import (
    DATABASE_ERRORS,
    InvalidInput,
    NotAuthenticated,
    PermissionDenied,
    ServiceUnavailable,
    database_error,
    error_responses,
)
from plantpulse.realtime.hub import Subscriber, hub_of
from plantpulse.realtime.schemas import (
    AuthMessage,
    PingMessage,
    SubscribeAllMessage,
    SubscribeMessage,
    UnsubscribeMessage,
    client_message,
)
from plantpulse.state import AppResources, Resources, resources_of

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["realtime"])

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TOO_SLOW = 4408
CLOSE_TRY_AGAIN = 1013
CLOSE_TIMEOUT_SECONDS = 10.0


@dataclass(slots=True)
class _Session:
    """Who is on the other end; replaced when the client re-authenticates."""

    token: str
    principal: Principal

    @property
    def expires_in(self) -> float:
        return (self.principal.claims.expires_at - datetime.now(UTC)).total_seconds()


class _Close(Exception):
    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        # A close frame's reason is limited to 123 bytes.
        self.reason = reason.encode()[:123].decode(errors="ignore")


async def _principal(resources: Resources, token: str) -> Principal:
    """Verify a token like a request would, in a short session of its own."""
    claims = decode_token(resources.settings.auth, token, expected_type="access")
    async with resources.sessionmaker() as session:
        user = await auth.user_for_token(session, claims=claims, revocations=resources.revocations)
    return Principal(user=AuthUser.of(user), claims=claims)


async def _check(resources: Resources, token: str) -> Principal:
    try:
        principal = await _principal(resources, token)
    except NotAuthenticated as exc:
        raise _Close(CLOSE_UNAUTHENTICATED, exc.detail) from exc
    except ServiceUnavailable as exc:
        raise _Close(CLOSE_TRY_AGAIN, exc.detail) from exc
    except DATABASE_ERRORS as exc:
        # The HTTP routes answer an outage with 503; a socket is closed with "try again".
        error = database_error(exc, where="live stream authentication")
        if not isinstance(error, ServiceUnavailable):
            raise
        raise _Close(CLOSE_TRY_AGAIN, error.detail) from exc
    if not principal.can(Permission.telemetry_read):
        raise _Close(CLOSE_FORBIDDEN, "live streams need the 'telemetry:read' permission")
    return principal


def _dumps(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"), default=str)


def _reply(sub: Subscriber, kind: str, ref: Any = None, **fields: Any) -> None:
    body = {"type": kind, **fields}
    if ref is not None:
        body["ref"] = ref
    sub.put(kind, _dumps(body))


def _error(sub: Subscriber, code: str, detail: str, ref: Any = None) -> None:
    _reply(sub, "error", ref, code=code, detail=detail)


def _subscribed(sub: Subscriber, ref: Any) -> None:
    ids = sorted(str(m) for m in sub.machine_ids)
    if sub.types is None:
        _reply(sub, "subscribed", ref, all=sub.all, machine_ids=ids)
    else:
        _reply(sub, "subscribed", ref, all=sub.all, machine_ids=ids, types=sorted(sub.types))


async def _first_token(websocket: WebSocket, wait_seconds: float) -> str:
    try:
        async with asyncio.timeout(wait_seconds):
            raw = await websocket.receive_text()
    except TimeoutError:
        raise _Close(CLOSE_UNAUTHENTICATED, "no token: send ?token= or an auth message") from None
    try:
        message = client_message.validate_json(raw)
    except ValidationError:
        message = None
    if not isinstance(message, AuthMessage):
        raise _Close(CLOSE_UNAUTHENTICATED, 'the first message must be {"action": "auth", ...}')
    return message.token


async def _receive(
    websocket: WebSocket, resources: Resources, session: _Session, sub: Subscriber
) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        raw = message.get("text") or message.get("bytes") or b""
        try:
            parsed = client_message.validate_json(raw)
        except ValidationError as exc:
            detail = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'message'}: {e['msg']}"
                for e in exc.errors(include_url=False)[:5]
            )
            _error(sub, "invalid_message", detail)
            continue
        ref = parsed.ref
        if isinstance(parsed, PingMessage):
            _reply(sub, "pong", ref)
        elif isinstance(parsed, SubscribeMessage):
            wanted = set(parsed.machine_ids)
            known = await resources.catalog.known(wanted)
            if unknown := wanted - known:
                ids = ", ".join(sorted(str(m) for m in unknown))
                _error(sub, "unknown_machines", f"no such machines: {ids}", ref)
            sub.subscribe(known)
            _subscribed(sub, ref)
        elif isinstance(parsed, SubscribeAllMessage):
            sub.subscribe_all(parsed.types)
            _subscribed(sub, ref)
        elif isinstance(parsed, UnsubscribeMessage):
            sub.unsubscribe(parsed.machine_ids)
            _subscribed(sub, ref)
        elif isinstance(parsed, AuthMessage):
            # A fresh token keeps a long-lived socket open past the old token's expiry.
            try:
                principal = await _check(resources, parsed.token)
            except _Close as exc:
                _error(sub, "auth_failed", exc.reason, ref)
                continue
            if principal.user.id != session.principal.user.id:
                _error(sub, "auth_failed", "the token belongs to another user", ref)
                continue
            session.token, session.principal = parsed.token, principal
            _reply(sub, "authenticated", ref, expires_in=int(session.expires_in))


async def _send(websocket: WebSocket, sub: Subscriber) -> None:
    while True:
        _, text = await sub.queue.get()
        await websocket.send_text(text)


async def _watch(resources: Resources, session: _Session, sub: Subscriber) -> None:
    """Ends the connection (by raising _Close) when the client falls behind or the token stops
    being valid: re-checked every `auth_recheck_seconds` and at the token's expiry."""
    every = resources.settings.realtime.auth_recheck_seconds
    while True:
        wait = max(0.0, min(every, session.expires_in))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await sub.overflowed.wait()
        if sub.overflowed.is_set():
            raise _Close(
                CLOSE_TOO_SLOW,
                f"too slow: more than {sub.queue.maxsize} events waiting; reconnect and "
                "fetch the latest values over REST",
            )
        session.principal = await _check(resources, session.token)


async def _serve(
    websocket: WebSocket, resources: Resources, session: _Session, sub: Subscriber
) -> None:
    tasks = [
        asyncio.create_task(_receive(websocket, resources, session, sub)),
        asyncio.create_task(_send(websocket, sub)),
        asyncio.create_task(_watch(resources, session, sub)),
    ]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
    for task in done:
        exc = task.exception()
        if isinstance(exc, _Close):
            raise exc


async def _close(websocket: WebSocket, code: int, reason: str) -> None:
    # A client that does not read cannot take the close frame either: give up after a while
    # (uvicorn then closes the transport).
    with contextlib.suppress(Exception):
        async with asyncio.timeout(CLOSE_TIMEOUT_SECONDS):
            await websocket.close(code=code, reason=reason)


@router.websocket("/ws")
async def websocket_stream(websocket: WebSocket, token: str | None = None) -> None:
    """Live readings and alerts over WebSocket (protocol: docs/realtime.md)."""
    resources = resources_of(websocket)
    hub = hub_of(resources)
    await websocket.accept()
    sub: Subscriber | None = None
    try:
        if not token:
            token = await _first_token(websocket, resources.settings.realtime.auth_timeout_seconds)
        principal = await _check(resources, token)
        session = _Session(token=token, principal=principal)
        sub = hub.subscriber(
            include_invalid=principal.can(Permission.telemetry_read_invalid),
            include_alerts=principal.can(Permission.alerts_read),
        )
        _reply(
            sub,
            "welcome",
            user=principal.user.username,
            include_invalid=sub.include_invalid,
            include_alerts=sub.include_alerts,
            buffer=sub.queue.maxsize,
            expires_in=int(session.expires_in),
        )
        await _serve(websocket, resources, session, sub)
    except _Close as exc:
        await _close(websocket, exc.code, exc.reason)
    except WebSocketDisconnect:
        pass
    finally:
        if sub is not None:
            sub.close()


def _machine_ids(raw: str | None) -> set[uuid.UUID] | None:
    if raw is None or not raw.strip():
        return None
    try:
        return {uuid.UUID(part.strip()) for part in raw.split(",") if part.strip()}
    except ValueError:
        raise InvalidInput("machine_ids must be comma-separated UUIDs") from None


def _sse(kind: str, text: str) -> str:
    return f"event: {kind}\ndata: {text}\n\n"


async def _sse_events(
    resources: Resources, session: _Session, sub: Subscriber
) -> AsyncIterator[str]:
    settings = resources.settings.realtime
    try:
        yield "retry: 3000\n\n"
        next_check = time.monotonic() + settings.auth_recheck_seconds
        while True:
            if sub.overflowed.is_set():
                raise _Close(CLOSE_TOO_SLOW, f"too slow: more than {sub.queue.maxsize} waiting")
            wait = min(settings.sse_keepalive_seconds, max(0.0, session.expires_in))
            try:
                async with asyncio.timeout(wait):
                    kind, text = await sub.queue.get()
                yield _sse(kind, text)
            except TimeoutError:
                yield ": keepalive\n\n"
            if time.monotonic() >= next_check or session.expires_in <= 0:
                session.principal = await _check(resources, session.token)
                next_check = time.monotonic() + settings.auth_recheck_seconds
    except _Close as exc:
        yield _sse("error", _dumps({"type": "error", "code": exc.code, "detail": exc.reason}))
    finally:
        sub.close()


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={
        **error_responses(401, 403, 422),
        200: {"content": {"text/event-stream": {}}, "description": "An endless event stream"},
    },
)
async def event_stream(
    session: DbSession,
    resources: AppResources,
    bearer_token: Annotated[str | None, Depends(bearer)],
    token: Annotated[str | None, Query(description="Access token, if no header is sent")] = None,
    machine_ids: Annotated[
        str | None, Query(description="Comma-separated machine ids; omit for all machines")
    ] = None,
) -> StreamingResponse:
    """The live events as Server-Sent Events (for browsers' EventSource and curl)."""
    raw = bearer_token or token
    if not raw:
        raise NotAuthenticated("send a bearer token or ?token=")
    principal = await authenticate_token(session, resources, raw)
    if not principal.can(Permission.telemetry_read):
        raise PermissionDenied("this action needs the 'telemetry:read' permission")
    wanted = _machine_ids(machine_ids)
    if wanted is not None:
        known = await resources.catalog.known(wanted)
        if unknown := wanted - known:
            raise InvalidInput(f"no such machines: {', '.join(sorted(map(str, unknown)))}")
    sub = hub_of(resources).subscriber(
        include_invalid=principal.can(Permission.telemetry_read_invalid),
        include_alerts=principal.can(Permission.alerts_read),
    )
    if wanted is None:
        sub.subscribe_all()
    else:
        sub.subscribe(wanted)
    stream = _sse_events(resources, _Session(token=raw, principal=principal), sub)
    return StreamingResponse(
        stream,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
