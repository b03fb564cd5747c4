from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import pytest

from plantpulse.ingest.decoders import (
    Decoded,
    DecodeError,
    Reason,
    StatusChange,
    Telemetry,
    json_registry,
)
from plantpulse.machines.models import Connectivity
from plantpulse.telemetry.payloads import Clock, Parsed

CLOCK = Clock(datetime(2026, 1, 5, 10, tzinfo=UTC), timedelta(minutes=5))
MACHINE = uuid.uuid4()
registry = json_registry("plant/a")


def _reason(topic: str, payload: bytes) -> Reason:
    with pytest.raises(DecodeError) as caught:
        registry.decode(topic, payload, CLOCK)
    return caught.value.reason


class TestTopics:
    def test_the_subscription_covers_the_whole_prefix(self) -> None:
        assert registry.subscription == "plant/a/#"

    def test_telemetry_topic_gives_rows_of_the_topic_machine(self) -> None:
        decoded = registry.decode(
            f"plant/a/machines/{MACHINE}/telemetry", b'{"temperature": 70}', CLOCK
        )
        assert isinstance(decoded, Telemetry)
        assert decoded.parsed.rows == [(CLOCK.now, MACHINE, "temperature", 70.0)]

    @pytest.mark.parametrize(
        "topic",
        [
            "plant/a/machines/nope/telemetry",
            f"plant/a/machines/{MACHINE}",
            f"plant/a/machines/{MACHINE}/telemetry/x",
            f"plant/a/things/{MACHINE}/telemetry",
        ],
    )
    def test_unknown_or_malformed_topics_are_bad_topics(self, topic: str) -> None:
        assert _reason(topic, b"{}") is Reason.bad_topic

    def test_a_new_format_is_one_registration(self) -> None:
        custom = json_registry("p")

        def csv(params: Mapping[str, str], payload: bytes, clock: Clock) -> Decoded:
            name, value = payload.decode().split(",")
            machine = uuid.UUID(params["machine_id"])
            return Telemetry(Parsed(rows=[(clock.now, machine, name, float(value))]))

        custom.register("machines/{machine_id}/csv", csv)
        decoded = custom.decode(f"p/machines/{MACHINE}/csv", b"speed,12", CLOCK)
        assert isinstance(decoded, Telemetry)
        assert decoded.parsed.rows[0][2:] == ("speed", 12.0)


class TestPayloads:
    @pytest.mark.parametrize(
        ("payload", "reason"),
        [
            (b"not json", Reason.not_json),
            (b"\xff\xfe", Reason.not_json),
            (b"[1]", Reason.invalid_payload),
            (b'{"readings": 3}', Reason.invalid_payload),
        ],
    )
    def test_unusable_telemetry_payloads(self, payload: bytes, reason: Reason) -> None:
        assert _reason(f"plant/a/machines/{MACHINE}/telemetry", payload) is reason

    def test_bad_values_are_rejections_next_to_the_good_rows(self) -> None:
        decoded = registry.decode(
            f"plant/a/machines/{MACHINE}/telemetry", b'{"t": NaN, "p": 2, "s": "x"}', CLOCK
        )
        assert isinstance(decoded, Telemetry)
        assert [r[2] for r in decoded.parsed.rows] == ["p"]
        assert len(decoded.parsed.rejected) == 2


class TestStatus:
    @pytest.mark.parametrize(
        ("payload", "expected"),
        [
            (b'{"status": "online"}', Connectivity.online),
            (b'{"status": "OFFLINE"}', Connectivity.offline),
            (b"offline", Connectivity.offline),
            (b'"online"', Connectivity.online),
        ],
    )
    def test_status_forms(self, payload: bytes, expected: Connectivity) -> None:
        decoded = registry.decode(f"plant/a/machines/{MACHINE}/status", payload, CLOCK)
        assert decoded == StatusChange(MACHINE, expected)

    @pytest.mark.parametrize("payload", [b'{"status": "asleep"}', b"{}", b"3"])
    def test_other_statuses_are_invalid(self, payload: bytes) -> None:
        assert _reason(f"plant/a/machines/{MACHINE}/status", payload) is Reason.invalid_payload
