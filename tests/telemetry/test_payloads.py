from __future__ import annotations

import math
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from plantpulse.telemetry.payloads import (
    Clock,
    PayloadError,
    gateway_batch,
    parse_timestamp,
    single_device,
)

NOW = datetime(2024, 1, 15, 10, 30, tzinfo=UTC)
CLOCK = Clock(now=NOW, future_skew=timedelta(seconds=300))
M1 = uuid.UUID(int=1)
M2 = uuid.UUID(int=2)


class TestTimestamps:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("2024-01-15T10:30:00Z", NOW),
            ("2024-01-15T11:30:00+01:00", NOW),
            (1705314600, NOW),
            (1705314600.0, NOW),
            (1705314600000, NOW),
            (1705314600123, NOW + timedelta(milliseconds=123)),
            (0, datetime(1970, 1, 1, tzinfo=UTC)),
        ],
    )
    def test_accepted_forms(self, value: object, expected: datetime) -> None:
        assert parse_timestamp(value, CLOCK) == expected

    @pytest.mark.parametrize(
        ("value", "reason"),
        [
            ("2024-01-15T10:30:00", "no UTC offset"),
            ("yesterday", "not ISO 8601"),
            (True, "ISO 8601 or epoch"),
            (-1, "non-negative"),
            (math.inf, "finite"),
            ({"a": 1}, "ISO 8601 or epoch"),
            (1e20, "out of range"),
            # Found by fuzzing: out of range once in UTC (a 500 before, or a dead letter).
            ("9999-12-31T23:59:59-14:00", "out of range"),
            ("0001-01-01T00:00:00+14:00", "out of range"),
            # TimescaleDB cannot store year 1; nothing before the epoch can be a reading.
            ("0001-01-01T00:00:00Z", "before 1970"),
            ("1969-12-31T23:59:59Z", "before 1970"),
        ],
    )
    def test_rejected_forms(self, value: object, reason: str) -> None:
        with pytest.raises(ValueError, match=reason):
            parse_timestamp(value, CLOCK)

    def test_future_skew_boundary(self) -> None:
        assert parse_timestamp((NOW + timedelta(seconds=300)).isoformat(), CLOCK)
        with pytest.raises(ValueError, match="in the future"):
            parse_timestamp((NOW + timedelta(seconds=301)).isoformat(), CLOCK)


class TestSingleDevice:
    def test_data_shape_with_timestamp(self) -> None:
        parsed = single_device(
            {
                "timestamp": "2024-01-15T10:00:00Z",
                "data": {"temperature": 23.5, "rpm": 1500},
                "metadata": {"firmware": "1.2"},
            },
            machine_id=M1,
            clock=CLOCK,
        )
        at = datetime(2024, 1, 15, 10, tzinfo=UTC)
        assert parsed.rows == [(at, M1, "temperature", 23.5), (at, M1, "rpm", 1500.0)]
        assert parsed.rejected == []

    def test_flat_shape_without_timestamp_takes_server_time(self) -> None:
        parsed = single_device({"temperature": 72.5}, machine_id=M1, clock=CLOCK)
        assert parsed.rows == [(NOW, M1, "temperature", 72.5)]

    def test_readings_list_mixes_good_and_bad(self) -> None:
        parsed = single_device(
            {
                "timestamp": 1705314000,
                "readings": [
                    {"temperature": 1.0},
                    {"timestamp": "soon", "temperature": 2.0},
                    {"temperature": "hot", "pressure": 3.0},
                    {"temperature": None},
                    "not an object",
                ],
            },
            machine_id=M1,
            clock=CLOCK,
        )
        base = datetime.fromtimestamp(1705314000, UTC)
        assert parsed.rows == [(base, M1, "temperature", 1.0), (base, M1, "pressure", 3.0)]
        assert [(r.where, r.reason) for r in parsed.rejected] == [
            ("readings[1].timestamp", "timestamp 'soon' is not ISO 8601"),
            ("readings[2].temperature", "value of 'temperature' is not a number"),
            ("readings[3]", "the reading has no numeric metric"),
            ("readings[4]", "a reading must be a JSON object"),
        ]

    def test_non_finite_and_boolean_values_are_rejected(self) -> None:
        parsed = single_device(
            {"a": math.nan, "b": math.inf, "c": True, "d": 4}, machine_id=M1, clock=CLOCK
        )
        assert [r[2] for r in parsed.rows] == ["d"]
        assert len(parsed.rejected) == 3

    def test_bad_metric_name_is_rejected(self) -> None:
        parsed = single_device({"bad name": 1, "x" * 65: 2, "ok": 3}, machine_id=M1, clock=CLOCK)
        assert [r[2] for r in parsed.rows] == ["ok"]
        assert len(parsed.rejected) == 2

    @pytest.mark.parametrize("payload", [[1, 2], "x", 5, {"data": [1]}, {"readings": {}}])
    def test_wrong_shapes_raise(self, payload: object) -> None:
        with pytest.raises(PayloadError):
            single_device(payload, machine_id=M1, clock=CLOCK)


class TestGatewayBatch:
    def test_the_documented_example(self) -> None:
        parsed = gateway_batch(
            {
                "gateway_id": "Gateway-001",
                "timestamp": "2024-01-15T10:30:00Z",
                "batch": [
                    {
                        "machine_id": str(M1),
                        "sensor_type": "Temperature",
                        "location": "Factory A",
                        "readings": [
                            {
                                "timestamp": "2024-01-15T10:30:00Z",
                                "temperature": 72.5,
                                "pressure": 101.3,
                                "speed": 1500,
                            }
                        ],
                    }
                ],
            },
            clock=CLOCK,
        )
        assert parsed.rows == [
            (NOW, M1, "temperature", 72.5),
            (NOW, M1, "pressure", 101.3),
            (NOW, M1, "speed", 1500.0),
        ]

    def test_reading_without_timestamp_takes_the_batch_time(self) -> None:
        earlier = NOW - timedelta(hours=1)
        parsed = gateway_batch(
            {
                "timestamp": earlier.isoformat(),
                "batch": [{"machine_id": str(M2), "readings": [{"speed": 1}]}],
            },
            clock=CLOCK,
        )
        assert parsed.rows == [(earlier, M2, "speed", 1.0)]

    def test_bad_entries_are_rejected_and_good_ones_kept(self) -> None:
        parsed = gateway_batch(
            {
                "batch": [
                    {"machine_id": "nope", "readings": [{"a": 1}]},
                    {"machine_id": str(M1), "readings": "x"},
                    7,
                    {"machine_id": str(M2), "readings": [{"a": 1}]},
                ]
            },
            clock=CLOCK,
        )
        assert parsed.rows == [(NOW, M2, "a", 1.0)]
        assert [r.where for r in parsed.rejected] == [
            "batch[0].machine_id",
            "batch[1].readings",
            "batch[2]",
        ]

    @pytest.mark.parametrize("payload", [[], {"batch": {}}, {"no": "batch"}])
    def test_wrong_shapes_raise(self, payload: object) -> None:
        with pytest.raises(PayloadError):
            gateway_batch(payload, clock=CLOCK)


class TestReservedNames:
    def test_valid_and_timestamp_are_never_metrics(self) -> None:
        parsed = single_device(
            {"data": {"timestamp": 1, "valid": 1, "ok": 2}}, machine_id=M1, clock=CLOCK
        )
        assert [r[2] for r in parsed.rows] == ["ok"]
        assert [(r.where, r.reason) for r in parsed.rejected] == [
            ("data.timestamp", "'timestamp' is reserved and cannot be a metric name"),
            ("data.valid", "'valid' is reserved and cannot be a metric name"),
        ]

    def test_valid_in_a_flat_reading_is_rejected(self) -> None:
        parsed = single_device({"valid": 0, "t": 1}, machine_id=M1, clock=CLOCK)
        assert [r[2] for r in parsed.rows] == ["t"]
        assert [r.where for r in parsed.rejected] == ["$.valid"]


class TestGatewayForOneMachine:
    def test_entries_of_other_machines_are_rejected_one_by_one(self) -> None:
        parsed = gateway_batch(
            {
                "batch": [
                    {"machine_id": str(M1), "readings": [{"a": 1}]},
                    {"machine_id": str(M2), "readings": [{"a": 2}]},
                ]
            },
            clock=CLOCK,
            only_machine=M1,
        )
        assert parsed.rows == [(NOW, M1, "a", 1.0)]
        assert [r.where for r in parsed.rejected] == ["batch[1].machine_id"]
        assert "may not send readings" in parsed.rejected[0].reason


class TestFastPathAgreesWithTheFullRules:
    """Readings are first tried by a fast path; whatever it does not take outright is parsed
    again by the full rules. Good readings must come out once, bad ones as rejections."""

    def test_a_bad_value_after_good_ones_keeps_the_good_ones_once(self) -> None:
        parsed = single_device({"a": 1, "b": "x", "c": 2.5}, machine_id=M1, clock=CLOCK)
        assert parsed.rows == [(NOW, M1, "a", 1.0), (NOW, M1, "c", 2.5)]
        assert [r.where for r in parsed.rejected] == ["$.b"]

    def test_an_epoch_timestamp_in_a_flat_reading_is_its_time_not_a_metric(self) -> None:
        parsed = single_device(
            {"timestamp": 1705314600123, "speed": 1500}, machine_id=M1, clock=CLOCK
        )
        assert parsed.rows == [(NOW + timedelta(milliseconds=123), M1, "speed", 1500.0)]
        assert parsed.rejected == []

    def test_integers_beyond_float_range_are_rejected_not_raised(self) -> None:
        parsed = single_device({"a": 10**400, "b": 1}, machine_id=M1, clock=CLOCK)
        assert parsed.rows == [(NOW, M1, "b", 1.0)]
        assert [(r.where, r.reason) for r in parsed.rejected] == [
            ("$.a", "value of 'a' is out of range")
        ]
        with pytest.raises(ValueError, match="out of range"):
            parse_timestamp(10**400, CLOCK)

    def test_a_cached_iso_timestamp_is_still_checked_against_the_clock(self) -> None:
        stamp = (NOW + timedelta(seconds=200)).isoformat()
        assert parse_timestamp(stamp, CLOCK) == NOW + timedelta(seconds=200)
        earlier = Clock(now=NOW - timedelta(seconds=200), future_skew=timedelta(seconds=300))
        with pytest.raises(ValueError, match="in the future"):
            parse_timestamp(stamp, earlier)

    def test_offsets_are_converted_to_utc(self) -> None:
        parsed = single_device(
            {"readings": [{"timestamp": "2024-01-15T11:30:00+01:00", "a": 1}]},
            machine_id=M1,
            clock=CLOCK,
        )
        assert parsed.rows[0][0] == NOW
        assert parsed.rows[0][0].tzinfo is UTC

    def test_gateway_entries_with_repeated_machine_ids_and_bad_readings(self) -> None:
        entry = {"machine_id": str(M2), "readings": [{"a": 1}, {"a": True}, {"b": 2}]}
        parsed = gateway_batch({"batch": [entry, entry]}, clock=CLOCK)
        # The second entry repeats the first one's readings at the same time: rejected too.
        assert parsed.rows == [(NOW, M2, "a", 1.0), (NOW, M2, "b", 2.0)]
        assert [r.where for r in parsed.rejected] == [
            "batch[0].readings[1].a",
            "batch[1].readings[1].a",
            "batch[1].readings[0].a",
            "batch[1].readings[2].b",
        ]


class TestOneValuePerMachineMetricAndTime:
    """Issue 8, item 5: readings of one payload that land on the same machine, metric and time
    used to collapse into one row, the rest counted as "duplicates" and never reported."""

    def test_readings_without_timestamps_keep_the_first_and_reject_the_rest(self) -> None:
        parsed = single_device(
            {"readings": [{"vib": 1}, {"vib": 2}, {"vib": 3}]}, machine_id=M1, clock=CLOCK
        )
        assert parsed.rows == [(NOW, M1, "vib", 1.0)]
        assert [r.where for r in parsed.rejected] == ["readings[1].vib", "readings[2].vib"]
        assert parsed.rejected[0].reason == (
            "readings[0] already has 'vib' at 2024-01-15T10:30:00+00:00: a payload holds one "
            "value per machine, metric and time (readings without a timestamp all take the "
            "payload's time: give each its own)"
        )

    def test_only_the_repeated_metric_of_a_reading_is_rejected(self) -> None:
        parsed = single_device(
            {
                "readings": [
                    {"a": "x"},
                    {"t": 1},
                    {"timestamp": 1705314601, "t": 2},
                    {"t": 3, "p": 4},
                ]
            },
            machine_id=M1,
            clock=CLOCK,
        )
        later = NOW + timedelta(seconds=1)
        assert parsed.rows == [(NOW, M1, "t", 1.0), (later, M1, "t", 2.0), (NOW, M1, "p", 4.0)]
        assert [r.where for r in parsed.rejected] == ["readings[0].a", "readings[3].t"]
        assert parsed.rejected[1].reason.startswith("readings[1] already has 't'")

    def test_distinct_times_metrics_and_machines_are_all_kept(self) -> None:
        parsed = gateway_batch(
            {
                "batch": [
                    {
                        "machine_id": str(M1),
                        "readings": [{"a": 1, "b": 1}, {"timestamp": 1, "a": 2}],
                    },
                    {"machine_id": str(M2), "readings": [{"a": 3}]},
                ]
            },
            clock=CLOCK,
        )
        assert len(parsed.rows) == 4
        assert parsed.rejected == []

    def test_gateway_repeats_across_entries_name_both_readings(self) -> None:
        parsed = gateway_batch(
            {
                "timestamp": 1705314600,
                "batch": [
                    {"machine_id": "nope", "readings": [{"a": 1}]},
                    {"machine_id": str(M1), "readings": [{"b": True}, {"a": 1}]},
                    {"machine_id": str(M2), "readings": [{"a": 2}]},
                    {
                        "machine_id": str(M1),
                        "readings": [{"b": 3}, {"timestamp": NOW.isoformat(), "a": 4}],
                    },
                ],
            },
            clock=CLOCK,
        )
        assert parsed.rows == [(NOW, M1, "a", 1.0), (NOW, M2, "a", 2.0), (NOW, M1, "b", 3.0)]
        assert [r.where for r in parsed.rejected] == [
            "batch[0].machine_id",
            "batch[1].readings[0].b",
            "batch[3].readings[1].a",
        ]
        assert parsed.rejected[2].reason.startswith("batch[1].readings[1] already has 'a'")
