"""One bounded HTTP exchange with a source: a deadline for the whole exchange (connect,
redirects, a slow trickle of bytes), a cap on the body, redirects followed by hand (each target
passes the SSRF guard, secret headers never follow to another origin), and every failure turned
into a `FetchFailed` with a reason for the run record."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx

from plantpulse.sources.guard import AddressRefused

REDIRECTS = frozenset({301, 302, 303, 307, 308})


class FetchFailed(Exception):
    def __init__(self, reason: str, *, http_status: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.http_status = http_status


@dataclass(frozen=True, slots=True)
class Fetched:
    status: int
    body: bytes
    content_type: str


def _origin(url: httpx.URL) -> tuple[str, str, int | None]:
    return url.scheme, url.host, url.port


async def fetch(
    client: httpx.AsyncClient,
    *,
    method: str,
    url: str,
    headers: dict[str, str],
    body: Any,
    deadline_seconds: float,
    max_bytes: int,
    max_redirects: int,
) -> Fetched:
    try:
        async with asyncio.timeout(deadline_seconds):
            return await _exchange(
                client,
                method=method,
                url=httpx.URL(url),
                headers=headers,
                body=body,
                max_bytes=max_bytes,
                max_redirects=max_redirects,
            )
    except TimeoutError:
        raise FetchFailed(f"no complete answer within {deadline_seconds:g} s") from None


async def _exchange(
    client: httpx.AsyncClient,
    *,
    method: str,
    url: httpx.URL,
    headers: dict[str, str],
    body: Any,
    max_bytes: int,
    max_redirects: int,
) -> Fetched:
    first = _origin(url)
    for _ in range(max_redirects + 1):
        # Secret headers go to the configured origin only, never to where it redirects.
        sent = headers if _origin(url) == first else {}
        request = client.build_request(method, url, headers=sent, json=body)
        try:
            response = await client.send(request, stream=True)
        except AddressRefused as exc:
            raise FetchFailed(f"refused: {exc}") from None
        except httpx.TimeoutException:
            raise FetchFailed(f"timed out talking to {url.host}") from None
        except httpx.HTTPError as exc:
            raise FetchFailed(f"{type(exc).__name__}: {exc}"[:500]) from None
        try:
            if response.status_code in REDIRECTS and "location" in response.headers:
                try:
                    url = response.url.join(response.headers["location"])
                except httpx.InvalidURL as exc:
                    raise FetchFailed(f"bad redirect location: {exc}") from None
                if url.scheme not in ("http", "https"):
                    raise FetchFailed(f"redirect to a {url.scheme!r} URL refused")
                if response.status_code == 303 or (
                    response.status_code in (301, 302) and method == "POST"
                ):
                    method, body = "GET", None
                continue
            if not 200 <= response.status_code < 300:
                excerpt = (await _read(response, 300, truncate=True)).decode(errors="replace")
                raise FetchFailed(
                    f"HTTP {response.status_code}: {excerpt.strip()[:200]}",
                    http_status=response.status_code,
                )
            content = await _read(response, max_bytes, truncate=False)
            return Fetched(response.status_code, content, response.headers.get("content-type", ""))
        except httpx.HTTPError as exc:  # the connection broke while reading
            raise FetchFailed(f"{type(exc).__name__} while reading: {exc}"[:500]) from None
        finally:
            await response.aclose()
    raise FetchFailed(f"more than {max_redirects} redirects (a redirect loop?)")


async def _read(response: httpx.Response, limit: int, *, truncate: bool) -> bytes:
    declared = response.headers.get("content-length")
    if not truncate and declared and declared.isdigit() and int(declared) > limit:
        raise FetchFailed(
            f"the response is {int(declared)} bytes; the limit is {limit}",
            http_status=response.status_code,
        )
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            if truncate:
                return bytes(body[:limit])
            raise FetchFailed(
                f"the response exceeds the limit of {limit} bytes",
                http_status=response.status_code,
            )
    return bytes(body)
