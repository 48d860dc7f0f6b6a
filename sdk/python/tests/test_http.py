"""The pure parts of sluice_sdk.http, and its calls over a fake transport."""

from __future__ import annotations

import types
import unittest
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Sequence

from sluice_sdk import Fail, Retry, http
from sluice_sdk.http import (
    BodyTooLarge,
    Denied,
    HttpError,
    InvalidRequest,
    JsonError,
    Request,
    Response,
    StatusError,
    Timeout,
    TransportError,
    error_from_code,
    parse_retry_after,
    split_url,
)


class FakeTransport:
    """Answers each request with ``answer(request)``; records what was sent."""

    def __init__(self, answer: Callable[[Request], Response | HttpError]) -> None:
        self.answer = answer
        self.sent: list[Request] = []
        self.calls: list[int] = []

    def __call__(self, requests: Sequence[Request], timeout: float, max_body: int) -> list[Response | HttpError]:
        self.calls.append(len(requests))
        self.sent.extend(requests)
        return [self.answer(r) for r in requests]

    def __enter__(self) -> "FakeTransport":
        self.previous = http.set_transport(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        http.set_transport(self.previous)


def code(name: str, value: Any = None) -> Any:
    cls = type(f"ErrorCode_{name}", (), {})
    obj = cls()
    if value is not None:
        obj.value = value
    return obj


@dataclass
class App:
    id: str


class Urls(unittest.TestCase):
    def test_absolute_http_urls_split(self) -> None:
        self.assertEqual(split_url("http://a.test:8080/x/y?z=1#frag"), ("http", "a.test:8080", "/x/y?z=1"))
        self.assertEqual(split_url("HTTPS://a.test"), ("https", "a.test", "/"))
        self.assertEqual(split_url("http://a.test?q=1"), ("http", "a.test", "/?q=1"))
        self.assertEqual(split_url("http://[::1]:9000/p"), ("http", "[::1]:9000", "/p"))
        self.assertEqual(split_url("http://u:p@a.test/"), ("http", "u:p@a.test", "/"))
        self.assertEqual(split_url("http://a.test/a b/é"), ("http", "a.test", "/a%20b/%C3%A9"))

    def test_anything_else_is_an_invalid_request(self) -> None:
        for url in ["/apps", "ftp://a.test/x", "http//a.test", "", "http://", "http://:80/", "http://ä.test/", "http://a b/"]:
            with self.assertRaises(InvalidRequest, msg=url):
                split_url(url)


class RetryAfter(unittest.TestCase):
    def test_seconds_or_a_date(self) -> None:
        now = datetime(2023, 11, 14, 22, 13, 20, tzinfo=timezone.utc)
        self.assertEqual(parse_retry_after("120", now), 120.0)
        self.assertEqual(parse_retry_after(" 1 ", now), 1.0)
        later = (now + timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
        self.assertEqual(parse_retry_after(later, now), 90.0)
        earlier = (now - timedelta(seconds=90)).strftime("%a, %d %b %Y %H:%M:%S GMT")
        self.assertEqual(parse_retry_after(earlier, now), 0.0)
        for bad in ("soon", "-5", "1.5", "", "１"):
            self.assertIsNone(parse_retry_after(bad, now), bad)


class Errors(unittest.TestCase):
    def test_host_error_codes_become_typed_errors(self) -> None:
        url = "http://10.0.0.1/"
        self.assertIsInstance(error_from_code(url, code("HttpRequestDenied")), Denied)
        self.assertIsInstance(error_from_code(url, code("DestinationIpProhibited")), Denied)
        self.assertIsInstance(error_from_code(url, code("ConnectionTimeout")), Timeout)
        self.assertIsInstance(error_from_code(url, code("HttpResponseTimeout")), Timeout)
        self.assertIsInstance(error_from_code(url, code("HttpRequestUriInvalid")), InvalidRequest)
        too_large = error_from_code(url, code("HttpResponseBodySize", 10))
        self.assertIsInstance(too_large, BodyTooLarge)
        self.assertEqual(str(too_large), f"answer from {url} is larger than 10 bytes")
        refused = error_from_code(url, code("ConnectionRefused"))
        self.assertIsInstance(refused, TransportError)
        self.assertEqual(str(refused), f"request to {url} failed: connection refused")
        dns = error_from_code(url, code("DnsError", types.SimpleNamespace(__dataclass_fields__={"rcode": 0, "info_code": 0}, rcode="NXDOMAIN", info_code=None)))
        self.assertEqual(str(dns), f"request to {url} failed: DNS error (rcode=NXDOMAIN)")
        self.assertEqual(str(error_from_code(url, code("TlsProtocolError"))), f"request to {url} failed: TLS protocol error")
        denied = error_from_code(url, code("HttpRequestDenied"))
        self.assertEqual(str(denied), f"request to {url} denied: its host is not in the gate's allowed hosts")
        self.assertEqual((denied.url, denied.status), (url, None))

    def test_errors_retry_or_fail_like_webhooks(self) -> None:
        url = "http://api.test/x"
        for status in (408, 429, 500, 502, 503, 599):
            decided = StatusError(url, status).outcome()
            self.assertIsInstance(decided, Retry, status)
            self.assertIsNone(decided.after)
        self.assertEqual(StatusError(url, 503, 60.0).outcome().after, 60.0)
        for status in (301, 400, 401, 402, 403, 404, 409, 422):
            self.assertIsInstance(StatusError(url, status, 60.0).outcome(), Fail, status)
        self.assertIsInstance(Timeout(url).outcome(), Retry)
        self.assertIsInstance(TransportError(url, "reset").outcome(), Retry)
        self.assertIn("allowed hosts", Denied(url).outcome().reason)
        for err in (Denied(url), BodyTooLarge(url, 10), JsonError(url, "x"), InvalidRequest(url, "x")):
            self.assertIsInstance(err.outcome(), Fail, err)


class Responses(unittest.TestCase):
    def test_status_errors_keep_the_start_of_the_body(self) -> None:
        response = Response("http://a.test/x", 503, {"Retry-After": "7"}, b"x" * 2000)
        with self.assertRaises(StatusError) as caught:
            response.raise_for_status()
        err = caught.exception
        self.assertEqual((err.status, err.retry_after, len(err.body)), (503, 7.0, 512))
        self.assertTrue(str(err).startswith("http://a.test/x answered 503: xxx"))
        self.assertIs(Response("u", 204, {}, b"").raise_for_status().status, 204)

    def test_bodies_read_as_text_and_json(self) -> None:
        response = Response("http://a.test/apps", 200, {"Content-Type": "application/json"}, b'[{"id": "a", "x": 1}]')
        self.assertEqual(response.header("content-type"), "application/json")
        self.assertEqual(response.json(), [{"id": "a", "x": 1}])
        self.assertEqual(response.json(into=list[App]), [App("a")])
        with self.assertRaises(JsonError) as caught:
            response.json(into=list[int])
        self.assertEqual(str(caught.exception), "answer from http://a.test/apps is not the JSON expected: [0]: invalid type: map, expected an integer")
        with self.assertRaises(JsonError):
            Response("u", 200, {}, b"<html>").json()
        self.assertEqual(Response("u", 200, {}, b"caf\xc3\xa9 \xff").text(), "café \ufffd")


class Calls(unittest.TestCase):
    def test_json_helpers_expect_2xx(self) -> None:
        answers = {
            "/apps": Response("http://api/apps", 200, {}, b'[{"id": "a"}]'),
            "/down": Response("http://api/down", 503, {"retry-after": "2"}, b""),
        }
        with FakeTransport(lambda r: answers.get(split_url(r.url)[2], Response(r.url, 404, {}, b"no"))) as fake:
            self.assertEqual(http.get_json("http://api/apps", into=list[App]), [App("a")])
            self.assertEqual(fake.sent[-1].header("accept"), "application/json")
            with self.assertRaises(StatusError) as caught:
                http.get_json("http://api/down")
            self.assertEqual(caught.exception.retry_after, 2.0)
            with self.assertRaises(StatusError):
                http.post_json("http://api/nope", {"a": 1})
            self.assertEqual(fake.sent[-1].body, b'{"a":1}')
            self.assertEqual(fake.sent[-1].header("content-type"), "application/json")
            self.assertEqual(http.delete("http://api/nope").status, 404)

    def test_requests_are_built_as_asked(self) -> None:
        with FakeTransport(lambda r: Response(r.url, 200, {}, b"")) as fake:
            http.post("http://api/x", "ü", headers={"Content-Type": "text/plain"})
            http.post("http://api/empty")
            http.get("http://api/get", [("x-a", "1"), ("x-a", "2")])
            http.request("purge", "http://api/cache")
            http.put("http://api/put", json=[1], headers={"content-type": "application/merge-patch+json"})
        post, empty, get, purge, put = fake.sent
        self.assertEqual((post.method, post.body, post.header("content-type")), ("POST", "ü".encode(), "text/plain"))
        self.assertEqual(empty.body, b"")
        self.assertEqual((get.body, get.headers), (None, [("x-a", "1"), ("x-a", "2")]))
        self.assertEqual(purge.method, "PURGE")
        self.assertEqual((put.body, put.headers), (b"[1]", [("content-type", "application/merge-patch+json")]))

    def test_invalid_requests_never_reach_the_transport(self) -> None:
        with FakeTransport(lambda r: Response(r.url, 200, {}, b"")) as fake:
            for bad in (
                lambda: http.get("ftp://x"),
                lambda: http.get("http://a.test/", {"bad header": "x"}),
                lambda: http.get("http://a.test/", {"x-a": "1\r\nx-b: 2"}),
                lambda: http.request("GE T", "http://a.test/"),
            ):
                with self.assertRaises(InvalidRequest):
                    bad()
        self.assertEqual(fake.sent, [])

    def test_send_all_keeps_the_order_and_the_errors(self) -> None:
        def answer(r: Request) -> Response | HttpError:
            return Timeout(r.url) if r.url.endswith("/slow") else Response(r.url, 200, {}, r.url.encode())

        with FakeTransport(answer) as fake:
            results = http.send_all(
                [Request("GET", "http://a/1"), Request("GET", "ftp://bad"), Request("GET", "http://a/slow"), Request("GET", "http://a/2")]
            )
        self.assertEqual(fake.calls, [3], "the valid ones go out together")
        self.assertEqual([type(r).__name__ for r in results], ["Response", "InvalidRequest", "Timeout", "Response"])
        self.assertEqual(results[3].body, b"http://a/2")

    def test_without_a_transport_it_says_why(self) -> None:
        previous = http.set_transport(None)
        try:
            with self.assertRaises(RuntimeError) as caught:
                http.get("http://a/")
            self.assertIn("set_transport", str(caught.exception))
        finally:
            http.set_transport(previous)


if __name__ == "__main__":
    unittest.main()
