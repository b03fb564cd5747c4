"""ASGI middleware that every route shares."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from plantpulse.errors import PayloadTooLarge, envelope


class BodySizeLimit:
    """Refuse request bodies over `max_bytes` before anyone parses them.

    Without it a 10 MB body to any JSON route is read and validated (half a second of CPU on
    the event loop that also ingests) before the 422. The declared Content-Length is checked
    up front; chunked bodies are counted as they arrive. The answer is the usual 413 envelope.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            error = PayloadTooLarge(
                f"the body is {int(declared)} bytes; the limit is {self.max_bytes}"
            )
            await envelope(413, error.detail, error=error.name)(scope, receive, send)
            return
        seen = 0
        too_large = False
        started = False

        async def counted() -> Message:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Tell the app the client went away; we answer in its place below.
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded(message: Message) -> None:
            nonlocal started
            if too_large:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not too_large:
                raise
        if too_large and not started:
            error = PayloadTooLarge(f"the body exceeds the limit of {self.max_bytes} bytes")
            await envelope(413, error.detail, error=error.name)(scope, receive, send)
