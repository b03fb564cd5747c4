from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import pytest
from httpx import AsyncClient

from plantpulse.telemetry.writer import CommittedBatch
from tests.conftest import MachineFactory
from tests.sources.fake_server import Answer, FakeSource

SOURCES = "/api/v1/sources"
T = 1713798477
LE = [157, 42, 76, 190]  # -0.1994 little-endian, -2.25e-21 big-endian
ONE = [0, 0, 128, 63]  # 1.0 little-endian


def unique_path(name: str) -> str:
    return f"/{name}/{uuid.uuid4().hex[:8]}"


async def create(
    client: AsyncClient, auth: dict[str, str], machine_id: uuid.UUID, url: str, **fields: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": f"historian-{uuid.uuid4().hex[:8]}",
        "url": url,
        "machine_id": str(machine_id),
        "metric": "level",
        "decoder": {"kind": "bytes-float32"},
        "timeout_seconds": 2,
        **fields,
    }
    response = await client.post(SOURCES, json=body, headers=auth)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


async def poll(client: AsyncClient, headers: dict[str, str], source_id: str) -> dict[str, Any]:
    response = await client.post(f"{SOURCES}/{source_id}/poll", headers=headers)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def stored(pool: asyncpg.Pool, machine_id: uuid.UUID) -> list[tuple[Any, ...]]:
    rows = await pool.fetch(
        "SELECT extract(epoch FROM time)::bigint, metric, value, valid FROM readings "
        "WHERE machine_id = $1 ORDER BY time, metric",
        machine_id,
    )
    return [tuple(r) for r in rows]


class TestPopulate:
    async def test_points_are_decoded_little_endian_and_validity_comes_from_tags(
        self,
        committed_machine: MachineFactory,
        sclient: AsyncClient,
        manager: dict[str, str],
        fake_source: FakeSource,
        pg_pool: asyncpg.Pool,
    ) -> None:
        machine = await committed_machine()
        path = unique_path("le")
        fake_source.answers[path] = Answer.json(
            [
                {"time": T, "value": LE, "tags": []},
                {"time": T + 1, "value": ONE, "tags": ["maintenance"]},
                {"time": T + 2, "value": [1, 2, 300, 4], "tags": []},
            ]
        )
        source = await create(sclient, manager, machine, fake_source.url(path))
        run = await poll(sclient, manager, source["id"])
        assert run["status"] == "partial"
        assert (run["points"], run["stored"], run["duplicates"], run["invalid"]) == (3, 2, 0, 1)
        assert run["rejections"] == [
            {"where": "points[2].level", "reason": "byte 300 is not an integer in 0..255"}
        ]
        assert run["rejected"] == 1
        assert run["http_status"] == 200
        rows = await stored(pg_pool, machine)
        assert [(r[0], r[1], r[3]) for r in rows] == [(T, "level", True), (T + 1, "level", False)]
        assert rows[0][2] == pytest.approx(-0.19938, abs=1e-5)

    async def test_big_endian_byte_order(
        self,
        committed_machine: MachineFactory,
        sclient: AsyncClient,
        manager: dict[str, str],
        fake_source: FakeSource,
        pg_pool: asyncpg.Pool,
    ) -> None:
        machine = await committed_machine()
        path = unique_path("be")
        fake_source.answers[path] = Answer.json({"time": T, "value": LE, "tags": []})
        decoder = {"kind": "bytes-float32", "byte_order": "big"}
        source = await create(sclient, manager, machine, fake_source.url(path), decoder=decoder)
        assert (await poll(sclient, manager, source["id"]))["stored"] == 1
        [(_, _, value, valid)] = await stored(pg_pool, machine)
        assert value == pytest.approx(-2.2525e-21, rel=1e-3)
        assert valid

    async def test_re_polling_the_same_points_stores_nothing_twice(
        self,
        committed_machine: MachineFactory,
        sclient: AsyncClient,
        manager: dict[str, str],
        fake_source: FakeSource,
        pg_pool: asyncpg.Pool,
    ) -> None:
        machine = await committed_machine()
        path = unique_path("again")
        fake_source.answers[path] = Answer.json(
            [{"time": T + i, "value": ONE, "tags": []} for i in range(5)]
        )
        source = await create(sclient, manager, machine, fake_source.url(path))
        first = await poll(sclient, manager, source["id"])
        second = await poll(sclient, manager, source["id"])
        assert (first["stored"], first["duplicates"]) == (5, 0)
        assert (second["stored"], second["duplicates"], second["status"]) == (0, 5, "ok")
        assert len(await stored(pg_pool, machine)) == 5

    async def test_operators_see_only_valid_points_management_sees_all(
        self,
        committed_machine: MachineFactory,
        sclient: AsyncClient,
        manager: dict[str, str],
        operator: dict[str, str],
        fake_source: FakeSource,
    ) -> None:
        machine = await committed_machine()
        path = unique_path("visibility")
        fake_source.answers[path] = Answer.json(
            [
                {"time": T, "value": ONE, "tags": []},
                {"time": T + 1, "value": LE, "tags": ["BAD"]},
            ]
        )
        source = await create(sclient, manager, machine, fake_source.url(path))
        await poll(sclient, manager, source["id"])
        query = f"/api/v1/machines/{machine}/telemetry?start_time={T - 10}&end_time={T + 10}"
        seen = await sclient.get(query, headers=operator)
        assert seen.status_code == 200, seen.text
        assert [item["level"] for item in seen.json()["items"]] == [1.0]
        refused = await sclient.get(query + "&include_invalid=true", headers=operator)
        assert refused.status_code == 403
        everything = await sclient.get(query + "&include_invalid=true", headers=manager)
        items = everything.json()["items"]
        assert [i["valid"]["level"] for i in items] == [False, True]  # newest first

    async def test_pulled_readings_reach_the_writer_listeners_like_any_ingest(
        self,
        committed_machine: MachineFactory,
        sclient: AsyncClient,
        manager: dict[str, str],
        fake_source: FakeSource,
        sources_app: Any,
    ) -> None:
        # The listeners are what feeds live events, the cache and alerts.
        writer = sources_app[1]._state["resources"].writer
        heard: list[CommittedBatch] = []
        writer.listeners.append(heard.append)
        try:
            machine = await committed_machine()
            path = unique_path("listeners")
            fake_source.answers[path] = Answer.json(
                [{"time": T, "value": ONE, "tags": ["x"]}, {"time": T + 1, "value": ONE}]
            )
            source = await create(sclient, manager, machine, fake_source.url(path))
            await poll(sclient, manager, source["id"])
        finally:
            writer.listeners.remove(heard.append)
        [batch] = [b for b in heard if b.rows and b.rows[0][1] == machine]
        assert batch.source == "http-source"
        assert [(r[2], r[3], r[4]) for r in batch.rows] == [
            ("level", 1.0, False),
            ("level", 1.0, True),
        ]

    async def test_json_decoder_with_paths(
        self,
        committed_machine: MachineFactory,
        sclient: AsyncClient,
        manager: dict[str, str],
        fake_source: FakeSource,
        pg_pool: asyncpg.Pool,
    ) -> None:
        machine = await committed_machine()
        path = unique_path("json")
        fake_source.answers[path] = Answer.json(
            {"result": {"rows": [{"at": "2024-04-22T15:07:57Z", "t": 21.5, "p": 3}]}}
        )
        decoder = {
            "kind": "json",
            "points": "$.result.rows",
            "time": "at",
            "values": {"temperature": "t", "pressure": "p"},
        }
        source = await create(sclient, manager, machine, fake_source.url(path), decoder=decoder)
        run = await poll(sclient, manager, source["id"])
        assert (run["status"], run["stored"]) == ("ok", 2)
        assert [(r[1], r[2]) for r in await stored(pg_pool, machine)] == [
            ("pressure", 3.0),
            ("temperature", 21.5),
        ]


class TestFailures:
    @pytest.mark.parametrize(
        ("answer", "error"),
        [
            (Answer(status=500, body=b"internal trouble"), "HTTP 500: internal trouble"),
            (Answer(status=404, body=b"{}"), "HTTP 404"),
            (Answer(body=b"{not json"), "not JSON"),
            (
                Answer(body=b"<html><body>Login</body></html>", content_type="text/html"),
                "not JSON (content-type 'text/html'",
            ),
            (Answer(body=b"[" + b"1," * 3_000_000 + b"1]"), "the limit is 4194304"),
            (Answer(body=b"[" + b"1," * 3_000_000 + b"1]", chunked=True), "exceeds the limit"),
            (Answer(body=b"[]", delay=3), "within 1 s"),
            (Answer(body=b"[" + b" " * 50 + b"]", drip_bytes=5, drip_seconds=0.2), "within 1 s"),
        ],
        ids=["500", "404", "garbage", "html", "huge", "huge-chunked", "slow", "trickle"],
    )
    async def test_a_failed_pull_is_recorded_with_the_reason(
        self,
        committed_machine: MachineFactory,
        sclient: AsyncClient,
        manager: dict[str, str],
        fake_source: FakeSource,
        pg_pool: asyncpg.Pool,
        answer: Answer,
        error: str,
    ) -> None:
        machine = await committed_machine()
        path = unique_path("fail")
        fake_source.answers[path] = answer
        source = await create(sclient, manager, machine, fake_source.url(path), timeout_seconds=1)
        run = await poll(sclient, manager, source["id"])
        assert run["status"] == "failed"
        assert error in run["error"]
        assert run["stored"] == 0
        runs = await sclient.get(f"{SOURCES}/{source['id']}/runs", headers=manager)
        assert runs.json()["items"][0]["error"] == run["error"]
        detail = await sclient.get(f"{SOURCES}/{source['id']}", headers=manager)
        assert detail.json()["consecutive_failures"] == 1
        assert await stored(pg_pool, machine) == []

    async def test_a_redirect_loop_fails_after_the_limit(
        self,
        committed_machine: MachineFactory,
        sclient: AsyncClient,
        manager: dict[str, str],
        fake_source: FakeSource,
    ) -> None:
        machine = await committed_machine()
        path = unique_path("loop")
        fake_source.answers[path] = Answer(status=302, headers={"Location": path})
        source = await create(sclient, manager, machine, fake_source.url(path))
        run = await poll(sclient, manager, source["id"])
        assert run["status"] == "failed"
        assert "more than 5 redirects" in run["error"]
        assert len(fake_source.requests_to(path)) == 6

    async def test_secret_headers_follow_a_redirect_only_on_the_same_origin(
        self,
        committed_machine: MachineFactory,
        sclient: AsyncClient,
        manager: dict[str, str],
        fake_source: FakeSource,
    ) -> None:
        machine = await committed_machine()
        start, same, other = unique_path("r"), unique_path("same"), unique_path("other")
        # Same server, another origin: "localhost" instead of "127.0.0.1".
        elsewhere = fake_source.url(other).replace("127.0.0.1", "localhost")
        fake_source.answers[start] = Answer(status=302, headers={"Location": same})
        fake_source.answers[same] = Answer(status=307, headers={"Location": elsewhere})
        fake_source.answers[other] = Answer.json({"time": T, "value": ONE})
        source = await create(
            sclient,
            manager,
            machine,
            fake_source.url(start),
            headers={"Authorization": "Bearer s3cret"},
        )
        run = await poll(sclient, manager, source["id"])
        assert run["status"] == "ok", run
        assert fake_source.requests_to(start)[0].headers["Authorization"] == "Bearer s3cret"
        assert fake_source.requests_to(same)[0].headers["Authorization"] == "Bearer s3cret"
        assert "Authorization" not in fake_source.requests_to(other)[0].headers


class TestConcurrentPolls:
    async def test_a_manual_poll_is_refused_while_a_scheduled_one_holds_the_lease(
        self,
        committed_machine: MachineFactory,
        sclient: AsyncClient,
        manager: dict[str, str],
        fake_source: FakeSource,
        db: Any,
    ) -> None:
        from sqlalchemy import text

        machine = await committed_machine()
        path = unique_path("leased")
        fake_source.answers[path] = Answer.json([])
        source = await create(sclient, manager, machine, fake_source.url(path))
        await db.execute(
            text("UPDATE sources SET lease_until = now() + interval '1 minute' WHERE id = :id"),
            {"id": source["id"]},
        )
        response = await sclient.post(f"{SOURCES}/{source['id']}/poll", headers=manager)
        assert response.status_code == 409, response.text
        assert response.json()["error"] == "PollInProgress"
        assert fake_source.requests_to(path) == []
        missing = await sclient.post(f"{SOURCES}/{uuid.uuid4()}/poll", headers=manager)
        assert missing.status_code == 404


class TestSecrets:
    async def test_header_values_are_sent_encrypted_at_rest_and_never_returned(
        self,
        committed_machine: MachineFactory,
        sclient: AsyncClient,
        manager: dict[str, str],
        fake_source: FakeSource,
        db: Any,
    ) -> None:
        machine = await committed_machine()
        path = unique_path("auth")
        fake_source.answers[path] = Answer.json([])
        source = await create(
            sclient,
            manager,
            machine,
            fake_source.url(path),
            headers={"Authorization": "Bearer s3cret-token", "X-Plant": "north"},
        )
        assert source["header_names"] == ["Authorization", "X-Plant"]
        assert "s3cret" not in str(source)
        for url in (f"{SOURCES}/{source['id']}", SOURCES):
            assert "s3cret" not in (await sclient.get(url, headers=manager)).text
        from sqlalchemy import text

        raw = await db.scalar(
            text("SELECT headers_encrypted FROM sources WHERE id = :id"), {"id": source["id"]}
        )
        assert raw
        assert "s3cret" not in raw
        await poll(sclient, manager, source["id"])
        seen = fake_source.requests_to(path)[0].headers
        assert (seen["Authorization"], seen["X-Plant"]) == ("Bearer s3cret-token", "north")


class TestManagement:
    async def test_supervisors_read_management_changes(
        self,
        committed_machine: MachineFactory,
        sclient: AsyncClient,
        manager: dict[str, str],
        supervisor: dict[str, str],
        operator: dict[str, str],
        fake_source: FakeSource,
    ) -> None:
        machine = await committed_machine()
        source = await create(sclient, manager, machine, fake_source.url("/x"))
        url = f"{SOURCES}/{source['id']}"
        assert (await sclient.get(url, headers=supervisor)).status_code == 200
        assert (await sclient.get(f"{url}/runs", headers=supervisor)).status_code == 200
        assert (await sclient.get(url, headers=operator)).status_code == 403
        for method, target in (("PATCH", url), ("DELETE", url), ("POST", f"{url}/poll")):
            response = await sclient.request(method, target, headers=supervisor, json={})
            assert response.status_code == 403, (method, response.text)
        changed = await sclient.patch(
            url, headers=manager, json={"interval_seconds": 60, "bad_tags": ["BAD"]}
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["interval_seconds"] == 60
        assert changed.json()["next_poll_at"] is not None
        assert (await sclient.delete(url, headers=manager)).status_code == 204
        assert (await sclient.get(url, headers=manager)).status_code == 404

    @pytest.mark.parametrize(
        ("change", "field"),
        [
            ({"url": "ftp://example.com/x"}, "url"),
            ({"url": "http://user:pw@example.com/x"}, "url"),
            ({"metric": "timestamp"}, "metric"),
            ({"decoder": {"kind": "bytes-float32", "byte_order": "middle"}}, "decoder"),
            ({"decoder": {"kind": "json", "points": "a..b["}}, "decoder"),
            ({"decoder": {"kind": "xml"}}, "decoder"),
            ({"interval_seconds": 0.1}, "interval_seconds"),
            ({"headers": {"Bad Header": "x"}}, "headers"),
        ],
    )
    async def test_bad_definitions_are_422(
        self,
        committed_machine: MachineFactory,
        sclient: AsyncClient,
        manager: dict[str, str],
        change: dict[str, Any],
        field: str,
    ) -> None:
        machine = await committed_machine()
        body = {
            "name": "x",
            "url": "http://example.com/points",
            "machine_id": str(machine),
            "metric": "level",
            "decoder": {"kind": "bytes-float32"},
            **change,
        }
        response = await sclient.post(SOURCES, json=body, headers=manager)
        assert response.status_code == 422, response.text
        assert field in response.text

    async def test_unknown_machine_and_duplicate_name(
        self,
        committed_machine: MachineFactory,
        sclient: AsyncClient,
        manager: dict[str, str],
    ) -> None:
        machine = await committed_machine()
        body = {
            "name": "dup",
            "url": "http://example.com/points",
            "machine_id": str(uuid.uuid4()),
            "metric": "level",
            "decoder": {"kind": "bytes-float32"},
        }
        assert (await sclient.post(SOURCES, json=body, headers=manager)).status_code == 404
        body["machine_id"] = str(machine)
        assert (await sclient.post(SOURCES, json=body, headers=manager)).status_code == 201
        again = await sclient.post(SOURCES, json=body, headers=manager)
        assert again.status_code == 409
        assert again.json()["error"] == "SourceExists"
