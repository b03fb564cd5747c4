from __future__ import annotations

import math
import struct
import uuid
from datetime import UTC, datetime, timedelta

import pytest

from plantpulse.sources.decoders import DecoderSpec, compile_path, decode, decode_float32
from plantpulse.sources.schemas import Float32Decoder, JsonDecoder
from plantpulse.telemetry.payloads import Clock

MACHINE = uuid.UUID(int=7)
CLOCK = Clock(datetime(2026, 1, 1, tzinfo=UTC), timedelta(minutes=5))
T = 1713798477
FLOAT32 = Float32Decoder(kind="bytes-float32").spec()


def run(body: object, spec: DecoderSpec = FLOAT32, bad_tags: list[str] | None = None):  # type: ignore[no-untyped-def]
    return decode(body, spec, machine_id=MACHINE, metric="level", bad_tags=bad_tags, clock=CLOCK)


class TestFloat32:
    def test_little_endian_is_the_default(self) -> None:
        assert decode_float32([157, 42, 76, 190], "little") == pytest.approx(-0.19938, abs=1e-5)

    def test_the_shortest_decimal_of_the_same_float32_is_stored(self) -> None:
        value = decode_float32([157, 42, 76, 190], "little")
        assert value == -0.1993813
        assert list(struct.pack("<f", value)) == [157, 42, 76, 190]
        assert decode_float32(list(struct.pack("<f", 43.707)), "little") == 43.707
        assert decode_float32(list(struct.pack(">f", 1e-40)), "big") == pytest.approx(1e-40)

    def test_big_endian(self) -> None:
        assert decode_float32([157, 42, 76, 190], "big") == pytest.approx(-2.2525e-21, rel=1e-3)

    @pytest.mark.parametrize(
        ("value", "reason"),
        [
            ([1, 2, 3], "4 bytes"),
            ([1, 2, 3, 4, 5], "4 bytes"),
            ([1, 2, 3, 256], "0..255"),
            ([1, 2, 3, -1], "0..255"),
            ([1, 2, 3, 1.5], "0..255"),
            ([1, 2, 3, True], "0..255"),
            ("9d2a4cbe", "4 bytes"),
            ([0, 0, 192, 127], "cannot be stored"),  # NaN
            ([0, 0, 128, 127], "cannot be stored"),  # +inf
        ],
    )
    def test_bad_bytes_reject_the_point_with_a_reason(self, value: object, reason: str) -> None:
        out = run([{"time": T, "value": value}, {"time": T + 1, "value": [157, 42, 76, 190]}])
        assert len(out.parsed.rows) == 1  # the good point next to it is kept
        [rejection] = out.parsed.rejected
        assert rejection.where == "points[0].level"
        assert reason in rejection.reason

    def test_single_point_and_list(self) -> None:
        single = run({"time": T, "value": [157, 42, 76, 190], "tags": []})
        assert [r[3] for r in single.parsed.rows] == [pytest.approx(-0.19938, abs=1e-5)]
        assert single.parsed.rows[0][0] == datetime.fromtimestamp(T, UTC)
        assert single.points == 1
        many = run([{"time": T + i, "value": [0, 0, 128, 63]} for i in range(3)])
        assert [r[3] for r in many.parsed.rows] == [1.0, 1.0, 1.0]


class TestTimestamps:
    @pytest.mark.parametrize(
        "stamp",
        [T, T * 1000, "2024-04-22T15:07:57Z", "2024-04-22T17:07:57+02:00", "2024-04-22T15:07:57"],
    )
    def test_epoch_seconds_milliseconds_and_iso_are_utc(self, stamp: object) -> None:
        out = run({"time": stamp, "value": [0, 0, 128, 63]})
        assert out.parsed.rows[0][0] == datetime(2024, 4, 22, 15, 7, 57, tzinfo=UTC)

    @pytest.mark.parametrize("stamp", [None, "yesterday", -5, "2030-01-01T00:00:00Z"])
    def test_missing_bad_or_future_timestamps_are_rejected(self, stamp: object) -> None:
        out = run([{"time": stamp, "value": [0, 0, 128, 63]}])
        assert out.parsed.rows == []
        assert len(out.parsed.rejected) == 1


class TestValidity:
    def test_by_default_any_tag_marks_the_point_invalid(self) -> None:
        out = run(
            [
                {"time": T, "value": [0, 0, 128, 63], "tags": []},
                {"time": T + 1, "value": [0, 0, 128, 63], "tags": ["maintenance"]},
                {"time": T + 2, "value": [0, 0, 128, 63]},
            ]
        )
        assert out.invalid == 1
        assert out.parsed.forced_invalid == {(datetime.fromtimestamp(T + 1, UTC), MACHINE, "level")}

    def test_only_configured_tags_mark_it_invalid(self) -> None:
        body = [
            {"time": T, "value": [0, 0, 128, 63], "tags": ["calibrated"]},
            {"time": T + 1, "value": [0, 0, 128, 63], "tags": ["calibrated", "BAD"]},
        ]
        out = run(body, bad_tags=["BAD", "SUSPECT"])
        assert out.invalid == 1
        assert {k[0] for k in out.parsed.forced_invalid} == {datetime.fromtimestamp(T + 1, UTC)}
        assert run(body, bad_tags=[]).invalid == 0

    def test_tags_that_are_not_a_list_reject_the_point(self) -> None:
        out = run({"time": T, "value": [0, 0, 128, 63], "tags": "BAD"})
        assert out.parsed.rows == []
        assert out.parsed.rejected[0].where == "points[0].tags"


class TestJsonDecoder:
    def test_values_at_paths_under_a_points_path(self) -> None:
        spec = JsonDecoder(
            kind="json",
            points="$.data.items",
            time="ts",
            values={"temperature": "m.temp", "pressure": "m.p[0]"},
            tags="flags",
        ).spec()
        body = {
            "data": {
                "items": [
                    {"ts": "2024-04-22T15:07:57Z", "m": {"temp": 21.5, "p": [1.2]}},
                    {"ts": T + 1, "m": {"temp": "hot", "p": [1.3]}, "flags": ["x"]},
                ]
            }
        }
        out = run(body, spec)
        assert sorted((r[2], r[3]) for r in out.parsed.rows) == [
            ("pressure", 1.2),
            ("pressure", 1.3),
            ("temperature", 21.5),
        ]
        assert [r.where for r in out.parsed.rejected] == ["points[1].temperature"]
        assert out.invalid == 1

    def test_machine_from_a_field(self) -> None:
        other = uuid.uuid4()
        spec = JsonDecoder(kind="json", machine="device").spec()
        out = run([{"time": T, "value": 1, "device": str(other)}, {"time": T, "value": 2}], spec)
        assert [r[1] for r in out.parsed.rows] == [other]
        assert "machine id" in out.parsed.rejected[0].reason

    def test_nothing_at_the_points_path(self) -> None:
        out = run({"other": []}, JsonDecoder(kind="json", points="data").spec())
        assert out.parsed.rows == []
        assert out.parsed.rejected[0].where == "$"

    @pytest.mark.parametrize("value", [math.inf, True, "1.5", None])
    def test_non_numbers_are_rejected(self, value: object) -> None:
        out = run({"time": T, "value": value}, JsonDecoder(kind="json").spec())
        assert out.parsed.rows == []


@pytest.mark.parametrize(
    ("text", "steps"),
    [
        ("", ()),
        ("$", ()),
        ("$.a.b", ("a", "b")),
        ("a[0].b", ("a", 0, "b")),
        ("[2]", (2,)),
    ],
)
def test_paths(text: str, steps: tuple[object, ...]) -> None:
    assert compile_path(text) == steps
