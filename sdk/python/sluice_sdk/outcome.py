"""How an attempt ends: raise :class:`Retry` or :class:`Fail`, or return an output.

- ``return output``: the task succeeds; ``output`` is kept as JSON in the
  attempt's history, and the tasks asked for with ``ctx.next(...)`` are created
  in the same commit.
- ``raise Retry(reason, after=seconds)``: try again later, after ``after``
  (seconds, or a :class:`~datetime.timedelta`) or the task's backoff when
  ``None``, while attempts remain.
- ``raise Fail(reason)``: the task fails now, whatever attempts remain.

This module is pure: :func:`encode` turns an :class:`Outcome` into the world's
``handler.Outcome`` given the bindings module, so it is tested without them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Union

__all__ = ["Retry", "Fail", "Outcome", "after_ms", "encode"]

U64_MAX = 2**64 - 1

Seconds = Union[int, float, timedelta]


class Retry(Exception):
    """Try the attempt again later: the task goes back to ``scheduled`` while it
    has attempts left, and fails when they are used up.

    ``after`` is the earliest time to try again, in seconds (or a
    :class:`~datetime.timedelta`); ``None`` leaves it to the task's backoff.
    The host bounds it. For example
    ``raise Retry("inventory service is restarting", after=30)``.
    """

    def __init__(self, reason: str, after: Seconds | None = None) -> None:
        super().__init__(reason)
        self.reason = str(reason)
        self.after = after

    def __repr__(self) -> str:
        return f"Retry({self.reason!r}, after={self.after!r})"


class Fail(Exception):
    """Fail the task now, whatever attempts it has left: ``raise Fail("customer deleted")``.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = str(reason)

    def __repr__(self) -> str:
        return f"Fail({self.reason!r})"


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended, before it is handed to the host: ``kind`` is
    ``"success"`` (with ``output`` as JSON text and ``next`` tasks as JSON
    texts), ``"retry"`` (with ``after_ms`` and ``reason``) or ``"fail"``
    (with ``reason``)."""

    kind: str
    output: str = ""
    next: tuple[str, ...] = field(default_factory=tuple)
    after_ms: int | None = None
    reason: str = ""

    @staticmethod
    def success(output: str, next: list[str] | tuple[str, ...] = ()) -> "Outcome":
        return Outcome("success", output=output, next=tuple(next))

    @staticmethod
    def retry(reason: str, after: Seconds | None = None) -> "Outcome":
        return Outcome("retry", after_ms=after_ms(after), reason=reason)

    @staticmethod
    def fail(reason: str) -> "Outcome":
        return Outcome("fail", reason=reason)


def after_ms(after: Seconds | None) -> int | None:
    """Seconds (or a timedelta) as whole milliseconds for the host, rounded up
    so that a retry never comes sooner than asked; ``None`` stays ``None``.
    Negative becomes 0, and anything past ``u64`` is capped."""
    if after is None:
        return None
    seconds = after.total_seconds() if isinstance(after, timedelta) else float(after)
    if math.isnan(seconds):
        return None
    if seconds <= 0:
        return 0
    if math.isinf(seconds) or seconds * 1000 >= U64_MAX:
        return U64_MAX
    return min(U64_MAX, math.ceil(round(seconds * 1000, 6)))


def encode(outcome: Outcome, handler: Any) -> Any:
    """The world's ``handler.Outcome`` for ``outcome``; ``handler`` is the
    generated module ``wit_world.exports.handler`` (or a test's stand-in)."""
    if outcome.kind == "success":
        return handler.Outcome_Success(handler.Success(output=outcome.output, next=list(outcome.next)))
    if outcome.kind == "retry":
        return handler.Outcome_Retry(handler.Retry(after_ms=outcome.after_ms, reason=outcome.reason))
    return handler.Outcome_Fail(outcome.reason)
