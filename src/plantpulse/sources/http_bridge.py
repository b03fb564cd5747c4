"""The one place that reaches under httpx: an `AsyncHTTPTransport` whose connections are
opened by our own network backend (the SSRF guard, guard.py).

httpx has no public way to give its transport an httpcore network backend, so the transport's
connection pool (`AsyncHTTPTransport._pool`, httpx 0.27-0.29 / httpcore 1.0) is replaced by an
equivalent pool that has one. `check()` runs at start-up and fails loudly if that attribute
changes in a future httpx, rather than letting requests bypass the guard.
"""

from __future__ import annotations

import httpcore
import httpx

WRITTEN_FOR = "httpx 0.27-0.29, httpcore 1.0"


def guarded_transport(
    backend: httpcore.AsyncNetworkBackend, *, limits: httpx.Limits
) -> httpx.AsyncHTTPTransport:
    transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
    check(transport)
    transport._pool = httpcore.AsyncConnectionPool(
        ssl_context=httpx.create_ssl_context(trust_env=False),
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=backend,
    )
    return transport


def check(transport: httpx.AsyncHTTPTransport) -> None:
    pool = getattr(transport, "_pool", None)
    if not isinstance(pool, httpcore.AsyncConnectionPool):
        raise RuntimeError(
            f"httpx {httpx.__version__} changed AsyncHTTPTransport._pool; sources/http_bridge.py "
            f"was written for {WRITTEN_FOR} and cannot install the SSRF guard"
        )
