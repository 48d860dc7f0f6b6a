"""Hibernates the apps that have been idle too long.

Input: ``{"api": "http://apps.internal:8080", "idle_after": "24h"}``.
``GET {api}/apps`` lists the apps, each with its ``last_active`` time (RFC 3339).
Every app idle for longer than ``idle_after`` and not already hibernated gets
``POST {api}/apps/{id}/hibernate``. ``idle_after`` is in hours or smaller units
(``"90m"``, ``"24h"``, ``"168h"``), since days vary in length. Every request goes
through the task's gate, so a thousand idle apps are hibernated at the
gate's pace, not in one burst.

Hibernating is idempotent, so a retry simply carries on: an app hibernated by
an earlier attempt is listed as ``hibernated`` and skipped. If the attempt's
deadline comes near with apps left, it stops and asks for a retry.

Output: ``{"apps": 40, "idle": 12, "hibernated": 11, "skipped": 1}``.

The Python twin of ``plugins/hibernate-idle`` (Rust): the same input, requests,
log lines, output and outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from sluice_sdk import Context, Fail, Retry, format_duration, format_timestamp, http, log, plugin

#: Stop starting new requests this close to the deadline (seconds).
DEADLINE_MARGIN = 5.0


@dataclass
class Input:
    #: The apps API's base URL, such as ``http://apps.internal:8080``.
    api: str
    #: How long an app must have been inactive to be hibernated.
    idle_after: timedelta


@dataclass
class App:
    id: str
    last_active: datetime
    #: ``running``, ``hibernated``, ...; absent means running.
    state: str | None = None


def run(ctx: Context, input: Input) -> dict[str, int]:
    if input.idle_after < timedelta(0):
        raise Fail("invalid input: idle_after must not be negative")
    api = input.api.rstrip("/")
    apps: list[App] = http.get_json(f"{api}/apps", into=list[App])
    now = datetime.now(timezone.utc)
    idle = [app for app in apps if app.state != "hibernated" and now - app.last_active > input.idle_after]
    log.info(f"{len(idle)} of {len(apps)} apps idle for over {format_duration(input.idle_after)}")

    hibernated = skipped = 0
    for app in idle:
        if ctx.remaining() < DEADLINE_MARGIN:
            raise Retry(
                f"deadline near after hibernating {hibernated} of {len(idle)} idle apps; "
                "the next attempt carries on"
            )
        response = http.post(f"{api}/apps/{app.id}/hibernate")
        if response.status in (404, 409):
            # Deleted, or woken up or hibernated by someone else meanwhile.
            log.info(f"skipped {app.id}: the API answered {response.status}")
            skipped += 1
        else:
            response.raise_for_status()
            log.info(f"hibernated {app.id} (last active {format_timestamp(app.last_active)})")
            hibernated += 1
    return {"apps": len(apps), "idle": len(idle), "hibernated": hibernated, "skipped": skipped}


Handler = plugin(run, input=Input)
