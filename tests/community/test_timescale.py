"""Edition detection on the Community cluster."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from tests.test_timescale import detected_matches_the_server, lifts_the_limit_for_one_transaction


class TestCommunityTimescale:
    async def test_detects_the_community_edition(self, engine: AsyncEngine) -> None:
        info = await detected_matches_the_server(engine)
        assert info.community
        assert info.edition == "community"

    async def test_decompression_limit_lifted_for_one_transaction(self, database_url: str) -> None:
        await lifts_the_limit_for_one_transaction(database_url)
