"""Durations, timestamps and HTTP dates, as the Rust SDK and jiff read them."""

import unittest
from datetime import datetime, timedelta, timezone

from sluice_sdk.timeutil import format_duration, format_timestamp, parse_duration, parse_http_date, parse_timestamp


class Durations(unittest.TestCase):
    def test_friendly_and_iso_durations_parse(self) -> None:
        cases = {
            "24h": timedelta(hours=24),
            "90m": timedelta(minutes=90),
            "168h": timedelta(hours=168),
            "1h 30m": timedelta(minutes=90),
            "1h30m": timedelta(minutes=90),
            "1 hour, 30 minutes": timedelta(minutes=90),
            "200ms": timedelta(milliseconds=200),
            "60s": timedelta(seconds=60),
            "1.5s": timedelta(seconds=1.5),
            "1h 0.5m": timedelta(hours=1, seconds=30),
            "-5m": timedelta(minutes=-5),
            "5m ago": timedelta(minutes=-5),
            "250us": timedelta(microseconds=250),
            "PT24H": timedelta(hours=24),
            "pt1h30m": timedelta(minutes=90),
            "PT0.5S": timedelta(milliseconds=500),
            "-PT1M": timedelta(minutes=-1),
            "0s": timedelta(0),
        }
        for text, expected in cases.items():
            self.assertEqual(parse_duration(text), expected, text)

    def test_days_and_nonsense_are_refused_with_a_reason(self) -> None:
        for text, words in {
            "1d": "not allowed",
            "2 days": "not allowed",
            "P1D": "days are not allowed",
            "1w": "not allowed",
            "": "empty",
            "soon": "expected units",
            "5": "expected units",
            "5 parsecs": "unknown unit",
            "1.5h 3m": "only the last unit",
            "PT": "ISO 8601",
            "P1Y": "ISO 8601",
        }.items():
            with self.assertRaises(ValueError, msg=text) as caught:
                parse_duration(text)
            self.assertIn(words, str(caught.exception), text)
        with self.assertRaises(ValueError):
            parse_duration(24)  # type: ignore[arg-type]

    def test_durations_print_as_jiff_prints_them(self) -> None:
        # The snapshots of jiff's temporal printer for SignedDuration.
        cases = [
            (timedelta(0), "PT0S"),
            (timedelta(seconds=1), "PT1S"),
            (timedelta(seconds=59), "PT59S"),
            (timedelta(seconds=60), "PT1M"),
            (timedelta(seconds=61, microseconds=1), "PT1M1.000001S"),
            (timedelta(hours=1), "PT1H"),
            (timedelta(seconds=3660), "PT1H1M"),
            (timedelta(seconds=3661), "PT1H1M1S"),
            (timedelta(hours=24), "PT24H"),
            (timedelta(milliseconds=1500), "PT1.5S"),
            (timedelta(seconds=-1), "-PT1S"),
            (timedelta(seconds=-3661), "-PT1H1M1S"),
        ]
        for duration, text in cases:
            self.assertEqual(format_duration(duration), text)
            self.assertEqual(parse_duration(text), duration, text)


class Timestamps(unittest.TestCase):
    def test_rfc3339_with_an_offset(self) -> None:
        utc = timezone.utc
        self.assertEqual(parse_timestamp("2026-12-01T00:00:00Z"), datetime(2026, 12, 1, tzinfo=utc))
        self.assertEqual(parse_timestamp("2026-12-01t01:00:00+01:00"), datetime(2026, 12, 1, tzinfo=utc))
        self.assertEqual(
            parse_timestamp("2026-12-04T21:30:00.123456789Z"),
            datetime(2026, 12, 4, 21, 30, 0, 123456, tzinfo=utc),
        )
        self.assertEqual(parse_timestamp("2026-12-01 00:00:00z").tzinfo, utc)
        for bad in ("2026-12-01T00:00:00", "yesterday", "", "2026-13-01T00:00:00Z"):
            with self.assertRaises(ValueError, msg=bad):
                parse_timestamp(bad)

    def test_printed_in_utc_with_z(self) -> None:
        at = datetime(2026, 12, 1, 1, 0, 0, 250000, tzinfo=timezone(timedelta(hours=1)))
        self.assertEqual(format_timestamp(at), "2026-12-01T00:00:00.25Z")
        self.assertEqual(format_timestamp(datetime(2026, 12, 1)), "2026-12-01T00:00:00Z")


class HttpDates(unittest.TestCase):
    def test_the_three_formats(self) -> None:
        expected = datetime(1994, 11, 6, 8, 49, 37, tzinfo=timezone.utc)
        self.assertEqual(parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"), expected)
        self.assertEqual(parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"), expected)
        self.assertEqual(parse_http_date("Sun Nov  6 08:49:37 1994"), expected)
        for bad in ("soon", "Sun, 06 Foo 1994 08:49:37 GMT", "Sun, 31 Feb 1994 08:49:37 GMT", ""):
            self.assertIsNone(parse_http_date(bad), bad)


if __name__ == "__main__":
    unittest.main()
