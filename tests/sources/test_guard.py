"""The SSRF guard, with the default settings (private addresses refused)."""

from __future__ import annotations

import ipaddress

import pytest
from httpx import AsyncClient

from plantpulse.sources.guard import AddressRefused, GuardedBackend, is_public
from tests.conftest import MachineFactory
from tests.sources.fake_server import Answer, FakeSource
from tests.sources.test_router import SOURCES, create, poll, unique_path


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.10",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",  # noqa: S104
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
    ],
)
def test_non_public_addresses(address: str) -> None:
    assert not is_public(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["8.8.8.8", "151.101.1.1", "2606:4700:4700::1111"])
def test_public_addresses(address: str) -> None:
    assert is_public(ipaddress.ip_address(address))


async def test_the_backend_checks_what_a_name_resolves_to() -> None:
    with pytest.raises(AddressRefused, match=r"localhost resolves to .*127\.0\.0\.1"):
        await GuardedBackend(allow_private=False).connect_tcp("localhost", 80)


class TestDefaultSettings:
    @pytest.mark.parametrize(
        "url",
        [
            "http://127.0.0.1:8080/points",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.5/points",
            "http://[::1]:8080/points",
            "http://[::ffff:127.0.0.1]/points",
        ],
    )
    async def test_a_private_ip_literal_is_refused_when_saved(
        self,
        committed_machine: MachineFactory,
        client: AsyncClient,
        manager: dict[str, str],
        url: str,
    ) -> None:
        machine = await committed_machine()
        body = {
            "name": "meta",
            "url": url,
            "machine_id": str(machine),
            "metric": "level",
            "decoder": {"kind": "bytes-float32"},
        }
        response = await client.post(SOURCES, json=body, headers=manager)
        assert response.status_code == 422, response.text
        assert response.json()["error"] == "UrlRefused"
        assert "ALLOW_PRIVATE_NETWORKS" in response.json()["detail"]

    async def test_a_name_resolving_to_loopback_is_refused_at_poll_time(
        self,
        committed_machine: MachineFactory,
        client: AsyncClient,
        manager: dict[str, str],
        fake_source: FakeSource,
    ) -> None:
        machine = await committed_machine()
        path = unique_path("ssrf")
        fake_source.answers[path] = Answer.json({"time": 1713798477, "value": [0, 0, 128, 63]})
        url = fake_source.url(path).replace("127.0.0.1", "localhost")
        source = await create(client, manager, machine, url)
        run = await poll(client, manager, source["id"])
        assert run["status"] == "failed"
        assert "not a public address" in run["error"]
        assert fake_source.requests_to(path) == []
