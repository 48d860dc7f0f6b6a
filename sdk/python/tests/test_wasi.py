"""The wasi:http transport and the export, against fake bindings that check
what the real host would trap on or hang at (fake_world.py)."""

from __future__ import annotations

import importlib
import unittest
from typing import Any

from . import fake_world
from .fake_world import Reply

NS = 1_000_000_000


class WithFakeWorld(unittest.TestCase):
    def setUp(self) -> None:
        self.host = fake_world.install()
        self.sdk = importlib.import_module("sluice_sdk")
        self.http = self.sdk.http
        self.types = importlib.import_module("wit_world.imports.types")

    def tearDown(self) -> None:
        problems = self.host.check_clean()
        fake_world.uninstall()
        self.assertEqual(problems, [], "resources the real host would trap on")

    def code(self, name: str, value: Any = None) -> Any:
        cls = getattr(self.types, f"ErrorCode_{name}")
        return cls(value) if value is not None else cls()


class Transport(WithFakeWorld):
    def test_a_get_goes_out_as_asked_and_its_answer_is_read_whole(self) -> None:
        self.host.server = lambda sent: Reply(
            200,
            headers=[("Content-Type", "application/json"), ("X-Many", "a"), ("x-many", "b")],
            chunks=[b'[{"id": ', b'"a1"}]'],
        )
        apps = self.http.get_json("https://apps.test:8443/apps?page=2", headers={"x-trace": "t"})
        self.assertEqual(apps, [{"id": "a1"}])
        (sent,) = self.host.sent
        self.assertEqual((sent.method, sent.scheme, sent.authority, sent.path), ("GET", "https", "apps.test:8443", "/apps?page=2"))
        self.assertEqual(sent.headers, [("x-trace", b"t"), ("accept", b"application/json")])
        self.assertEqual(sent.options, {"connect": 30 * NS, "first_byte": 30 * NS, "between_bytes": 30 * NS})
        response = self.http.get("http://apps.test/x", timeout=2.5)
        self.assertEqual(self.host.sent[-1].options["connect"], int(2.5 * NS))
        self.assertEqual(response.headers["x-many"], "a, b")
        self.assertEqual(response.header("CONTENT-TYPE"), "application/json")

    def test_a_body_is_written_after_handing_over_in_small_pieces_then_finished(self) -> None:
        self.host.server = lambda sent: Reply(201, chunks=[b"ok"])
        body = bytes(range(256)) * 40  # 10240 bytes: three pieces
        response = self.http.post("http://api.test/upload", body, headers={"content-type": "application/octet-stream"})
        self.assertEqual((response.status, response.body), (201, b"ok"))
        (sent,) = self.host.sent
        self.assertEqual(sent.body, body)
        self.assertIn(("content-length", b"10240"), sent.headers)
        self.http.post("http://api.test/empty")
        self.assertEqual((self.host.sent[-1].body, self.host.sent[-1].headers), (b"", [("content-length", b"0")]))
        self.http.request("PURGE", "http://api.test/cache")
        self.assertEqual(self.host.sent[-1].method, "PURGE")

    def test_a_refusal_by_the_gate_is_denied(self) -> None:
        self.host.refuse_on_handle = self.code("HttpRequestDenied")
        with self.assertRaises(self.http.Denied):
            self.http.post("http://elsewhere.test/", b"secret")
        self.host.refuse_on_handle = None
        self.host.server = lambda sent: Reply(error=self.code("DestinationIpProhibited"))
        with self.assertRaises(self.http.Denied):
            self.http.get("http://10.0.0.1/")

    def test_transport_failures_and_timeouts(self) -> None:
        self.host.server = lambda sent: Reply(error=self.code("ConnectionRefused"))
        with self.assertRaises(self.http.TransportError) as caught:
            self.http.get("http://down.test/")
        self.assertEqual(str(caught.exception), "request to http://down.test/ failed: connection refused")
        self.host.server = lambda sent: Reply(200, chunks=[b"par"], body_error=self.code("HttpResponseTimeout"))
        with self.assertRaises(self.http.Timeout):
            self.http.get("http://slow.test/")

    def test_bodies_past_the_limit_are_refused(self) -> None:
        self.host.server = lambda sent: Reply(200, headers=[("content-length", "100")], chunks=[b"x" * 100])
        with self.assertRaises(self.http.BodyTooLarge) as caught:
            self.http.get("http://big.test/", max_body_bytes=10)
        self.assertEqual(str(caught.exception), "answer from http://big.test/ is larger than 10 bytes")
        self.host.server = lambda sent: Reply(200, chunks=[b"x" * 6, b"x" * 6])
        with self.assertRaises(self.http.BodyTooLarge):
            self.http.get("http://big.test/", max_body_bytes=10)
        self.assertEqual(self.http.get("http://big.test/", max_body_bytes=12).body, b"x" * 12)

    def test_send_all_starts_every_request_before_waiting(self) -> None:
        self.host.server = lambda sent: Reply(200 if sent.path != "/3" else 503, chunks=[sent.path.encode()])
        requests = [self.http.Request("GET", f"http://burst.test/{n}") for n in range(5)]
        requests.insert(2, self.http.Request("GET", "ftp://bad/"))
        results = self.http.send_all(requests)
        self.assertEqual(min(self.host.waits_before_all_handled), 5, "all five were handed over before any wait")
        self.assertEqual(self.host.polls[0], 5)
        self.assertIsInstance(results[2], self.http.InvalidRequest)
        self.assertEqual([r.body for r in results if not isinstance(r, Exception)], [b"/0", b"/1", b"/2", b"/3", b"/4"])
        self.assertEqual(results[4].status, 503)


    def echo_in_pieces(self, sent: Any) -> Reply:
        """Answers with the body it got, in several chunks and pauses."""
        body = sent.path.encode() + b":" + sent.body
        third = len(body) // 3
        return Reply(200, chunks=[body[:third], None, body[third : 2 * third], None, body[2 * third :]])

    def test_send_all_writes_bodies_as_the_gate_permits_their_requests(self) -> None:
        # The host takes 4 KiB of a body before its request's permit, and an
        # earlier request keeps its permit until its response is read: bodies
        # written one after the other (blocking) would wait forever here.
        for concurrency, count in ((1, 3), (2, 6), (32, 40)):
            with self.subTest(concurrency=concurrency, count=count):
                self.host = fake_world.install()
                self.sdk = importlib.import_module("sluice_sdk")
                self.http = self.sdk.http
                self.host.concurrency = concurrency
                self.host.body_buffer = 4096
                self.host.server = self.echo_in_pieces
                bodies = [bytes([n]) * (20_000 + n) for n in range(count)]
                requests = [self.http.Request("POST" if n % 2 else "PUT", f"http://up.test/{n}", body=body) for n, body in enumerate(bodies)]
                results = self.http.send_all(requests)
                self.assertEqual([r.status for r in results], [200] * count)
                self.assertEqual([r.body for r in results], [f"/{n}:".encode() + body for n, body in enumerate(bodies)])
                self.assertEqual(sorted(len(sent.body) for sent in self.host.sent), sorted(map(len, bodies)))
                self.assertEqual(min(self.host.waits_before_all_handled), count, "all handed over before any wait")
                self.assertEqual(self.host.max_holding, concurrency)
                self.assertLessEqual(max(self.host.writes), self.host.write_budget)
                self.assertEqual(self.host.check_clean(), [])

    def test_a_request_refused_at_once_abandons_its_body_and_the_others_go_on(self) -> None:
        self.host.concurrency = 1
        self.host.body_buffer = 4096
        self.host.reject = lambda path: self.code("HttpRequestDenied") if path == "/1" else None
        self.host.server = self.echo_in_pieces
        requests = [self.http.Request("POST", f"http://up.test/{n}", body=b"b" * 30_000) for n in range(3)]
        results = self.http.send_all(requests)
        self.assertIsInstance(results[1], self.http.Denied)
        self.assertEqual([results[0].body, results[2].body], [b"/0:" + b"b" * 30_000, b"/2:" + b"b" * 30_000])
        self.assertEqual([sent.path for sent in self.host.sent], ["/0", "/2"])

    def test_send_of_one_large_body_behind_a_narrow_gate(self) -> None:
        self.host.concurrency = 1
        self.host.body_buffer = 1024
        self.host.write_budget = 1000
        self.host.server = lambda sent: Reply(201, headers=[("content-length", "2")], chunks=[None, b"o", None, b"k"])
        body = bytes(range(256)) * 300
        response = self.http.post("http://api.test/upload", body)
        self.assertEqual((response.status, response.body), (201, b"ok"))
        self.assertEqual(self.host.sent[0].body, body)
        self.assertEqual(max(self.host.writes), 1000)
        self.assertEqual(self.host.holding, 0, "the permit went back once the response was read")


class Export(WithFakeWorld):
    def context(self) -> Any:
        handler = importlib.import_module("wit_world.exports.handler")
        return handler.Context("t1", "apps", 1, 1_000, 4_102_444_800_000, "t1", None)

    def test_plugin_makes_the_export_and_logs_through_the_import(self) -> None:
        sdk = self.sdk
        exports = importlib.import_module("wit_world.exports")
        handler = importlib.import_module("wit_world.exports.handler")

        def run(ctx: Any, input: Any) -> Any:
            sdk.log.info("task %s attempt %d", ctx.task_id, ctx.attempt)
            sdk.log.warn("careful")
            if input == "retry":
                raise sdk.Retry("busy", after=1.5)
            ctx.next({"gate": "mail"})
            return {"seen": input}

        Handler = sdk.plugin(run)
        self.assertTrue(issubclass(Handler, exports.Handler))
        self.assertEqual(Handler.__name__, "Handler")
        outcome = Handler().run(self.context(), '{"a": 1}')
        self.assertEqual(outcome, handler.Outcome_Success(handler.Success('{"seen":{"a":1}}', ['{"gate":"mail"}'])))
        self.assertEqual(self.host.logs, [("info", "task t1 attempt 1"), ("warn", "careful")])
        self.assertEqual(Handler().run(self.context(), '"retry"'), handler.Outcome_Retry(handler.Retry(1500, "busy")))
        self.assertEqual(Handler().run(self.context(), "{"), handler.Outcome_Fail("invalid input: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"))

    def test_an_escaping_http_error_decides_the_outcome(self) -> None:
        handler = importlib.import_module("wit_world.exports.handler")
        self.host.server = lambda sent: Reply(503, headers=[("retry-after", "1")])
        Handler = self.sdk.plugin(lambda ctx, input: self.http.get_json("http://pay.test/v1/charges"))
        self.assertEqual(
            Handler().run(self.context(), "null"),
            handler.Outcome_Retry(handler.Retry(1000, "http://pay.test/v1/charges answered 503")),
        )


if __name__ == "__main__":
    unittest.main()
