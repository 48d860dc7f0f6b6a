"""The attempt being run: what the host tells a plugin about it, and the list
of next tasks to create with its success."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

__all__ = ["Context"]


def _from_ms(ms: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(milliseconds=ms)


class Context:
    """The same facts a webhook gets in its ``Sluice-*`` headers.

    - ``task_id``: the task's id, as in ``GET /v1/tasks/{id}``.
    - ``gate``: the gate the task runs in; every HTTP request takes a token
      from it and may reach only its allowed hosts.
    - ``attempt``: 1 for the first attempt, 2 for the first retry, ...
    - ``scheduled_at``: when the task was due (aware :class:`datetime`, UTC).
    - ``deadline``: when the host ends this attempt, counted as timed out.
    - ``idempotency_key``: the task id, or ``schedule:<name>:<time>`` for a
      schedule's occurrence; the same on every attempt. Pass it to APIs that
      take one, so that a repeated attempt is not applied twice.
    - ``schedule``: the schedule that made the task, or ``None``.
    """

    def __init__(
        self,
        *,
        task_id: str,
        gate: str,
        attempt: int,
        scheduled_at_ms: int,
        deadline_ms: int,
        idempotency_key: str,
        schedule: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.task_id = task_id
        self.gate = gate
        self.attempt = attempt
        self.scheduled_at = _from_ms(scheduled_at_ms)
        self.deadline = _from_ms(deadline_ms)
        self.idempotency_key = idempotency_key
        self.schedule = schedule
        self._deadline_s = deadline_ms / 1000
        self._clock = clock
        self._next: list[str] = []

    @classmethod
    def from_wit(cls, ctx: Any, clock: Callable[[], float] = time.time) -> "Context":
        """From the world's ``handler.Context`` record."""
        return cls(
            task_id=ctx.task_id,
            gate=ctx.gate,
            attempt=ctx.attempt,
            scheduled_at_ms=ctx.scheduled_at_ms,
            deadline_ms=ctx.deadline_ms,
            idempotency_key=ctx.idempotency_key,
            schedule=ctx.schedule,
            clock=clock,
        )

    def remaining(self) -> float:
        """Seconds left until :attr:`deadline`, 0.0 once it has passed. A plugin
        with much to do can stop early and ``raise Retry(...)`` to carry on in
        the next attempt, instead of being cut off mid-request."""
        return max(0.0, self._deadline_s - self._clock())

    def next(self, task: dict[str, Any]) -> None:
        """Asks for ``task`` (the JSON body of ``POST /v1/tasks``) to be created if
        this attempt succeeds, in the same commit as the success: a workflow's
        next step. Nothing is created if the attempt retries or fails."""
        self._next.append(json.dumps(task, separators=(",", ":"), ensure_ascii=False))

    def take_next(self) -> list[str]:
        """The next tasks asked for so far, as JSON texts; empties the list."""
        taken, self._next = self._next, []
        return taken

    def __repr__(self) -> str:
        return (
            f"Context(task_id={self.task_id!r}, gate={self.gate!r}, attempt={self.attempt}, "
            f"idempotency_key={self.idempotency_key!r}, schedule={self.schedule!r})"
        )
