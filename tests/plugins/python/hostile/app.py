"""A hostile Python plugin for the host's sandbox tests: one attack per input.

- ``{"do": "loop"}``: spins forever without calling the host. The host must stop
  it at the deadline; the attempt times out.
- ``{"do": "memory"}``: allocates (and fills) 1 MiB after 1 MiB until memory runs
  out, logging ``holding N MiB`` every 8 MiB (as ``memory-bomb`` does). The
  host must hold it to the memory limit; CPython then raises ``MemoryError``
  (or aborts), which the SDK lets through as a trap: that attempt fails.
- ``{"do": "flood", "url": "http://...", "count": N}``: starts N GETs to ``url``
  at once (``count`` defaults to 100), then waits for them all. Each must take
  a token from the gate: at least ``(N - burst) / rate`` seconds, never more
  than the gate's concurrency in flight. Output:
  ``{"count", "ok", "failed", "elapsed_ms", "first_error"}`` (non-2xx counts as
  failed).
- ``{"do": "file"}``: opens and reads ``/etc/passwd`` and lists ``/`` with
  Python's own file functions (CPython's runtime imports ``wasi:filesystem``).
  Expected: both fail, since the host gives no preopened directory. Output:
  ``{"passwd": {"ok": false, "error": "..."}, "root": {"ok": false, "error": "..."}}``
  (on success ``"bytes"`` or ``"entries"`` instead of ``"error"``).
- ``{"do": "socket", "port": P}``: opens a TCP connection to ``127.0.0.1:P`` with
  Python's ``socket`` module (``wasi:sockets``), bypassing the gate. Expected:
  refused by the host. Output: ``{"connected": false, "error": "..."}``.

Every mode but loop and memory succeeds with a report of what happened, so a
test reads the attempt's output. Only ever run it under the host's tests,
against loopback endpoints.
"""

from __future__ import annotations

import encodings.idna  # noqa: F401  (socket's name handling needs the codec at run time)
import os
import socket
import time
from typing import Any

from sluice_sdk import Fail, HttpError, Request, http, log, plugin

MIB = 1 << 20


def loop() -> None:
    n = 0
    while True:
        n = (n + 1) & 0xFFFF


def memory() -> None:
    held: list[bytearray] = []
    while True:
        chunk = bytearray(MIB)
        chunk[::4096] = b"\x01" * (MIB // 4096)  # touch every page
        held.append(chunk)
        if len(held) % 8 == 0:
            log.info(f"holding {len(held)} MiB")


def flood(url: str, count: int) -> dict[str, Any]:
    started = time.monotonic()
    requests = [Request("GET", url, [("x-burst-request", str(n))]) for n in range(count)]
    ok = failed = 0
    first_error: str | None = None
    for result in http.send_all(requests):
        if isinstance(result, HttpError):
            error: str | None = str(result)
        elif not result.ok:
            error = f"{result.url} answered {result.status}"
        else:
            error = None
        if error is None:
            ok += 1
        else:
            failed += 1
            first_error = first_error or error
    return {
        "count": count,
        "ok": ok,
        "failed": failed,
        "elapsed_ms": int((time.monotonic() - started) * 1000),
        "first_error": first_error,
    }


def _failure(err: BaseException) -> dict[str, Any]:
    return {"ok": False, "error": f"{type(err).__name__}: {err}"}


def files() -> dict[str, Any]:
    report: dict[str, Any] = {}
    try:
        with open("/etc/passwd", "rb") as passwd:
            report["passwd"] = {"ok": True, "bytes": len(passwd.read())}
    except Exception as err:
        report["passwd"] = _failure(err)
    try:
        report["root"] = {"ok": True, "entries": sorted(os.listdir("/"))[:20]}
    except Exception as err:
        report["root"] = _failure(err)
    log.info(f"file: {report}")
    return report


def connect(port: int) -> dict[str, Any]:
    sock = None
    try:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(5.0)
        sock.connect(("127.0.0.1", port))
        report: dict[str, Any] = {"connected": True, "error": None}
    except Exception as err:
        report = {"connected": False, "error": f"{type(err).__name__}: {err}"}
    finally:
        if sock is not None:
            try:
                sock.close()
            except Exception:
                pass
    log.info(f"socket: {report}")
    return report


def run(ctx: Any, input: Any) -> Any:
    if not isinstance(input, dict) or not isinstance(input.get("do"), str):
        raise Fail('invalid input: expected {"do": "loop" | "memory" | "flood" | "file" | "socket", ...}')
    do = input["do"]
    if do == "loop":
        loop()
    if do == "memory":
        memory()
    if do == "flood":
        url, count = input.get("url"), input.get("count", 100)
        if not isinstance(url, str) or not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise Fail('invalid input: flood takes {"url": "http://...", "count": N}')
        return flood(url, count)
    if do == "file":
        return files()
    if do == "socket":
        port = input.get("port")
        if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
            raise Fail('invalid input: socket takes {"port": P}')
        return connect(port)
    raise Fail(f"invalid input: unknown attack {do!r}")


Handler = plugin(run)
