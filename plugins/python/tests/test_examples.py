"""The Python examples against fake APIs, in the scenarios of the Rust
end-to-end tests (tests/all/plugins.rs): the same outputs, requests, log lines
and outcomes as plugins/*/src/lib.rs. Also the scaffold's template
(runtime/src/cli/plugin-template-py/app.py.in). Plain CPython: HTTP goes through
a fake transport, so the gate itself is the host's tests' business.

Run: python3 -m unittest discover -s plugins/python/tests -t plugins/python
"""

from __future__ import annotations

import importlib.util
import json
import sys
import unittest
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "sdk" / "python"))

from sluice_sdk import Context, http, log  # noqa: E402
from sluice_sdk._glue import attempt  # noqa: E402
from sluice_sdk.http import HttpError, Request, Response, split_url  # noqa: E402
from sluice_sdk.outcome import Outcome  # noqa: E402


def load(path: Path, name: str, text: str | None = None) -> ModuleType:
    """Imports an app.py (or a rendered template) as module ``name``."""
    module = ModuleType(name)
    module.__file__ = str(path)
    sys.modules[name] = module
    exec(compile(text if text is not None else path.read_text(), str(path), "exec"), module.__dict__)
    return module


class Hit:
    def __init__(self, request: Request) -> None:
        self.method = request.method
        self.path = split_url(request.url)[2]
        self.headers = {name.lower(): value for name, value in request.headers}
        self.body = request.body or b""

    def json(self) -> Any:
        return json.loads(self.body or b"null")


class Sink:
    """Plays an API: ``behave(hit, index)`` answers each request, like the Rust
    tests' Sink; ``hits`` is every request in order."""

    def __init__(self, behave: Callable[[Hit, int], tuple[int, Any, dict[str, str]]]) -> None:
        self.behave = behave
        self.hits: list[Hit] = []
        self.concurrent: list[int] = []

    def __call__(self, requests: Sequence[Request], timeout: float, max_body: int) -> list[Response | HttpError]:
        self.concurrent.append(len(requests))
        answers: list[Response | HttpError] = []
        for request in requests:
            hit = Hit(request)
            self.hits.append(hit)
            status, body, headers = self.behave(hit, len(self.hits) - 1)
            data = b"" if body is None else json.dumps(body).encode()
            answers.append(Response(request.url, status, headers, data))
        return answers


def reply(status: int, body: Any = None, **headers: str) -> tuple[int, Any, dict[str, str]]:
    return status, body, {k.replace("_", "-"): v for k, v in headers.items()}


API = "http://127.0.0.1:4711"


class Example(unittest.TestCase):
    def setUp(self) -> None:
        self.lines: list[str] = []
        self.previous_sink = log.set_sink(lambda level, message: self.lines.append(f"{level}: {message}"))
        self.previous_transport = http.set_transport(None)
        self.clock = 1_000.0

    def tearDown(self) -> None:
        log.set_sink(self.previous_sink)
        http.set_transport(self.previous_transport)

    def run_task(self, app: ModuleType, input: Any, sink: Sink, task_id: str = "task-1", timeout: float = 10.0) -> Outcome:
        http.set_transport(sink)
        ctx = Context(
            task_id=task_id,
            gate="g",
            attempt=1,
            scheduled_at_ms=int(self.clock * 1000),
            deadline_ms=int((self.clock + timeout) * 1000),
            idempotency_key=task_id,
            clock=lambda: self.clock,
        )
        return attempt(app.Handler.task, ctx, json.dumps(input), app.Handler.input_type)


def app(name: str) -> ModuleType:
    return load(ROOT / "plugins" / "python" / name / "app.py", f"example_{name.replace('-', '_')}")


class HibernateIdle(Example):
    def apps_api(self, hit: Hit, _: int) -> tuple[int, Any, dict[str, str]]:
        now = datetime.now(timezone.utc)
        old = (now - timedelta(hours=48)).isoformat().replace("+00:00", "Z")
        fresh = now.isoformat()
        if (hit.method, hit.path) == ("GET", "/apps"):
            return reply(200, [
                {"id": "a1", "last_active": old},
                {"id": "a2", "last_active": old},
                {"id": "a3", "last_active": old, "state": "hibernated"},
                {"id": "a4", "last_active": fresh},
                {"id": "a5", "last_active": old},
                {"id": "gone", "last_active": old},
            ])
        if (hit.method, hit.path) == ("POST", "/apps/gone/hibernate"):
            return reply(404)
        if hit.method == "POST" and hit.path.endswith("/hibernate"):
            return reply(200, {"ok": True})
        return reply(400)

    def test_hibernates_the_idle_apps(self) -> None:
        sink = Sink(self.apps_api)
        outcome = self.run_task(app("hibernate-idle"), {"api": API + "/", "idle_after": "24h"}, sink)
        self.assertEqual(outcome.kind, "success", outcome)
        self.assertEqual(json.loads(outcome.output), {"apps": 6, "idle": 4, "hibernated": 3, "skipped": 1})
        self.assertEqual(list(json.loads(outcome.output)), ["apps", "idle", "hibernated", "skipped"])
        self.assertEqual([(h.method, h.path) for h in sink.hits], [
            ("GET", "/apps"),
            ("POST", "/apps/a1/hibernate"),
            ("POST", "/apps/a2/hibernate"),
            ("POST", "/apps/a5/hibernate"),
            ("POST", "/apps/gone/hibernate"),
        ])
        self.assertEqual(self.lines[0], "info: 4 of 6 apps idle for over PT24H")
        self.assertTrue(self.lines[1].startswith("info: hibernated a1 (last active "), self.lines)
        self.assertIn("info: skipped gone: the API answered 404", self.lines)

    def test_stops_near_the_deadline_and_checks_its_input(self) -> None:
        outcome = self.run_task(app("hibernate-idle"), {"api": API, "idle_after": "24h"}, Sink(self.apps_api), timeout=4)
        self.assertEqual(outcome, Outcome.retry("deadline near after hibernating 0 of 4 idle apps; the next attempt carries on"))
        hibernate = app("hibernate-idle")
        for bad, reason in [
            ({"api": API, "idle_after": "-1h"}, "invalid input: idle_after must not be negative"),
            ({"api": API}, "invalid input: missing field `idle_after`"),
            ({"api": API, "idle_after": "24h", "x": 1}, "invalid input: unknown field `x`, expected one of `api`, `idle_after`"),
        ]:
            self.assertEqual(self.run_task(hibernate, bad, Sink(self.apps_api)), Outcome.fail(reason))
        self.assertIn("idle_after: invalid duration", self.run_task(hibernate, {"api": API, "idle_after": "1d"}, Sink(self.apps_api)).reason)

    def test_a_failing_hibernation_retries_and_a_bad_listing_fails(self) -> None:
        def flaky(hit: Hit, i: int) -> tuple[int, Any, dict[str, str]]:
            return reply(502) if hit.path == "/apps/a2/hibernate" else self.apps_api(hit, i)

        outcome = self.run_task(app("hibernate-idle"), {"api": API, "idle_after": "24h"}, Sink(flaky))
        self.assertEqual(outcome, Outcome.retry(f"{API}/apps/a2/hibernate answered 502"))
        outcome = self.run_task(app("hibernate-idle"), {"api": API, "idle_after": "24h"}, Sink(lambda h, i: reply(200, [{"id": 7}])))
        self.assertEqual(outcome, Outcome.fail(f"answer from {API}/apps is not the JSON expected: [0].id: invalid type: integer `7`, expected a string"))


class CleanupStray(Example):
    def cloud_api(self, hit: Hit, i: int) -> tuple[int, Any, dict[str, str]]:
        if (hit.method, hit.path) == ("GET", "/instances"):
            if i == 0:
                return reply(500)
            return reply(200, [
                {"id": "i-1", "tags": {"owner": "team-a"}},
                {"id": "i-2"},
                {"id": "i-3", "tags": {}},
                {"id": "i-4", "tags": {"owner": "team-b"}, "expires_at": "2020-01-01T00:00:00Z"},
            ])
        if (hit.method, hit.path) == ("DELETE", "/instances/i-3"):
            return reply(404)
        if hit.method == "DELETE":
            return reply(204)
        return reply(400)

    def test_retries_after_the_api_fails_then_finishes(self) -> None:
        cleanup = app("cleanup-stray")
        sink = Sink(self.cloud_api)
        first = self.run_task(cleanup, {"api": API, "retry_delay": "200ms"}, sink)
        self.assertEqual(first, Outcome.retry(f"{API}/instances answered 500", 0.2))
        self.assertIn("500", first.reason)
        second = self.run_task(cleanup, {"api": API, "retry_delay": "200ms"}, sink)
        self.assertEqual(second.kind, "success", second)
        self.assertEqual(second.output, '{"instances":4,"strays":3,"deleted":2,"already_gone":1,"dry_run":false}')
        self.assertEqual([h.path for h in sink.hits if h.method == "DELETE"], ["/instances/i-2", "/instances/i-3", "/instances/i-4"])
        self.assertEqual(self.lines, [
            "info: 3 of 4 instances are strays",
            "info: deleted i-2",
            "info: i-3 was already gone",
            "info: deleted i-4",
        ])

    def test_dry_run_defaults_and_retry_after(self) -> None:
        cleanup = app("cleanup-stray")
        sink = Sink(self.cloud_api)
        sink.hits.append(Hit(Request("GET", API + "/instances")))  # past the failing first listing
        outcome = self.run_task(cleanup, {"api": API, "dry_run": True, "owner_tag": "team"}, sink)
        self.assertEqual(json.loads(outcome.output), {"instances": 4, "strays": 4, "deleted": 0, "already_gone": 0, "dry_run": True})
        self.assertFalse([h for h in sink.hits if h.method == "DELETE"])
        default_delay = self.run_task(cleanup, {"api": API}, Sink(lambda h, i: reply(503)))
        self.assertEqual(default_delay.after_ms, 60_000)
        told = self.run_task(cleanup, {"api": API}, Sink(lambda h, i: reply(503, retry_after="7")))
        self.assertEqual(told.after_ms, 7_000)
        gone_wrong = self.run_task(cleanup, {"api": API}, Sink(lambda h, i: reply(403)))
        self.assertEqual(gone_wrong, Outcome.fail(f"{API}/instances answered 403"))
        self.assertEqual(
            self.run_task(cleanup, {"api": API, "retry_delay": "-1s"}, sink),
            Outcome.fail("invalid input: retry_delay must not be negative"),
        )


class ChargeInvoice(Example):
    def payments(self, busy: list[bool]) -> Callable[[Hit, int], tuple[int, Any, dict[str, str]]]:
        def behave(hit: Hit, _: int) -> tuple[int, Any, dict[str, str]]:
            body = hit.json()
            if (hit.method, hit.path) == ("POST", "/v1/charges"):
                if body.get("invoice") == "inv_declined":
                    return reply(402, {"decline_code": "insufficient_funds"})
                if body.get("invoice") == "inv_busy" and busy and busy.pop():
                    return reply(503, retry_after="1")
                return reply(201, {"id": "ch_1", "status": "succeeded"})
            return reply(400)

        return behave

    def input(self, invoice: str) -> dict[str, Any]:
        return {
            "api": API,
            "invoice": invoice,
            "amount_cents": 1999,
            "currency": "eur",
            "receipt": {"gate": "payments", "url": API + "/receipts"},
        }

    def test_succeeds_with_its_receipt_or_fails_for_good(self) -> None:
        charge = app("charge-invoice")
        sink = Sink(self.payments([True]))
        paid = self.run_task(charge, self.input("inv_42"), sink, task_id="t-paid")
        self.assertEqual(paid.output, '{"charge":"ch_1","status":"succeeded"}')
        self.assertEqual([json.loads(n) for n in paid.next], [{
            "gate": "payments",
            "webhook": {"url": API + "/receipts", "body": {"invoice": "inv_42", "charge": "ch_1"}},
            "idempotency_key": "receipt:inv_42",
        }])
        request = sink.hits[0]
        self.assertEqual(request.body, b'{"invoice":"inv_42","amount":1999,"currency":"eur"}')
        self.assertEqual(request.headers["idempotency-key"], "t-paid")
        self.assertEqual(request.headers["content-type"], "application/json")
        self.assertIn("info: charged: ch_1 is succeeded", self.lines)

        busy = self.run_task(charge, self.input("inv_busy"), sink)
        self.assertEqual(busy, Outcome.retry("payment API answered 503", 1))
        self.assertEqual(self.run_task(charge, self.input("inv_busy"), sink).kind, "success")

        declined = self.run_task(charge, self.input("inv_declined"), sink)
        self.assertEqual(declined, Outcome.fail("card declined (insufficient_funds)"))
        self.assertIn("warn: declined: insufficient_funds", self.lines)

    def test_every_other_answer(self) -> None:
        charge = app("charge-invoice")
        url = f"{API}/v1/charges"
        cases = [
            (reply(200, {"id": "ch_2", "status": "pending", "extra": 1}), Outcome.success('{"charge":"ch_2","status":"pending"}')),
            (reply(201, {"nope": 1}), Outcome.fail(f"charged, but answer from {url} is not the JSON expected: missing field `id`")),
            (reply(402), Outcome.fail("card declined")),
            (reply(409), Outcome.retry("another attempt with this idempotency key is in progress", 5)),
            (reply(429), Outcome.retry("payment API answered 429")),
            (reply(429, retry_after="30"), Outcome.retry("payment API answered 429", 30)),
            (reply(500), Outcome.retry("payment API answered 500")),
            (reply(504), Outcome.retry("payment API answered 504")),
            (reply(404, {"error": "no such route"}), Outcome.fail('payment API answered 404: {"error": "no such route"}')),
            (reply(204), Outcome.fail("payment API answered 204: ")),
            (reply(302), Outcome.fail("payment API answered 302: ")),
        ]
        for answer, expected in cases:
            input = self.input("inv_x")
            del input["receipt"]
            outcome = self.run_task(charge, input, Sink(lambda h, i, answer=answer: answer))
            self.assertEqual(outcome, expected, answer)
        bad = self.input("inv_x")
        bad["amount_cents"] = -1
        self.assertEqual(self.run_task(charge, bad, Sink(self.payments([]))).reason, "invalid input: amount_cents: invalid value: integer `-1`, expected u64")
        bad = self.input("inv_x")
        bad["receipt"] = {"gate": "mail"}
        self.assertEqual(self.run_task(charge, bad, Sink(self.payments([]))).reason, "invalid input: receipt: missing field `url`")


class Template(Example):
    def test_the_scaffolds_health_check(self) -> None:
        path = ROOT / "runtime" / "src" / "cli" / "plugin-template-py" / "app.py.in"
        check = load(path, "template_check_health", path.read_text().replace("{{name}}", "check-health"))
        self.assertIn("check-health: a Sluice task", check.__doc__)
        url = API + "/health"
        ok = self.run_task(check, {"url": url}, Sink(lambda h, i: reply(200, {"status": "ok"})))
        self.assertEqual(ok, Outcome.success('{"status":"ok","attempt":1}'))
        self.assertEqual(self.lines[-1], f'info: {url} says "ok"')
        degraded = self.run_task(check, {"url": url, "expect": "green"}, Sink(lambda h, i: reply(200, {"status": "ok"})))
        self.assertEqual(degraded, Outcome.retry('status is "ok", not "green"', 30))
        self.assertEqual(self.run_task(check, {"url": url}, Sink(lambda h, i: reply(200, [1]))).reason, 'status is "", not "ok"')
        self.assertEqual(self.run_task(check, {"url": url}, Sink(lambda h, i: reply(503))).kind, "retry")
        self.assertEqual(self.run_task(check, {"url": url}, Sink(lambda h, i: reply(404))), Outcome.fail(f"{url} answered 404"))
        self.assertEqual(self.run_task(check, {}, Sink(lambda h, i: reply(200))), Outcome.fail("invalid input: missing field `url`"))


class Hostile(Example):
    def test_flood_starts_every_request_at_once(self) -> None:
        hostile = load(ROOT / "tests" / "plugins" / "python" / "hostile" / "app.py", "hostile_app")
        sink = Sink(lambda h, i: reply(200 if i % 5 else 503))
        outcome = self.run_task(hostile, {"do": "flood", "url": API + "/hit", "count": 20}, sink)
        report = json.loads(outcome.output)
        self.assertEqual(sink.concurrent, [20], "one send_all for all of them")
        self.assertEqual((report["count"], report["ok"], report["failed"]), (20, 16, 4))
        self.assertEqual(report["first_error"], f"{API}/hit answered 503")
        self.assertEqual(self.run_task(hostile, {"do": "dance"}, sink), Outcome.fail("invalid input: unknown attack 'dance'"))


if __name__ == "__main__":
    unittest.main()
