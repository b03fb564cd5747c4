"""The SSRF guard: sources' URLs are entered by management users, so a poll must not reach
the plant's internal network or a cloud metadata endpoint (169.254.169.254) unless the
deployment allows it (`sources.allow_private_networks`).

The check runs where the connection is opened, on the addresses DNS returned, and the
connection goes to the address that was checked: a name that resolves to a public address
when a URL is saved and to 127.0.0.1 at poll time (DNS rebinding) is still refused, and so is
every redirect target. TLS keeps verifying the certificate against the host name.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable

import httpcore

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressRefused(Exception):
    """The host resolves to an address polls may not reach."""


def is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def check_literal(host: str, *, allow_private: bool) -> None:
    """Refuse an IP-literal host at once (a saved URL); names are checked at connect time."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return
    if not allow_private and not is_public(address):
        raise AddressRefused(f"{address} is not a public address")


class GuardedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, *, allow_private: bool) -> None:
        self._inner = httpcore.AnyIOBackend()
        self._allow_private = allow_private

    async def _resolve(self, host: str, port: int) -> list[str]:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
        except socket.gaierror as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc.strerror}") from exc
        addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
        if not self._allow_private:
            refused = [a for a in addresses if not is_public(ipaddress.ip_address(a))]
            if refused:
                raise AddressRefused(
                    f"{host} resolves to {', '.join(refused)}, which is not a public address "
                    "(set PLANTPULSE_SOURCES__ALLOW_PRIVATE_NETWORKS=true to allow it)"
                )
        return addresses

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self._resolve(host, port)
        error: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error or httpcore.ConnectError(f"{host} has no address")

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's interface
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("sources cannot use Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)
