"""Stand-ins for the bindings componentize-py generates (``wit_world`` and
``componentize_py_types``), enough to run ``sluice_sdk._wasi`` and the export
under plain CPython.

The fake host checks what the real one would trap on or hang at: a resource
used after it was dropped, a parent dropped before its children (pollables,
body streams, headers), waiting on a response whose body was never finished, a
``write`` of more than ``check_write`` allowed, a body finished with writes
never flushed.

Like the real host it paces requests through a gate: a request gets a permit
(``FakeHost.concurrency`` at a time, in the order they were handed over) and
keeps it until its response was read to its end; until its permit the host
takes no more of its body than ``FakeHost.body_buffer`` bytes. A blocking write
that would have to wait for a permit fails the test, as a single-threaded
guest blocked there would wait until the attempt's deadline.
``install()`` puts the modules into ``sys.modules`` and returns the
:class:`FakeHost`; ``uninstall()`` takes them out again.
"""

from __future__ import annotations

import enum
import sys
import types as pytypes
from dataclasses import dataclass
from typing import Any, Callable, Generic, Optional, TypeVar

T = TypeVar("T")

MODULE_NAMES = (
    "componentize_py_types",
    "wit_world",
    "wit_world.exports",
    "wit_world.exports.handler",
    "wit_world.imports",
    "wit_world.imports.log",
    "wit_world.imports.types",
    "wit_world.imports.streams",
    "wit_world.imports.poll",
    "wit_world.imports.outgoing_handler",
)


# --- componentize_py_types -----------------------------------------------------


@dataclass
class Ok(Generic[T]):
    value: Any


@dataclass(frozen=True)
class Err(Exception):
    value: Any


@dataclass
class Some(Generic[T]):
    value: Any


# --- the export's types ----------------------------------------------------------


@dataclass
class Context:
    task_id: str
    gate: str
    attempt: int
    scheduled_at_ms: int
    deadline_ms: int
    idempotency_key: str
    schedule: Optional[str]


@dataclass
class Success:
    output: str
    next: list


@dataclass
class RetryRecord:
    after_ms: Optional[int]
    reason: str


@dataclass
class Outcome_Success:
    value: Success


@dataclass
class Outcome_Retry:
    value: RetryRecord


@dataclass
class Outcome_Fail:
    value: str


class HandlerProtocol:
    def run(self, ctx: Context, input: str) -> Any:
        raise NotImplementedError


class Level(enum.Enum):
    TRACE = 0
    DEBUG = 1
    INFO = 2
    WARN = 3
    ERROR = 4


# --- wasi:http types -------------------------------------------------------------


def _variant(name: str, payload: bool = False) -> type:
    if payload:
        cls = dataclass(type(name, (), {"__annotations__": {"value": Any}}))
    else:
        cls = dataclass(type(name, (), {}))
    return cls


METHODS = ["Get", "Head", "Post", "Put", "Delete", "Connect", "Options", "Trace", "Patch"]
ERROR_CODES = [
    ("DnsTimeout", False),
    ("DnsError", True),
    ("DestinationIpProhibited", False),
    ("ConnectionRefused", False),
    ("ConnectionTimeout", False),
    ("ConnectionReadTimeout", False),
    ("HttpRequestDenied", False),
    ("HttpRequestUriInvalid", False),
    ("HttpRequestBodySize", True),
    ("HttpResponseBodySize", True),
    ("HttpResponseTimeout", False),
    ("HttpProtocolError", False),
    ("InternalError", True),
]


@dataclass
class Reply:
    """What the fake server answers: a status, headers and body chunks, or an
    ``error`` (an ``ErrorCode_*`` instance) instead of any answer, or
    ``body_error`` after the chunks. A ``None`` among the chunks is a pause: a
    non-blocking ``read`` there gets nothing until the guest polls."""

    status: int = 200
    headers: list = None  # type: ignore[assignment]
    chunks: list = None  # type: ignore[assignment]
    error: Any = None
    body_error: Any = None

    def __post_init__(self) -> None:
        self.headers = self.headers or []
        self.chunks = self.chunks or []


@dataclass
class Sent:
    """A request as the fake server received it."""

    method: str
    scheme: str
    authority: str
    path: str
    headers: list
    body: bytes
    options: dict


class FakeHost:
    """The fake host's state: resources alive, requests sent, log lines."""

    def __init__(self) -> None:
        self.live: dict[int, Any] = {}
        self.violations: list[str] = []
        self.sent: list[Sent] = []
        self.logs: list[tuple[str, str]] = []
        self.handled = 0
        self.waits_before_all_handled: list[int] = []
        self.server: Callable[[Sent], Reply] = lambda sent: Reply(200)
        self.refuse_on_handle: Any = None
        self.next_id = 1
        self.polls: list[int] = []
        #: The gate: permits at once (None: as many as asked), held until the
        #: response was read to its end.
        self.concurrency: int | None = None
        #: Body bytes the host takes of a request before its permit.
        self.body_buffer = 8192
        #: What ``check_write`` allows at once once the request is permitted.
        self.write_budget = 4096
        #: Refuses a request at once (by path), as the gate does a host it does
        #: not allow: its future fails, its body stream is closed.
        self.reject: Callable[[str], Any] = lambda path: None
        self.waiting_permit: list[Any] = []
        self.holding = 0
        self.max_holding = 0
        self.writes: list[int] = []

    def check_clean(self) -> list[str]:
        problems = list(self.violations)
        problems += [f"{type(r).__name__} #{i} never dropped" for i, r in self.live.items()]
        return problems


HOST = FakeHost()


class Resource:
    """Tracks liveness and the parent that must outlive it."""

    def __init__(self, parent: "Resource | None" = None) -> None:
        self._id = HOST.next_id
        HOST.next_id += 1
        self._parent = parent
        self._children: list[Resource] = []
        self._dropped = False
        if parent is not None:
            parent._children.append(self)
        HOST.live[self._id] = self

    def _use(self) -> None:
        if self._dropped:
            HOST.violations.append(f"{type(self).__name__} used after drop")

    def _release(self) -> None:
        if self._dropped:
            HOST.violations.append(f"{type(self).__name__} dropped twice")
            return
        alive = [c for c in self._children if not c._dropped]
        if alive:
            HOST.violations.append(
                f"{type(self).__name__} dropped before its children {[type(c).__name__ for c in alive]}"
            )
        self._dropped = True
        HOST.live.pop(self._id, None)

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: Any) -> None:
        self._release()


class Pollable(Resource):
    def __init__(self, parent: Resource, ready: Callable[[], bool]) -> None:
        super().__init__(parent)
        self._ready = ready

    def ready(self) -> bool:
        self._use()
        return self._ready()

    def block(self) -> None:
        self._use()
        if not self._ready():
            raise AssertionError(f"blocked forever on a pollable of {type(self._parent).__name__}")


def poll(pollables: list) -> list:
    if not pollables:
        raise AssertionError("poll of an empty list traps")
    HOST.polls.append(len(pollables))
    ready = [i for i, p in enumerate(pollables) if p.ready()]
    if not ready:
        raise AssertionError("poll would block forever")
    return ready


class Fields(Resource):
    def __init__(self, entries: list | None = None, parent: Resource | None = None, mutable: bool = True) -> None:
        super().__init__(parent)
        self._entries = list(entries or [])
        self._mutable = mutable

    @classmethod
    def from_list(cls, entries: list) -> "Fields":
        for name, value in entries:
            if not name or " " in name or not isinstance(value, bytes) or b"\n" in value:
                raise Err(HeaderError_InvalidSyntax())
        return cls(entries)

    def entries(self) -> list:
        self._use()
        return list(self._entries)

    def get(self, name: str) -> list:
        self._use()
        return [v for n, v in self._entries if n.lower() == name.lower()]


def _grant() -> None:
    """Gives permits to waiting requests, in order, while the gate has room."""
    while HOST.waiting_permit and (HOST.concurrency is None or HOST.holding < HOST.concurrency):
        request = HOST.waiting_permit.pop(0)
        request._permitted = True
        HOST.holding += 1
        HOST.max_holding = max(HOST.max_holding, HOST.holding)


def _end_exchange(request: "OutgoingRequest | None") -> None:
    """The request's exchange is over: its permit (if any) goes back."""
    if request is None or request._over:
        return
    request._over = True
    if request in HOST.waiting_permit:
        HOST.waiting_permit.remove(request)
    if request._permitted:
        HOST.holding -= 1
        _grant()


class OutputStream(Resource):
    def __init__(self, body: "OutgoingBody") -> None:
        super().__init__(body)
        self._body = body
        self._allowed = 0
        self._flushing = False
        self._unflushed = False

    def _room(self) -> int:
        body = self._body
        if body._permitted():
            return HOST.write_budget
        return max(0, min(HOST.write_budget, HOST.body_buffer - len(body._data)))

    def _writable(self) -> bool:
        if self._body._closed():
            return True
        if self._flushing and not self._body._permitted():
            return False
        return self._room() > 0

    def check_write(self) -> int:
        self._use()
        if self._body._closed():
            raise Err(StreamError_Closed())
        if self._flushing:
            if not self._body._permitted():
                self._allowed = 0
                return 0
            self._flushing = False
            self._unflushed = False
        self._allowed = self._room()
        return self._allowed

    def write(self, contents: bytes) -> None:
        self._use()
        if len(contents) > self._allowed:
            HOST.violations.append(f"write of {len(contents)} bytes where check_write allowed {self._allowed} (traps)")
        self._allowed = max(0, self._allowed - len(contents))
        if self._body._closed():
            raise Err(StreamError_Closed())
        self._body._data += contents
        self._unflushed = True
        HOST.writes.append(len(contents))

    def flush(self) -> None:
        self._use()
        if self._body._closed():
            raise Err(StreamError_Closed())
        self._allowed = 0
        if self._unflushed:
            self._flushing = True  # done once the host took the bytes (the permit)

    def subscribe(self) -> Pollable:
        self._use()
        return Pollable(self, self._writable)

    def blocking_write_and_flush(self, contents: bytes) -> None:
        self._use()
        if len(contents) > 4096:
            HOST.violations.append(f"blocking_write_and_flush of {len(contents)} bytes (at most 4096)")
        if not self._body._handled:
            HOST.violations.append("body written before the request was handed to the host (it would block)")
        if self._body._closed():
            raise Err(StreamError_Closed())
        if not self._body._permitted() and len(self._body._data) + len(contents) > HOST.body_buffer:
            raise AssertionError(
                "blocking_write_and_flush waits forever: the host takes no more of this body before "
                "its request's permit, and the permits are held by responses not read yet"
            )
        self._body._data += contents

    def _release(self) -> None:
        if not self._dropped and self._unflushed:
            self._body._unflushed_drop = True
        super()._release()


class OutgoingBody(Resource):
    def __init__(self, request: "OutgoingRequest | None" = None) -> None:
        super().__init__(None)
        self._request = request
        self._data = b""
        self._finished = False
        self._aborted = False
        self._handled = False
        self._broken = False
        self._stream_taken = False
        self._unflushed_drop = False

    def _permitted(self) -> bool:
        return self._request is None or self._request._permitted

    def _closed(self) -> bool:
        return self._broken or (self._request is not None and self._request._rejected is not None)

    def write(self) -> OutputStream:
        self._use()
        if self._stream_taken:
            raise Err(None)
        self._stream_taken = True
        return OutputStream(self)

    @classmethod
    def finish(cls, this: "OutgoingBody", trailers: Any) -> None:
        this._use()
        this._release()
        if this._unflushed_drop:
            HOST.violations.append("body finished after its stream was dropped with writes not flushed")
        this._finished = True

    def __exit__(self, *exc: Any) -> None:
        if not self._dropped:
            self._aborted = True  # dropped unfinished: the host sees a broken body
        self._release()


class RequestOptions(Resource):
    def __init__(self) -> None:
        super().__init__(None)
        self.values: dict[str, int] = {}

    def set_connect_timeout(self, duration: int) -> None:
        self.values["connect"] = duration

    def set_first_byte_timeout(self, duration: int) -> None:
        self.values["first_byte"] = duration

    def set_between_bytes_timeout(self, duration: int) -> None:
        self.values["between_bytes"] = duration


class OutgoingRequest(Resource):
    def __init__(self, headers: Fields) -> None:
        super().__init__(None)
        headers._use()
        self._headers = headers
        headers._release()  # ownership moves into the request
        self._method: Any = None
        self._scheme: Any = None
        self._authority: Any = None
        self._path: Any = None
        self._body: OutgoingBody | None = None
        self._permitted = False
        self._rejected: Any = None
        self._over = False

    def set_method(self, method: Any) -> None:
        self._method = method

    def set_scheme(self, scheme: Any) -> None:
        self._scheme = scheme

    def set_authority(self, authority: Any) -> None:
        if authority is not None and (" " in authority or not authority):
            raise Err(None)
        self._authority = authority

    def set_path_with_query(self, path: Any) -> None:
        if path is not None and " " in path:
            raise Err(None)
        self._path = path

    def body(self) -> OutgoingBody:
        self._use()
        if self._body is not None:
            raise Err(None)
        self._body = OutgoingBody(self)
        return self._body


class InputStream(Resource):
    def __init__(self, body: "IncomingBody", chunks: list, error: Any) -> None:
        super().__init__(body)
        self._body = body
        self._chunks = list(chunks)
        self._error = error

    def _arrived(self) -> bool:
        """What the pollable reports; a pause ends when the guest polls."""
        if self._chunks and self._chunks[0] is None:
            self._chunks.pop(0)
        return True

    def subscribe(self) -> Pollable:
        self._use()
        return Pollable(self, self._arrived)

    def read(self, length: int) -> bytes:
        self._use()
        if self._chunks and self._chunks[0] is None:
            return b""
        return self._take(length)

    def blocking_read(self, length: int) -> bytes:
        self._use()
        while self._chunks and self._chunks[0] is None:
            self._chunks.pop(0)
        return self._take(length)

    def _take(self, length: int) -> bytes:
        if self._chunks:
            chunk = self._chunks.pop(0)
            if len(chunk) > length:
                self._chunks.insert(0, chunk[length:])
                chunk = chunk[:length]
            return chunk
        _end_exchange(self._body._request)
        if self._error is not None:
            raise Err(StreamError_LastOperationFailed(IoError(self._error)))
        raise Err(StreamError_Closed())


class IoError(Resource):
    def __init__(self, code: Any) -> None:
        super().__init__(None)
        self.code = code

    def to_debug_string(self) -> str:
        return f"io error {type(self.code).__name__}"


class FutureTrailers(Resource):
    pass


class IncomingBody(Resource):
    def __init__(self, response: "IncomingResponse", reply: Reply) -> None:
        super().__init__(response)
        self._reply = reply
        self._request = response._request
        self._stream_taken = False

    def stream(self) -> InputStream:
        self._use()
        if self._stream_taken:
            raise Err(None)
        self._stream_taken = True
        return InputStream(self, self._reply.chunks, self._reply.body_error)

    @classmethod
    def finish(cls, this: "IncomingBody") -> FutureTrailers:
        this._use()
        this._release()
        return FutureTrailers(None)

    def _release(self) -> None:
        _end_exchange(self._request)
        super()._release()


class IncomingResponse(Resource):
    def __init__(self, reply: Reply, request: "OutgoingRequest | None" = None) -> None:
        super().__init__(None)
        self._reply = reply
        self._request = request
        self._consumed = False

    def _release(self) -> None:
        _end_exchange(self._request)
        super()._release()

    def status(self) -> int:
        self._use()
        return self._reply.status

    def headers(self) -> Fields:
        self._use()
        return Fields([(n, v.encode() if isinstance(v, str) else v) for n, v in self._reply.headers], parent=self, mutable=False)

    def consume(self) -> IncomingBody:
        self._use()
        if self._consumed:
            raise Err(None)
        self._consumed = True
        return IncomingBody(self, self._reply)


class FutureIncomingResponse(Resource):
    def __init__(self, request: OutgoingRequest, options: RequestOptions | None) -> None:
        super().__init__(None)
        self._request = request
        self._options = dict(options.values) if options is not None else {}
        self._taken = False
        self._reply: Reply | None = None

    def _resolvable(self) -> bool:
        request = self._request
        if request._rejected is not None:
            return True
        body = request._body
        return request._permitted and (body is None or body._finished or body._aborted or body._broken)

    def subscribe(self) -> Pollable:
        self._use()
        return Pollable(self, self._resolvable)

    def get(self) -> Any:
        self._use()
        HOST.waits_before_all_handled.append(HOST.handled)
        if not self._resolvable():
            return None
        if self._taken:
            return Err(None)
        self._taken = True
        req = self._request
        body = req._body
        if req._rejected is not None:
            return Ok(Err(req._rejected))
        if body is not None and body._aborted and not body._finished:
            _end_exchange(req)
            return Ok(Err(sys.modules["wit_world.imports.types"].ErrorCode_HttpProtocolError()))
        sent = Sent(
            method=type(req._method).__name__.removeprefix("Method_").upper()
            if not hasattr(req._method, "value")
            else req._method.value,
            scheme=type(req._scheme).__name__.removeprefix("Scheme_").lower(),
            authority=req._authority,
            path=req._path,
            headers=req._headers._entries,
            body=body._data if body is not None else b"",
            options=self._options,
        )
        HOST.sent.append(sent)
        reply = HOST.server(sent)
        if reply.error is not None:
            _end_exchange(req)
            return Ok(Err(reply.error))
        return Ok(Ok(IncomingResponse(reply, req)))

    def _release(self) -> None:
        if not self._dropped and not self._taken:
            _end_exchange(self._request)  # given up before its response
        super()._release()


def handle(request: OutgoingRequest, options: RequestOptions | None) -> FutureIncomingResponse:
    request._use()
    if options is not None:
        options._release()
    HOST.handled += 1
    if HOST.refuse_on_handle is not None:
        request._release()
        raise Err(HOST.refuse_on_handle)
    if request._body is not None:
        request._body._handled = True
    request._release()
    request._rejected = HOST.reject(request._path)
    if request._rejected is None:
        HOST.waiting_permit.append(request)
        _grant()
    return FutureIncomingResponse(request, options)


def http_error_code(err: IoError) -> Any:
    return err.code


def log(level: Level, message: str) -> None:
    HOST.logs.append((level.name.lower(), message))


# --- installing ----------------------------------------------------------------


def _module(name: str, **attrs: Any) -> pytypes.ModuleType:
    module = pytypes.ModuleType(name)
    module.__dict__.update(attrs)
    return module


HeaderError_InvalidSyntax = _variant("HeaderError_InvalidSyntax")
StreamError_Closed = _variant("StreamError_Closed")
StreamError_LastOperationFailed = _variant("StreamError_LastOperationFailed", payload=True)


def install() -> FakeHost:
    """Puts fresh fake bindings into ``sys.modules`` (and drops any imported
    ``sluice_sdk`` so that it binds to them); returns the fake host."""
    global HOST
    HOST = FakeHost()
    uninstall()
    types_attrs: dict[str, Any] = {
        "Fields": Fields,
        "OutgoingRequest": OutgoingRequest,
        "OutgoingBody": OutgoingBody,
        "RequestOptions": RequestOptions,
        "IncomingResponse": IncomingResponse,
        "IncomingBody": IncomingBody,
        "FutureIncomingResponse": FutureIncomingResponse,
        "FutureTrailers": FutureTrailers,
        "HeaderError_InvalidSyntax": HeaderError_InvalidSyntax,
        "http_error_code": http_error_code,
        "Scheme_Http": _variant("Scheme_Http"),
        "Scheme_Https": _variant("Scheme_Https"),
        "Method_Other": _variant("Method_Other", payload=True),
    }
    for method in METHODS:
        types_attrs[f"Method_{method}"] = _variant(f"Method_{method}")
    for code, payload in ERROR_CODES:
        types_attrs[f"ErrorCode_{code}"] = _variant(f"ErrorCode_{code}", payload)
    modules = {
        "componentize_py_types": _module("componentize_py_types", Ok=Ok, Err=Err, Some=Some),
        "wit_world": _module("wit_world"),
        "wit_world.exports": _module("wit_world.exports", Handler=HandlerProtocol),
        "wit_world.exports.handler": _module(
            "wit_world.exports.handler",
            Context=Context,
            Success=Success,
            Retry=RetryRecord,
            Outcome_Success=Outcome_Success,
            Outcome_Retry=Outcome_Retry,
            Outcome_Fail=Outcome_Fail,
        ),
        "wit_world.imports": _module("wit_world.imports"),
        "wit_world.imports.log": _module("wit_world.imports.log", Level=Level, log=log),
        "wit_world.imports.types": _module("wit_world.imports.types", **types_attrs),
        "wit_world.imports.streams": _module(
            "wit_world.imports.streams",
            StreamError_Closed=StreamError_Closed,
            StreamError_LastOperationFailed=StreamError_LastOperationFailed,
            InputStream=InputStream,
            OutputStream=OutputStream,
        ),
        "wit_world.imports.poll": _module("wit_world.imports.poll", Pollable=Pollable, poll=poll),
        "wit_world.imports.outgoing_handler": _module("wit_world.imports.outgoing_handler", handle=handle),
    }
    modules["wit_world"].exports = modules["wit_world.exports"]
    modules["wit_world"].imports = modules["wit_world.imports"]
    modules["wit_world.exports"].handler = modules["wit_world.exports.handler"]
    for short in ("log", "types", "streams", "poll", "outgoing_handler"):
        setattr(modules["wit_world.imports"], short, modules[f"wit_world.imports.{short}"])
    sys.modules.update(modules)
    return HOST


def uninstall() -> None:
    """Removes the fakes and any ``sluice_sdk`` modules bound to them."""
    for name in list(sys.modules):
        if name in MODULE_NAMES or name == "sluice_sdk" or name.startswith("sluice_sdk."):
            del sys.modules[name]


def host() -> FakeHost:
    return HOST
