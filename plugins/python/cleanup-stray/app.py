"""Deletes stray instances: those without an owner tag, or past their expiry.

Input: ``{"api": "http://cloud.internal:8080"}``, optionally with
``"owner_tag": "owner"`` (the tag that names an owner), ``"retry_delay": "60s"``
(how long to wait before retrying after the API failed) and
``"dry_run": true`` (list, delete nothing).

``GET {api}/instances`` lists instances as
``{"id": "i-1", "tags": {"owner": "team-a"}, "expires_at": "2026-12-01T00:00:00Z"}``
(``tags`` and ``expires_at`` may be absent). Each stray gets
``DELETE {api}/instances/{id}``; a 404 means it is already gone, which is as
good. A 5xx or a timeout from the API retries the task after ``retry_delay``
(or the API's ``Retry-After``): deleting is idempotent, so the next attempt
lists again and deletes what is left.

Output: ``{"instances": 40, "strays": 3, "deleted": 2, "already_gone": 1, "dry_run": false}``.

The Python twin of ``plugins/cleanup-stray`` (Rust): the same input, requests,
log lines, output and outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from sluice_sdk import Context, Fail, HttpError, Retry, http, log, plugin


@dataclass
class Input:
    #: The cloud API's base URL, such as ``http://cloud.internal:8080``.
    api: str
    #: The tag that names an instance's owner.
    owner_tag: str = "owner"
    #: How long to wait before retrying when the API fails.
    retry_delay: timedelta = timedelta(seconds=60)
    #: List the strays without deleting them.
    dry_run: bool = False


@dataclass
class Instance:
    id: str
    tags: dict[str, str] = field(default_factory=dict)
    expires_at: datetime | None = None

    def is_stray(self, owner_tag: str, now: datetime) -> bool:
        """No owner to ask, or its owner's lease on it has run out."""
        owned = bool(self.tags.get(owner_tag, "").strip())
        expired = self.expires_at is not None and self.expires_at <= now
        return not owned or expired


def run(ctx: Context, input: Input) -> dict[str, object]:
    if input.retry_delay < timedelta(0):
        raise Fail("invalid input: retry_delay must not be negative")

    def api_error(err: HttpError) -> Retry | Fail:
        """The API's trouble retries after ``retry_delay``, unless it said how long."""
        decided = err.outcome()
        if isinstance(decided, Retry) and decided.after is None:
            decided.after = input.retry_delay
        return decided

    api = input.api.rstrip("/")
    try:
        instances: list[Instance] = http.get_json(f"{api}/instances", into=list[Instance])
    except HttpError as err:
        raise api_error(err) from None
    now = datetime.now(timezone.utc)
    strays = [instance for instance in instances if instance.is_stray(input.owner_tag, now)]
    log.info(f"{len(strays)} of {len(instances)} instances are strays")

    deleted = already_gone = 0
    for stray in strays:
        if input.dry_run:
            log.info(f"would delete {stray.id}")
            continue
        try:
            response = http.delete(f"{api}/instances/{stray.id}")
            if response.status == 404:
                log.info(f"{stray.id} was already gone")
                already_gone += 1
                continue
            response.raise_for_status()
        except HttpError as err:
            raise api_error(err) from None
        log.info(f"deleted {stray.id}")
        deleted += 1
    return {
        "instances": len(instances),
        "strays": len(strays),
        "deleted": deleted,
        "already_gone": already_gone,
        "dry_run": input.dry_run,
    }


Handler = plugin(run, input=Input)
