"""How an attempt ends: what run returns or raises, as the host's outcome."""

from __future__ import annotations

import types
import unittest
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from sluice_sdk import Context, Fail, Retry, log
from sluice_sdk._glue import attempt
from sluice_sdk.http import Denied, StatusError, Timeout, TransportError
from sluice_sdk.outcome import U64_MAX, Outcome, after_ms, encode


def context(**overrides: Any) -> Context:
    fields: dict[str, Any] = dict(
        task_id="t1",
        gate="billing",
        attempt=2,
        scheduled_at_ms=1_000,
        deadline_ms=31_000,
        idempotency_key="schedule:nightly:2026-11-27T02:30:00Z",
        schedule="nightly",
        clock=lambda: 21.5,
    )
    fields.update(overrides)
    return Context(**fields)


@dataclass
class Input:
    api: str
    count: int = 1


class Lines:
    def __enter__(self) -> list:
        self.lines: list = []
        self.previous = log.set_sink(lambda level, message: self.lines.append((level, message)))
        return self.lines

    def __exit__(self, *exc: Any) -> None:
        log.set_sink(self.previous)


class AfterMs(unittest.TestCase):
    def test_seconds_become_milliseconds_never_sooner(self) -> None:
        self.assertIsNone(after_ms(None))
        self.assertEqual(after_ms(1), 1000)
        self.assertEqual(after_ms(1.5), 1500)
        self.assertEqual(after_ms(0.2), 200)
        self.assertEqual(after_ms(0.0001), 1)
        self.assertEqual(after_ms(timedelta(minutes=1)), 60_000)
        self.assertEqual(after_ms(-3), 0)
        self.assertEqual(after_ms(float("inf")), U64_MAX)
        self.assertEqual(after_ms(1e30), U64_MAX)
        self.assertIsNone(after_ms(float("nan")))


class Encode(unittest.TestCase):
    handler = types.SimpleNamespace(
        Outcome_Success=lambda v: ("success", v),
        Outcome_Retry=lambda v: ("retry", v),
        Outcome_Fail=lambda v: ("fail", v),
        Success=lambda output, next: (output, next),
        Retry=lambda after_ms, reason: (after_ms, reason),
    )

    def test_outcomes_encode_for_the_host(self) -> None:
        self.assertEqual(encode(Outcome.success("[1,2]", ["{}"]), self.handler), ("success", ("[1,2]", ["{}"])))
        self.assertEqual(encode(Outcome.retry("busy", 1.5), self.handler), ("retry", (1500, "busy")))
        self.assertEqual(encode(Outcome.retry("busy"), self.handler), ("retry", (None, "busy")))
        self.assertEqual(encode(Outcome.fail("no"), self.handler), ("fail", "no"))


class Attempt(unittest.TestCase):
    def test_context_carries_the_hosts_facts(self) -> None:
        ctx = context()
        self.assertEqual((ctx.task_id, ctx.gate, ctx.attempt, ctx.schedule), ("t1", "billing", 2, "nightly"))
        self.assertEqual(ctx.scheduled_at, datetime(1970, 1, 1, 0, 0, 1, tzinfo=timezone.utc))
        self.assertEqual(ctx.deadline - ctx.scheduled_at, timedelta(seconds=30))
        self.assertEqual(ctx.remaining(), 9.5)
        self.assertEqual(context(clock=lambda: 99.0).remaining(), 0.0)
        ctx.next({"gate": "mail", "webhook": {"url": "http://m/ü"}})
        self.assertEqual(ctx.take_next(), ['{"gate":"mail","webhook":{"url":"http://m/ü"}}'])
        self.assertEqual(ctx.take_next(), [])

    def test_a_return_value_succeeds_with_the_next_tasks(self) -> None:
        def run(ctx: Context, input: Any) -> Any:
            ctx.next({"gate": "mail"})
            return {"got": input, "when": datetime(2026, 1, 1, tzinfo=timezone.utc), "d": timedelta(hours=1)}

        self.assertEqual(
            attempt(run, context(), '{"a": 1}'),
            Outcome.success('{"got":{"a":1},"when":"2026-01-01T00:00:00Z","d":"PT1H"}', ['{"gate":"mail"}']),
        )
        self.assertEqual(attempt(lambda ctx, input: input, context(), "null"), Outcome.success("null"))
        self.assertEqual(attempt(lambda ctx, input: Input("x"), context(), "null"), Outcome.success('{"api":"x","count":1}'))

    def test_bad_input_fails_naming_the_problem(self) -> None:
        ran = []
        run = lambda ctx, input: ran.append(input)  # noqa: E731
        self.assertEqual(attempt(run, context(), "{"), Outcome.fail("invalid input: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"))
        self.assertEqual(attempt(run, context(), '{"api": 1}', Input), Outcome.fail("invalid input: api: invalid type: integer `1`, expected a string"))
        self.assertEqual(attempt(run, context(), "null", Input), Outcome.fail("invalid input: invalid type: null, expected struct Input"))
        self.assertEqual(attempt(run, context(), '{"api": "x", "more": 1}', Input).kind, "fail")
        self.assertEqual(ran, [])
        self.assertEqual(attempt(run, context(), '{"api": "x"}', Input).kind, "success")
        self.assertEqual(ran, [Input("x")])

    def test_raised_outcomes_and_http_errors_decide_like_webhooks(self) -> None:
        def raising(err: BaseException) -> Any:
            def run(ctx: Context, input: Any) -> Any:
                ctx.next({"gate": "mail"})  # dropped unless it succeeds
                raise err

            return run

        url = "http://api.test/x"
        cases = [
            (Retry("later", after=timedelta(seconds=5)), Outcome.retry("later", 5)),
            (Retry("later"), Outcome.retry("later")),
            (Fail("gone"), Outcome.fail("gone")),
            (StatusError(url, 503, 60.0), Outcome.retry(f"{url} answered 503", 60)),
            (StatusError(url, 500, None, "oops"), Outcome.retry(f"{url} answered 500: oops")),
            (StatusError(url, 408), Outcome.retry(f"{url} answered 408")),
            (StatusError(url, 429, 1.0), Outcome.retry(f"{url} answered 429", 1)),
            (StatusError(url, 404, 60.0), Outcome.fail(f"{url} answered 404")),
            (StatusError(url, 301), Outcome.fail(f"{url} answered 301")),
            (Timeout(url), Outcome.retry(f"request to {url} timed out")),
            (TransportError(url, "connection refused"), Outcome.retry(f"request to {url} failed: connection refused")),
            (Denied(url), Outcome.fail(f"request to {url} denied: its host is not in the gate's allowed hosts")),
        ]
        for err, expected in cases:
            self.assertEqual(attempt(raising(err), context(), "null"), expected, repr(err))

    def test_any_other_exception_retries_with_its_text_and_is_logged(self) -> None:
        def run(ctx: Context, input: Any) -> Any:
            return {}["missing"]

        with Lines() as lines:
            self.assertEqual(attempt(run, context(), "null"), Outcome.retry("KeyError: 'missing'"))
        self.assertEqual(len(lines), 1)
        level, message = lines[0]
        self.assertEqual(level, "error")
        self.assertTrue(message.startswith("KeyError: 'missing' (at test_outcome.py:"), message)
        self.assertIn("in run", message)
        self.assertNotIn("_glue", message)

    def test_out_of_memory_and_exits_trap(self) -> None:
        for err in (MemoryError(), SystemExit(3), KeyboardInterrupt()):
            def run(ctx: Context, input: Any, err: BaseException = err) -> Any:
                raise err

            with Lines() as lines, self.assertRaises(type(err)):
                attempt(run, context(), "null")
            self.assertEqual(lines[0][0], "error")

    def test_output_that_is_not_json_fails(self) -> None:
        self.assertEqual(
            attempt(lambda ctx, input: object(), context(), "null"),
            Outcome.fail("output is not JSON: object is not JSON serializable"),
        )
        self.assertEqual(attempt(lambda ctx, input: float("nan"), context(), "null").kind, "fail")


if __name__ == "__main__":
    unittest.main()
