"""Outgoing HTTP through the task's gate, over the standard ``wasi:http`` imports.

Every request waits for a token from the task's gate and may reach only the
gate's allowed hosts: the host enforces it, this module only speaks
``wasi:http/outgoing-handler``. It does not follow redirects, retry or cache:
a task that wants another try raises :class:`~sluice_sdk.Retry` (or lets an
:class:`HttpError` escape) and lets the gate pace it.

- :func:`request`, :func:`get`, :func:`post`, ... return the :class:`Response`
  whatever its status; only failing to get one raises an :class:`HttpError`.
- :func:`get_json`, :func:`post_json`, :func:`put_json` expect a 2xx answer and
  raise :class:`StatusError` otherwise.
- An :class:`HttpError` that escapes ``run`` decides the attempt as Sluice
  decides for a webhook's answer: timeouts, connection errors, 408, 429 and 5xx
  retry (after ``Retry-After`` when the answer has one); a denied host, other
  statuses, a body too large and JSON that does not parse fail.
- :func:`send_all` starts several requests at once and waits for them all.

The pure parts (URL splitting, header checks, ``Retry-After``, the error
classes and their outcome) need no bindings; the transport is
``sluice_sdk._wasi`` inside a component, or whatever :func:`set_transport`
installed (tests, or running a plugin's logic outside Sluice).
"""

from __future__ import annotations

import json as _json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, Sequence, Union

from .decode import DecodeError, decode
from .outcome import Fail, Retry
from .timeutil import parse_http_date

__all__ = [
    "Request",
    "Response",
    "HttpError",
    "Denied",
    "Timeout",
    "TransportError",
    "StatusError",
    "BodyTooLarge",
    "JsonError",
    "InvalidRequest",
    "request",
    "get",
    "head",
    "post",
    "put",
    "patch",
    "delete",
    "send",
    "send_all",
    "get_json",
    "post_json",
    "put_json",
    "set_transport",
    "split_url",
    "parse_retry_after",
    "error_from_code",
]

#: How long a request may take to connect, to start answering, and between two
#: pieces of the body, unless a call says otherwise (seconds). The attempt's
#: deadline applies regardless.
DEFAULT_TIMEOUT = 30.0
#: The largest response body read into memory, unless a call says otherwise.
DEFAULT_MAX_BODY_BYTES = 8 << 20
#: How much of an error response's body a :class:`StatusError` keeps.
ERROR_BODY_CHARS_MAX = 512

Headers = Union[Mapping[str, str], Iterable[tuple[str, str]], None]
Body = Union[bytes, bytearray, str, None]


# --- errors ---------------------------------------------------------------------


class HttpError(Exception):
    """Why a request did not give the answer that was asked for.

    ``retryable`` says what happens when it escapes ``run``: a retry (after
    ``retry_after`` seconds when the answer said) or a failure of the task.
    ``outcome()`` gives that decision as a :class:`~sluice_sdk.Retry` or
    :class:`~sluice_sdk.Fail` to adjust and raise.
    """

    retryable = False

    def __init__(self, url: str, message: str) -> None:
        super().__init__(message)
        self.url = url
        self.status: int | None = None
        self.retry_after: float | None = None

    def outcome(self) -> Retry | Fail:
        """The decision Sluice makes for a webhook in the same situation."""
        if self.retryable:
            return Retry(str(self), after=self.retry_after)
        return Fail(str(self))


class Denied(HttpError):
    """The host refused to send it: the URL's host is not in the gate's allowed
    hosts, or resolves to a private address the gate does not name. Fails:
    retrying will not change the gate."""

    def __init__(self, url: str) -> None:
        super().__init__(url, f"request to {url} denied: its host is not in the gate's allowed hosts")


class Timeout(HttpError):
    """Connecting, or waiting for the answer, took too long. Retries."""

    retryable = True

    def __init__(self, url: str) -> None:
        super().__init__(url, f"request to {url} timed out")


class TransportError(HttpError):
    """The connection failed: DNS, refused, reset, TLS, a broken answer. Retries."""

    retryable = True

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(url, f"request to {url} failed: {detail}")
        self.detail = detail


class StatusError(HttpError):
    """The server answered with a status the caller did not accept. Retries
    for 408, 429 and 5xx (after ``Retry-After`` if given); fails otherwise."""

    def __init__(self, url: str, status: int, retry_after: float | None = None, body: str = "") -> None:
        stripped = body.strip()
        super().__init__(url, f"{url} answered {status}" + (f": {stripped}" if stripped else ""))
        self.status = status
        self.retry_after = retry_after
        self.body = body

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return self.status == 408 or self.status == 429 or (self.status is not None and 500 <= self.status <= 599)


class BodyTooLarge(HttpError):
    """The answer's body was larger than the limit. Fails."""

    def __init__(self, url: str, limit: int) -> None:
        super().__init__(url, f"answer from {url} is larger than {limit} bytes")
        self.limit = limit


class JsonError(HttpError):
    """The answer's body was not the JSON expected. Fails."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(url, f"answer from {url} is not the JSON expected: {detail}")
        self.detail = detail


class InvalidRequest(HttpError):
    """The request could not be made: a malformed URL, header or method. Fails."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(url, f"invalid request to {url}: {detail}")
        self.detail = detail


# --- requests and responses -------------------------------------------------------

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(r"[\r\n\x00]")


@dataclass
class Request:
    """An HTTP request for :func:`send` or :func:`send_all`.

    ``method`` is upper-cased; ``headers`` is a list of ``(name, value)`` pairs
    (a mapping is accepted);
    ``body`` is bytes (a ``str`` is sent as UTF-8) or ``None`` for none.
    """

    method: str
    url: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | None = None

    def __post_init__(self) -> None:
        self.method = self.method.upper()
        self.headers = header_list(self.headers)
        if isinstance(self.body, str):
            self.body = self.body.encode("utf-8")
        elif isinstance(self.body, bytearray):
            self.body = bytes(self.body)

    def header(self, name: str) -> str | None:
        """The first value of a header, by case-insensitive name."""
        wanted = name.lower()
        return next((v for n, v in self.headers if n.lower() == wanted), None)

    def check(self) -> tuple[str, str, str]:
        """Raises :class:`InvalidRequest` for a method, URL or header the host
        would refuse; returns the URL's ``(scheme, authority, path_with_query)``."""
        if not _TOKEN.fullmatch(self.method):
            raise InvalidRequest(self.url, f"invalid method {self.method!r}")
        parts = split_url(self.url)
        for name, value in self.headers:
            if not _TOKEN.fullmatch(name):
                raise InvalidRequest(self.url, f"invalid header name {name!r}")
            if _BAD_VALUE.search(value):
                raise InvalidRequest(self.url, f"invalid value for header {name!r}")
        return parts


class Response:
    """An HTTP answer: ``status``, ``headers`` (a dict with lowercase names;
    repeated headers joined with ``", "``) and ``body`` (bytes)."""

    def __init__(self, url: str, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.url = url
        self.status = status
        self.headers: dict[str, str] = {k.lower(): v for k, v in headers.items()}
        self.body = body

    def __repr__(self) -> str:
        return f"<Response {self.status} from {self.url}, {len(self.body)} bytes>"

    @property
    def ok(self) -> bool:
        """Whether the status is 2xx."""
        return 200 <= self.status <= 299

    def header(self, name: str) -> str | None:
        """A header's value by case-insensitive name, or ``None``."""
        return self.headers.get(name.lower())

    def text(self) -> str:
        """The body as text (UTF-8, invalid bytes replaced)."""
        return self.body.decode("utf-8", errors="replace")

    def json(self, into: Any = None) -> Any:
        """The body parsed as JSON; with ``into`` (a dataclass, ``list[App]``, ...)
        checked and built into that type. Raises :class:`JsonError`."""
        try:
            value = _json.loads(self.body)
        except ValueError as err:
            raise JsonError(self.url, str(err)) from None
        if into is None:
            return value
        try:
            return decode(into, value)
        except DecodeError as err:
            raise JsonError(self.url, str(err)) from None

    def retry_after(self, now: datetime | None = None) -> float | None:
        """How long the server asked to wait, in seconds (``Retry-After`` in
        seconds or as an HTTP date), or ``None``."""
        value = self.header("retry-after")
        if value is None:
            return None
        return parse_retry_after(value, now or datetime.now(timezone.utc))

    def raise_for_status(self) -> "Response":
        """The response itself if its status is 2xx, else raises
        :class:`StatusError` (with ``Retry-After`` and the start of the body)."""
        if self.ok:
            return self
        raise StatusError(self.url, self.status, self.retry_after(), self.text()[:ERROR_BODY_CHARS_MAX])


# --- pure helpers -----------------------------------------------------------------


def header_list(headers: Headers) -> list[tuple[str, str]]:
    """Headers given as a mapping or as pairs, as a list of ``(name, value)``."""
    if headers is None:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    return [(str(name), str(value)) for name, value in items]


def _quote_unsafe(text: str) -> str:
    """Percent-encodes what may not appear in a path or query as is: spaces,
    controls and non-ASCII (as UTF-8)."""
    out = []
    for char in text:
        if " " < char < "\x7f":
            out.append(char)
        else:
            out.extend(f"%{byte:02X}" for byte in char.encode("utf-8"))
    return "".join(out)


def split_url(url: str) -> tuple[str, str, str]:
    """An absolute ``http`` or ``https`` URL as ``(scheme, authority,
    path_with_query)``; the fragment is dropped and an empty path is ``/``.
    Raises :class:`InvalidRequest`."""
    if not isinstance(url, str):
        raise InvalidRequest(repr(url), "the URL must be a string")
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https"):
        raise InvalidRequest(url, "expected an absolute http:// or https:// URL")
    end = len(rest)
    for delimiter in "/?#":
        found = rest.find(delimiter)
        if found != -1:
            end = min(end, found)
    authority, path = rest[:end], rest[end:]
    host = authority.rpartition("@")[2]
    if not host or host.startswith(":"):
        raise InvalidRequest(url, "the URL has no host")
    if any(c <= " " or c >= "\x7f" for c in authority):
        raise InvalidRequest(url, "the host must be ASCII without spaces (use the xn-- form of a name)")
    path = path.partition("#")[0]
    if not path or path.startswith("?"):
        path = "/" + path
    return scheme, authority, _quote_unsafe(path)


def parse_retry_after(value: str, now: datetime) -> float | None:
    """``Retry-After`` is whole seconds or an HTTP date; a date in the past means
    0, and anything else is ignored (``None``)."""
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(int(value))
    at = parse_http_date(value)
    if at is None:
        return None
    return max(0.0, (at - now).total_seconds())


_DENIED = ("HttpRequestDenied", "DestinationIpProhibited")
_TIMEOUTS = ("DnsTimeout", "ConnectionTimeout", "ConnectionReadTimeout", "ConnectionWriteTimeout", "HttpResponseTimeout")
_INVALID = (
    "HttpRequestMethodInvalid",
    "HttpRequestUriInvalid",
    "HttpRequestUriTooLong",
    "HttpRequestHeaderSectionSize",
    "HttpRequestHeaderSize",
    "HttpRequestBodySize",
)
_ACRONYMS = {"dns": "DNS", "tls": "TLS", "http": "HTTP", "ip": "IP", "uri": "URI"}
_WORDS = re.compile(r"[A-Z]+(?![a-z])|[A-Z][a-z]*|\d+")


def _payload(value: Any) -> str:
    if hasattr(value, "__dataclass_fields__"):
        shown = [f"{k}={getattr(value, k)}" for k in value.__dataclass_fields__ if getattr(value, k) is not None]
        return ", ".join(shown)
    return str(value)


def describe_code(code: Any) -> str:
    """A ``wasi:http`` error code in words: ``ErrorCode_ConnectionRefused`` is
    ``connection refused``; a payload follows in parentheses."""
    name = type(code).__name__.removeprefix("ErrorCode_")
    words = " ".join(_ACRONYMS.get(w.lower(), w.lower()) for w in _WORDS.findall(name))
    value = getattr(code, "value", None)
    detail = _payload(value) if value is not None else ""
    return f"{words} ({detail})" if detail else words


def error_from_code(url: str, code: Any) -> HttpError:
    """The :class:`HttpError` for a ``wasi:http`` ``error-code`` (a generated
    ``ErrorCode_*`` instance): a refusal by the gate is :class:`Denied`
    whichever code the host picks, and timeouts are told apart from other
    transport failures."""
    name = type(code).__name__.removeprefix("ErrorCode_")
    if name in _DENIED:
        return Denied(url)
    if name in _TIMEOUTS:
        return Timeout(url)
    if name in _INVALID:
        return InvalidRequest(url, describe_code(code))
    if name == "HttpResponseBodySize":
        limit = getattr(code, "value", None)
        return BodyTooLarge(url, limit if isinstance(limit, int) else 0)
    return TransportError(url, describe_code(code))


# --- sending ----------------------------------------------------------------------

#: ``transport(requests, timeout, max_body_bytes)`` sends the requests at once
#: and returns, in order, a :class:`Response` or an :class:`HttpError` for each.
Transport = Callable[[Sequence[Request], float, int], list[Union[Response, HttpError]]]

_transport: Transport | None = None


def set_transport(transport: Transport | None) -> Transport | None:
    """Replaces how requests are sent (tests; running a plugin's logic outside
    Sluice); returns the previous transport. Inside a component the SDK uses
    ``wasi:http`` without this."""
    global _transport
    previous, _transport = _transport, transport
    return previous


def _send(requests: Sequence[Request], timeout: float, max_body_bytes: int) -> list[Response | HttpError]:
    if _transport is None:
        raise RuntimeError(
            "no wasi:http here: sluice_sdk sends HTTP inside a Sluice plugin component; "
            "elsewhere install a transport with sluice_sdk.http.set_transport"
        )
    checked: list[Request] = []
    results: list[Response | HttpError | None] = []
    for req in requests:
        try:
            req.check()
        except HttpError as err:
            results.append(err)
        else:
            checked.append(req)
            results.append(None)
    sent = iter(_transport(checked, timeout, max_body_bytes) if checked else [])
    return [result if result is not None else next(sent) for result in results]


def send(request: Request, *, timeout: float = DEFAULT_TIMEOUT, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> Response:
    """Sends one request and returns the response whatever its status; raises
    :class:`HttpError` only when there is no response."""
    (result,) = _send([request], timeout, max_body_bytes)
    if isinstance(result, HttpError):
        raise result
    return result


def send_all(
    requests: Iterable[Request], *, timeout: float = DEFAULT_TIMEOUT, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> list[Response | HttpError]:
    """Starts every request, then waits for them all: the answers (or the
    :class:`HttpError` of each that got none), in order. Each request still
    takes a token from the gate, so they go out at the gate's pace and at most
    its concurrency at a time; the host also caps the requests one attempt has
    open (others wait their turn)."""
    return _send(list(requests), timeout, max_body_bytes)


_UNSET: Any = object()


def _build(method: str, url: str, headers: Headers, body: Body, json: Any) -> Request:
    pairs = header_list(headers)
    if json is not _UNSET:
        body = _json.dumps(json, separators=(",", ":"), ensure_ascii=False)
        if not any(name.lower() == "content-type" for name, _ in pairs):
            pairs.append(("content-type", "application/json"))
    if body is None and method.upper() in ("POST", "PUT", "PATCH"):
        body = b""  # sent with content-length: 0, which every server takes
    return Request(method, url, pairs, body)  # type: ignore[arg-type]


def request(
    method: str,
    url: str,
    headers: Headers = None,
    body: Body = None,
    *,
    json: Any = _UNSET,
    timeout: float = DEFAULT_TIMEOUT,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
) -> Response:
    """Sends ``method url`` with ``headers`` and ``body`` (or ``json=``, sent as
    ``application/json``) and returns the response whatever its status."""
    return send(_build(method, url, headers, body, json), timeout=timeout, max_body_bytes=max_body_bytes)


def get(url: str, headers: Headers = None, **options: Any) -> Response:
    """``GET url``; the response whatever its status."""
    return request("GET", url, headers, **options)


def head(url: str, headers: Headers = None, **options: Any) -> Response:
    """``HEAD url``; the response whatever its status."""
    return request("HEAD", url, headers, **options)


def post(url: str, body: Body = None, headers: Headers = None, **options: Any) -> Response:
    """``POST url`` with ``body`` or ``json=``; the response whatever its status."""
    return request("POST", url, headers, body, **options)


def put(url: str, body: Body = None, headers: Headers = None, **options: Any) -> Response:
    """``PUT url`` with ``body`` or ``json=``; the response whatever its status."""
    return request("PUT", url, headers, body, **options)


def patch(url: str, body: Body = None, headers: Headers = None, **options: Any) -> Response:
    """``PATCH url`` with ``body`` or ``json=``; the response whatever its status."""
    return request("PATCH", url, headers, body, **options)


def delete(url: str, headers: Headers = None, **options: Any) -> Response:
    """``DELETE url``; the response whatever its status (``.raise_for_status()``
    to expect 2xx, or check ``status == 404`` for "already gone")."""
    return request("DELETE", url, headers, **options)


def get_json(url: str, headers: Headers = None, *, into: Any = None, **options: Any) -> Any:
    """``GET url`` expecting a 2xx answer with a JSON body, parsed (and built
    into ``into``, such as ``list[App]``, when given). Raises
    :class:`StatusError` or :class:`JsonError` (and any :class:`HttpError`)."""
    pairs = header_list(headers)
    if not any(name.lower() == "accept" for name, _ in pairs):
        pairs.append(("accept", "application/json"))
    return request("GET", url, pairs, **options).raise_for_status().json(into)


def post_json(url: str, body: Any, headers: Headers = None, **options: Any) -> Response:
    """``POST url`` with ``body`` as JSON, expecting a 2xx answer (read it with
    ``.json()``). Raises :class:`StatusError` otherwise."""
    return request("POST", url, headers, json=body, **options).raise_for_status()


def put_json(url: str, body: Any, headers: Headers = None, **options: Any) -> Response:
    """``PUT url`` with ``body`` as JSON, expecting a 2xx answer."""
    return request("PUT", url, headers, json=body, **options).raise_for_status()

