"""Input into dataclasses: bad input must fail naming the field, so an
operator can fix the task without reading the plugin's source."""

from __future__ import annotations

import unittest
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Optional

from sluice_sdk.decode import DecodeError, decode


@dataclass
class App:
    id: str


@dataclass
class Receipt:
    gate: str
    url: str


@dataclass
class Input:
    api: str
    apps: list[App]
    receipt: Receipt | None = None
    retry_delay: timedelta = timedelta(seconds=60)
    tags: dict[str, str] = field(default_factory=dict)
    since: Optional[datetime] = None
    count: int = 0
    ratio: float = 1.0
    dry_run: bool = False
    extra: Any = None


@dataclass
class Loose:
    id: str
    state: str | None


def problem(cls: Any, value: Any, strict: bool = True) -> str:
    try:
        decode(cls, value, strict=strict)
    except DecodeError as err:
        return str(err)
    raise AssertionError(f"{value!r} decoded")


class Decode(unittest.TestCase):
    def test_good_input_builds_the_dataclasses(self) -> None:
        got = decode(
            Input,
            {
                "api": "http://a",
                "apps": [{"id": "1"}],
                "receipt": {"gate": "mail", "url": "http://m"},
                "retry_delay": "200ms",
                "tags": {"owner": "x"},
                "since": "2026-12-01T00:00:00Z",
                "count": 3,
                "ratio": 2,
                "dry_run": True,
                "extra": [1, {"a": None}],
            },
            strict=True,
        )
        self.assertEqual(got.apps, [App("1")])
        self.assertEqual(got.receipt, Receipt("mail", "http://m"))
        self.assertEqual(got.retry_delay, timedelta(milliseconds=200))
        self.assertEqual(got.since, datetime(2026, 12, 1, tzinfo=timezone.utc))
        self.assertEqual((got.count, got.ratio, got.dry_run), (3, 2.0, True))
        self.assertEqual(got.extra, [1, {"a": None}])
        self.assertEqual(decode(Input, {"api": "x", "apps": []}).retry_delay, timedelta(seconds=60))
        self.assertEqual(decode(list[App], [{"id": "a", "more": 1}]), [App("a")])

    def test_bad_input_names_the_field_like_serde(self) -> None:
        self.assertEqual(
            problem(Input, {"api": "http://a", "apps": [{"id": "1"}, {"id": 7}]}),
            "apps[1].id: invalid type: integer `7`, expected a string",
        )
        self.assertEqual(problem(Input, None), "invalid type: null, expected struct Input")
        self.assertEqual(problem(Input, {"apps": []}), "missing field `api`")
        self.assertTrue(
            problem(Input, {"api": "x", "apps": [], "nope": 1}).startswith(
                "unknown field `nope`, expected one of `api`, `apps`, `receipt`"
            )
        )
        self.assertEqual(
            problem(Input, {"api": "x", "apps": [], "receipt": {"gate": "g"}}),
            "receipt: missing field `url`",
        )
        self.assertEqual(
            problem(Input, {"api": "x", "apps": [], "receipt": {"gate": "g", "url": "u", "cc": 1}}),
            "receipt: unknown field `cc`, expected one of `gate`, `url`",
        )
        self.assertIn("retry_delay: invalid duration", problem(Input, {"api": "x", "apps": [], "retry_delay": "1d"}))
        self.assertEqual(
            problem(Input, {"api": "x", "apps": [], "count": True}),
            "count: invalid type: boolean `true`, expected an integer",
        )
        self.assertEqual(
            problem(Input, {"api": "x", "apps": [], "count": 1.5}),
            "count: invalid type: floating point `1.5`, expected an integer",
        )
        self.assertEqual(
            problem(Input, {"api": "x", "apps": {}}), "apps: invalid type: map, expected a sequence"
        )
        self.assertEqual(
            problem(Input, {"api": "x", "apps": [], "tags": {"a": 1}}),
            "tags.a: invalid type: integer `1`, expected a string",
        )
        self.assertIn("needs an offset", problem(Input, {"api": "x", "apps": [], "since": "2026-12-01T00:00:00"}))

    def test_answers_are_read_leniently_and_missing_options_are_none(self) -> None:
        self.assertEqual(decode(Loose, {"id": "a", "unknown": 1}), Loose("a", None))
        self.assertEqual(problem(Loose, {"id": "a", "unknown": 1}, strict=True), "unknown field `unknown`, expected one of `id`, `state`")
        self.assertEqual(problem(Loose, {"id": "a", "state": 5}, strict=False), "state: invalid type: integer `5`, expected a string")


if __name__ == "__main__":
    unittest.main()
