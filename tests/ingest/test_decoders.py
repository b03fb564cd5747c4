from __future__ import annotations

import json
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
from plantpulse.telemetry import payloads
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

    @pytest.mark.parametrize(
        "payload",
        [
            b'{"t": 1e999, "p": 2}',  # Infinity: the fast parser refuses it, the standard one not
            b'{"t": NaN, "p": 2}',
            b'{"t": 100000000000000000000000, "p": 2}',  # beyond 64 bits
            b'{"t": 1' + b"0" * 400 + b', "p": 2}',  # beyond float range
            '{"t": "x", "p": 2}'.encode("utf-16"),
        ],
    )
    def test_what_the_fast_json_parser_refuses_gets_the_standard_outcome(
        self, payload: bytes
    ) -> None:
        decoded = registry.decode(f"plant/a/machines/{MACHINE}/telemetry", payload, CLOCK)
        assert isinstance(decoded, Telemetry)
        expected = payloads.single_device(json.loads(payload), machine_id=MACHINE, clock=CLOCK)
        assert decoded.parsed == expected
        assert [r[2] for r in decoded.parsed.rows][-1] == "p"

    def test_a_topic_seen_before_is_decoded_the_same_way(self) -> None:
        custom = json_registry("q")
        topic = f"q/machines/{MACHINE}/telemetry"
        first = custom.decode(topic, b'{"a": 1}', CLOCK)
        again = custom.decode(topic, b'{"a": 2}', CLOCK)
        assert isinstance(first, Telemetry)
        assert isinstance(again, Telemetry)
        assert [r[1:] for r in first.parsed.rows + again.parsed.rows] == [
            (MACHINE, "a", 1.0),
            (MACHINE, "a", 2.0),
        ]
        with pytest.raises(DecodeError):
            custom.decode("q/machines/nope/telemetry", b"{}", CLOCK)
        with pytest.raises(DecodeError):
            custom.decode("q/machines/nope/telemetry", b"{}", CLOCK)


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
